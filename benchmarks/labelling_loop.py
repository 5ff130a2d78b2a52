"""The loop from the device back to the data, end to end on shared photos (issue 15), through the real CLI and the
web page's own HTTP endpoints:

1. train + export a model on a few photos per class (`--start`), and measure it on held-out photos (`--test`);
2. play a video of other photos (`--pool`, never trained on) through `edgecls run --keep DIR --keep-policy
   uncertain`: the device keeps the frames it is unsure of;
3. label the kept frames from their true classes, one POST /api/label each — the request the page's buttons send
   — with `edgecls ui` serving DATA_DIR (a copy of the start photos);
4. retrain on the grown DATA_DIR (with `--init` from the first run when `edgecls train` has it), export, measure
   on the same held-out photos.

    python benchmarks/labelling_loop.py [--data ../shared/data/flowers] [--start 20] [--pool 60] [--test 40]
                                        [--keep-below 0.7] [--out labelling-loop-out]

Prints and writes OUT/result.json: accuracy before and after, the photos kept and labelled, how many of the kept
the first model had wrong. Small settings (96 px, a few epochs): minutes on a 2-core machine.
"""
from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ("--img-size", "96", "--epochs", "3", "--fine-tune-epochs", "3", "--batch-size", "32", "--seed", "0")
EXPORT = ("--int8-method", "ptq", "--calib-samples", "50", "--max-drop", "50", "--min-agreement", "0")
FPS, SIDE = 10, 224


def edgecls(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"edgecls {' '.join(map(str, args[:2]))} failed:\n{p.stderr[-3000:]}")
    return p


def split(data: Path, start: int, pool: int, test: int, seed: int) -> dict[str, dict[str, list[Path]]]:
    rng = random.Random(seed)
    parts: dict[str, dict[str, list[Path]]] = {"start": {}, "pool": {}, "test": {}}
    for cdir in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in cdir.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        rng.shuffle(files)
        parts["start"][cdir.name] = files[:start]
        parts["pool"][cdir.name] = files[start:start + pool]
        parts["test"][cdir.name] = files[start + pool:start + pool + test]
    return parts


def copy_tree(part: dict[str, list[Path]], dest: Path) -> Path:
    for label, files in part.items():
        (dest / label).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, dest / label / f.name)
    return dest


def accuracy(bundle: Path, test_dir: Path) -> float:
    """Top-1 accuracy of the bundle's recommended artifact (what `run` uses) on the held-out photos."""
    key = json.loads((bundle / "edgecls.json").read_text())["default_artifact"]
    return json.loads(edgecls("eval", bundle, test_dir, "--json").stdout)["artifacts"][key]["accuracy"]


def train_export(data: Path, run: Path, init: Path | None) -> Path:
    has_init = "--init" in edgecls("train", "--help").stdout
    extra = ("--init", init) if init is not None and has_init else ()
    t0 = time.monotonic()
    edgecls("train", data, "--out", run, *TRAIN, *extra)
    edgecls("export", run, "--out", run / "bundle", *EXPORT)
    print(f"  trained + exported {run.name} in {time.monotonic() - t0:.0f} s"
          + (" (--init)" if extra else " (from ImageNet weights" + ("" if init is None or has_init
                                                                   else ": this edgecls has no train --init") + ")"),
          flush=True)
    return run / "bundle"


def post(port: int, path: str, body: dict) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    out = json.loads(r.read())
    c.close()
    if r.status != 200:
        sys.exit(f"POST {path} {body}: {r.status} {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "flowers")
    ap.add_argument("--start", type=int, default=20)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--keep-below", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("labelling-loop-out"))
    a = ap.parse_args()
    out = a.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    parts = split(a.data, a.start, a.pool, a.test, a.seed)
    labels = sorted(parts["pool"])
    test_dir = copy_tree(parts["test"], out / "test")
    data_dir = copy_tree(parts["start"], out / "data")

    print("1. the first model", flush=True)
    bundle_a = train_export(data_dir, out / "run_a", None)
    acc_a = accuracy(bundle_a, test_dir)

    print("2. the device keeps what it is unsure of", flush=True)
    pool = [(label, f) for label in labels for f in parts["pool"][label]]
    random.Random(a.seed).shuffle(pool)  # a camera does not see the classes in order
    w = cv2.VideoWriter(str(out / "pool.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIDE, SIDE))
    for _, f in pool:
        w.write(cv2.resize(cv2.imread(str(f)), (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    w.release()
    keep = out / "kept"
    run = edgecls("run", bundle_a, out / "pool.avi", "--json", "--keep", keep, "--keep-policy", "uncertain",
                  "--keep-below", a.keep_below, "--keep-rate", "1000")
    summary = json.loads(run.stdout.splitlines()[-1])["summary"]

    print("3. label the kept frames through the page's endpoint", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([sys.executable, "-m", "edgecls", "ui", str(data_dir), "--keep", str(keep),
                           "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        kept = sorted(keep.glob("*.jpg"))
        wrong = 0
        for photo in kept:
            side = json.loads(photo.with_suffix(".json").read_text())
            truth = pool[side["frame"]][0]
            wrong += side["model"]["label"] != truth
            post(port, "/api/label", {"name": photo.name, "label": truth})
    finally:
        ui.terminate()
        ui.wait(30)

    print("4. retrain on the grown folder", flush=True)
    bundle_b = train_export(data_dir, out / "run_b", out / "run_a")
    acc_b = accuracy(bundle_b, test_dir)
    result = {"data": str(a.data), "start_per_class": a.start, "pool": len(pool), "test": sum(map(len, parts["test"].values())),
              "keep_below": a.keep_below, "kept": len(kept), "kept_and_wrong": wrong,
              "keep_summary": summary.get("keep"), "accuracy_before": round(acc_a, 4), "accuracy_after": round(acc_b, 4),
              "init": "--init" in edgecls("train", "--help").stdout}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

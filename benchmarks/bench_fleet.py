"""Fleet updates, measured: how long the live loop pauses when `run --updates` swaps in a new bundle, how long a
release takes from `edgecls publish` to promoted on a device, and how many bytes one update downloads.

    python benchmarks/bench_fleet.py BUNDLE [--rounds 3] [--canary-frames 200] [--out benchmarks/results/fleet.md]

Each round: a repository served by a real nginx on 127.0.0.1 holds version 1 of BUNDLE; a device folder takes it
with `edgecls update`; `edgecls run DEVICE/current --updates URL --json --threads 1` classifies a looping lossless
video at full speed; then version 2 (the same bundle with another note in edgecls.json) is published and the run
polls (every 0.2 s), downloads, examines, runs the canary and swaps. From the frames' capture timestamps: the
normal gap between frames (median before the publish), the largest gap while the canary ran, and the largest gap
across the swap itself.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from webserver import serve_folder  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "sign_language_digits"


def edgecls(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"edgecls {' '.join(map(str, args))}: {r.stderr[-800:]}")
    return r


def make_video(path: Path) -> Path:
    files = [f for i in range(100, 104) for d in sorted(p for p in SHARED.iterdir() if p.is_dir())
             for f in sorted(d.iterdir())[i:i + 1]]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (96, 96))
    for f in files:
        w.write(cv2.resize(cv2.imread(str(f)), (96, 96), interpolation=cv2.INTER_AREA))
    w.release()
    return path


def second_version(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    meta = json.loads((dest / "edgecls.json").read_text())
    meta["release_note"] = "bench v2"
    (dest / "edgecls.json").write_text(json.dumps(meta, indent=2))
    return dest


def one_round(bundle: Path, work: Path, canary_frames: int) -> dict:
    keys, repo, dev, log = work / "keys", work / "www" / "repo", work / "dev", work / "access.log"
    (work / "www").mkdir(parents=True)
    edgecls("keygen", keys)
    edgecls("publish", bundle, repo, "--keys", keys)
    v2 = second_version(bundle, work / "v2")
    video = make_video(work / "video.avi")
    with serve_folder(work / "www", access_log=log) as base:
        url = f"{base}/repo"
        edgecls("update", url, "--device-dir", dev, "--root", repo / "metadata" / "1.root.json")
        log.write_text("")   # count from here: one update's bytes
        p = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(dev / "current"), "--source", str(video),
                              "--loop", "--json", "--threads", "1", "--updates", url, "--update-interval", "0.2",
                              "--canary-frames", str(canary_frames)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        stamps, published, promoted, swap_frame, after = {}, None, None, None, None
        for line in p.stdout:
            rec = json.loads(line)
            if "update" in rec:
                promoted, swap_frame = time.monotonic(), rec["update"]["before_frame"]
                after = len(stamps) + 300
            elif "frame" in rec:
                stamps[rec["frame"]] = rec["timestamp"]
                if published is None and len(stamps) == 500:
                    published = time.monotonic()
                    edgecls("publish", v2, repo, "--keys", keys)
                    publish_frame = max(stamps)
            if after is not None and len(stamps) >= after:
                break
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    frames = sorted(stamps)
    gaps = {f: (stamps[f] - stamps[f - 1]) * 1000 for f in frames[1:] if f - 1 in stamps}
    normal = statistics.median(g for f, g in gaps.items() if f < publish_frame)
    canary = max(g for f, g in gaps.items() if publish_frame < f < swap_frame - 2)
    swap = max(g for f, g in gaps.items() if swap_frame - 2 <= f <= swap_frame + 2)
    downloaded = sum(int(x.split()[-1]) for x in log.read_text().split("\n") if x.strip())
    return {"normal_gap_ms": round(normal, 2), "canary_max_gap_ms": round(canary, 2), "swap_max_gap_ms": round(swap, 2),
            "publish_to_promoted_s": round(promoted - published, 2), "bytes_downloaded": downloaded,
            "tar_bytes": sum(f.stat().st_size for f in (repo / "targets" / "bundles").glob("*v2.tar")),
            "frames_contiguous": frames == list(range(frames[0], frames[-1] + 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle", type=Path, help="a bundle with its exam (exported by this edgecls)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--canary-frames", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fleet.md")
    a = ap.parse_args()
    rows = []
    for i in range(a.rounds):
        with tempfile.TemporaryDirectory(prefix="edgecls-bench-fleet.") as tmp:
            rows.append(one_round(a.bundle, Path(tmp), a.canary_frames))
            print(json.dumps(rows[-1]), flush=True)
    cmd = f"python benchmarks/bench_fleet.py BUNDLE --rounds {a.rounds} --canary-frames {a.canary_frames}"
    lines = [f"## Fleet updates: the swap, publish → promoted, bytes (`{cmd}`)", "",
             f"{time.strftime('%Y-%m-%d')}, this 2-core host (shared with other jobs). Bundle `{a.bundle.relative_to(ROOT) if a.bundle.is_relative_to(ROOT) else a.bundle}`; "
             "`edgecls run DEVICE/current --updates URL --threads 1` on a looping 96×96 lossless video at full speed; "
             "nginx on 127.0.0.1; poll every 0.2 s; gaps from the frames' capture timestamps.", "",
             "| round | normal gap ms (median) | largest gap during the canary ms | largest gap at the swap ms | "
             "publish → promoted s | bytes downloaded (archive) | frames contiguous |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['normal_gap_ms']} | {r['canary_max_gap_ms']} | {r['swap_max_gap_ms']} | "
                     f"{r['publish_to_promoted_s']} | {r['bytes_downloaded']:,} ({r['tar_bytes']:,}) | "
                     f"{'yes' if r['frames_contiguous'] else 'NO'} |")
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()

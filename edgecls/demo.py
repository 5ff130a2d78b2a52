"""`edgecls demo`: the whole mission in one command, offline, on the sample shipped in demo/.

train → export --int8 (float-vs-int8 table) → a replayed "camera" (video of held-out photos) through the
live loop → where everything is and how to run it on a Pi or a Jetson. Each step runs the real `edgecls`
command in a subprocess and prints it first, so the demo doubles as a transcript of the user flow.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgecls.errors import EdgeclsError
from edgecls.progress import console

ASSETS = Path(__file__).resolve().parents[1] / "demo"
SAMPLE = ASSETS / "data" / "sign_language_digits_sample"
WEIGHTS = ASSETS / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
MARKER = ".edgecls-demo"


def _step(title: str, args: list[str]) -> None:
    console.rule(f"[bold]{title}")
    console.print("$ edgecls " + " ".join(shlex.quote(str(a)) for a in args), markup=False)
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)])
    if r.returncode != 0:
        raise EdgeclsError(f"demo step failed: edgecls {args[0]} exited with {r.returncode}")
    console.print(f"[dim]({time.time() - t:.0f}s)")


def _photo_pp(run_dir: Path) -> float:
    """What one test photo weighs in percentage points of accuracy."""
    from edgecls.rundir import load_run

    return 100.0 / max(1, len(load_run(run_dir).split_items("test")))


def make_camera_video(run_dir: Path, dest: Path, fps: int = 15, hold: int = 3, size: int = 240) -> int:
    """A video of the run's held-out test photos, each held for `hold` frames: a camera replay."""
    import cv2

    from edgecls.images import load_rgb
    from edgecls.rundir import load_run

    run = load_run(run_dir)
    items = run.split_items("test") or run.split_items("val")
    writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        raise EdgeclsError("OpenCV cannot write mp4 video here")
    for rel, _ in items:
        frame = cv2.resize(cv2.cvtColor(load_rgb(run.data_root / rel), cv2.COLOR_RGB2BGR), (size, size))
        for _ in range(hold):
            writer.write(frame)
    writer.release()
    return len(items) * hold


def demo(out: Path, data: Path | None, weights: Path | None, quick: bool, seconds: float) -> None:
    data = data or SAMPLE
    weights = weights or WEIGHTS
    if not data.is_dir():
        raise EdgeclsError(f"demo data not found at {data}: run from a source checkout or pass --data DIR")
    if not weights.is_file():
        raise EdgeclsError(f"demo weights not found at {weights}: pass --weights PATH (or --weights none)")
    if out.exists():
        if not (out / MARKER).exists():
            raise EdgeclsError(f"{out} exists and is not a previous demo output; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by edgecls demo; safe to delete\n")
    run_dir, bundle, video = out / "run", out / "bundle", out / "camera.mp4"
    t0 = time.time()

    size = ["--img-size", "96", "--epochs", "2", "--fine-tune-epochs", "2"] if quick else []
    _step("1/4 train: transfer learning from the sample photos",
          ["train", data, "--out", run_dir, "--weights", weights, *size])
    console.print(f"[dim]the sample's test split is small: one photo is {_photo_pp(run_dir):.1f} pp, so the demo's "
                  f"gate allows one photo of difference (--max-drop/--min-agreement); on your own data keep the "
                  f"defaults (1.0 pp, 97%)")
    gate = ["--max-drop", f"{_photo_pp(run_dir) + 0.01:.2f}", "--min-agreement", "90"]
    _step("2/4 export: int8 TFLite + ONNX, measured against float on held-out photos",
          ["export", run_dir, "--out", bundle, *(["--allow-drop", "--calib-samples", "50"] if quick else gate)])
    console.rule("[bold]3/4 camera replay: a video of held-out photos through the live loop")
    n = make_camera_video(run_dir, video)
    console.print(f"wrote {video} ({n} frames)", markup=False)
    _step("live loop (headless)", ["run", bundle, "--source", video, "--headless", "--loop",
                                   "--max-frames", str(max(30, int(seconds * 30)))])
    console.rule("[bold]4/4 next")
    console.print(
        f"run folder: {run_dir}  (model, labels, metrics, history.png, confusion.png)\n"
        f"bundle:     {bundle}  (models, edgecls.json, report.md, report.html)\n"
        f"demo took {time.time() - t0:.0f}s\n\n"
        f"On a Raspberry Pi (Bookworm, camera module):\n"
        f"  pip install 'edgecls[device,pi]'   # or: edgecls[device] with Debian's python3-picamera2\n"
        f"  edgecls run {bundle.name} --source picam:0 --headless          # add --stream 8080 --host 0.0.0.0 to watch it\n"
        f"On a Jetson (CSI camera, JetPack's onnxruntime-gpu / TensorRT):\n"
        f"  edgecls run {bundle.name} --source csi://0 --format onnx\n"
        f"Check the int8 model on the device itself:\n"
        f"  edgecls eval {bundle.name} IMAGES_DIR\n", markup=False)

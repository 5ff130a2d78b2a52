"""prepare() with the exact resampler against OpenCV's, one thread, on real pictures.

    python benchmarks/bench_preprocess.py [--repeats 200] [--json]
    ~/.cache/edgecls-pi-stack/pi-python litert benchmarks/bench_preprocess.py --repeats 20   # emulated Pi 4

Cases: camera frames of 640x480, 1280x720 and 1920x1080 (one of the shared 3024x3024 digits photos, shrunk by
OpenCV once) to 160x160 (whole ratios at 640x480) and 224x224, the 640x480 frame letterboxed to 224, a 100x100
digits photo enlarged to 224, and a 3024x3024 photo to 224. The two resamplers are called in turn (exact, OpenCV,
exact, …: both feel the same load on a shared machine); median milliseconds per prepare() over --repeats calls
each, after one warm-up. Under qemu (the pi-python launcher) every instruction is translated: the times there say
how the two compare on an ARM instruction mix, not how fast a Pi is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from edgecls.images import load_rgb
from edgecls.preprocess import EXACT, OPENCV, PreprocessSpec, prepare

ROOT = Path(__file__).resolve().parents[1]
DIGITS = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")) / "data" / "sign_language_digits"
BIG = DIGITS / "7" / "IMG_5874.JPG"     # 3024 x 3024


def interleaved_ms(fns: dict, repeats: int) -> dict:
    """{name: median ms} calling each function once in turn, `repeats` rounds, after one warm-up call each."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(v) * 1e3) for name, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)   # OpenCV would otherwise spread one resize over every core; NumPy uses one anyway
    big = load_rgb(BIG)
    frames = {size: cv2.resize(big, size, interpolation=cv2.INTER_AREA) for size in ((640, 480), (1280, 720), (1920, 1080))}
    small = load_rgb(sorted((DIGITS / "0").glob("*.JPG"))[0])
    cases = [(f"{w}x{h} → {side}x{side}", frames[w, h], dict(height=side, width=side), args.repeats // (w // 640))
             for w, h in frames for side in (160, 224)]
    cases += [("640x480 → 224 letterbox", frames[640, 480], dict(height=224, width=224, resize="letterbox"), args.repeats),
              ("100x100 → 224x224 (enlarge)", small, dict(height=224, width=224), args.repeats),
              ("3024x3024 → 224x224", big, dict(height=224, width=224), max(3, args.repeats // 20))]
    rows = []
    for name, img, fields, n in cases:
        specs = {r: PreprocessSpec(**fields, resampler=r) for r in (EXACT, OPENCV)}
        ms = interleaved_ms({r: (lambda spec=spec: prepare(img, spec)) for r, spec in specs.items()}, n)
        rows.append({"case": name, "exact_ms": round(ms[EXACT], 3), "opencv_ms": round(ms[OPENCV], 3),
                     "ratio": round(ms[EXACT] / ms[OPENCV], 2), "repeats": n})
    where = f"{platform.machine()}, NumPy {np.__version__}, OpenCV {cv2.__version__}"
    if args.json:
        print(json.dumps({"machine": where, "rows": rows}))
    else:
        print(f"prepare(), 1 thread, median ms ({where})")
        print(f"{'case':<30} {'exact':>8} {'opencv':>8} {'ratio':>6}")
        for r in rows:
            print(f"{r['case']:<30} {r['exact_ms']:8.2f} {r['opencv_ms']:8.2f} {r['ratio']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

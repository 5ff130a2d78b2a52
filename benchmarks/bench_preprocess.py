"""prepare() with the exact resampler against OpenCV's, one thread, on real pictures.

    python benchmarks/bench_preprocess.py [--repeats 200] [--json]
    ~/.cache/edgecls-pi-stack/pi-python litert benchmarks/bench_preprocess.py --repeats 20   # emulated Pi 4

Cases: a 640x480 camera frame (one of the shared 3024x3024 digits photos, shrunk by OpenCV once) to 224x224 and
160x160, the same frame letterboxed to 224, a 100x100 digits photo enlarged to 224, and a 3024x3024 photo to 224.
Median milliseconds per prepare() over --repeats calls after one warm-up, each resampler in turn. Under qemu
(the pi-python launcher) every instruction is translated: the times there say how the two compare on an ARM
instruction mix, not how fast a Pi is.
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


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)   # OpenCV would otherwise spread one resize over every core; NumPy uses one anyway
    big = load_rgb(BIG)
    frame = cv2.resize(big, (640, 480), interpolation=cv2.INTER_AREA)
    small = load_rgb(sorted((DIGITS / "0").glob("*.JPG"))[0])
    cases = [("640x480 → 224x224", frame, dict(height=224, width=224), args.repeats),
             ("640x480 → 160x160", frame, dict(height=160, width=160), args.repeats),
             ("640x480 → 224 letterbox", frame, dict(height=224, width=224, resize="letterbox"), args.repeats),
             ("100x100 → 224x224 (enlarge)", small, dict(height=224, width=224), args.repeats),
             ("3024x3024 → 224x224", big, dict(height=224, width=224), max(3, args.repeats // 20))]
    rows = []
    for name, img, fields, n in cases:
        ms = {r: median_ms(lambda: prepare(img, PreprocessSpec(**fields, resampler=r)), n) for r in (EXACT, OPENCV)}
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

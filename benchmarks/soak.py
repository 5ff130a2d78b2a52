"""Soak: `edgecls run` over N frames (default 20,000) of a looping video; resident memory must not grow.

    python benchmarks/soak.py BUNDLE [--frames 20000] [--video V] [--threads 2] [--every 2000]

Runs the real command (`--loop --max-frames N --json --stream 0`: JSON lines plus the overlay and JPEG
encoding of the MJPEG stream on a random localhost port) and samples the child's VmRSS from /proc as frames go
by. "start" is after a warm-up (--warmup frames, when lazily allocated buffers exist); "end" is the last frame.
Exit 1 if RSS grew by more than --max-growth-mb from start to end. `--live` soaks the live path instead: the
video is served as an MJPEG camera stream on localhost and read by the capture thread (newest frame only).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_video  # noqa: E402  (same real-photo video as the pipeline benchmark)

VIDEO_SIZE = (640, 480)   # a camera's VGA frames, made from the shared flowers photos


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def serve_as_camera(video: Path, fps: float = 100.0) -> str:
    """Publish the video's frames, looping, as an MJPEG stream on 127.0.0.1 (a camera stand-in); its URL."""
    import threading

    import cv2

    from edgecls.device.output.mjpeg import MjpegServer

    cap = cv2.VideoCapture(str(video))
    frames = [f for ok, f in iter(cap.read, (False, None)) if ok]
    cap.release()
    server = MjpegServer("127.0.0.1", 0)

    def pump():
        i = 0
        while True:
            server.publish(frames[i % len(frames)])
            i += 1
            time.sleep(1.0 / fps)

    threading.Thread(target=pump, daemon=True).start()
    return f"http://127.0.0.1:{server.port}/stream"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--video", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--every", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--max-growth-mb", type=float, default=8.0)
    ap.add_argument("--live", action="store_true",
                    help="serve the video as an MJPEG camera stream on localhost and soak the live-source path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or make_video(Path(tmp) / "soak.avi", VIDEO_SIZE, 200)
        source = serve_as_camera(video) if args.live else str(video)
        cmd = [sys.executable, "-m", "edgecls", "run", str(args.bundle), source, "--loop", "--json",
               "--max-frames", str(args.frames), "--threads", str(args.threads), "--stream", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        samples: list[tuple[int, float]] = []
        t0, summary, n = time.monotonic(), None, 0
        for line in proc.stdout:
            rec = json.loads(line)
            if "summary" in rec:
                summary = rec["summary"]
                break
            n += 1
            if n == 1 or n == args.warmup or n % args.every == 0 or n == args.frames:
                samples.append((n, rss_mb(proc.pid)))
                print(f"frame {n:>6}  RSS {samples[-1][1]:7.1f} MB  ({time.monotonic() - t0:6.1f} s)", flush=True)
        proc.wait()
    if proc.returncode or summary is None:
        sys.exit(f"edgecls run failed (exit {proc.returncode})")
    start = next(mb for f, mb in samples if f >= args.warmup)
    end = samples[-1][1]
    growth = end - start
    print(f"{summary['frames']} frames at {summary['fps']:.1f} FPS; RSS first frame {samples[0][1]:.1f} MB, "
          f"after {args.warmup}-frame warm-up {start:.1f} MB, end {end:.1f} MB → growth {growth:+.1f} MB "
          f"(limit {args.max_growth_mb} MB)")
    print(json.dumps({"frames": summary["frames"], "fps": summary["fps"], "rss_mb": samples,
                      "rss_start_mb": round(start, 1), "rss_end_mb": round(end, 1), "growth_mb": round(growth, 1)}))
    sys.exit(0 if growth <= args.max_growth_mb else 1)


if __name__ == "__main__":
    main()

"""Do the event outputs slow the camera loop? `edgecls run` FPS without event flags vs with `--mqtt` to a dead
broker (nothing listens on the port), a hanging webhook (accepts, never answers) and, when Mosquitto is
installed, a live broker — all in one process, interleaved (A B C … A B C …) because absolute speed on a shared
machine swings 2x from minute to minute while the ratio of neighbouring runs holds.

    python benchmarks/bench_events.py [BUNDLE] [--frames 2000] [--rounds 4]

The video: the bundle's held-out digits photos (tests/data/digits96/test_images.txt), two classes alternating
every 10 frames, so there are events to send (~1 per 5 frames). Prints each round and the median ratio per
configuration against the plain run of the same round, for FPS and for process CPU time per frame (all
threads: what the outputs' threads cost too; the steadier reading on a busy machine).
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
DIGITS96 = ROOT / "tests" / "data" / "digits96"
SHARED = ROOT.parent / "shared" / "data" / "sign_language_digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_video(path: Path) -> Path:
    rels = (DIGITS96 / "test_images.txt").read_text().split()
    a = [r for r in rels if r.startswith("3/")][:5]
    b = [r for r in rels if r.startswith("7/")][:5]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (100, 100))
    for ra, rb in zip(a, b):
        for rel in (ra, rb):
            img = cv2.resize(cv2.imread(str(SHARED / rel)), (100, 100), interpolation=cv2.INTER_AREA)
            for _ in range(10):
                w.write(img)
    w.release()
    return path


def hanging_server() -> int:
    srv = socket.create_server(("127.0.0.1", 0))
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()[0]) for _ in iter(int, 1)], daemon=True).start()
    return srv.getsockname()[1]


def run(bundle: Path, video: Path, frames: int, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "edgecls", "run", str(bundle), str(video), "--loop", "--max-frames", str(frames),
           "--json", "--threads", "1", *extra]
    with open(out, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=600)
    lines = out.read_text().splitlines()
    return json.loads(lines[-1])["summary"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", nargs="?", default=str(DIGITS96 / "bundle"))
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_events."))
    broker = None
    try:
        video = make_video(tmp / "ab.mkv")
        configs = {"plain": [],
                   "mqtt dead broker": ["--mqtt", f"mqtt://127.0.0.1:{free_port()}/edgecls", "--mqtt-state-interval",
                                        "0.1"],
                   "webhook hanging": ["--webhook", f"http://127.0.0.1:{hanging_server()}/x", "--webhook-timeout", "1"]}
        mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if mosquitto:
            port = free_port()
            (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
            broker = subprocess.Popen([mosquitto, "-c", str(tmp / "m.conf")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            configs["mqtt live broker"] = ["--mqtt", f"mqtt://127.0.0.1:{port}/edgecls", "--mqtt-state-interval", "0.1"]
        fps: dict[str, list[float]] = {k: [] for k in configs}
        cpu: dict[str, list[float]] = {k: [] for k in configs}  # process CPU per frame, all threads
        notes: dict[str, dict] = {}
        for r in range(args.rounds):
            for name, extra in configs.items():
                s = run(Path(args.bundle), video, args.frames, extra, tmp / "out.jsonl")
                fps[name].append(s["fps"])
                cpu[name].append(s["cpu_ms_per_frame"])
                notes[name] = s.get("event_outputs", {})
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in fps.items()), flush=True)
        print(f"\n{args.frames} frames per run, {args.rounds} rounds, --threads 1")
        print("| configuration | FPS (median) | FPS vs plain | CPU ms/frame (median) | CPU vs plain | "
              "last run's output counters |")
        print("|---|---|---|---|---|---|")
        for name, values in fps.items():  # ratios: median of the per-round ratios (neighbouring runs)
            ratio = statistics.median(v / p for v, p in zip(values, fps["plain"]))
            cratio = statistics.median(v / p for v, p in zip(cpu[name], cpu["plain"]))
            print(f"| {name} | {statistics.median(values):.0f} | {ratio * 100:.1f}% | "
                  f"{statistics.median(cpu[name]):.3f} | {cratio * 100:.1f}% | {json.dumps(notes[name])} |")
    finally:
        if broker is not None:
            broker.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

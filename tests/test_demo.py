"""The README's first command, end to end at a tiny size: the demo must keep working."""
import json

from conftest import cli


def test_demo_quick_runs_the_whole_flow(tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--quick", "--out", out, "--seconds", "2", timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    meta = json.loads((out / "bundle" / "edgecls.json").read_text())
    assert {"tflite-int8", "tflite-float", "onnx-int8", "onnx-float"} <= set(meta["artifacts"])
    assert (out / "bundle" / "report.md").is_file() and (out / "run" / "history.png").is_file()
    assert (out / "camera.mp4").stat().st_size > 10_000
    log = r.stdout + r.stderr
    assert "edgecls run bundle --source picam:0" in log and "csi://0" in log
    # Running it again replaces its own output; a folder that is not a demo output is refused.
    other = tmp_path / "mine"
    other.mkdir()
    r2 = cli("demo", "--quick", "--out", other)
    assert r2.returncode != 0 and "not a previous demo output" in r2.stderr

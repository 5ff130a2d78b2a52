"""Regenerate benchmarks/RESULTS.md: one script, every number with the command that produced it.

    python benchmarks/make_results.py [--work DIR] [--fresh] [--skip scratch,train-bench,soak]

Stages (each one real `edgecls` command or benchmark script in a subprocess; outputs cached in --work so an
interrupted regeneration resumes; --fresh redoes them):
  train        edgecls train <digits> (defaults: MobileNetV2 1.0, 160 px, ImageNet weights)
  scratch      the same with --weights none
  sample-*     both again on the small sample in demo/ (40 photos per class): where transfer learning matters
  export-*     edgecls export RUN --int8-method ptq [--full-int8] | qat | auto (the default), float-vs-int8 parity
               on the test split
  bench        edgecls bench BUNDLE --threads 1,2
  pipeline     benchmarks/bench_pipeline.py BUNDLE (edgecls run vs a bare decode→resize→invoke loop)
  soak         benchmarks/soak.py BUNDLE --frames 20000 (RSS at start and end)
  train-bench  benchmarks/bench_train.py (images/s and peak RSS per backbone at 96 and 224 px)
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = Path(os.environ.get("EDGECLS_SHARED", ROOT.parent / "shared")).resolve()
DIGITS = SHARED / "data" / "sign_language_digits"
SAMPLE = ROOT / "demo" / "data" / "sign_language_digits_sample"
WEIGHTS = ROOT / "demo" / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
EDGECLS = [sys.executable, "-m", "edgecls"]


GENERATED_FIRST = "## Training ("                   # the first stage-generated section
NOTES_FIRST = "## Earlier measurements"               # NOTES.md's first line


def machine() -> str:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from edgecls.device.model.runtime import int8_dot_product

    # Where the CPU has no int8 dot product, int8 is no faster than float (benchmarks/NOTES.md): say so by the numbers.
    dot_text = "int8 dot product" if int8_dot_product() else \
        "no int8 dot product (no VNNI): int8 runs no faster than float here, the int8 ONNX unfused"
    return f"{platform.machine()} {cpu}, {os.cpu_count()} cores, {dot_text}, Python {platform.python_version()}"


def shown(cmd: list) -> str:
    out = " ".join(shlex.quote(str(c)) for c in cmd)
    return out.replace(sys.executable + " -m edgecls", "edgecls").replace(sys.executable, "python") \
              .replace(str(ROOT) + "/", "").replace(str(SHARED), "../shared")


class Stages:
    """Runs each stage once; its stdout, wall time and command are kept in WORK/<name>.json. Stages run with
    KERAS_HOME = WORK/keras_home, which holds the demo's MobileNetV2 weights: 'imagenet' resolves offline."""

    def __init__(self, work: Path, fresh: bool):
        self.work, self.fresh = work, fresh
        kh = work / "keras_home" / "models"
        kh.mkdir(parents=True, exist_ok=True)
        if not (kh / WEIGHTS.name).exists():
            (kh / WEIGHTS.name).symlink_to(WEIGHTS)

    def run(self, name: str, cmd: list, ok_codes=(0,)) -> dict:
        rec_path = self.work / f"{name}.json"
        if rec_path.is_file() and not self.fresh:
            return json.loads(rec_path.read_text())
        print(f"[{name}] {shown(cmd)}", file=sys.stderr, flush=True)
        t = time.time()
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                           env={**os.environ, "KERAS_HOME": str(self.work / "keras_home")})
        rec = {"cmd": shown(cmd), "seconds": round(time.time() - t, 1), "rc": r.returncode,
               "stdout": r.stdout, "stderr_tail": r.stderr[-1500:], "when": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"}
        if r.returncode not in ok_codes:
            print(f"[{name}] failed ({r.returncode}): {r.stderr[-800:]}", file=sys.stderr)
        rec_path.write_text(json.dumps(rec))
        return rec


def last_json(text: str):
    """The JSON document at the end of a command's stdout (a pretty-printed object or a last JSON line)."""
    text = text.strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    for i in [i for i, ch in enumerate(text) if ch == "{"]:
        try:
            return json.loads(text[i:])
        except json.JSONDecodeError:
            continue
    return None


def publish(out: Path, lines: list[str]) -> None:
    """A benchmark's section: written to `out` (benchmarks/results/, read into RESULTS.md) and printed."""
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def pct(x) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


class Report:
    """What the stages add up to: the sections' lines, and the summary table's rows (metric | value | command)."""

    def __init__(self):
        self.lines: list[str] = []
        self.summary: list[str] = []

    def row(self, metric: str, value: str, cmd: str) -> None:
        self.summary.append(f"| {metric} | {value} | `{cmd}` |")


TRAIN_STAGES = (("train", DIGITS, [], "digits, ImageNet weights"),
                ("scratch", DIGITS, ["--weights", "none"], "digits, --weights none"),
                ("sample-imagenet", SAMPLE, [], "demo sample, ImageNet weights"),
                ("sample-scratch", SAMPLE, ["--weights", "none"], "demo sample, --weights none"))
EXPORT_METHODS = (("ptq --full-int8", ["--full-int8"]), ("ptq", []), ("qat", []), ("auto", []))
EXPORT_KEYS = ("tflite-float", "tflite-int8", "onnx-float", "onnx-int8")


def training_section(rep: Report, st: Stages, runs: Path, skip: set[str]) -> None:
    train_rows = []
    for name, data, extra, what in TRAIN_STAGES:
        if name.split("-")[0] in skip or name in skip:
            continue
        rec = st.run(name, [*EDGECLS, "train", data, "--out", runs / name, "--force", "--json", *extra])
        s = last_json(rec["stdout"]) or {}
        meta = json.loads((runs / name / "run.json").read_text()) if (runs / name / "run.json").is_file() else {}
        best_val = max((h.get("val_accuracy", 0) for h in meta.get("history", [])), default=None)
        rep.row(f"train ({what}): test accuracy, wall time", f"{pct(s.get('test_accuracy'))}, {rec['seconds']:.0f} s",
                rec["cmd"])
        train_rows.append(f"| {name} | {s.get('split_sizes', {}).get('train', '?')} | {pct(best_val)} | "
                          f"{pct(s.get('test_accuracy'))} | {rec['seconds']:.0f} | `{rec['cmd']}` |")
    rep.lines += [GENERATED_FIRST + "MobileNetV2 1.0, 160 px, defaults: 5 head + up to 12 fine-tune epochs, early stopping)", "",
                  "| run | train images | best val acc | test acc | wall s | command |", "|---|---|---|---|---|---|",
                  *train_rows, ""]


def agreement_cell(mt: dict) -> str:
    """Held-out agreement with its count and 95% interval, e.g. "99.68% (309/310; 98.2–99.9)"."""
    from edgecls.metrics import agreement_text

    h = mt.get("agreement_heldout")
    if not h:
        return pct(mt.get("agreement"))
    return agreement_text(h["agreed"], h["images"], interval=True)


def drop_cell(mt: dict) -> str:
    """int8 minus its float twin on the held-out photos, pp, with its paired 95% interval."""
    from edgecls.metrics import delta_text

    return delta_text(mt["drop"]) if mt.get("drop") else "–"


def export_rows(method: str, m: dict, rec: dict) -> list[str]:
    """One table row per artifact of one export, and the int8/float TFLite size ratio."""
    rows = []
    keras_acc = m["report"]["keras_accuracy"]
    arts = m["artifacts"]
    for key in (k for k in EXPORT_KEYS if arts.get(k)):
        art, mt = arts[key], arts[key]["metrics"]
        kept = art.get("method", "")
        if art.get("float_ops"):   # guarded PTQ: how many ops stayed float
            kept += f" ({len(art['float_ops'])} float: {', '.join(o.split(';')[-1] for o in art['float_ops'])})"
        rows.append(f"| {method} | {key} | {kept} | {pct(mt['accuracy'])} | "
                    f"{(mt['accuracy'] - keras_acc) * 100:+.2f} | {mt.get('reference') or 'keras-float'} | "
                    f"{agreement_cell(mt)} | {drop_cell(mt)} | "
                    f"{art['bytes'] / 1e6:.2f} | {mt.get('latency_ms', float('nan')):.2f} | {rec['seconds']:.0f} | `{rec['cmd']}` |")
    if "tflite-int8" in arts and "tflite-float" in arts:
        rows.append(f"| {method} | int8/float TFLite size | | | | | | | "
                    f"{arts['tflite-int8']['bytes'] / arts['tflite-float']['bytes'] * 100:.1f}% | | | |")
    return rows


def export_summary(rep: Report, m: dict, rec: dict) -> None:
    """The default export's (auto) rows of the summary: each int8 artifact, the wall time, the size ratio."""
    keras_acc, arts = m["report"]["keras_accuracy"], m["artifacts"]
    for key in ("tflite-int8", "onnx-int8"):
        if key in arts:
            mt = arts[key]["metrics"]
            rep.row(f"{key} ({arts[key].get('method')}): top-1 (Keras float {pct(keras_acc)}); held-out agreement "
                    f"with {mt.get('reference') or 'float'} and Δ top-1 vs it, pp (95% CI)",
                    f"{pct(mt['accuracy'])}; {agreement_cell(mt)}; {drop_cell(mt)}", rec["cmd"])
    rep.row("export wall time (default --int8-method auto)", f"{rec['seconds']:.0f} s", rec["cmd"])
    if "tflite-int8" in arts and "tflite-float" in arts:
        rep.row("int8 / float TFLite size", f"{arts['tflite-int8']['bytes'] / 1e6:.2f} / {arts['tflite-float']['bytes'] / 1e6:.2f} MB "
                f"= {arts['tflite-int8']['bytes'] / arts['tflite-float']['bytes'] * 100:.1f}%", rec["cmd"])


def export_section(rep: Report, st: Stages, work: Path, run: Path) -> None:
    """PTQ vs QAT vs the default (auto); "ptq --full-int8" is PTQ with every op int8: what guarded PTQ's float
    ops buy, side by side."""
    rep.lines += ["## Export: float vs int8 on the held-out test split (310 photos)", "",
                  "| --int8-method | artifact | method kept | top-1 | Δ vs Keras pp | reference | held-out agreement with the reference (n; 95% CI) | Δ top-1 vs the reference pp (95% CI) | MB | host ms/img | export wall s | command |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, extra in EXPORT_METHODS:
        tag = method.replace(" --", "-")
        rec = st.run(f"export-{tag}", [*EDGECLS, "export", run, "--out", work / f"bundle-{tag}", "--int8-method",
                                       method.split()[0], *extra, "--allow-drop", "--json"])
        m = last_json(rec["stdout"])
        if not m:
            rep.lines.append(f"| {method} | failed: {rec['stderr_tail'][-200:]} | | | | | | | | `{rec['cmd']}` |")
            continue
        rep.lines += export_rows(method, m, rec)
        if method == "auto":
            export_summary(rep, m, rec)
    rep.lines.append("")


def bench_section(rep: Report, st: Stages, bundle: Path) -> None:
    """Device-side latency of the default bundle's artifacts."""
    rec = st.run("bench", [*EDGECLS, "bench", bundle, "--threads", "1,2", "--json"])
    b = last_json(rec["stdout"]) or {"rows": []}
    rep.lines += ["## Latency per artifact (`edgecls bench`, batch 1)", "", f"Command: `{rec['cmd']}`", "",
                  "| artifact | threads | runtime | median ms | p95 ms | CPU ms | FPS | MB |", "|---|---|---|---|---|---|---|---|"]
    for r in b["rows"]:
        if r["threads"] == 1:
            rep.row(f"{r['artifact']} latency, 1 thread (median / p95)", f"{r['median_ms']} / {r['p95_ms']} ms", rec["cmd"])
    rep.lines += [f"| {r['artifact']} | {r['threads']} | {r['runtime']} | {r['median_ms']} | {r['p95_ms']} | "
                  f"{r.get('cpu_ms', '')} | {r['fps']} | {r['size_mb']} |" for r in b["rows"]]
    rep.lines.append("")


def last_json_line(rec: dict):
    return last_json(rec["stdout"].strip().splitlines()[-1]) if rec["stdout"].strip() else None


def pipeline_section(rep: Report, st: Stages, bundle: Path) -> None:
    rec = st.run("pipeline", [sys.executable, HERE / "bench_pipeline.py", bundle, "--threads", "2"], ok_codes=(0, 1))
    p = last_json_line(rec)
    if not p:
        return
    rep.row("edgecls run FPS / bare decode→resize→invoke loop FPS (CPU-time ratio)",
            f"{pct(p['ratio'])} ({pct(p['cpu_ratio'])})", rec["cmd"])
    rep.lines += ["## Pipeline vs bare loop (same video, same model, same threads)", "",
                  "| artifact | bare FPS (best) | edgecls run FPS (best) | FPS ratio | CPU-time ratio | command |",
                  "|---|---|---|---|---|---|",
                  f"| {p['artifact']} | {max(p['bare_fps'])} | {max(p['pipeline_fps'])} | {pct(p['ratio'])} | "
                  f"{pct(p['cpu_ratio'])} | `{rec['cmd']}` |", ""]


def soak_section(rep: Report, st: Stages, bundle: Path) -> None:
    rec = st.run("soak", [sys.executable, HERE / "soak.py", bundle, "--frames", "20000"])
    s = last_json_line(rec)
    if not s:
        return
    rss = s["rss_mb"]
    rep.row("soak: RSS first sample → end", f"{rss[0][1]:.1f} → {rss[-1][1]:.1f} MB over {s['frames']} frames", rec["cmd"])
    rep.lines += ["## Soak: 20,000 frames (a 640×480 video of real photos, looped) through `edgecls run`", "",
                  f"{s['frames']} frames at {s['fps']:.0f} FPS; RSS at the first sample {rss[0][1]:.1f} MB, "
                  f"at the end {rss[-1][1]:.1f} MB. Command: `{rec['cmd']}`", ""]


def train_bench_section(rep: Report, st: Stages) -> None:
    rec = st.run("train-bench", [sys.executable, HERE / "bench_train.py", "--json"])
    rep.lines += ["## Training throughput and peak memory per backbone (`weights=None`, 256 real photos, batch 32)", "",
                  f"Command: `{rec['cmd']}`", "", "| backbone | px | params | head img/s | fine-tune img/s | peak RSS MB |",
                  "|---|---|---|---|---|---|"]
    for r in last_json(rec["stdout"]) or []:
        if "error" in r:
            rep.lines.append(f"| {r['backbone']} | {r['img_size']} | error: {r['error']} | | | |")
        else:
            rep.lines.append(f"| {r['backbone']} {r['alpha']} | {r['img_size']} | {r['params']:,} | "
                             f"{r['head_img_per_s']} | {r['finetune_img_per_s']} | {r['peak_rss_mb']} |")
    rep.lines.append("")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "results")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of: scratch, sample, train-bench, soak, pipeline")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--sections-only", action="store_true",
                    help="re-read benchmarks/results/*.md and NOTES.md into the existing RESULTS.md; run no stage")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    if a.sections_only:
        return sections_only(a.out)
    skip = set(filter(None, a.skip.split(",")))
    st, rep = Stages(a.work, a.fresh), Report()
    training_section(rep, st, a.work / "runs", skip)
    export_section(rep, st, a.work, a.work / "runs" / "train")
    bundle = a.work / "bundle-auto"   # the default export's bundle: the device-side numbers are its
    bench_section(rep, st, bundle)
    for name, section in (("pipeline", pipeline_section), ("soak", soak_section)):
        if name not in skip:
            section(rep, st, bundle)
    if "train-bench" not in skip:
        train_bench_section(rep, st)
    head = ["# Results", "", f"Regenerated by `python benchmarks/make_results.py` (stage outputs cached in "
            f"`.edgecls-cache/results`). Machine: {machine()}. Each row names the command that produced it.", "",
            "## Summary", "", "| metric | value | command |", "|---|---|---|", *rep.summary, ""]
    write(a.out, head, rep.lines)


def measured_sections() -> list[str]:
    """Sections measured by their own scripts (bench_parity.py writes parity.md; the others were written with the
    command in their heading): kept in benchmarks/results/ so regenerating this file never loses them."""
    measured = []
    # the held-out headline first (issue 28), then the parity sections, then the rest by name
    first = ("heldout", "parity")
    for section in sorted((HERE / "results").glob("*.md"),
                          key=lambda f: (next((i for i, p in enumerate(first) if f.name.startswith(p)), 2), f.name)):
        text = section.read_text().strip()
        # a script's own output may open with a title ("# …"): a section of this file, one level down
        measured += [("#" + text) if text.startswith("# ") else text, ""]
    return measured


def write(out: Path, head: list[str], generated: list[str]) -> None:
    lines = head + measured_sections() + generated
    notes = HERE / "NOTES.md"
    if notes.is_file():
        lines += [notes.read_text().strip(), ""]
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")


def sections_only(out: Path) -> None:
    """Keep the stage-generated parts of `out` as they are; take the measured sections and NOTES.md afresh."""
    old = out.read_text().split("\n")
    first_generated = next(i for i, l in enumerate(old) if l.startswith(GENERATED_FIRST))
    notes_start = next(i for i, l in enumerate(old) if l.startswith(NOTES_FIRST))
    summary_end = next(i for i, l in enumerate(old) if i > old.index("## Summary") and l.startswith("## "))
    write(out, old[:summary_end], old[first_generated:notes_start])


if __name__ == "__main__":
    main()

"""The accelerator targets on held-out flowers (issue 34): the IMX500 package (MCT's quantized model, judged in its own
environment) and the TensorRT-ready symmetric int8 ONNX, and what their disagreements with float are.

    python benchmarks/bench_accelerators.py [--work .edgecls-cache/accel] [--seeds 1337,1,2] [--out FILE.md]
        [--targets tensorrt,imx500] [--train-args "--backbone efficientnet_lite0 --img-size 224 --weights W.h5"]

Per seed: `edgecls train ../shared/data/flowers --seed S` (defaults; KERAS_HOME holds the shared MobileNetV2 weights
so 'imagenet' resolves offline), then `edgecls export RUN --formats tensorrt --target imx500 --allow-drop --json`
(needs `edgecls setup-imx500`). From the bundle's edgecls.json: held-out agreement with float (Wilson 95%), Δ top-1
(paired 95%), and the answers that changed (edgecls.metrics.flips): how many were near-ties of the float model
(top-1 margin < 0.2), on how many float was wrong, on how many int8 is right. Writes --out (default
benchmarks/results/accelerators-flips.md) and prints it. Runs and bundles are cached in --work. --train-args go to
every `train` (another backbone or size: say what in --what), --targets choose what `export` builds.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_results import EDGECLS, ROOT, SHARED, Stages, publish  # noqa: E402

from edgecls.metrics import agreement_text, delta_text, flips_text  # noqa: E402

FLOWERS = SHARED / "data" / "flowers"


def host_kernels() -> str:
    """Which onnxruntime int8 path measured the symmetric ONNX here (device/model/runtime.py: onnx_fused_int8)."""
    from edgecls.device.model.runtime import onnx_fused_int8

    return ("this host has VNNI: onnxruntime's fused int8 kernels" if onnx_fused_int8()
            else "the QDQ graph as written: this host has no VNNI, or EDGECLS_ONNX_AS_WRITTEN=1")


def rows_of(bundle: Path) -> dict[str, dict]:
    """{'onnx-int8-trt': metrics, 'imx500': metrics} from the bundle's edgecls.json."""
    meta = json.loads((bundle / "edgecls.json").read_text())
    out = {k: a["metrics"] for k, a in meta["artifacts"].items() if k == "onnx-int8-trt"}
    if "imx500" in meta:
        out["imx500"] = {**meta["imx500"]["metrics"], "reference": "keras-float",
                         "method": f"MCT {meta['imx500']['method']}"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".edgecls-cache" / "accel")
    ap.add_argument("--seeds", default="1337,1,2")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "accelerators-flips.md")
    ap.add_argument("--targets", default="tensorrt,imx500")
    ap.add_argument("--train-args", default="")
    ap.add_argument("--what", default="MobileNetV2 160 px, defaults", help="the model, in words, for the text")
    a = ap.parse_args()
    targets = a.targets.split(",")
    export_args = [*(["--formats", "tensorrt"] if "tensorrt" in targets else ["--formats", "tflite", "--no-int8"]),
                   *(["--target", "imx500"] if "imx500" in targets else [])]
    st = Stages(a.work, fresh=False)
    lines = ["| seed | artifact | vs | agreement, held-out (95% CI) | Δ top-1 pp (95% CI) | top-1 | the answers that "
             "changed | export s |", "|---|---|---|---|---|---|---|---|"]
    totals: dict[str, dict[str, int]] = {}
    for seed in a.seeds.split(","):
        run, bundle = a.work / "runs" / f"flowers-s{seed}", a.work / "bundles" / f"flowers-s{seed}"
        st.run(f"train-s{seed}", [*EDGECLS, "train", FLOWERS, "--out", run, "--seed", seed, "--force", "--json",
                                  *shlex.split(a.train_args)])
        rec = st.run(f"export-s{seed}", [*EDGECLS, "export", run, "--out", bundle, *export_args, "--allow-drop",
                                         "--json"], ok_codes=(0, 3))
        if not (bundle / "edgecls.json").is_file():
            lines.append(f"| {seed} | export failed (exit {rec['rc']}) | | | | | | |")
            continue
        for key, m in rows_of(bundle).items():
            h, f = m["agreement_heldout"], m["flips"]
            lines.append(f"| {seed} | {key} | {m['reference']} | {agreement_text(h['agreed'], h['images'], interval=True)} "
                         f"| {delta_text(m['drop'])} | {m['accuracy'] * 100:.1f}% | {flips_text(f)} | {rec['seconds']:.0f} |")
            t = totals.setdefault(key, {"agreed": 0, "images": 0, "flips": 0, "near_ties": 0, "reference_wrong": 0,
                                        "now_right": 0})
            for k in ("agreed", "images"):
                t[k] += h[k]
            for k in ("flips", "near_ties", "reference_wrong", "now_right"):
                t[k] += f[k]
    lines += ["", "Over the seeds (their test photos overlap: counts, no pooled interval):", ""]
    for key, t in totals.items():
        lines.append(f"- {key}: {t['agreed']}/{t['images']} answers agree with float; of the {t['flips']} that changed, "
                     f"{t['near_ties']} were near-ties of float (top-1 margin < 0.2), float was wrong on "
                     f"{t['reference_wrong']}, and int8 is right on {t['now_right']}.")
    cmd = f"python benchmarks/bench_accelerators.py --seeds {a.seeds}" + (
        f" --targets {a.targets}" if a.targets != "tensorrt,imx500" else "") + (
        f" --train-args {shlex.quote(a.train_args)}" if a.train_args else "")
    publish(a.out, [f"## Accelerator targets: what their disagreements with float are (issue 34; `{cmd}`)", "",
             f"Each seed is another split of the shared flowers (110 held-out test photos), {a.what}. "
             + ("imx500: MCT's quantized model in its own TF 2.15 environment against the float model there; "
                if "imx500" in targets else "")
             + ("onnx-int8-trt: the symmetric int8 QDQ file on onnxruntime's CPU provider against onnx-float "
                f"({host_kernels()})." if "tensorrt" in targets else ""), "",
             *lines])


if __name__ == "__main__":
    main()

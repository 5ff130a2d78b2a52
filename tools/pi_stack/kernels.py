#!/usr/bin/env python3
"""How much does an int8 TFLite model's top-1 depend on which (correct) kernels run it?

    python tools/pi_stack/kernels.py BUNDLE IMAGES_DIR [--save FILE.json] [--compare OTHER.json]

Runs the bundle's tflite-int8 artifact on the images (in class sub-folders, preprocessed by edgecls'
own loader, so the pixels are exactly `eval`'s) with each op resolver of the installed runtime:
XNNPACK (the default), the built-in optimised kernels, the reference kernels. Prints top-1 agreement
between them. `--save` keeps the raw outputs; `--compare` matches them against a file saved by another
runtime or machine, e.g. tflite-runtime 2.14 on the emulated Pi against LiteRT on the host:

    python tools/pi_stack/kernels.py B IMGS --save /tmp/host.json
    ~/.cache/edgecls-pi-stack/pi-python tflite tools/pi_stack/kernels.py B IMGS --compare /tmp/host.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

RESOLVERS = {"xnnpack": "AUTO", "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES", "reference": "BUILTIN_REF"}


def interpreter_module():
    try:
        from ai_edge_litert import interpreter
        return interpreter, "ai-edge-litert"
    except ImportError:
        from tflite_runtime import interpreter
        return interpreter, "tflite-runtime"


def raw_outputs(model_path: str, x: np.ndarray, resolver: str, pixel_codes: bool, output: int = 0) -> np.ndarray:
    """The model's raw uint8 outputs for uint8 pixels `x` fed as they are: edgecls' int8 export takes them so,
    either as values (scale 1, zero point 0) or as codes (edgecls.json input.feed "pixel-codes": the
    normalisation folded into the input quantization). `output`: the probabilities' output index, as edgecls.json's
    artifacts.KEY.outputs records it (a model with an embedding output has two, in the converter's order)."""
    mod, _ = interpreter_module()
    it = mod.Interpreter(model_path=model_path, num_threads=2,
                         experimental_op_resolver_type=getattr(mod.OpResolverType, resolver))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[output]
    if inp["dtype"] != np.uint8 or not (pixel_codes or tuple(inp["quantization"]) == (1.0, 0)):
        raise SystemExit("kernels.py: expects edgecls' int8 export with uint8 pixels in (values or codes)")
    rows = []
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i:i + 1])
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0].astype(np.int32))
    return np.stack(rows)


def agreement_table(outs: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> list[str]:
    """Every pair of local resolvers, then (with --compare) every local one against every saved one."""
    names = list(outs)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]] + [(a, b) for a in outs for b in other]
    outs = {**outs, **other}
    lines = []
    for a, b in pairs:
        same = (outs[a].argmax(1) == outs[b].argmax(1)).mean()
        lines.append(f"{a:>26} vs {b:<36} top-1 agree {same * 100:5.1f}%   "
                     f"max |output difference| {int(np.abs(outs[a] - outs[b]).max())} quantisation steps")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("images")
    ap.add_argument("--save")
    ap.add_argument("--compare")
    args = ap.parse_args(argv)

    from edgecls.bundle import load_bundle
    from edgecls.dataset import load_arrays, scan

    bundle = load_bundle(args.bundle)
    art = bundle.artifact("tflite", "int8")
    found = scan(args.images, classes=bundle.labels)
    x, _ = load_arrays(found.root, found.items, bundle.spec)
    _, runtime = interpreter_module()
    codes = (art.meta.get("input") or {}).get("feed") == "pixel-codes"
    output = (art.meta.get("outputs") or {}).get("probabilities", 0)
    outs = {f"{runtime} {name}": raw_outputs(str(art.path), x.astype(np.uint8), r, codes, output)
            for name, r in RESOLVERS.items()}
    print(f"{len(x)} images, {art.path.name}")
    other = {}
    if args.compare:
        with open(args.compare) as f:
            saved = json.load(f)
        if saved["files"] != [rel for rel, _ in found.items]:
            raise SystemExit("kernels.py: --compare file was made on other images")
        other = {f"{k} ({saved['where']})": np.array(v) for k, v in saved["outputs"].items()}
    print("\n".join(agreement_table(outs, other)))
    if args.save:
        import platform

        with open(args.save, "w") as f:
            json.dump({"where": platform.machine(), "files": [rel for rel, _ in found.items],
                       "outputs": {k: v.tolist() for k, v in outs.items()}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does onnxruntime answer a batch as it answers the same photos one by one? (device/model/runtime.py: OnnxModel)

    python benchmarks/scratch/onnx_batch_order.py BUNDLE

For the bundle's int8 ONNX, on its exam images (golden/images.npz): max |Δ| between one batch and one frame at a
time, at graph optimisation DISABLE_ALL and BASIC (what the runtime uses on a CPU without int8 dot products), and
the time of both ways (mean of 3 passes).
"""
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgecls.bundle import load_bundle
from edgecls.device.model.runtime import load_model

root = Path(sys.argv[1])
bundle = load_bundle(root)
model = load_model(bundle, "onnx", "int8")
x = model._to_input(np.load(root / "golden" / "images.npz")["array"])
name = model.sess.get_inputs()[0].name
for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    sess = ort.InferenceSession(str(bundle.artifacts["onnx-int8"].path), opts, providers=["CPUExecutionProvider"])
    batch = sess.run(None, {name: x})
    single = [np.concatenate([sess.run(None, {name: x[i:i + 1]})[k] for i in range(len(x))]) for k in range(len(batch))]
    diffs = [float(np.abs(b - s).max()) for b, s in zip(batch, single)]
    times = {}
    for size in (1, len(x)):
        t = time.perf_counter()
        for _ in range(3):
            for i in range(0, len(x), size):
                sess.run(None, {name: x[i:i + size]})
        times[size] = (time.perf_counter() - t) / 3 * 1000
    print(f"{level.name}: {len(x)} images, max |batch - one by one| per output {diffs}; "
          f"one by one {times[1]:.0f} ms, one batch {times[len(x)]:.0f} ms")

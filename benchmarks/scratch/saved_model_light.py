"""The export's scratch SavedModel with its root tracking only the variables (today) vs the Keras models
themselves (before Dec 2026): time of the save and of each conversion, and whether the TFLite files come out
byte-identical.

    .venv/bin/python benchmarks/scratch/saved_model_light.py RUN_DIR [keras,light,keras,light]

Measured Dec 2026 on the tests' tiny digits run (96 px MobileNetV2, 2 x86 cores), interleaved:
keras: save 23.2/22.4 s, float 19.0/18.2 s, int8 18.5/18.6 s, calibrate 17.9/18.1 s;
light: save 5.5/5.5 s, float 5.1/5.1 s, int8 5.6/5.6 s, calibrate 5.2/5.2 s; the float, int8 and calibrated
files have the same sha256 either way.
"""
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecls.convert import embeddings, tflite
from edgecls.convert.export import load_keras_model
from edgecls.rundir import load_run
from edgecls.train.tfenv import import_tf

tf, keras = import_tf()
LightModule = tf.Module
wrapped, folded = [], []


class KerasRoot(LightModule):
    """The old root: it also tracks the Keras model itself (what made saving and loading slow)."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "model_variables":
            super().__setattr__("model", wrapped[-1])
        if name == "folded_variables":
            super().__setattr__("folded", folded[-1])


def main(run_dir: Path, variants: list[str]):
    run = load_run(run_dir)
    model = load_keras_model(run.model_path)
    real_with_embedding = embeddings.with_embedding
    embeddings.with_embedding = lambda m: wrapped.append(real_with_embedding(m)) or wrapped[-1]
    real_folded_model = tflite.folded_model
    tflite.folded_model = lambda m, plan: folded.append(real_folded_model(m, plan)) or folded[-1]
    rng = np.random.default_rng(0)
    calib = [rng.integers(0, 256, (run.spec.height, run.spec.width, 3), dtype=np.uint8) for _ in range(8)]
    work = Path(tempfile.mkdtemp())
    for i, variant in enumerate(variants):
        tf.Module = KerasRoot if variant == "keras" else LightModule
        t = time.time(); sm = tflite.save_batch1(model, run.spec, work / f"{i}-{variant}"); ts = time.time() - t
        tf.Module = LightModule
        t = time.time(); f = tflite.to_float(sm); tfl = time.time() - t
        t = time.time(); q = tflite.to_int8(sm, calib); tq = time.time() - t
        t = time.time(); cal, _ = tflite.calibrate(sm, calib); tc = time.time() - t
        shas = [hashlib.sha256(b).hexdigest()[:12] for b in (f, q, cal)]
        print(f"{variant}: save {ts:.1f}s float {tfl:.1f}s int8 {tq:.1f}s calibrate {tc:.1f}s sha256 {shas}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "keras,light,keras,light").split(","))

"""Runs INSIDE the IMX500 environment (TensorFlow 2.15, Keras 2.15, NumPy 1.26, Sony's MCT and imx500-converter):
`python imx500_worker.py JOB_DIR`. It imports nothing from edgecls (that environment has no edgecls); convert/imx500.py
writes the job and reads the answer.

JOB_DIR holds, from the export: `model.json` (the Keras model's architecture, `to_json`), `weights.npz` (its
weights in `get_weights` order: arrays, so nothing is unpickled), `calib.npy` (the calibration images, raw uint8
pixels: the model normalises them itself), `eval.npy` (the photos to answer, held-out and val) and `job.json`
({"gptq_epochs": N}). It writes `model_mct.keras` (mct.exporter's MCTQ .keras), `out/packerOut.zip`
(imxconv-tf), `float.npy` / `mct.npy` (the float model's and MCT's quantized model's probabilities on eval.npy:
the quantized model is MCT's simulation of the sensor's integer arithmetic) and `result.json`. A failure becomes
`{"error": one line, "stage": …}` in result.json and exit status 3.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# Layer arguments the training side's tf_keras (2.21) writes and Keras 2.15 does not take; they hold defaults.
NEWER_KEYS = {"InputLayer": ("optional",)}


def older_config(config: dict) -> dict:
    """The architecture with the arguments Keras 2.15 does not know removed (NEWER_KEYS)."""
    for layer in config["config"]["layers"]:
        for key in NEWER_KEYS.get(layer["class_name"], ()):
            layer["config"].pop(key, None)
    return config


def load_float(job: Path):
    import numpy as np
    import tensorflow as tf

    config = older_config(json.loads((job / "model.json").read_text()))
    model = tf.keras.models.model_from_json(json.dumps(config))
    with np.load(job / "weights.npz") as w:
        model.set_weights([w[f"w{i}"] for i in range(len(w.files))])
    return model


def sensor_ready(model):
    """The same function with each Rescaling layer (the model's in-model normalisation, x * scale + offset per
    channel) as a 1x1 DepthwiseConv2D of those weights: imxconv-tf refuses Rescaling ([USOP] unsupported op) and
    runs depthwise convolutions; the answers are the same to float rounding (measured: max |dp| below 1e-5).
    Each Activation('relu6') (EfficientNet-Lite0's) becomes ReLU(max_value=6), the same function: imxconv-tf takes
    an Activation layer only for softmax, linear, relu and a few others, and refuses relu6 (measured, 3.19.2)."""
    import numpy as np
    import tensorflow as tf

    def clone(layer):
        if isinstance(layer, tf.keras.layers.Rescaling):
            return tf.keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        if isinstance(layer, tf.keras.layers.Activation) and layer.get_config().get("activation") == "relu6":
            return tf.keras.layers.ReLU(max_value=6.0, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    new = tf.keras.models.clone_model(model, clone_function=clone)
    for old_layer, new_layer in zip(model.layers, new.layers):
        if isinstance(old_layer, tf.keras.layers.Rescaling):
            channels = new_layer.input_shape[-1]
            scale = np.broadcast_to(np.asarray(old_layer.scale, np.float32), (channels,))
            offset = np.broadcast_to(np.asarray(old_layer.offset, np.float32), (channels,))
            new_layer.set_weights([scale.reshape(1, 1, channels, 1), offset.copy()])
        else:
            new_layer.set_weights(old_layer.get_weights())
    return new


def representative(calib, batch: int = 8):
    """MCT's representative dataset: a function returning an iterator of [batch] lists, float32 pixels."""
    import numpy as np

    def gen():
        for i in range(0, len(calib), batch):
            yield [calib[i:i + batch].astype(np.float32)]
    return gen


def quantize(model, calib, gptq_epochs: int):
    import model_compression_toolkit as mct

    tpc = mct.get_target_platform_capabilities("tensorflow", "imx500", target_platform_version="v1")
    if gptq_epochs > 0:
        # Without MCT's Hessian-based loss weights and sample attention: with them (its defaults) one 20-epoch GPTQ of
        # MobileNetV2 160 px on 200 images spent over an hour in Hessian estimates (100 iterations at ~35 s each, then
        # another 100) on a 2-core CPU before any GPTQ step, and was stopped there.
        config = mct.gptq.get_keras_gptq_config(n_epochs=gptq_epochs, use_hessian_based_weights=False,
                                                use_hessian_sample_attention=False)
        q_model, _ = mct.gptq.keras_gradient_post_training_quantization(
            model, representative(calib), gptq_config=config, target_platform_capabilities=tpc)
    else:
        q_model, _ = mct.ptq.keras_post_training_quantization(model, representative(calib),
                                                             target_platform_capabilities=tpc)
    return q_model


def predict(model, x, batch: int = 32):
    import numpy as np

    parts = [model(x[i:i + batch].astype(np.float32), training=False).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def convert(job: Path, q_model) -> dict:
    import model_compression_toolkit as mct

    keras_path = job / "model_mct.keras"
    mct.exporter.keras_export_model(model=q_model, save_model_path=str(keras_path))
    out = job / "out"
    tool = Path(sys.executable).with_name("imxconv-tf")
    r = subprocess.run([str(tool), "-i", str(keras_path), "-o", str(out)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        tail = [line for line in (r.stderr + r.stdout).splitlines() if line.strip()][-3:]
        raise RuntimeError(f"imxconv-tf exit {r.returncode}: {' | '.join(tail)[:400]}")
    return {"converter_log": [line for line in r.stdout.splitlines() if line.strip()][-20:]}


def convert_job(job: Path) -> dict:
    import numpy as np

    spec = json.loads((job / "job.json").read_text())
    stage, times = "load", {}
    try:
        t = time.perf_counter()
        model = sensor_ready(load_float(job))
        calib, x = np.load(job / "calib.npy"), np.load(job / "eval.npy")
        np.save(job / "float.npy", predict(model, x))
        stage, times["load_s"] = "quantize", round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        q_model = quantize(model, calib, int(spec.get("gptq_epochs", 0)))
        np.save(job / "mct.npy", predict(q_model, x))
        stage, times["quantize_s"] = "convert", round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        extra = convert(job, q_model)
        times["convert_s"] = round(time.perf_counter() - t, 1)
    except Exception as e:   # one line for the export's error; the traceback stays in the log
        import traceback

        traceback.print_exc()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return {"error": f"{type(e).__name__}: {first}", "stage": stage}
    import model_compression_toolkit as mct
    import tensorflow as tf

    return {"stage": "done", "times": times, **extra,
            "versions": {"model-compression-toolkit": mct.__version__, "tensorflow": tf.__version__,
                         "imx500-converter": _version("imx500-converter")}}


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    job_dir = Path(sys.argv[1])
    result = convert_job(job_dir)
    (job_dir / "result.json").write_text(json.dumps(result))
    sys.exit(3 if "error" in result else 0)

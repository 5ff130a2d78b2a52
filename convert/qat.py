"""Quantization-aware fine-tuning with tensorflow-model-optimization, done so it cannot quietly hurt.

- Only layers tfmot's default 8-bit registry supports are annotated; the rest (Rescaling, the
  TFOpLambda adds/multiplies of MobileNetV3's hard-swish, ...) stay float in the QAT graph and get
  calibrated ranges at conversion time. `quantize_model` would reject such models outright.
- Trainability is set explicitly after `quantize_apply`: its wrappers list the wrapped kernel as
  their own trainable weight, so a frozen layer's kernel trains again and `layer.trainable = False`
  alone does not stop it. Conv/dense weights train; BatchNorm layers stay frozen, i.e. in inference
  mode with their statistics fixed — re-estimating them from small batches wrecked a naive QAT here.
- Activation ranges start from the calibration images (as PTQ's do), not from tfmot's [-6, 6]
  defaults: its ranges are EMAs with decay 0.999, so a short fine-tune never moves them far and the
  linear-bottleneck outputs stayed clipped at ±6 — measured here: top-1 16.7% after 2 QAT epochs.
- The target is the float model's own output (distillation), not the labels: the goal of QAT is an
  int8 model that agrees with the float one, and this cannot drift towards overfitting the labels.
"""
from __future__ import annotations

import contextlib

import numpy as np

DEFAULT_LR = 1e-5
BATCH = 16
CALIB_BATCH = 64


def _registry():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def annotate(model):
    """Clone of `model` with every registry-supported layer annotated for quantisation."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    registry = _registry()

    def clone(layer):
        if registry.supports(layer):
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def quantize(model):
    """The QAT model (fake-quant wrappers), with explicit trainability."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_apply(annotate(model))
    for layer in qmodel.layers:
        inner = getattr(layer, "layer", layer)
        set_trainable(layer, not isinstance(inner, keras.layers.BatchNormalization))
    return qmodel


def set_trainable(layer, flag: bool) -> None:
    layer.trainable = flag
    wrapped = [w for w, _, _ in getattr(layer, "_weight_vars", [])]   # a QuantizeWrapper's kernels
    if not flag:
        for k in wrapped:   # in place: Keras' attribute tracking ignores a reassigned list here
            keep = [w for w in layer._trainable_weights if w is not k]
            del layer._trainable_weights[:]
            layer._trainable_weights.extend(keep)
            layer._non_trainable_weights.append(k)


@contextlib.contextmanager
def _ranges_from_batch():
    """While active, activation quantizers set their range to the batch's (EMA decay 0)."""
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops, quantizers

    cls = quantizers.MovingAverageQuantizer
    original = cls.__call__

    def call(self, inputs, training, weights, **kwargs):
        return quant_ops.MovingAvgQuantize(inputs, weights["min_var"], weights["max_var"], ema_decay=0.0,
                                           is_training=training, num_bits=self.num_bits, per_channel=self.per_axis,
                                           symmetric=self.symmetric, narrow_range=self.narrow_range)

    cls.__call__ = call
    try:
        yield
    finally:
        cls.__call__ = original


def calibrate_ranges(qmodel, calib: np.ndarray) -> None:
    """One training-mode pass over `calib` with EMA decay 0: every activation range = that batch's range.
    (Weights do not change: no optimizer step; BatchNorm is frozen, so its statistics do not either.)"""
    with _ranges_from_batch():
        qmodel(np.asarray(calib, np.float32), training=True)


def fine_tune(model, x_train: np.ndarray, epochs: int, lr: float = DEFAULT_LR, progress=None, seed: int = 0,
              calib: np.ndarray | None = None):
    """QAT model fine-tuned for `epochs` on uint8 images `x_train`, distilled from `model`'s outputs.
    Activation ranges start from `calib` (at most CALIB_BATCH images, in one batch).

    `progress(done_batches, total_batches)` is called as training runs.
    """
    import tf_keras as keras

    teacher = model.predict(x_train.astype(np.float32), batch_size=32, verbose=0)
    qmodel = quantize(model)
    calibrate_ranges(qmodel, calib if calib is not None else x_train[:CALIB_BATCH])
    qmodel.compile(optimizer=keras.optimizers.Adam(lr), loss=keras.losses.KLDivergence())
    steps = int(np.ceil(len(x_train) / BATCH))
    total = steps * max(epochs, 0)
    callbacks = []
    if progress:
        class _Progress(keras.callbacks.Callback):
            done = 0

            def on_train_batch_end(self, batch, logs=None):
                self.done += 1
                progress(self.done, total)
        callbacks.append(_Progress())
    if epochs > 0:
        keras.utils.set_random_seed(seed)
        qmodel.fit(x_train.astype(np.float32), teacher, batch_size=BATCH, epochs=epochs, shuffle=True,
                   verbose=0, callbacks=callbacks)
    return qmodel

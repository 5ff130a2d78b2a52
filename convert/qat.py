"""Quantization-aware fine-tuning with tensorflow-model-optimization, done so it cannot quietly hurt.

- Only layers tfmot's default 8-bit registry supports are annotated; the rest (Rescaling, the
  TFOpLambda adds/multiplies of MobileNetV3's hard-swish, ...) stay float in the QAT graph and get
  calibrated ranges at conversion time. `quantize_model` would reject such models outright.
  BatchNormalization is not in the registry but is annotated where it follows a linear conv, so tfmot's
  Conv+BN(+ReLU) transforms fold it as TFLite will (`foldable_batchnorms`).
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

BATCH = 16
CALIB_BATCH = 64


def _registry():
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry)

    return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def annotate(model):
    """Clone of `model` with every registry-supported layer annotated for quantisation, and every
    BatchNormalization that directly follows a linear convolution, so that tfmot's Conv+BN(+ReLU)
    transforms fold it: the registry does not list BatchNormalization, and left unannotated it made the
    conv quantize its own output before the BN — the int8 model then ran 52 BatchNorms as separate int8
    MUL/ADD ops (measured here: 90.1% top-1 before any fine-tuning vs 96.5% folded, float 97.7%)."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    registry = _registry()
    folded = set(foldable_batchnorms(model))

    def clone(layer):
        if registry.supports(layer) or layer.name in folded:
            return tfmot.quantization.keras.quantize_annotate_layer(layer)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def foldable_batchnorms(model) -> list[str]:
    """Names of the BatchNormalization layers tfmot's transforms fold into the conv before them: fed by a
    Conv2D/DepthwiseConv2D with linear activation that feeds nothing else."""
    import tf_keras as keras

    names = []
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        conv = layer._inbound_nodes[0].inbound_layers
        if (isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
                and conv.get_config().get("activation") == "linear" and len(conv._outbound_nodes) == 1):
            names.append(layer.name)
    return names


def _scheme():
    """tfmot's default 8-bit scheme, except that depthwise kernels are fake-quantized per channel.

    tfmot's per-axis conv quantizer takes the kernel's last axis as the channel axis; a depthwise kernel is
    (h, w, channels, multiplier), so its "per-axis" range is one range for the whole layer
    (tensorflow/model-optimization#808). TFLite quantizes depthwise kernels per channel, and the converter
    bakes the QAT graph's per-tensor rounding into them: the QAT int8 model started 2x further from the
    float one (mean KL on val) than PTQ's, before any fine-tuning."""
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry, default_8bit_quantize_scheme as scheme,
        default_8bit_quantizers as quantizers)

    class DepthwiseWeightsQuantizer(quantizers.Default8BitConvWeightsQuantizer):
        """Per output channel (channels x multiplier, TFLite's layout), via a reshape to (h, w, 1, c*m)."""

        def build(self, tensor_shape, name, layer):
            n = int(tensor_shape[-2]) * int(tensor_shape[-1])
            return {k: layer.add_weight(f"{name}_{k[:3]}", shape=(n,), trainable=False,
                                        initializer=keras.initializers.Constant(v))
                    for k, v in (("min_var", -6.0), ("max_var", 6.0))}

        def __call__(self, inputs, training, weights, **kwargs):
            h, w, c, m = inputs.shape
            flat = tf.reshape(inputs, (h, w, 1, c * m))
            q = quant_ops.LastValueQuantize(flat, weights["min_var"], weights["max_var"], per_channel=True,
                                            is_training=training, num_bits=8, narrow_range=True, symmetric=True)
            return tf.reshape(q, inputs.shape)

    class Registry(registry.Default8BitQuantizeRegistry):
        def __init__(self):
            super().__init__()
            config = self._layer_quantize_map[keras.layers.DepthwiseConv2D]
            config.weight_quantizer = DepthwiseWeightsQuantizer()

    class Scheme(scheme.Default8BitQuantizeScheme):
        def get_quantize_registry(self):
            return Registry()

    return Scheme()


def quantize(model):
    """The QAT model (fake-quant wrappers), with explicit trainability."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    with tfmot.quantization.keras.quantize_scope():
        qmodel = tfmot.quantization.keras.quantize_apply(annotate(model), scheme=_scheme())
    for layer in qmodel.layers:
        inner = getattr(layer, "layer", layer)
        set_trainable(layer, not isinstance(inner, keras.layers.BatchNormalization))
    return qmodel


def set_trainable(layer, flag: bool) -> None:
    """A QuantizeWrapper lists the wrapped layer's variables (a conv's kernel, a BatchNorm's gamma/beta)
    in its own trainable list whatever `trainable` says, and its flag does not reach the wrapped layer:
    freezing one means moving them by hand."""
    layer.trainable = flag
    if not hasattr(layer, "layer"):   # not a QuantizeWrapper: the flag is enough
        return
    layer.layer.trainable = flag   # a wrapped BatchNorm otherwise runs in training mode
    if not flag:
        moved = list(layer._trainable_weights)
        del layer._trainable_weights[:]   # in place: Keras' attribute tracking ignores a reassigned list
        layer._non_trainable_weights.extend(moved)


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


def fine_tune(model, x_train: np.ndarray, epochs: int, lr: float, progress=None, seed: int = 0,
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
    check_finite(qmodel, epochs)
    return qmodel


class QatDiverged(RuntimeError):
    """QAT's fine-tuning left weights or ranges that are not finite numbers."""


def check_finite(qmodel, epochs: int) -> None:
    """Refuse a fine-tuned QAT model with NaN or infinite variables. TFLite's calibrator does not refuse one: it
    aborts the whole process (SIGABRT, no message) — what the "flaky" MobileNetV3 QAT test was: its unseeded
    random model diverged on some initialisations (100 of its variables NaN after one epoch) and not others."""
    bad = [v.name for v in qmodel.variables if not np.all(np.isfinite(v.numpy()))]
    if bad:
        raise QatDiverged(f"QAT fine-tuning diverged: {len(bad)} of {len(qmodel.variables)} variables are not "
                          f"finite after {epochs} epoch(s) (first: {bad[0]}); use --int8-method ptq")

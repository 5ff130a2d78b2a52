"""Weight rounding for int8 (`--weight-rounding gptq|nearest`): the int8 builders' weights, put on the
converters' own int8 grid before they convert, with each weight's rounding chosen for the layer's output.

Why: rounding every conv/dense weight to its nearest int8 step, activations left float, moved the flowers
model's probabilities as far from float as the whole int8 TFLite did (val mean TV 0.033 against 0.032):
most of int8's error is in the weights (benchmarks/NOTES.md, "Weight rounding").

The grid is the one TFLite and onnxruntime both use for weights: per output channel, symmetric, scale =
max|w| / 127 (zero point 0). A BatchNormalization folded into the conv later scales a whole channel, so the
grid survives the fold. Each channel's largest weight is pinned (it is ±127 steps exactly), so the converter
computes the same scale and its own rounding is a no-op: the int8 files hold the codes chosen here.

How the codes are chosen: GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers"). Columns (input taps) are rounded one at a time and each one's error is
spread over the columns not yet rounded, through the inverse of the Gram matrix H = XᵀX of the layer's inputs X
on calibration images, which minimises ‖XWᵀ − XQᵀ‖² column by column. A depthwise conv's channel sees only
its own input channel: each row gets its own H.

Layer by layer, against the float model's output (the asymmetric objective of GPTAQ, Li et al. 2025): layer l
is rounded after every layer before it, with X_q its input in the partly rounded copy and X_f its input in the
float model, minimising ‖X_f Wᵀ − X_q Qᵀ‖² — so each layer also undoes what the rounding before it changed. That
splits exactly into a least-squares target W* = W + (X_qᵀX_q)⁻¹ X_qᵀ(X_f − X_q) W (damped: a ridge toward W,
which a layer with fewer calibration rows than inputs, the classifier, needs) and GPTQ of W* with H = X_qᵀX_q.
Measured on flowers (weights rounded, activations float, mean TV from float): nearest 0.030 / 0.036 (val /
test), GPTQ on the float model's inputs 0.012 / 0.016, layer by layer against float 0.005 / 0.007.

The float artifacts and the Keras model that int8 is measured against keep the trained weights.
"""
from __future__ import annotations

import numpy as np

ROUNDINGS = ("gptq", "nearest")
QMAX = 127                  # symmetric int8 weights: codes −127..127 (TFLite's and onnxruntime's per-channel grid)
CALIB_IMAGES = 64           # calibration images whose layer inputs make H (more did not help: NOTES)
MAX_ROWS = 40_000           # input rows (pixels × images) per layer that H is summed over, sampled evenly
DAMP = 0.01                 # H += DAMP · mean(diag H) · I: GPTQ's damping, for inputs that barely vary
TARGET_DAMP = 0.1           # the same for the float target's correction (a ridge toward the trained weights)
BLOCK = 128                 # columns per lazy-update block (GPTQ's; the same result, faster)
BATCH = 8                   # images per forward pass while collecting H


# ---------------------------------------------------------------- the grid

def grid_scales(w: np.ndarray) -> np.ndarray:
    """Per row (output channel) of w (rows, cols): the converters' step max|w| / 127 (1 for an all-zero row)."""
    m = np.abs(w).max(axis=1)
    return np.where(m > 0, m / QMAX, 1.0)


def nearest(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """w (rows, cols) rounded to the nearest step of each row's grid."""
    return np.clip(np.round(w / scale[:, None]), -QMAX, QMAX) * scale[:, None]


# ---------------------------------------------------------------- GPTQ

def damped(h: np.ndarray, fraction: float) -> np.ndarray:
    """H + fraction · mean(diag H over the inputs that vary) · I, with H[dead, dead] = 1 for an input that never
    varies (its weights cannot matter): the one damping rule for GPTQ's H and the float target's ridge.
    h: (cols, cols) or (rows, cols, cols)."""
    h = np.array(h, np.float64)
    diag = np.diagonal(h, axis1=-2, axis2=-1)
    dead = diag <= 0
    mean = np.where(dead, 0.0, diag).sum(-1) / np.maximum((~dead).sum(-1), 1)
    eye = np.eye(h.shape[-1])
    return h + eye * dead[..., None] + eye * (fraction * np.maximum(mean, 1e-12))[..., None, None]


def _prepared_inverse(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of (damped H)⁻¹, what GPTQ's column loop reads. h: (cols, cols) or
    (rows, cols, cols)."""
    inv = np.linalg.inv(damped(h, DAMP))
    inv = (inv + np.swapaxes(inv, -1, -2)) / 2
    return np.swapaxes(np.linalg.cholesky(inv), -1, -2)   # upper: inv = Uᵀ U


def gptq(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """GPTQ rounding of w (rows, cols) onto each row's grid (grid_scales), each row's largest weight pinned.

    h: the inputs' Gram matrix, (cols, cols) shared by every row, or (rows, cols, cols) one per row (depthwise).
    Returns the rounded weights (float64, every value code × scale, |code| ≤ 127)."""
    w0 = np.array(w, np.float64)
    rows, cols = w0.shape
    scale = grid_scales(w0)
    pin = np.abs(w0).argmax(axis=1)
    u = _prepared_inverse(h)
    per_row = u.ndim == 3
    work, q = w0.copy(), np.zeros_like(w0)
    ridx = np.arange(rows)
    for b0 in range(0, cols, BLOCK):
        b1 = min(b0 + BLOCK, cols)
        err_block = np.zeros((rows, b1 - b0))
        for i in range(b0, b1):
            col = work[:, i]
            qi = np.clip(np.round(col / scale), -QMAX, QMAX) * scale
            pinned = pin == i
            qi[pinned] = w0[pinned, i]                      # ±127 steps exactly: the converter's scale
            d = u[:, i, i] if per_row else u[i, i]
            err = (col - qi) / d
            q[:, i] = qi
            err_block[:, i - b0] = err
            if per_row:
                work[:, i + 1:b1] -= err[:, None] * u[:, i, i + 1:b1]
            else:
                work[:, i + 1:b1] -= np.outer(err, u[i, i + 1:b1])
        if b1 < cols:   # the block's errors reach the later columns in one product
            if per_row:
                work[:, b1:] -= np.einsum("rk,rkc->rc", err_block, u[:, b0:b1, b1:])
            else:
                work[:, b1:] -= err_block @ u[b0:b1, b1:]
    q[ridx, pin] = w0[ridx, pin]
    return q


def output_error(w: np.ndarray, q: np.ndarray, h: np.ndarray) -> float:
    """‖X(w − q)ᵀ‖² through H = XᵀX: the layer's squared output error over the calibration inputs (target_error
    with the same inputs on both sides)."""
    return target_error(w, q, h, h, h)


# ---------------------------------------------------------------- the Keras side

def weight_layers(model) -> list:
    """The layers whose kernels the converters quantize per channel: Conv2D (groups 1), DepthwiseConv2D
    (multiplier any), Dense. In a flat edgecls model every one of them has one inbound node."""
    out = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "DepthwiseConv2D" or (kind == "Conv2D" and getattr(layer, "groups", 1) == 1) or kind == "Dense":
            out.append(layer)
    return out


def kernel_of(layer):
    """The layer's kernel variable (a DepthwiseConv2D calls it depthwise_kernel)."""
    return layer.depthwise_kernel if type(layer).__name__ == "DepthwiseConv2D" else layer.kernel


def as_rows(layer, kernel: np.ndarray) -> np.ndarray:
    """Keras kernel → (output channels, taps): the matrix the per-channel grid is on."""
    kind = type(layer).__name__
    if kind == "Dense":
        return kernel.T
    if kind == "DepthwiseConv2D":          # (kh, kw, C, m) → (C·m, kh·kw), TFLite's channel order c·m + j
        kh, kw, c, m = kernel.shape
        return kernel.reshape(kh * kw, c * m).T
    return kernel.reshape(-1, kernel.shape[-1]).T   # Conv2D (kh, kw, cin, cout) → (cout, kh·kw·cin)


def from_rows(layer, rows: np.ndarray, shape) -> np.ndarray:
    kind = type(layer).__name__
    if kind == "Dense":
        return rows.T.reshape(shape)
    if kind == "DepthwiseConv2D":
        kh, kw, c, m = shape
        return rows.T.reshape(kh, kw, c, m)
    return rows.T.reshape(shape)


def _patches(tf, layer, x):
    """The layer's input (B,H,W,C) as one row per output pixel: (B·oh·ow, kh·kw·C) in the kernel's (kh, kw, C)
    order, zero padding as the conv pads."""
    kh, kw = layer.kernel_size
    if (kh, kw) == (1, 1) and tuple(layer.strides) == (1, 1):
        return tf.reshape(x, [-1, x.shape[-1]])
    p = tf.image.extract_patches(x, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
                                 rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    return tf.reshape(p, [-1, p.shape[-1]])


def _sample(rows: np.ndarray, n: int) -> np.ndarray:
    return rows if len(rows) <= n else rows[np.linspace(0, len(rows) - 1, n).round().astype(int)]


def _rows(tf, layer, x) -> np.ndarray:
    if type(layer).__name__ == "Dense":
        return tf.reshape(x, [-1, x.shape[-1]]).numpy()
    return _patches(tf, layer, x).numpy()


def _gram(layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """aᵀb over the layer's input rows: (taps, taps), or for a depthwise conv one per output channel
    (channels·multiplier, kh·kw, kh·kw)."""
    if type(layer).__name__ == "DepthwiseConv2D":
        kh, kw = layer.kernel_size
        g = np.einsum("ntc,nuc->ctu", a.reshape(len(a), kh * kw, -1), b.reshape(len(b), kh * kw, -1))
        return np.repeat(g, layer.depth_multiplier, axis=0)   # row c·m + j sees input channel c
    return a.T @ b


def layer_grams(layer, xq, xf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X_qᵀX_q, X_qᵀX_f, X_fᵀX_f) of one layer: xq its input over the calibration images in the partly rounded
    copy, xf in the float model (B,H,W,C or B,C). Rows are sampled evenly per batch of images, the same in both."""
    from edgecls.train.tfenv import import_tf

    tf, _ = import_tf()
    batches = range(0, len(xq), BATCH)
    per_batch = max(1, MAX_ROWS // max(1, len(batches)))
    hqq = hqf = hff = 0.0
    for start in batches:
        a, b = (_sample(_rows(tf, layer, x[start:start + BATCH]), per_batch).astype(np.float64) for x in (xq, xf))
        hqq = hqq + _gram(layer, a, a)
        hqf = hqf + _gram(layer, a, b)
        hff = hff + _gram(layer, b, b)
    return hqq, hqf, hff


def _nodes(model) -> list:
    """The model's own layer calls in the order Keras runs them (tf_keras' Functional graph: what
    `Model.__call__` walks, `_run_internal_graph`)."""
    return [node for depth in sorted(model._nodes_by_depth, reverse=True)
            for node in model._nodes_by_depth[depth] if not node.is_input]


def _walk(model, clone, images: np.ndarray, rounds: set[str]):
    """Runs the float model and its copy side by side, one layer call at a time over all the images: yields (the
    copy's layer, its input in the copy, its input in the float model) before each layer named in `rounds` runs,
    so the caller can round its kernel first, and each later layer's input already comes through the rounded ones. One
    forward pass of each model in all (a probe per layer ran each model's prefix again for every layer). The
    calls are Keras' own (arguments mapped by each node, as `Model.__call__` does), so MobileNetV3's op layers
    with constant arguments run as they do in the model; a tensor is freed once its last reader has run."""
    from edgecls.errors import EdgeclsError
    from edgecls.train.tfenv import import_tf

    tf, _ = import_tf()
    x = tf.constant(images, tf.float32)
    copy_nodes: dict[str, object] = {}
    for node in _nodes(clone):
        if copy_nodes.setdefault(node.layer.name, node) is not node:
            raise EdgeclsError(f"layer {node.layer.name} is called twice in the model; GPTQ's layer-by-layer walk "
                               "needs each layer once: export with --weight-rounding nearest")
    # Computed tensors by reference id, one list entry per reader: map_arguments pops them, which frees the tensor.
    on_f = {str(id(ref)): [x] * model._tensor_usage_count[str(id(ref))] for ref in model.inputs}
    on_q = {str(id(ref)): [x] * clone._tensor_usage_count[str(id(ref))] for ref in clone.inputs}
    for node_f in _nodes(model):
        node_q = copy_nodes[node_f.layer.name]
        args_f, kwargs_f = node_f.map_arguments(on_f)
        args_q, kwargs_q = node_q.map_arguments(on_q)
        if node_q.layer.name in rounds:
            yield node_q.layer, args_q[0], args_f[0]
        _run(tf, model, node_f, args_f, kwargs_f, on_f)
        _run(tf, clone, node_q, args_q, kwargs_q, on_q)


def _run(tf, model, node, args, kwargs, computed: dict) -> None:
    """One layer call of `model`, in inference mode (BatchNormalization's moving statistics), its outputs kept in
    `computed` for their readers."""
    if node.layer._expects_training_arg:
        kwargs = {**kwargs, "training": False}
    outputs = node.layer(*args, **kwargs)
    for ref_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
        computed[ref_id] = [y] * model._tensor_usage_count[ref_id]


def float_target(w: np.ndarray, hqq: np.ndarray, hqf: np.ndarray) -> np.ndarray:
    """W* = W + (H + λI)⁻¹ X_qᵀ(X_f − X_q) W per row: the float weights that best give the float layer's output
    from the rounded network's input (λ = TARGET_DAMP · mean diag H, `damped`; an input that never varies keeps W)."""
    h = damped(hqq, TARGET_DAMP)
    d = hqf - hqq
    if h.ndim == 3:
        return w + np.einsum("rij,rj->ri", np.linalg.solve(h, d), w)
    return w + np.linalg.solve(h, d @ w.T).T


def target_error(w: np.ndarray, q: np.ndarray, hqq: np.ndarray, hqf: np.ndarray, hff: np.ndarray) -> float:
    """‖X_f wᵀ − X_q qᵀ‖² through the Gram matrices: the layer's squared output error against float."""
    def quad(a, h, b):                                      # Σ_r a_r H(_r) b_rᵀ
        ah = np.einsum("rc,rcd->rd", a, h) if h.ndim == 3 else a @ h
        return float((ah * b).sum())
    return quad(w, hff, w) - 2 * quad(q, hqf, w) + quad(q, hqq, q)


def rounded_copy(model, calib: np.ndarray, progress=None):
    """A copy of `model` whose conv/dense kernels lie on the converters' int8 grid, each rounding chosen by GPTQ
    layer by layer against the float model (module docstring), and what edgecls.json records about it: {method,
    layers, images, output_error_vs_nearest (the summed layer output error against float, each layer relative to
    its float output, over that of the trained weights rounded to nearest on the same inputs, on the
    calibration images)}. (--weight-rounding nearest needs no copy: the converters round the trained model to
    nearest themselves.)"""
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = weight_layers(clone)
    images = calib[:CALIB_IMAGES]
    err_q = err_n = 0.0
    for i, (layer, xq, xf) in enumerate(_walk(model, clone, images, {layer.name for layer in layers})):
        hqq, hqf, hff = layer_grams(layer, xq, xf)
        kernel = kernel_of(layer).numpy()
        w = as_rows(layer, kernel).astype(np.float64)
        q = gptq(float_target(w, hqq, hqf), hqq)
        energy = max(target_error(w, np.zeros_like(w), hqq, hqf, hff), 1e-30)
        err_q += target_error(w, q, hqq, hqf, hff) / energy
        err_n += target_error(w, nearest(w, grid_scales(w)), hqq, hqf, hff) / energy
        kernel_of(layer).assign(from_rows(layer, q, kernel.shape).astype(kernel.dtype))
        if progress:
            progress(i + 1, len(layers))
    info = {"method": "gptq", "target": "float, layer by layer", "layers": len(layers), "images": int(len(images)),
            "output_error_vs_nearest": round(err_q / err_n, 4) if err_n > 0 else 1.0}
    return clone, info

"""Weight rounding for int8 (convert/rounding.py): GPTQ's codes lie on the converters' per-channel grid with
each row's largest weight pinned, they cost the layer's output less than rounding to nearest, and the int8
TFLite and the int8 ONNX converted from the rounded model hold exactly those codes."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from edgecls.convert import rounding


def codes(q: np.ndarray, w: np.ndarray) -> np.ndarray:
    """q (rows, cols) in steps of w's grid; asserts they are whole steps."""
    c = q / rounding.grid_scales(w)[:, None]
    assert np.abs(c - np.round(c)).max() < 1e-6
    return np.round(c).astype(int)


def correlated_layer(rng, rows=12, cols=40, n=2000):
    """Weights and a Gram matrix of strongly correlated inputs: where error feedback has something to use."""
    mix = rng.normal(size=(cols, cols)) * 0.3 + np.eye(cols)
    x = rng.normal(size=(n, cols)) @ mix
    return rng.normal(size=(rows, cols)) * rng.uniform(0.2, 2.0, size=(rows, 1)), x.T @ x


@pytest.mark.parametrize("per_row", [False, True], ids=["shared-H", "per-row-H"])
def test_gptq_codes_lie_on_each_rows_grid_with_its_largest_weight_pinned(per_row):
    rng = np.random.default_rng(0)
    w, h = correlated_layer(rng)
    if per_row:   # a depthwise conv: every row sees its own input channel
        h = np.stack([h * rng.uniform(0.5, 2.0) for _ in range(len(w))])
    q = rounding.gptq(w, h)
    c = codes(q, w)
    assert np.abs(c).max() == rounding.QMAX
    rows = np.arange(len(w))
    pin = np.abs(w).argmax(1)
    assert np.array_equal(q[rows, pin], w[rows, pin])              # the converter's scale: exactly the same
    assert np.array_equal(np.abs(c[rows, pin]), np.full(len(w), rounding.QMAX))
    np.testing.assert_allclose(rounding.grid_scales(q), rounding.grid_scales(w), rtol=1e-12)
    assert not np.array_equal(q, rounding.nearest(w, rounding.grid_scales(w)))   # it chose, not just rounded


def test_gptq_costs_the_output_less_than_rounding_to_nearest():
    rng = np.random.default_rng(1)
    worse = 0
    for _ in range(5):
        w, h = correlated_layer(rng)
        near = rounding.nearest(w, rounding.grid_scales(w))
        e_q, e_n = rounding.output_error(w, rounding.gptq(w, h), h), rounding.output_error(w, near, h)
        worse += e_q >= e_n
        assert e_q < 0.8 * e_n, (e_q, e_n)
    assert worse == 0


@pytest.mark.parametrize("per_row", [False, True], ids=["shared-H", "per-row-H"])
def test_the_float_target_undoes_what_earlier_layers_changed(per_row):
    """Layer by layer against float: the layer's input X_q differs from float's X_f by a systematic change (what
    earlier layers' rounding did) plus noise. GPTQ of the float target W* costs ‖X_f Wᵀ − X_q Qᵀ‖² less than GPTQ
    of W on the same inputs, and its codes still lie on W*'s grid with the largest weight pinned."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        w, _ = correlated_layer(rng, rows=8, cols=24)
        mix = rng.normal(size=(24, 24)) * 0.3 + np.eye(24)
        xf = rng.normal(size=(3000, 24)) @ mix
        xq = xf @ (np.eye(24) + rng.normal(size=(24, 24)) * 0.05) + rng.normal(size=xf.shape) * 0.02
        hqq, hqf, hff = xq.T @ xq, xq.T @ xf, xf.T @ xf
        if per_row:
            hqq, hqf, hff = (np.repeat(g[None], len(w), axis=0) for g in (hqq, hqf, hff))
        target = rounding.float_target(w, hqq, hqf)
        q_t, q_w = rounding.gptq(target, hqq), rounding.gptq(w, hqq)
        exact = ((xf @ w.T - xq @ q_t.T) ** 2).sum()
        assert rounding.target_error(w, q_t, hqq, hqf, hff) == pytest.approx(exact, rel=1e-6)
        assert exact < 0.5 * rounding.target_error(w, q_w, hqq, hqf, hff)
        codes(q_t, target)
    # Nothing to undo (X_q = X_f, the first layer): the target is W itself
    np.testing.assert_array_equal(rounding.float_target(w, hff, hff), w)


def test_dead_inputs_and_zero_rows_are_handled():
    """An input that never varies (a ReLU channel that is always 0) has a zero row and column in H; a channel
    whose weights are all zero stays zero. Nothing is NaN, every value is on the grid."""
    rng = np.random.default_rng(2)
    w, h = correlated_layer(rng, rows=6, cols=10)
    h[3, :] = h[:, 3] = 0
    w[2] = 0
    q = rounding.gptq(w, h)
    assert np.isfinite(q).all() and not q[2].any()
    codes(q, w)
    assert rounding.output_error(w, q, h) <= rounding.output_error(w, rounding.nearest(w, rounding.grid_scales(w)), h)


def test_depthwise_rows_follow_the_converters_channel_order():
    """(kh, kw, C, m) kernels: row c·m + j holds channel c's j-th filter, as TFLite's depthwise weights do."""
    class Depthwise:   # as_rows/from_rows read only the layer's kind
        pass
    Depthwise.__name__ = "DepthwiseConv2D"
    k = np.arange(3 * 3 * 4 * 2, dtype=float).reshape(3, 3, 4, 2)
    rows = rounding.as_rows(Depthwise(), k)
    assert rows.shape == (8, 9)
    np.testing.assert_array_equal(rows[2 * 2 + 1], k[:, :, 2, 1].reshape(-1))
    np.testing.assert_array_equal(rounding.from_rows(Depthwise(), rows, k.shape), k)


# ---------------------------------------------------------------- the converters keep the codes (real TF)

@pytest.mark.slow
def test_the_int8_tflite_and_onnx_hold_gptqs_codes(tiny_run, tmp_path):
    """The rounded model through the real converters: every conv/dense weight tensor of the int8 TFLite and
    of the QDQ ONNX holds GPTQ's codes, up to a channel's sign (a BatchNormalization with a negative scale
    folds into it) — except channels that BatchNormalization zeroes, which are dead either way."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", CODES_CHECK, str(tiny_run), str(tmp_path)], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    for fmt in ("tflite", "onnx"):
        checked = report[fmt]
        assert checked["layers"] >= 50, checked     # MobileNetV2: 52 convs and the classifier
        assert checked["differ"] == 0, checked
        assert checked["channels"] > 10_000, checked


CODES_CHECK = r'''
import json, sys
from pathlib import Path
import numpy as np
from edgecls.train.tfenv import import_tf
tf, keras = import_tf()
from edgecls.convert import onnx_export, rounding, tflite
from edgecls.convert.export import load_keras_model
from edgecls.dataset import load_arrays
from edgecls.rundir import load_run

run, work = load_run(Path(sys.argv[1])), Path(sys.argv[2])
model = load_keras_model(run.model_path)
x, _ = load_arrays(run.data_root, run.split_items("train")[:16], run.spec)   # the codes do not depend on how many
rounded, info = rounding.rounded_copy(model, x)
expect = {}
for layer in rounding.weight_layers(rounded):
    w = rounding.as_rows(layer, rounding.kernel_of(layer).numpy()).astype(np.float64)
    expect[layer.name] = np.round(w / rounding.grid_scales(w)[:, None]).astype(int)

def compare(found):   # found: layer name -> (rows, cols) int codes from a converted file
    out = {"layers": 0, "channels": 0, "differ": 0, "dead": 0, "missing": []}
    for name, want in expect.items():
        got = found.get(name)
        if got is None:
            out["missing"].append(name); out["differ"] += 1; continue
        got = got.reshape(want.shape)
        out["layers"] += 1
        for r in range(len(want)):
            if not got[r].any():     # BatchNormalization zeroes the channel: dead
                out["dead"] += 1; continue
            out["channels"] += 1
            out["differ"] += int(not (np.array_equal(got[r], want[r]) or np.array_equal(got[r], -want[r])))
    return out

# TFLite: int8 weight tensors, named after the layers they come from
saved = tflite.save_batch1(rounded, run.spec, work / "saved")
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_content=tflite.to_int8(saved, x[:16]))
it.allocate_tensors()
found = {}
names = set(expect)
for d in it.get_tensor_details():
    if d["dtype"] != np.int8 or len(d["quantization_parameters"]["scales"]) < 2:
        continue
    owners = [n for n in names if f"/{n}/" in d["name"] + "/"]
    if len(owners) != 1:
        continue
    t = it.get_tensor(d["index"])
    layer = rounded.get_layer(owners[0])
    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":      # (1, kh, kw, C·m) -> rows (C·m, kh·kw)
        t = t.reshape(-1, t.shape[-1]).T
    else:                              # conv (cout, kh, kw, cin), dense (out, in)
        t = t.reshape(t.shape[0], -1)
    found[owners[0]] = t.astype(int)
res = {"tflite": compare(found)}

# ONNX: the QDQ weights (int8 initializers feeding DequantizeLinear), matched to layers by shape and order
import onnx
from onnx import numpy_helper
src = onnx_export.to_float(rounded, run.spec, work / "rounded.onnx")
q = onnx_export.to_int8(src, x[:16], work / "int8.onnx", "minmax", target="arm")
m = onnx.load(str(q))
inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
found = {}
for node in m.graph.node:
    if node.op_type != "DequantizeLinear" or node.input[0] not in inits or inits[node.input[0]].dtype != np.int8:
        continue
    t = inits[node.input[0]]
    owners = [n for n in names if n in node.input[0]]
    owner = max(owners, key=len) if owners else None
    if owner is None:
        continue
    layer = rounded.get_layer(owner)
    kind = type(layer).__name__
    if kind == "Dense":                # MatMul weight (in, out) -> (out, in)
        t = t.T
    elif kind == "DepthwiseConv2D":    # ONNX grouped conv (C·m, 1, kh, kw) -> (C·m, kh·kw)
        t = t.reshape(t.shape[0], -1)
    else:                              # ONNX conv (cout, cin, kh, kw) -> keras order (cout, kh, kw, cin)
        t = np.transpose(t, (0, 2, 3, 1)).reshape(t.shape[0], -1)
    found[owner] = t.astype(int)
res["onnx"] = compare(found)
print(json.dumps(res))
'''


def test_the_walk_gives_each_layer_the_inputs_of_both_models():
    """rounding._walk (one pass of each model, layer by layer): each conv/dense layer's two inputs are what a
    probe of the float model and of the copy see at that layer, through op layers with constant arguments
    (MobileNetV3's hard swish) and a residual Add, including what the caller changed in the copy's earlier
    kernels; a model that calls a layer twice is refused in one line."""
    from edgecls.errors import EdgeclsError
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    L = keras.layers
    inp = keras.Input((8, 8, 3), name="pixels")
    a = L.ReLU(6.0, name="relu")(L.BatchNormalization(name="bn")(L.Conv2D(4, 3, padding="same", name="conv")(inp)))
    hard_sigmoid = L.ReLU(6.0, name="hs")(a + 3.0) * (1.0 / 6.0)   # MobileNetV3's op layers, constant arguments
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(L.Multiply(name="swish")([a, hard_sigmoid]))
    out = L.Dense(3, name="dense")(L.GlobalAveragePooling2D(name="pool")(L.Add(name="add")([a, b])))
    model = keras.Model(inp, out)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3)).astype(np.uint8)
    x = tf.constant(images, tf.float32)
    seen = []
    rounds = {layer.name for layer in rounding.weight_layers(clone)}
    for layer, xq, xf in rounding._walk(model, clone, images, rounds):
        for m, got in ((model, xf), (clone, xq)):
            want = keras.Model(m.inputs, m.get_layer(layer.name).input)(x, training=False)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
        kernel = rounding.kernel_of(layer)
        kernel.assign(kernel * 0.5)          # as rounding does: later inputs must come through the change
        seen.append(layer.name)
    assert seen == ["conv", "dw", "dense"]
    shared = L.ReLU(name="twice")
    twice = keras.Model(inp, shared(shared(inp)))
    with pytest.raises(EdgeclsError, match="--weight-rounding nearest"):
        list(rounding._walk(twice, twice, images, set()))

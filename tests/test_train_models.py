"""Every backbone in the registry builds as one flat model with raw-pixel input, and trains a real step."""
import numpy as np
import pytest

from edgecls.dataset import load_arrays, scan
from edgecls.train.backbones import BACKBONES
from edgecls.train.config import TrainConfig

from conftest import DIGITS, MNV2_WEIGHTS


@pytest.fixture(scope="module")
def tf_keras():
    from edgecls.train.tfenv import import_tf

    return import_tf()


@pytest.fixture(scope="module")
def batch(shared):
    s = scan(DIGITS, check=False)
    items = [it for y in range(3) for it in [i for i in s.items if i[1] == y][:4]]
    cfg = TrainConfig(data_dir=str(DIGITS), img_size=96)
    return load_arrays(s.root, items, cfg.preprocess_spec())


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_builds_flat_and_trains_one_step(tf_keras, batch, name):
    tf, keras = tf_keras
    from edgecls.train.model import backbone_layers, build_model, set_phase

    bb = BACKBONES[name]
    cfg = TrainConfig(data_dir=str(DIGITS), backbone=name, alpha=min(bb.alphas), img_size=96, weights="none")
    model = build_model(cfg, 3, None)
    # Flat: no layer is itself a Model (tfmot cannot quantise nested models).
    assert not any(isinstance(l, keras.Model) for l in model.layers)
    assert model.layers[1].name == "normalize" and model.layers[1].__class__.__name__ == "Rescaling"
    assert model.input_shape == (None, 96, 96, 3) and model.output_shape == (None, 3)
    x, y = batch
    set_phase(model, "head", 0, from_scratch=True)   # weights=none trains the whole network
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    watched = [model.get_layer("predictions").kernel, backbone_layers(model)[1].trainable_weights[0]]
    before = [w.numpy().copy() for w in watched]
    loss = model.train_on_batch(x.astype(np.float32), y)
    assert np.isfinite(loss)
    for b, w in zip(before, watched):   # both the head and the first backbone layer learned
        assert np.abs(b - w.numpy()).max() > 0, w.name
    # Normalisation is the recorded one: the layer reproduces pixel*scale+offset.
    norm = model.get_layer("normalize")(x[:1].astype(np.float32)).numpy()
    np.testing.assert_allclose(norm, x[:1] * np.array(bb.scale, np.float32) + np.array(bb.offset, np.float32),
                               rtol=1e-5, atol=1e-4)


def test_imagenet_weights_resolve_offline_and_load(tf_keras, keras_home, batch):
    tf, keras = tf_keras
    from edgecls.train.model import build_model

    cfg = TrainConfig(data_dir=str(DIGITS), img_size=96)
    path = cfg.resolve_weights()
    assert path and path.endswith(MNV2_WEIGHTS.name), path   # the 224-px file serves 96 px too
    model = build_model(cfg, 3, path)
    ref = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=str(MNV2_WEIGHTS))
    got = model.get_layer("Conv1").get_weights()[0]
    np.testing.assert_array_equal(got, ref.get_layer("Conv1").get_weights()[0])


def test_phases_freeze_what_they_should(tf_keras):
    from edgecls.train.model import backbone_layers, build_model, set_phase

    cfg = TrainConfig(data_dir=str(DIGITS), alpha=0.35, img_size=96, weights="none")
    model = build_model(cfg, 3, None)
    layers = backbone_layers(model)
    set_phase(model, "head", 100)
    assert not any(l.trainable for l in layers) and model.get_layer("predictions").trainable
    set_phase(model, "finetune", 100)
    assert not any(l.trainable for l in layers[:100])
    assert any(l.trainable for l in layers[100:])
    assert not any(l.trainable for l in layers if l.__class__.__name__ == "BatchNormalization")

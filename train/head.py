"""The frozen-backbone phase on cached features: the backbone runs once per image, not once per epoch.

With the backbone frozen, every head epoch used to push each (augmented) photo through MobileNetV2 again:
5 such epochs were ~35% of a default run on a 2-core CPU and still left the head under-trained (5 epochs
of a few dozen steps). Here the pooled features of the train and val photos are computed once, without
augmentation (augmentation pays off in fine-tuning, where the features change), and the head trains on
them for many cheap epochs; the best validation epoch's head goes back into the full model.
"""
from __future__ import annotations

import time

import numpy as np

POOL = "pool"            # the model's pooled-feature layer (train/model.py)
PREDICTIONS = "predictions"


def pooled_features(keras, model, ds, bar=None, what: str = "features",
                    local_call=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(features, one-hot labels, images/s) of every batch of `ds` (no augmentation), through the frozen backbone;
    `bar`: an EpochBar to show the pass on; `local_call`: wraps the extractor to run on this worker alone
    (train/multiworker.py: local_call)."""
    extractor = keras.Model(model.input, model.get_layer(POOL).output)
    if local_call is not None:
        extractor = local_call(extractor)
    feats, labels, n, t0 = [], [], 0, time.time()
    if bar is not None:
        bar.start_task(f"backbone {what}", len(ds))
    for x, y in ds:
        feats.append(extractor(x, training=False).numpy())
        labels.append(y.numpy())
        n += len(feats[-1])
        if bar is not None:
            bar.step()
    return np.concatenate(feats), np.concatenate(labels), n / max(time.time() - t0, 1e-9)


def fit_head(keras, model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
             epochs: int, lr: float, batch_size: int, label_smoothing: float, dropout: float,
             class_weight: dict | None, patience: int, on_epoch=None) -> list[dict]:
    """Train a copy of the model's head (dropout + softmax dense) on features; put the best val epoch's
    weights into the model's `predictions` layer. Returns one history row per epoch (as `fit` logs them)."""
    (ftr, ytr), (fva, yva) = train, val
    dense = model.get_layer(PREDICTIONS)
    inp = keras.Input((ftr.shape[1],))
    out = keras.layers.Dense(dense.units, activation="softmax", dtype="float32")(keras.layers.Dropout(dropout)(inp))
    head = keras.Model(inp, out)
    head.layers[-1].set_weights(dense.get_weights())
    head.compile(optimizer=keras.optimizers.Adam(lr),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing), metrics=["accuracy"])
    # The features become tf.data pipelines once: fit() on NumPy arrays copies them into new tensors at every
    # call, and one call per epoch grew peak memory by ~65 KB a photo over 20 epochs (343 MB for 5,250 photos,
    # against 60 MB this way; benchmarks/results/cache.md).
    from edgecls.train.tfenv import import_tf

    tf = import_tf()[0]
    train_ds = tf.data.Dataset.from_tensor_slices((ftr, ytr)).shuffle(len(ftr), reshuffle_each_iteration=True)
    train_ds = train_ds.batch(batch_size)
    val_ds = tf.data.Dataset.from_tensor_slices((fva, yva)).batch(batch_size)
    rows, best, best_epoch, best_weights = [], -1.0, -1, dense.get_weights()
    for epoch in range(epochs):
        t0 = time.time()
        h = head.fit(train_ds, epochs=1, verbose=0, class_weight=class_weight, validation_data=val_ds)
        row = {"phase": "head", "epoch": epoch + 1, "seconds": round(time.time() - t0, 2)}
        row.update({k: round(float(v[-1]), 5) for k, v in h.history.items()})
        rows.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if row["val_accuracy"] > best:
            best, best_epoch, best_weights = row["val_accuracy"], epoch, head.layers[-1].get_weights()
        if epoch - best_epoch >= patience:
            break
    dense.set_weights(best_weights)
    return rows

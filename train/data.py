"""tf.data input pipelines over a split's pixels, made by the shared preprocessing contract (train/split_input.py)."""
from __future__ import annotations

import os

import numpy as np

from edgecls.errors import EdgeclsError


def augmenter(keras, seed: int):
    """Random flip, rotation, zoom, brightness and contrast on raw 0..255 pixels (training only)."""
    L = keras.layers
    return keras.Sequential([
        L.RandomFlip("horizontal", seed=seed),
        L.RandomRotation(0.08, fill_mode="reflect", seed=seed + 1),
        L.RandomZoom((-0.15, 0.1), fill_mode="reflect", seed=seed + 2),
        L.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 3),
        L.RandomContrast(0.15, seed=seed + 4),
    ], name="augment")


PAD_LABEL = -1   # an evaluation's copies (`replica_plan`): one-hot of -1 is all zeros, and their weight is 0


def global_batch(batch_size: int, replicas: int) -> int:
    """The batch each step takes across `replicas` (every worker's devices): --batch-size, rounded down to a
    multiple of them (at least one photo each), so that every replica gets the same number of photos."""
    return max(replicas, batch_size - batch_size % replicas)


def replica_plan(n: int, replicas: int, training: bool) -> tuple[int, int]:
    """(photos kept, copies added) so that every global batch, the last included, splits evenly into the
    replicas: tf.data hands each replica ceil(b / replicas) photos of a batch of b, so a last batch of 1 on 2
    workers left one worker an empty batch, which MobileNetV2's depthwise convolution refuses on a CPU
    ("input depth must be evenly divisible by filter depth", issue 35). Training drops the n mod replicas
    photos that would end the epoch (a different few each epoch: the order is reshuffled); an evaluation
    keeps every photo and adds copies of the first ones (label PAD_LABEL, weight 0)."""
    extra = n % replicas
    if training:
        if n and not n - extra:
            raise EdgeclsError(f"{n} training photo(s) cannot be shared between {replicas} replicas (every "
                               f"worker's devices): add photos, or train on fewer workers")
        return n - extra, 0
    return n, (replicas - extra) % replicas


def photo_accuracy(keras):
    """Keras' "accuracy" (top-1 of one-hot labels) counting only photos, not an evaluation's copies (all-zero
    labels). Compiled `metrics` get no sample weights in tf_keras, and `weighted_metrics` would also take the
    class weights of training: so the copies are recognised by their label."""
    import tensorflow as tf

    class PhotoAccuracy(keras.metrics.Mean):
        def update_state(self, y_true, y_pred, sample_weight=None):
            hit = tf.cast(tf.equal(tf.argmax(y_true, -1), tf.argmax(y_pred, -1)), self.dtype)
            return super().update_state(hit, sample_weight=tf.cast(tf.reduce_max(y_true, -1) > 0, self.dtype))

    return PhotoAccuracy(name="accuracy")


def _elements(tf, source, labels: np.ndarray, keep: int, pad: int, training: bool, seed: int):
    """(pixels or record index, label) of each photo, shuffled when training, cut to `keep`, `pad` copies last."""
    from edgecls.train.split_input import ArraySplit

    items = source.x if isinstance(source, ArraySplit) else np.arange(len(source), dtype=np.int64)
    ds = tf.data.Dataset.from_tensor_slices((items, labels))
    if training:
        ds = ds.shuffle(len(source), seed=seed, reshuffle_each_iteration=True).take(keep)
    if pad:
        ds = ds.concatenate(ds.take(pad).map(lambda x, y: (x, tf.constant(PAD_LABEL, y.dtype))))
    return ds


def make_dataset(tf, keras, source, n_classes: int, batch_size: int, training: bool, augment: bool, seed: int,
                 replicas: int = 1):
    """A split (`train/split_input.py`: ArraySplit, DiskSplit or FileSplit) → batched (float32 pixels, one-hot),
    shuffled each epoch (seeded) and augmented when training, prefetched.

    In memory the uint8 arrays are the pipeline's own tensors. Otherwise the pipeline shuffles and batches record
    indices, and each batch of pixels is read (a disk cache) or decoded (the files) by the split, several batches
    at a time: memory holds a few batches, not the dataset. The cast and augmentation run in the pipeline,
    overlapped with training by prefetch.

    `replicas` > 1 (--strategy multiworker): every batch splits evenly between them (`global_batch`,
    `replica_plan`). An evaluation then yields (pixels, one-hot, weight): its copies weigh 0 and its photos
    (n + copies) / n, as Keras divides a batch's weighted loss by its size, copies included, so val_loss is the
    mean over the photos (val accuracy: `photo_accuracy`); its predictions end with the copies, to cut off.
    """
    from edgecls.train.split_input import ArraySplit

    keep, pad = replica_plan(len(source), replicas, training)
    ds = _elements(tf, source, source.labels.astype(np.int32), keep, pad, training, seed)
    ds = ds.batch(global_batch(batch_size, replicas))
    if not isinstance(source, ArraySplit):
        def _read(indices, y):
            images = tf.numpy_function(source.read, [indices], tf.uint8, stateful=False)
            images.set_shape((None, *source.shape))
            return images, y

        ds = ds.map(_read, num_parallel_calls=min(4, os.cpu_count() or 1))
    aug = augmenter(keras, seed) if (training and augment) else None
    photo_weight = (keep + pad) / max(keep, 1)

    def _map(images, labels):
        images = tf.cast(images, tf.float32)
        if aug is not None:
            images = tf.clip_by_value(aug(images, training=True), 0.0, 255.0)
        if replicas == 1 or training:
            return images, tf.one_hot(labels, n_classes)
        return images, tf.one_hot(labels, n_classes), tf.cast(labels >= 0, tf.float32) * photo_weight

    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(n_classes)}

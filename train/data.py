"""tf.data input pipelines over a split's pixels, made by the shared preprocessing contract (train/split_input.py)."""
from __future__ import annotations

import os

import numpy as np


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


def make_dataset(tf, keras, source, n_classes: int, batch_size: int, training: bool, augment: bool, seed: int):
    """A split (`train/split_input.py`: ArraySplit, DiskSplit or FileSplit) → batched (float32 pixels, one-hot),
    shuffled each epoch (seeded) and augmented when training, prefetched.

    In memory the uint8 arrays are the pipeline's own tensors. Otherwise the pipeline shuffles and batches record
    indices, and each batch of pixels is read (a disk cache) or decoded (the files) by the split, several batches
    at a time: memory holds a few batches, not the dataset. The cast and augmentation run in the pipeline,
    overlapped with training by prefetch.
    """
    from edgecls.train.split_input import ArraySplit

    labels = source.labels.astype(np.int32)
    if isinstance(source, ArraySplit):
        ds = tf.data.Dataset.from_tensor_slices((source.x, labels))
    else:
        ds = tf.data.Dataset.from_tensor_slices((np.arange(len(source), dtype=np.int64), labels))
    if training:
        ds = ds.shuffle(len(source), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if not isinstance(source, ArraySplit):
        def _read(indices, y):
            images = tf.numpy_function(source.read, [indices], tf.uint8, stateful=False)
            images.set_shape((None, *source.shape))
            return images, y

        ds = ds.map(_read, num_parallel_calls=min(4, os.cpu_count() or 1))
    aug = augmenter(keras, seed) if (training and augment) else None

    def _map(images, labels):
        images = tf.cast(images, tf.float32)
        if aug is not None:
            images = tf.clip_by_value(aug(images, training=True), 0.0, 255.0)
        return images, tf.one_hot(labels, n_classes)

    ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    w = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w[i]) for i in range(n_classes)}

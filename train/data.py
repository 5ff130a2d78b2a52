"""tf.data input pipelines over images already decoded and resized by the shared preprocessing contract."""
from __future__ import annotations

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


def make_dataset(tf, keras, x: np.ndarray, y: np.ndarray, n_classes: int, batch_size: int,
                 training: bool, augment: bool, seed: int):
    """(uint8 images, int labels) → batched (float32 pixels, one-hot) with shuffling/augmentation/prefetch.

    Decoded uint8 arrays are the cache (decoding JPEGs again every epoch would dominate on a Pi-class CPU
    or a 2-core VM); the cast and augmentation run in the pipeline, overlapped with training by prefetch.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if training:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
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

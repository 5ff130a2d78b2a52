"""The fine-tuning learning rate (linear warm-up, then cosine decay to zero) and the time-budget plan.

A constant rate ended fine-tuning with the largest steps of the run, so the last (and often best-on-val)
epochs were the noisiest; cosine decay ends on small steps. Warm-up keeps the first steps on freshly
unfrozen layers from wrecking the pretrained features. The length of the decay is a variable, so a run
under --time-budget can shorten it once it has timed an epoch.
"""
from __future__ import annotations

import math


def warmup_cosine(tf, keras, peak_lr: float, warmup_steps: int, total_steps):
    """A LearningRateSchedule; `total_steps` is a tf.Variable (re-planned under a time budget)."""

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            total = tf.maximum(tf.cast(total_steps, tf.float32), 1.0)
            warm = tf.maximum(float(warmup_steps), 1.0)
            rise = peak_lr * tf.minimum(step + 1.0, warm) / warm
            progress = tf.clip_by_value((step - warm) / tf.maximum(total - warm, 1.0), 0.0, 1.0)
            decay = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < warm, rise, decay)

        def get_config(self):
            return {"peak_lr": peak_lr, "warmup_steps": warmup_steps}

    return WarmupCosine()


def epochs_that_fit(budget_s: float, elapsed_s: float, epoch_s: float, done: int, planned: int,
                    reserve_s: float) -> int:
    """How many fine-tune epochs in all fit in the budget, having done `done` at `epoch_s` seconds each;
    `reserve_s` is kept for what follows training (measuring val/test, saving). At least `done`."""
    left = budget_s - elapsed_s - reserve_s
    more = int(left // epoch_s) if epoch_s > 0 else planned
    return max(done, min(planned, done + max(more, 0)))

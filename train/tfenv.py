"""Importing TensorFlow the one way edgecls wants it: tf_keras (Keras 2, which tfmot needs), quiet logs,
and optional extra logical CPU devices (to exercise multi-device training on a CPU-only machine)."""
from __future__ import annotations

import contextlib
import os
import sys

from edgecls.errors import EdgeclsError

_CPU_DEVICES_ENV = "EDGECLS_CPU_DEVICES"


def import_tf():
    """Return (tensorflow, tf_keras). Import lazily: it takes seconds and only training/export need it."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    try:
        with quiet_stderr():  # TF's C++ start-up chatter (oneDNN, CUDA probing) is not for users
            import tensorflow as tf
            import tf_keras as keras

            tf.config.list_physical_devices("GPU")
    except ImportError as e:
        raise EdgeclsError(f"this command needs TensorFlow ({e.name} missing): pip install 'edgecls[train]'") from None
    tf.get_logger().setLevel("ERROR")
    n = int(os.environ.get(_CPU_DEVICES_ENV, "0") or 0)
    if n > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:  # (listing logical devices would initialise them: configure first)
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
        except RuntimeError:
            pass  # already initialised in this process: keep what exists
    return tf, keras


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ logging bypasses sys.stderr). EDGECLS_DEBUG keeps it."""
    if os.environ.get("EDGECLS_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def keras_cache_dirs() -> list[str]:
    """Where Keras looks for downloaded weights ($KERAS_HOME/models, else ~/.keras/models)."""
    dirs = []
    if os.environ.get("KERAS_HOME"):
        dirs.append(os.path.join(os.environ["KERAS_HOME"], "models"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".keras", "models"))
    return dirs

"""`train --strategy multiworker`: one run trained by several processes (machines) together, on TensorFlow's own
engine (`tf.distribute.MultiWorkerMirroredStrategy`), configured by the `TF_CONFIG` environment variable the
way Kubernetes (TFJob), Vertex AI and SageMaker start TensorFlow workers.

Who writes what (docs/multiworker.md):
- The chief (the `chief` task, else `worker` 0) trains into `--out` exactly as a single-process run does.
- Every other worker runs the same code into a private scratch folder (its "run folder" and checkpoints: saving
  weights reads MirroredStrategy's on-read variables, a collective every worker must join) that is deleted at
  the end; nothing else is written.
- Restart = the same command on every worker: the chief continues an unfinished run of the same config in
  `--out` (its epoch checkpoint), and sends its run files to the other workers, so all start from the same
  weights, epoch and history. No shared file system is needed; the photos must be the same on every worker.

Every step of the trainer that differs with several workers is a method of the strategy object it trains under
(`choose_strategy`): `OneMachine`, where each is a no-op, or `Workers`. TF_CONFIG, the time limits and the errors:
train/cluster.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError, Interrupted
from edgecls.rundir import (CKPT, DATASET_JSON, LABELS_TXT, RUN_JSON, SPLITS_JSON, STATE_JSON, has_checkpoint,
                            is_complete, is_run)
from edgecls.train.cluster import (ENV, RESTART, cluster_from_env, collective_timeout, op_failure,
                                   startup_deadline, warn_if_cluster_unused)
from edgecls.train.cluster import startup_timeout  # noqa: F401  (train/config.py imports it from here, for now)

# What a restarted chief sends the other workers: enough to resume exactly where it is.
_RUN_FILES = (RUN_JSON, LABELS_TXT, SPLITS_JSON, DATASET_JSON, f"{CKPT}/{STATE_JSON}", f"{CKPT}/last.h5",
              f"{CKPT}/best.h5")


def launch(train_one, cfg, out: Path, force: bool, resume: bool, quiet: bool) -> dict:
    """Run `train_one` (trainer's single-process run) alone, or as this worker's part of TF_CONFIG's cluster."""
    if resume:
        refuse_resume_flag(out)
    elif cfg is not None and cfg.strategy == "multiworker":
        return train_on_workers(train_one, cfg, out, force, resume, quiet)
    elif cfg is not None:
        warn_if_cluster_unused(cfg.strategy, quiet)
    return train_one(cfg, out, force, resume, quiet)


def refuse_resume_flag(out: Path) -> None:
    """`--resume RUN` of a multi-worker run: only the chief has the folder, so the restart is the first command."""
    try:
        strategy = json.loads((out / RUN_JSON).read_text())["config"]["strategy"]
    except (OSError, ValueError, KeyError, TypeError):
        return   # not a run: _open_for_resume says so
    if strategy == "multiworker":
        raise EdgeclsError(f"{out} was trained by several workers (--strategy multiworker): {RESTART}")


def _continues(cfg, out: Path) -> bool:
    """The chief restarted by its launcher: `--out` holds an unfinished run of this very config, with a checkpoint."""
    if not (is_run(out) and has_checkpoint(out)) or is_complete(out):
        return False
    try:
        return json.loads((out / RUN_JSON).read_text()).get("config") == cfg.to_dict()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- the strategy the trainer sees

class OneMachine:
    """A run on this machine alone (the default strategy, or MirroredStrategy over its devices): every step that
    several workers need is a no-op here."""

    workers = 1
    local_call = None   # train/head.py: pooled_features calls the model itself

    def __init__(self, strategy_, devices: list[str]):
        self.strategy, self.devices = strategy_, devices

    @property
    def name(self) -> str:
        return type(self.strategy).__name__

    def input_replicas(self, batch_size: int, quiet: bool = True) -> int:
        return 1

    def check_same_data(self, tf, what: str) -> None:
        """One machine: nothing to compare its photos with."""

    def follow_chief_head(self, tf, layer, rows: list[dict]) -> list[dict]:
        return rows


class Workers(OneMachine):
    """--strategy multiworker: this process is one worker of TF_CONFIG's cluster, under the strategy made before any
    other TensorFlow op (`train`)."""

    def __init__(self, tf):
        s = strategy(tf)
        super().__init__(s, local_devices(s))
        self.workers = cluster_from_env().workers
        self.local_call = local_call

    @property
    def name(self) -> str:
        return "MultiWorkerMirroredStrategy"   # what run.json has always said (its class is CollectiveAllReduce…)

    def input_replicas(self, batch_size: int, quiet: bool = True) -> int:
        return input_replicas(batch_size, self.strategy, quiet)

    def check_same_data(self, tf, what: str) -> None:
        check_same_data(tf, what)

    def follow_chief_head(self, tf, layer, rows: list[dict]) -> list[dict]:
        return follow_chief_head(tf, layer, rows)


def choose_strategy(tf, name: str) -> OneMachine:
    """--strategy: several workers (multiworker), this machine's devices together (mirrored; auto with 2+ GPUs),
    or one device (none; auto otherwise)."""
    if name == "multiworker":   # its strategy was made before any other TensorFlow op (`train`)
        return Workers(tf)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return OneMachine(tf.distribute.get_strategy(),
                          [d.name for d in gpus[:1] or tf.config.list_logical_devices("CPU")[:1]])
    devices = gpus or tf.config.list_logical_devices("CPU")
    return OneMachine(tf.distribute.MirroredStrategy([d.name for d in devices]), [d.name for d in devices])


# ---------------------------------------------------------------- the strategy and its collectives

_strategy = None


def strategy(tf):
    """The one MultiWorkerMirroredStrategy of this process. Must be created before any other TensorFlow op (it
    configures the runtime's collectives); it blocks until every worker of TF_CONFIG is up."""
    global _strategy
    if _strategy is None:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout())
        _strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return _strategy


def local_devices(strategy_) -> list[str]:
    return list(strategy_.extended.worker_devices)


def input_replicas(batch_size: int, strategy_, quiet: bool = True) -> int:
    """Into how many replicas (every worker's devices) each batch of the input is split: train/data.py:
    make_dataset splits every batch evenly between them; says so when that changes --batch-size (not a multiple
    of them)."""
    from edgecls.progress import say
    from edgecls.train.data import global_batch

    replicas = strategy_.num_replicas_in_sync
    if global_batch(batch_size, replicas) != batch_size:
        say(f"warning: --batch-size {batch_size} is split evenly between {replicas} replicas: each step "
            f"takes {global_batch(batch_size, replicas)} photos", quiet)
    return replicas


def _replica_collective(tf, local: np.ndarray, gather: bool) -> np.ndarray:
    """Across every replica of every worker: the sum of replica 0's `local` (i.e. the chief's: a broadcast), or
    the gather of all of them. Each worker must call it at the same point, with the same shape."""
    s = _strategy
    value = tf.constant(local)

    @tf.function
    def step():
        ctx = tf.distribute.get_replica_context()
        if gather:
            return ctx.all_gather(value[None], axis=0)
        first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), value.dtype)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value * first)

    return s.experimental_local_results(s.run(step))[0].numpy()


def local_call(model):
    """`model(x, training=False)` on this worker alone, in replica context: called outside it, every read of a
    BatchNorm statistic (an on-read variable) is an all-reduce across the workers — 17x slower measured on the
    features pass (benchmarks/results/multiworker.md)."""
    import tensorflow as tf

    step = tf.function(lambda x: model(x, training=False))

    def call(x, training=False):
        return _strategy.experimental_local_results(_strategy.run(step, args=(x,)))[0]

    return call


def broadcast_bytes(tf, data: bytes | None) -> bytes:
    """The chief's `data` on every worker (the others pass None)."""
    n = int(_replica_collective(tf, np.array([len(data or b"")], np.int64), gather=False)[0])
    words = np.zeros(-(-n // 8), np.int64)
    if data:
        words.view(np.uint8)[:n] = np.frombuffer(data, np.uint8)
    return _replica_collective(tf, words, gather=False).view(np.uint8)[:n].tobytes()


def check_same_data(tf, what: str) -> None:
    """Every worker must train on the same photos and split (each reads its shard of them): refused on all
    workers at once when one differs, rather than a run that silently mixes two datasets."""
    import hashlib

    digest = np.frombuffer(hashlib.sha256(what.encode()).digest()[:8], np.int64)
    seen = _replica_collective(tf, digest, gather=True).reshape(-1)
    if len(set(seen.tolist())) > 1:
        raise EdgeclsError("the workers do not have the same photos (or split): every worker needs the same "
                           "DATA_DIR contents at the same path")


def follow_chief_head(tf, layer, rows: list[dict]) -> list[dict]:
    """The head phase on features (train/head.py) trains a local copy of the head on every worker, outside the
    strategy: take the chief's result (weights and history rows) on every worker, so that no worker can hold
    other weights or make another best-epoch decision (which would change the collectives it calls)."""
    data = None
    if cluster_from_env().is_chief:
        weights = layer.get_weights()
        data = _frame({"rows": rows, "weights": [[w.dtype.str, list(w.shape)] for w in weights]},
                      [np.ascontiguousarray(w).tobytes() for w in weights])
    head, payload = _unframe(broadcast_bytes(tf, data))
    pos, weights = 0, []
    for dtype, shape in head["weights"]:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        weights.append(np.frombuffer(payload[pos:pos + size], dtype).reshape(shape))
        pos += size
    layer.set_weights(weights)
    return head["rows"]


# ---------------------------------------------------------------- the chief's run files, sent to the others

def _frame(head: dict, blobs: list[bytes]) -> bytes:
    """A JSON header (its length first) and the binary blobs it describes, as one message."""
    text = json.dumps(head).encode()
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def _unframe(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _run_files(out: Path) -> list[str]:
    return [n for n in _RUN_FILES if (out / n).is_file()]


def _pack(resume: bool, out: Path) -> bytes:
    files = _run_files(out) if resume else []
    blobs = [(out / n).read_bytes() for n in files]
    return _frame({"resume": resume, "files": [[n, len(b)] for n, b in zip(files, blobs)]}, blobs)


def _unpack(packed: bytes, into: Path) -> bool:
    head, payload = _unframe(packed)
    pos = 0
    for name, size in head["files"]:
        if name not in _RUN_FILES:   # a fixed list of names: nothing the chief sends can land outside `into`
            raise EdgeclsError(f"unexpected file from the chief: {name!r}")
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(payload[pos:pos + size])
        pos += size
    return bool(head["resume"])


# ---------------------------------------------------------------- one worker's part

def train_on_workers(train_fn, cfg, out: Path, force: bool, resume: bool, quiet: bool) -> dict:
    """Run `train_fn` (trainer's single-process run) as this worker's part of the run."""
    from edgecls.fsutil import scratch_dir
    from edgecls.progress import say
    from edgecls.train.tfenv import import_tf

    cluster = cluster_from_env()
    if cluster.is_chief and _continues(cfg, out):
        say(f"continuing the unfinished run in {out} (a restarted worker)", quiet)
        resume = True
    tf, _ = import_tf()
    say(f"{cluster.name()} of {cluster.workers}: waiting for every worker of {ENV}", quiet)
    try:
        with startup_deadline(cluster):
            strategy(tf)
            started = broadcast_bytes(tf, _pack(resume, out) if cluster.is_chief else None)
        if cluster.is_chief:
            return train_fn(cfg if not resume else None, out, force, resume, quiet)
        with scratch_dir("edgecls-worker-") as scratch:
            local = scratch / "run"
            local.mkdir()
            resume = _unpack(started, local)
            summary = train_fn(cfg if not resume else None, local, False, resume, True)
    except Interrupted as e:   # its advice (--resume RUN) is for one process; here every worker restarts
        raise Interrupted(f"{cluster.name()}: interrupted; {RESTART}", e.exit_code - 128) from None
    except tf.errors.OpError as e:
        raise op_failure(cluster, e) from None
    summary["run_dir"] = str(out)   # the run lives on the chief; this worker's copy is gone
    summary["worker"] = cluster.name()
    return summary

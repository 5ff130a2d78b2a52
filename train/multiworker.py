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
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError, Interrupted
from edgecls.rundir import DATASET_JSON, LABELS_TXT, RUN_JSON, SPLITS_JSON, is_run
from edgecls.train.run_folder import CKPT, STATE_JSON, has_checkpoint, is_complete

ENV = "TF_CONFIG"
TIMEOUT_ENV = "EDGECLS_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600   # one collective (a step's all-reduce) waiting longer for a peer ends the run
STARTUP_ENV = "EDGECLS_STARTUP_TIMEOUT"
# Every worker of TF_CONFIG must be up within this: a cluster scheduler can take minutes to place the last pod,
# but a worker that never starts (a typo in TF_CONFIG, a pod left pending) must not hold the others forever.
DEFAULT_STARTUP_S = 900
TASK_TYPES = ("chief", "worker")
# What a restarted chief sends the other workers: enough to resume exactly where it is.
_RUN_FILES = (RUN_JSON, LABELS_TXT, SPLITS_JSON, DATASET_JSON, f"{CKPT}/{STATE_JSON}", f"{CKPT}/last.h5",
              f"{CKPT}/best.h5")


RESTART = "run the command that started the run again, on every worker: it continues from the last saved epoch"


class PeerLost(EdgeclsError):
    """Another worker died or stopped answering. Exit 138 (128 + SIGUSR1): the code Kubeflow's TFJob
    (restartPolicy ExitCode) retries as "user-defined retryable", beside 130/137/143 (killed by a signal);
    bad input (exit 2) is permanent there, so a wrong option is not retried forever."""

    exit_code = 138


class WorkerFailed(EdgeclsError):
    """This worker's own TensorFlow op failed (a bug, bad data): a restart would fail the same way, so exit 1,
    the CLI's internal error, which TFJob's ExitCode policy (1-127) treats as permanent, as it does exit 2."""

    exit_code = 1


# What a lost, restarted or hung peer raises in this worker's collectives (its socket closed, the heartbeat
# aborted them, EDGECLS_COLLECTIVE_TIMEOUT passed); any other op error is this worker's own.
PEER_ERRORS = ("UnavailableError", "DeadlineExceededError", "AbortedError")


def op_failure(cluster: Cluster, error) -> EdgeclsError:
    """The one-line error for a TensorFlow op that failed in this worker: a lost peer (exit 138, retried) or
    what really failed (exit 1, not retried). Under EDGECLS_DEBUG=1 the latter is re-raised: its traceback."""
    name = type(error).__name__
    if name in PEER_ERRORS:
        return PeerLost(f"{cluster.name()}: lost the other workers ({name}: {op_message(error)}); {RESTART}")
    if os.environ.get("EDGECLS_DEBUG"):
        raise error
    return WorkerFailed(f"{cluster.name()}: training failed ({name}: {op_message(error)}); not a lost worker: "
                        f"a restart would fail the same way (set EDGECLS_DEBUG=1 for the traceback)")


# Lines of a TensorFlow op error that say where, not what: its Python stack, a py_func's traceback, gRPC's notes.
_NOT_THE_CAUSE = ("Graph execution error", "Detected at node", "File ", "Traceback", "<stack traces unavailable>",
                  "Additional GRPC error information", "The error could be from a previous operation", ":UNKNOWN:")


def op_message(error, limit: int = 200) -> str:
    """What went wrong, from a TensorFlow op error (often "Graph execution error:", then the op's stack): the last
    unindented line that says what (after a py_func's traceback: "PIL.UnidentifiedImageError: …")."""
    lines = (getattr(error, "message", None) or str(error)).splitlines()
    said = [ln.strip() for ln in lines if ln.strip() and not ln[0].isspace() and not ln.startswith(_NOT_THE_CAUSE)]
    return (said[-1] if said else "no message")[:limit]


@dataclass(frozen=True)
class Cluster:
    """This process's place in TF_CONFIG."""
    task_type: str
    task_index: int
    workers: int        # chief + worker tasks: the processes that train
    has_chief_task: bool = False

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0
                                             and not self.has_chief_task)

    def name(self) -> str:
        return f"{self.task_type} {self.task_index}"


def cluster_from_env(environ=None) -> Cluster:
    """Parse and check TF_CONFIG (before TensorFlow loads: a wrong one is one line, not a gRPC hang)."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ENV)
    hint = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
            '"task": {"type": "worker", "index": 0}}\'')
    if not raw:
        raise EdgeclsError(f"--strategy multiworker needs the {ENV} environment variable ({hint})")
    try:
        conf = json.loads(raw)
    except ValueError as e:
        raise EdgeclsError(f"{ENV} is not valid JSON ({e})") from None
    cluster = conf.get("cluster") if isinstance(conf, dict) else None
    task = conf.get("task") if isinstance(conf, dict) else None
    if not isinstance(cluster, dict) or not isinstance(cluster.get("worker"), list) or not cluster["worker"]:
        raise EdgeclsError(f"{ENV} has no cluster.worker list of host:port addresses ({hint})")
    if not isinstance(task, dict) or "type" not in task or not isinstance(task.get("index"), int):
        raise EdgeclsError(f"{ENV} has no task {{\"type\", \"index\"}} saying which worker this is ({hint})")
    other = sorted(set(cluster) - set(TASK_TYPES))
    if other or task["type"] not in TASK_TYPES:
        raise EdgeclsError(f"{ENV}: MultiWorkerMirroredStrategy takes only chief and worker tasks "
                           f"(not {', '.join(other) or task['type']})")
    for job in TASK_TYPES:
        addrs = cluster.get(job, [])
        if not isinstance(addrs, list) or not all(isinstance(a, str) and ":" in a for a in addrs):
            raise EdgeclsError(f"{ENV}: cluster.{job} must be a list of host:port addresses")
    if len(cluster.get("chief", [])) > 1:
        raise EdgeclsError(f"{ENV}: at most one chief task")
    if not 0 <= task["index"] < len(cluster.get(task["type"], [])):
        raise EdgeclsError(f"{ENV}: task {task['type']} {task['index']} is not in cluster.{task['type']}")
    return Cluster(task["type"], task["index"], len(cluster["worker"]) + len(cluster.get("chief", [])),
                   has_chief_task=bool(cluster.get("chief")))


def warn_if_cluster_unused(strategy_name: str, quiet: bool) -> None:
    """A TF_CONFIG of several workers beside another --strategy: each process would train a run of its own."""
    from edgecls.progress import say

    try:
        workers = cluster_from_env().workers
    except EdgeclsError:
        return
    if workers > 1:
        say(f"warning: {ENV} lists {workers} workers but --strategy is {strategy_name}: this process trains "
            f"alone; --strategy multiworker trains with them", quiet)


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


def input_replicas(cfg, strategy_, quiet: bool = True) -> int:
    """Into how many replicas (every worker's devices) each batch of the input is split: 1 unless multiworker,
    where train/data.py: make_dataset splits every batch evenly between them; says so when that changes
    --batch-size (not a multiple of them)."""
    if cfg.strategy != "multiworker":
        return 1
    from edgecls.progress import say
    from edgecls.train.data import global_batch

    replicas = strategy_.num_replicas_in_sync
    if global_batch(cfg.batch_size, replicas) != cfg.batch_size:
        say(f"warning: --batch-size {cfg.batch_size} is split evenly between {replicas} replicas: each step "
            f"takes {global_batch(cfg.batch_size, replicas)} photos", quiet)
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


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable `name` (unset or empty: `default`)."""
    import math

    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise EdgeclsError(f"{name} must be a number of seconds above 0, not {raw!r}")
    return value


def startup_timeout() -> float:
    return env_seconds(STARTUP_ENV, DEFAULT_STARTUP_S)


def collective_timeout() -> float:
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)


# The watchdog is a second process: while the workers connect, the main thread waits inside TensorFlow's C++ with
# the GIL held (measured: a threading.Timer never fired), so no Python thread or signal handler here can run.
_WATCHDOG = r"""
import os, select, signal, sys
parent, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:   # no word from the worker (EOF = done or gone)
    print(message, file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGUSR1)
"""


class startup_deadline:
    """Until the first broadcast has crossed every worker: if that takes longer than EDGECLS_STARTUP_TIMEOUT, one
    line, and the worker ends by SIGUSR1 — exit status 138, PeerLost's code, which a launcher retries."""

    def __init__(self, cluster: Cluster):
        self.cluster, self.seconds = cluster, startup_timeout()

    def __enter__(self):
        import subprocess
        import sys

        message = (f"edgecls: error: {self.cluster.name()}: the other workers of {ENV} did not all start within "
                   f"{self.seconds:g} s ({STARTUP_ENV}); start every worker of its cluster list, or check their "
                   f"addresses")
        self.watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.seconds),
                                          message], stdin=subprocess.PIPE)
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.stdin.close()   # EOF: the watchdog leaves
        self.watchdog.wait()


# ---------------------------------------------------------------- one worker's part

def train(train_fn, cfg, out: Path, force: bool, resume: bool, quiet: bool) -> dict:
    """Run `train_fn` (trainer._train_one: the single-process run) as this worker's part of the run."""
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

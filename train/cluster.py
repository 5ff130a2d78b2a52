"""`train --strategy multiworker`: this process's place in the cluster (`TF_CONFIG`, parsed and checked before
TensorFlow loads), the time limits on the others (at start-up, and per collective), and what a failed op is: a lost
peer (exit 138, which a launcher retries) or this worker's own failure (exit 1). No TensorFlow here: the
collectives and the worker's part of the run are in train/multiworker.py."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from edgecls.errors import EdgeclsError

ENV = "TF_CONFIG"
TIMEOUT_ENV = "EDGECLS_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 600   # one collective (a step's all-reduce) waiting longer for a peer ends the run
STARTUP_ENV = "EDGECLS_STARTUP_TIMEOUT"
# Every worker of TF_CONFIG must be up within this: a cluster scheduler can take minutes to place the last pod,
# but a worker that never starts (a typo in TF_CONFIG, a pod left pending) must not hold the others forever.
DEFAULT_STARTUP_S = 900
TASK_TYPES = ("chief", "worker")

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

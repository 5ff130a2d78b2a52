"""`train --strategy multiworker`: real worker processes on 127.0.0.1, each given its TF_CONFIG and one CPU, as a
cluster launcher (Kubernetes TFJob, Vertex AI, SageMaker) starts them; each worker has its own cwd and TMPDIR,
so what the non-chief writes can be checked on the file system."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DIGITS, cli

ARGS = ("--img-size", "96", "--epochs", "3", "--fine-tune-epochs", "1", "--max-images-per-class", "6",
        "--batch-size", "16", "--patience", "10", "--strategy", "multiworker")
ONE_CPU_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_workers(base: Path, argv: list, n: int = 2, tag: str = "") -> list[subprocess.Popen]:
    """Worker i runs `python -m edgecls *argv` in base/w<i> (its cwd; TMPDIR base/w<i>/tmp), pinned to one CPU."""
    ports = _free_ports(n)
    cpus = sorted(os.sched_getaffinity(0))
    procs = []
    for i in range(n):
        cwd = base / f"w{i}"
        (cwd / "tmp").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, TF_CONFIG=_tf_config(ports, i), TMPDIR=str(cwd / "tmp"), **ONE_CPU_ENV)
        cpu = {cpus[i % len(cpus)]}
        procs.append(subprocess.Popen([sys.executable, *map(str, argv)], cwd=cwd, env=env, text=True,
                                      stdout=open(cwd / f"stdout{tag}", "w"), stderr=open(cwd / f"stderr{tag}", "w"),
                                      preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, cpu)))
    return procs


def wait_all(procs, timeout=600) -> list[int]:
    deadline = time.time() + timeout
    try:
        return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _train(base, tag=""):
    return start_workers(base, ["-m", "edgecls", "train", DIGITS, "--out", "run", *ARGS], tag=tag)


@pytest.mark.parametrize("tf_config, needle", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no cluster.worker list"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "no task"),
    ('{"cluster": {"worker": ["127.0.0.1:1"], "ps": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
     "only chief and worker tasks"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "is not in cluster.worker"),
])
def test_multiworker_without_a_usable_tf_config_is_one_line(tmp_path, tf_config, needle):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    r = subprocess.run([sys.executable, "-m", "edgecls", "train", DIGITS, "--out", tmp_path / "run", "--strategy",
                        "multiworker"], capture_output=True, text=True, env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("edgecls: error:"), r.stderr
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_each_worker_reads_its_half_of_every_global_batch(tmp_path):
    """make_dataset's auto-shard by DATA: the --batch-size batch is split between the workers, none twice."""
    script = tmp_path / "shard.py"
    script.write_text(
        "import json, numpy as np\n"
        "from edgecls.train.tfenv import import_tf\n"
        "from edgecls.train import multiworker\n"
        "from edgecls.train.data import make_dataset\n"
        "from edgecls.train.split_input import ArraySplit\n"
        "tf, keras = import_tf()\n"
        "s = multiworker.strategy(tf)\n"
        "x = np.arange(60, dtype=np.uint8).reshape(60, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)\n"
        "ds = make_dataset(tf, keras, ArraySplit(x, np.arange(60) % 10), 10, 16, True, False, 1)\n"
        "seen = [[int(v) for v in r.numpy()[:, 0, 0, 0]] for b in s.experimental_distribute_dataset(ds)\n"
        "        for r in s.experimental_local_results(b[0])]\n"
        "print(json.dumps(seen))\n")
    procs = start_workers(tmp_path, [script])
    assert wait_all(procs, 300) == [0, 0], [(tmp_path / f"w{i}" / "stderr").read_text()[-2000:] for i in (0, 1)]
    batches = [json.loads((tmp_path / f"w{i}" / "stdout").read_text()) for i in (0, 1)]
    assert [len(b) for b in batches] == [4, 4]                   # ceil(60 / 16) steps on each worker
    assert [len(b) for b in batches[0]] == [8, 8, 8, 6]          # half of each global batch of 16
    mine = [sum(b, []) for b in batches]
    assert not set(mine[0]) & set(mine[1]) and sorted(mine[0] + mine[1]) == list(range(60))


@pytest.mark.slow
def test_two_workers_train_one_run_only_the_chief_writes(tmp_path, keras_home):
    procs = _train(tmp_path)
    codes = wait_all(procs)
    err = [(tmp_path / f"w{i}" / "stderr").read_text() for i in (0, 1)]
    assert codes == [0, 0], [e[-2000:] for e in err]
    run = tmp_path / "w0" / "run"
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "complete"
    training = meta["training"]
    assert training["strategy"] == "MultiWorkerMirroredStrategy" and training["workers"] == 2
    assert training["devices"] == ["/job:worker/replica:0/task:0/device:CPU:0"]
    assert [h["phase"] for h in meta["history"]] == ["head"] * 3 + ["finetune"]
    for f in ("model.keras", "labels.txt", "splits.json", "dataset.json", "history.png", "confusion.png"):
        assert (run / f).is_file(), f
    assert not (run / ".checkpoint").exists()
    # The non-chief trained (its summary on stdout) and left nothing: not in its cwd, not in its TMPDIR.
    assert "test accuracy" in (tmp_path / "w1" / "stdout").read_text()
    assert _files(tmp_path / "w1") == ["stderr", "stdout", "tmp"]
    # model.keras loads alone, and its answers on the test photos are the ones run.json reports (the
    # evaluation ran across both workers: their halves must come back in order).
    import numpy as np

    from edgecls.dataset import load_arrays
    from edgecls.preprocess import PreprocessSpec
    from edgecls.train.tfenv import import_tf

    _, keras = import_tf()
    model = keras.models.load_model(run / "model.keras")
    splits = json.loads((run / "splits.json").read_text())
    x, y = load_arrays(Path(splits["root"]), [(r, int(c)) for r, c in splits["test"]],
                       PreprocessSpec.from_dict(meta["preprocessing"]))
    pred = model.predict(x.astype(np.float32), verbose=0).argmax(1)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (y, pred), 1)
    assert confusion.tolist() == meta["metrics"]["test"]["confusion"]


@pytest.mark.slow
def test_a_killed_worker_restarted_continues_the_run(tmp_path, keras_home):
    procs = _train(tmp_path, tag="1")
    state = tmp_path / "w0" / "run" / ".checkpoint" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and procs[0].poll() is None:
        saved = json.loads(state.read_text()) if state.is_file() else {}
        if saved.get("phase") == "head" and saved.get("epoch", 0) >= 1:
            break
        time.sleep(0.1)
    assert procs[0].poll() is None and procs[1].poll() is None, "finished before a worker could be killed"
    procs[1].send_signal(signal.SIGKILL)   # a preempted machine: no clean-up of any kind
    t_kill = time.time()
    code = wait_all(procs[:1], 300)[0]
    procs[1].wait()
    survivor = (tmp_path / "w0" / "stderr1").read_text()
    # The chief is not left hanging in a collective: it ends in bounded time, one line, retryable exit code.
    assert code == 138, survivor[-2000:]
    assert time.time() - t_kill < 180
    assert survivor.strip().splitlines()[-1].startswith("edgecls: error: worker 0: lost the other workers")
    assert "Traceback" not in survivor
    saved = json.loads(state.read_text())

    # The launcher restarts the workers with the same command: the run continues from the chief's checkpoint.
    procs = _train(tmp_path, tag="2")
    codes = wait_all(procs)
    err = [(tmp_path / f"w{i}" / "stderr2").read_text() for i in (0, 1)]
    assert codes == [0, 0], [e[-2000:] for e in err]
    assert "continuing the unfinished run" in err[0]
    meta = json.loads((tmp_path / "w0" / "run" / "run.json").read_text())
    assert meta["status"] == "complete"
    # The epochs before the kill are kept as they were (their timings too), the rest follow: not restarted.
    assert meta["history"][:len(saved["history"])] == saved["history"]
    assert [(h["phase"], h["epoch"]) for h in meta["history"]] == [("head", 1), ("head", 2), ("head", 3),
                                                                    ("finetune", 1)]
    # Nothing outside its TMPDIR; there, the killed one's scratch run folder was removed by its restart (what
    # is left is TensorFlow's own: the killed process's autograph files).
    w1 = _files(tmp_path / "w1")
    assert [f for f in w1 if not f.startswith("tmp/")] == ["stderr1", "stderr2", "stdout1", "stdout2", "tmp"]
    assert not [f for f in w1 if "edgecls" in f or f.endswith(".h5")], w1


def test_resume_flag_of_a_multiworker_run_names_the_restart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": "edgecls-run", "status": "running",
                                              "config": {"strategy": "multiworker"}}))
    r = cli("train", "--resume", run)
    assert r.returncode == 2 and "run the command that started the run again, on every worker" in r.stderr, r.stderr


def test_a_cluster_tf_config_beside_another_strategy_is_named(tmp_path):
    """A TFJob pod whose command forgot --strategy multiworker: each worker would train alone; the user is told.
    (--out is refused right after, so no training runs here.)"""
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("not a run")
    r = cli("train", DIGITS, "--out", tmp_path / "taken", env={"TF_CONFIG": _tf_config([1, 2], 0)})
    assert r.returncode == 2
    assert "TF_CONFIG lists 2 workers but --strategy is auto" in r.stderr, r.stderr


def test_time_budget_is_refused_with_multiworker(tmp_path):
    """Each worker would re-plan the fine-tune epochs by its own clock, and workers that disagree deadlock."""
    r = cli("train", DIGITS, "--out", tmp_path / "run", "--strategy", "multiworker", "--time-budget", "5",
            env={"TF_CONFIG": _tf_config([1, 2], 0)})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--time-budget is planned by one machine's clock" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["EDGECLS_STARTUP_TIMEOUT", "EDGECLS_COLLECTIVE_TIMEOUT"])
def test_bad_startup_timeout_is_one_line(tmp_path, name):
    r = cli("train", DIGITS, "--out", tmp_path / "run", "--strategy", "multiworker",
            env={"TF_CONFIG": _tf_config([1, 2], 0), name: "soon"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and f"{name} must be a number" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_a_worker_whose_peers_never_start_gives_up_in_time(tmp_path):
    """Worker 0 of two, the other never started (a pod left pending, a wrong address): within
    EDGECLS_STARTUP_TIMEOUT it says so in one line and ends by SIGUSR1 (exit status 138 to a shell or a launcher, the
    code TFJob retries), writing nothing."""
    port, absent = _free_ports(2)
    cwd = tmp_path / "w0"
    (cwd / "tmp").mkdir(parents=True)
    env = dict(os.environ, TF_CONFIG=_tf_config([port, absent], 0), TMPDIR=str(cwd / "tmp"),
               EDGECLS_STARTUP_TIMEOUT="8", **ONE_CPU_ENV)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edgecls", "train", DIGITS, "--out", "run", *ARGS], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == -signal.SIGUSR1, (r.returncode, r.stderr[-2000:])
    assert last.startswith("edgecls: error: worker 0") and "did not all start within 8 s" in last, last
    assert took < 120, took   # TensorFlow's import plus the 8 s, not a wait for ever
    assert not (cwd / "run").exists() and not list((cwd / "tmp").iterdir())

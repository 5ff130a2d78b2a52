"""`train --strategy multiworker` on photo counts and batch sizes that do not split evenly between the workers
(issue 35), and a worker's own failure told apart from a lost peer. Real worker processes on 127.0.0.1, started
by the helpers of tests/test_train_multiworker.py."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DIGITS, SHARED
from test_train_multiworker import ARGS, start_workers, wait_all

FLOWERS = SHARED / "data" / "flowers"


def _photo_folder(folder: Path, counts: dict[str, int]) -> Path:
    """A class folder per flower kind, holding links to the first `count` of its photos."""
    for kind, count in counts.items():
        (folder / kind).mkdir(parents=True)
        for photo in sorted((FLOWERS / kind).glob("*.jpg"))[:count]:
            (folder / kind / photo.name).symlink_to(photo)
    return folder


def _stderr(base: Path, i: int, tag: str = "") -> str:
    return (base / f"w{i}" / f"stderr{tag}").read_text()


# ---------------------------------------------------------------- every replica gets photos of every batch

SHARD_SCRIPT = """
import json, sys, numpy as np
from edgecls.train.tfenv import import_tf
from edgecls.train import multiworker
from edgecls.train.data import make_dataset
from edgecls.train.split_input import ArraySplit
tf, keras = import_tf()
s = multiworker.strategy(tf)
seen = []
for n, batch, training in json.loads(sys.argv[1]):
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    ds = make_dataset(tf, keras, ArraySplit(x, np.arange(n) % 3), 3, batch, training, False, 1, s.num_replicas_in_sync)
    steps = []
    for b in s.experimental_distribute_dataset(ds):
        local = [s.experimental_local_results(part)[0].numpy() for part in b]   # this worker's one replica
        steps.append({"photos": local[0][:, 0, 0, 0].tolist(), "labels": local[1].sum(1).tolist(),
                      "weights": local[2].tolist() if len(local) > 2 else None})
    seen.append(steps)
print(json.dumps(seen))
"""
# (photos, --batch-size, training): epochs that tf.data alone would end with a batch of 5 (2, 2, 1 and 0 photos
# for the 4 workers) or 10 (3, 3, 3, 1), a --batch-size that is no multiple of 4 (9: 3, 3, 3, 0), one smaller
# than the workers (2: 1, 1, 0, 0).
CASES = [(37, 8, True), (37, 8, False), (42, 32, True), (42, 32, False), (9, 9, True), (7, 2, False)]


@pytest.mark.slow
def test_every_worker_gets_an_even_share_of_every_batch(tmp_path):
    """Four workers (the most a run is promised to take): each step every worker gets the same, non-zero number
    of photos; training drops the fewer-than-4 photos that would end the epoch, none twice; an evaluation takes
    every photo exactly once, and its copies (labels all zero) weigh 0."""
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    procs = start_workers(tmp_path, [script, json.dumps(CASES)], n=4)
    assert wait_all(procs, 400) == [0] * 4, [_stderr(tmp_path, i)[-2000:] for i in range(4)]
    runs = [json.loads((tmp_path / f"w{i}" / "stdout").read_text()) for i in range(4)]
    for c, (n, batch, training) in enumerate(CASES):
        steps = [run[c] for run in runs]
        per_step = {tuple(len(s["photos"]) for s in worker) for worker in zip(*steps)}
        assert len({len(w) for w in steps}) == 1, (n, batch, "workers took different numbers of steps")
        assert all(len(set(sizes)) == 1 and sizes[0] >= 1 for sizes in per_step), (n, batch, per_step)
        assert max(len(s["photos"]) for w in steps for s in w) <= max(1, batch // 4), (n, batch)
        rows = [row for w in steps for s in w for row in zip(s["photos"], s["labels"], s["weights"] or s["labels"])]
        photos = [p for p, label, _ in rows if label == 1]
        copies = [weight for _, label, weight in rows if label == 0]   # labels all zero
        if training:
            assert len(photos) == len(set(photos)) == n - n % 4 and not copies, (n, batch)
        else:
            assert sorted(photos) == list(range(n)) and copies == [0.0] * (-n % 4), (n, batch, copies)


# ---------------------------------------------------------------- a real uneven set, against one worker

def test_an_evaluation_with_copies_measures_only_the_photos(tmp_path):
    """Loss and accuracy of a padded multiworker evaluation (3 replicas: 10 photos + 2 copies) are those of
    the photos alone, as Keras computes them without copies: the copies' weight and label rule them out."""
    from edgecls.train.data import make_dataset, photo_accuracy
    from edgecls.train.split_input import ArraySplit
    from edgecls.train.tfenv import import_tf

    tf, keras = import_tf()
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 256, (10, 2, 2, 3), dtype=np.uint8), rng.integers(0, 3, 10))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(),
                              keras.layers.Rescaling(1 / 255), keras.layers.Dense(3, activation="softmax")])
    model.compile(loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1), metrics=[photo_accuracy(keras)])
    plain, padded = (make_dataset(tf, keras, split, 3, 4, False, False, 1, replicas) for replicas in (1, 3))
    assert len(list(padded.unbatch())) == 12
    loss, acc = model.evaluate(plain, verbose=0)
    loss_p, acc_p = model.evaluate(padded, verbose=0)
    assert abs(loss - loss_p) < 1e-6 and acc == acc_p and round(acc * 10, 6) == round(acc * 10)
    assert acc not in (0.0, 1.0)   # a measure the copies could have changed
    pred = model.predict(plain, verbose=0)
    assert np.allclose(model.predict(padded, verbose=0)[:10], pred)


@pytest.mark.slow
def test_an_uneven_set_trains_on_two_workers_as_on_one(tmp_path, keras_home):
    """Issue 35: 2 flower kinds, 80 and 59 photos: 97 train photos = 3 x 32 + 1, so the last global batch holds
    one photo for two workers; 21 val and 21 test photos (odd: padded). The run completes, and its fine-tuned
    val accuracy and its test accuracy each lie in the 95% binomial (Wilson) interval of one worker's on the
    same 21 photos: the noise a split of that size has."""
    import subprocess

    from edgecls.metrics import wilson_interval

    data = _photo_folder(tmp_path / "flowers", {"daisy": 80, "dandelion": 59})
    recipe = ["--img-size", "96", "--epochs", "40", "--fine-tune-epochs", "1", "--batch-size", "32",
              "--patience", "50"]   # 40 head epochs on features cost seconds, and leave it well above chance
    (tmp_path / "one").mkdir()
    one = subprocess.Popen([sys.executable, "-m", "edgecls", "train", data, "--out", "run", *recipe, "--strategy",
                            "none"], cwd=tmp_path / "one", text=True, stderr=open(tmp_path / "one" / "stderr", "w"),
                           stdout=subprocess.DEVNULL)
    two = start_workers(tmp_path, ["-m", "edgecls", "train", data, "--out", "run", *recipe,
                                   "--strategy", "multiworker"])
    codes = wait_all([one, *two], 900)
    assert codes == [0, 0, 0], [(tmp_path / "one" / "stderr").read_text()[-1500:],
                                *[_stderr(tmp_path, i)[-1500:] for i in (0, 1)]]
    metas = [json.loads((tmp_path / d / "run" / "run.json").read_text()) for d in ("one", "w0")]
    sizes = metas[1]["dataset"]["split_sizes"]
    assert sizes == {"train": 97, "val": 21, "test": 21} and sizes["train"] % 32 == 1
    assert metas[1]["training"]["workers"] == 2 and metas[1]["history"][-1]["phase"] == "finetune"
    n = 21
    tuned = [round(m["history"][-1]["val_accuracy"] * n, 3) for m in metas]
    assert tuned[1] == int(tuned[1]), tuned   # a share of the 21 val photos: the copy is not counted
    tested = [round(m["metrics"]["test"]["accuracy"] * n) for m in metas]
    for (k_one, k_two) in (tuned, tested):
        low, high = wilson_interval(int(k_one), n)
        assert low <= k_two / n <= high, (tuned, tested, n, (low, high))


# ---------------------------------------------------------------- a worker's own failure is not a lost peer

def test_an_op_error_is_a_lost_peer_only_when_a_peer_was_lost(monkeypatch):
    from edgecls.train.cluster import Cluster, PeerLost, WorkerFailed, op_failure
    from edgecls.train.tfenv import import_tf

    tf, _ = import_tf()
    me = Cluster("worker", 1, 2)
    stack = ("Graph execution error:\n\nDetected at node a/b defined at (most recent call last):\n"
             "  File \"x.py\", line 1, in f\n\n{}\n\t [[{{{{node a/b}}}}]] [Op:__inference_train_function_1]")
    bad = tf.errors.InvalidArgumentError(None, None, stack.format("input depth must be evenly divisible"))
    monkeypatch.delenv("EDGECLS_DEBUG", raising=False)
    own = op_failure(me, bad)
    assert type(own) is WorkerFailed and own.exit_code == 1
    assert str(own).startswith("worker 1: training failed (InvalidArgumentError: input depth must be evenly")
    lost = op_failure(me, tf.errors.UnavailableError(None, None, stack.format("Socket closed")))
    assert type(lost) is PeerLost and lost.exit_code == 138 and "(UnavailableError: Socket closed)" in str(lost)
    monkeypatch.setenv("EDGECLS_DEBUG", "1")   # the traceback: the error itself goes on up
    with pytest.raises(tf.errors.InvalidArgumentError):
        op_failure(me, bad)


@pytest.mark.slow
def test_a_worker_whose_own_photos_break_exits_1_naming_the_error(tmp_path, keras_home):
    """Worker 1's copy of the photos turns unreadable after the data check (--cache none: decoded every epoch):
    it says what failed and exits 1, which TFJob's ExitCode policy does not retry; worker 0, whose peer
    closed its socket, has lost it: 138."""
    for i in (0, 1):   # each worker its own folder of photos, at the same relative path
        for cls in ("0", "1"):
            (tmp_path / f"w{i}" / "data" / cls).mkdir(parents=True)
            for photo in sorted((DIGITS / cls).iterdir())[:12]:
                (tmp_path / f"w{i}" / "data" / cls / photo.name).symlink_to(photo)
    procs = start_workers(tmp_path, ["-m", "edgecls", "train", "data", "--out", "run", *ARGS, "--cache", "none"])
    state = tmp_path / "w0" / "run" / ".checkpoint" / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and procs[0].poll() is None and not state.is_file():
        time.sleep(0.05)
    assert procs[1].poll() is None, _stderr(tmp_path, 1)[-2000:]
    for photo in (tmp_path / "w1" / "data").rglob("*.*"):   # the head is trained: fine-tuning reads them again
        photo.unlink()
        photo.write_bytes(b"not a photo")
    codes = wait_all(procs, 300)
    err = [_stderr(tmp_path, i) for i in (0, 1)]
    last = [e.strip().splitlines()[-1] for e in err]
    assert codes == [138, 1], (codes, last)
    assert last[1].startswith("edgecls: error: worker 1: training failed ("), last[1]
    assert "cannot identify image file" in last[1] and "lost the other workers" not in err[1], last[1]
    assert last[0].startswith("edgecls: error: worker 0: lost the other workers (UnavailableError"), last[0]
    assert "Traceback" not in err[0] + err[1]

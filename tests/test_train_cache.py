"""`train --cache memory|disk|none`: the same pixels from every mode, a disk cache that resumes and goes away."""
import json
import os

import numpy as np

from edgecls.dataset import scan
from edgecls.train.config import TrainConfig

from conftest import DIGITS, cli, train_then_interrupt


def _few_digits(per_class: int) -> list[tuple[str, int]]:
    items, seen = [], {}
    for rel, y in scan(DIGITS, check=False).items:
        if seen.get(y, 0) < per_class:
            seen[y] = seen.get(y, 0) + 1
            items.append((rel, y))
    return items


def test_every_cache_mode_gives_the_memory_pixels_and_labels(tmp_path, shared):
    from edgecls.train.data import make_dataset
    from edgecls.train.split_input import ArraySplit, DiskSplit, open_splits, resolve_cache
    from edgecls.train.tfenv import import_tf

    spec = TrainConfig(data_dir=str(DIGITS), img_size=96).preprocess_spec()
    parts = {"train": _few_digits(3), "val": [], "test": []}
    n = len(parts["train"])
    splits = {mode: open_splits(mode, DIGITS, parts, spec, tmp_path / ".cache", "hash", quiet=True)["train"]
              for mode in ("memory", "disk", "none")}
    assert isinstance(splits["memory"], ArraySplit) and isinstance(splits["disk"], DiskSplit)
    cache_files = list((tmp_path / ".cache").iterdir())
    built_at = cache_files[0].stat().st_mtime_ns
    assert [f.stat().st_size for f in cache_files] == [n * 96 * 96 * 3]   # one complete file, no leftovers
    order = np.random.default_rng(0).permutation(n)
    expected = splits["memory"].read(order)
    assert expected.dtype == np.uint8 and expected.shape == (n, 96, 96, 3) and expected.std() > 10
    for mode in ("disk", "none"):
        assert np.array_equal(splits[mode].labels, splits["memory"].labels)
        assert np.array_equal(splits[mode].read(order), expected), mode
        assert np.array_equal(splits[mode].read(np.arange(n)), splits["memory"].x), mode

    # Through the pipeline training and evaluation read (no shuffling: the same order for every mode).
    tf, keras = import_tf()
    batches = {mode: list(make_dataset(tf, keras, s, 10, 8, False, False, 0).as_numpy_iterator())
               for mode, s in splits.items()}
    for mode in ("disk", "none"):
        assert len(batches[mode]) == len(batches["memory"]) == -(-n // 8)
        for (x, y), (x0, y0) in zip(batches[mode], batches["memory"]):
            assert x.dtype == np.float32 and np.array_equal(x, x0) and np.array_equal(y, y0), mode
    # Shuffled for training: each epoch a permutation of every photo, the same one for the same seed.
    sums = {mode: [x.sum(axis=(1, 2, 3)) for x, _ in make_dataset(tf, keras, s, 10, 8, True, False, 5).as_numpy_iterator()]
            for mode, s in splits.items() if mode != "none"}
    assert sorted(np.concatenate(sums["disk"])) == sorted(splits["memory"].x.astype(np.float32).sum(axis=(1, 2, 3)))
    assert np.array_equal(np.concatenate(sums["disk"]), np.concatenate(sums["memory"]))

    # A complete cache is reused as it is; a truncated one is rebuilt whole.
    path = cache_files[0]
    again = open_splits("disk", DIGITS, parts, spec, tmp_path / ".cache", "hash", quiet=True)["train"]
    assert again.path == path and path.stat().st_mtime_ns == built_at
    os.truncate(path, path.stat().st_size // 2)
    rebuilt = open_splits("disk", DIGITS, parts, spec, tmp_path / ".cache", "hash", quiet=True)["train"]
    assert np.array_equal(rebuilt.read(np.arange(n)), splits["memory"].x)
    for s in (*splits.values(), again, rebuilt):
        s.close()

    # auto: memory while every split together is below 1.5 GB of pixels (27,648 bytes a photo at 96 px)
    assert resolve_cache("auto", 54_000, spec) == "memory" and resolve_cache("auto", 55_000, spec) == "disk"
    assert resolve_cache("none", 10, spec) == "none"


def test_a_bad_cache_value_is_one_line(tmp_path, shared):
    out = tmp_path / "run"
    r = cli("train", DIGITS, "--out", out, "--cache", "ram")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["edgecls: error: --cache must be one of auto, memory, disk, none, "
                                             "not 'ram'"], r.stderr
    assert not out.exists()


def test_a_disk_cached_run_resumes_on_its_cache_and_leaves_none_behind(tmp_path, keras_home):
    out = tmp_path / "run"
    r = train_then_interrupt(out, DIGITS, "--img-size", "96", "--epochs", "3", "--fine-tune-epochs", "1",
                             "--max-images-per-class", "10", "--patience", "10", "--cache", "disk")
    assert r.returncode == 130, r.stderr[-2000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["training"]["cache"] == "disk" and meta["training"]["decoded_bytes"] == 100 * 96 * 96 * 3
    sizes = {s: len(v) for s, v in json.loads((out / "splits.json").read_text()).items() if s in ("train", "val", "test")}
    files = {f.name.split("-")[0]: f for f in (out / ".cache").glob("*.u8")}
    assert {s: f.stat().st_size for s, f in files.items()} == {s: n * 96 * 96 * 3 for s, n in sizes.items()}
    # As if the run had been killed while writing the val cache: that one must be rebuilt, the others reused.
    os.truncate(files["val"], 96 * 96 * 3)
    r = cli("train", "--resume", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reusing the train cache" in r.stderr and "reusing the test cache" in r.stderr
    assert "reusing the val cache" not in r.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["training"]["cache"] == "disk"
    assert [h["phase"] for h in meta["history"]] == ["head"] * 3 + ["finetune"]
    assert meta["metrics"]["test"]["n"] == sizes["test"] and meta["metrics"]["val"]["n"] == sizes["val"]
    assert not (out / ".cache").exists() and not (out / ".checkpoint").exists()

"""Finding, checking and splitting images: real files with the quirks real folders have (no TensorFlow)."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecls.dataset import scan, split
from edgecls.errors import EdgeclsError
from edgecls.images import load_rgb

from conftest import DIGITS


def _copy_digits(dest: Path, classes=("0", "1", "2"), per_class=8) -> Path:
    for c in classes:
        (dest / c).mkdir(parents=True)
        for f in sorted((DIGITS / c).iterdir())[:per_class]:
            shutil.copy(f, dest / c / f.name)
    return dest


@pytest.fixture
def quirky(tmp_path, shared) -> Path:
    root = _copy_digits(tmp_path / "data")
    src = load_rgb(next((DIGITS / "0").iterdir()))
    Image.fromarray(src).convert("L").save(root / "0" / "gray.png")
    Image.fromarray(src).convert("RGBA").save(root / "0" / "rgba.PNG")
    Image.fromarray(src).convert("CMYK").save(root / "1" / "cmyk.jpeg")
    Image.fromarray(src).save(root / "1" / "bitmap.BMP")
    (root / "1" / "notes.txt").write_text("not an image")
    (root / "2" / "truncated.jpg").write_bytes((DIGITS / "2" / sorted(p.name for p in (DIGITS / "2").iterdir())[0]).read_bytes()[:300])
    (root / "2" / "empty.JPG").write_bytes(b"")
    (root / "README.md").write_text("top-level file")
    return root


def test_scan_skips_bad_files_and_names_them(quirky):
    s = scan(quirky)
    assert s.classes == ["0", "1", "2"]
    skipped = dict(s.skipped)
    assert set(skipped) == {"README.md", "1/notes.txt", "2/truncated.jpg", "2/empty.JPG"}
    assert "not an image" in skipped["1/notes.txt"] and "unreadable" in skipped["2/truncated.jpg"]
    counts = s.class_counts()
    assert counts == {"0": 10, "1": 10, "2": 8}   # gray/rgba and cmyk/bmp accepted in any case of extension
    for rel, _ in s.items:
        img = load_rgb(quirky / rel)
        assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise for display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").shape[:2] == (40, 20)


def test_huge_original_from_the_shared_set_loads(shared):
    big = [p for p in (DIGITS / "7").iterdir() if p.stat().st_size > 500_000]
    assert big, "the shared set has a few 3024x3024 originals in class 7"
    assert load_rgb(big[0]).shape[0] >= 3000


def test_split_is_deterministic_stratified_and_disjoint(quirky):
    s = scan(quirky)
    a = split(s, 0.25, 0.25, seed=7)
    b = split(scan(quirky), 0.25, 0.25, seed=7)
    c = split(s, 0.25, 0.25, seed=8)
    assert a == b
    assert a != c
    files = [set(r for r, _ in a[k]) for k in ("train", "val", "test")]
    assert not (files[0] & files[1] or files[0] & files[2] or files[1] & files[2])
    assert sum(map(len, files)) == len(s.items)
    for y in range(3):  # every class appears in every split
        assert all(any(lab == y for _, lab in a[k]) for k in ("train", "val", "test"))


def test_adding_a_class_does_not_reshuffle_the_others(quirky, shared):
    before = split(scan(quirky), 0.25, 0.25, seed=3)
    _copy_digits(quirky, classes=("5",))
    after = split(scan(quirky), 0.25, 0.25, seed=3)
    for k in ("train", "val", "test"):
        assert [r for r, _ in before[k]] == [r for r, _ in after[k] if not r.startswith("5/")]


def test_presplit_layout_is_used_as_given(tmp_path, shared):
    for part, n in (("train", 6), ("val", 2), ("test", 2)):
        _copy_digits(tmp_path / "d" / part, per_class=n)
    s = scan(tmp_path / "d")
    parts = split(s, 0.15, 0.15, seed=1)
    assert {k: len(v) for k, v in parts.items()} == {"train": 18, "val": 6, "test": 6}
    assert all(r.startswith("val/") for r, _ in parts["val"])


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "not found"),
    (lambda d: d.mkdir(), "no class folders"),
    (lambda d: _copy_digits(d, classes=("0",)), "only one class"),
    (lambda d: (_copy_digits(d, classes=("0", "1")), (d / "2").mkdir(), (d / "2" / "x.jpg").write_bytes(b"junk")),
     "no valid images: 2"),
])
def test_bad_data_folders_raise_one_clear_error(tmp_path, shared, make, message):
    d = tmp_path / "data"
    make(d)
    with pytest.raises(EdgeclsError, match=message):
        scan(d)


def test_eval_mode_rejects_unknown_classes(tmp_path, shared):
    d = _copy_digits(tmp_path / "d", classes=("0", "1", "9"))
    (d / "9").rename(d / "x")
    with pytest.raises(EdgeclsError, match="does not know: x"):
        scan(d, classes=["0", "1"])

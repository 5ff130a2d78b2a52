"""Issue 27, the data loop on a hostile disk: a full disk under collect, keep and a label click, two file systems
for the keep folder and DATA_DIR, an over-long label, a click onto a name that is taken, and what a SIGKILL
leaves behind. Real tmpfs mounts (tests run as root; in CI they must), real processes killed with SIGKILL, the
real `edgecls` in subprocesses and the page's real HTTP server.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

import edgecls.device.data.photos as photos
from edgecls.device.data.photos import MAX_LABEL_BYTES, move_photo, save_photo
from edgecls.device.data.webui import WebUi
from edgecls.fsutil import WriteError

from test_device_events import BUNDLE
from test_device_labelling import LABELS, assert_whole, held_out, request, tree, video  # noqa: F401 (fixtures)
from test_device_run import edgecls, json_lines, one_line_error
from test_reliability_device import tmpfs

PAGE = 4096   # tmpfs counts whole pages


def noise_jpeg(side: int, seed: int = 0) -> bytes:
    """A JPEG that does not compress (noise): its size on a tmpfs is known in advance."""
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", rng.integers(0, 256, (side, side, 3), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])[1]


def kept_photo(keep: Path, side: int = 160, seed: int = 0) -> Path:
    bgr = cv2.imdecode(noise_jpeg(side, seed), cv2.IMREAD_COLOR)
    return save_photo(keep, bgr, {"time": "t", "source": "cam", "frame": seed, "by": "keep",
                                  "model": {"label": "1", "confidence": 0.5}})


def leave_free(disk: Path, pages: int) -> None:
    """Fill the tmpfs at `disk` until exactly `pages` pages are free."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize // PAGE
    assert free >= pages
    (disk / "filler").write_bytes(b"\0" * ((free - pages) * PAGE))
    st = os.statvfs(disk)
    assert st.f_bavail * st.f_frsize // PAGE == pages


def pages(n_bytes: int) -> int:
    return -(-n_bytes // PAGE)


# --- item 4: keep and DATA_DIR on two file systems, the second full ------------------------------------------

def test_a_move_across_file_systems_onto_a_full_disk_leaves_the_old_pair_and_no_sidecar(tmp_path):
    with tmpfs(tmp_path / "keep", "size=1m") as keep, tmpfs(tmp_path / "data", "size=1m") as data:
        photo = kept_photo(keep)
        side_before, photo_before = photo.with_suffix(".json").read_bytes(), photo.read_bytes()
        (data / "3").mkdir()
        ui = WebUi("127.0.0.1", 0, LABELS, data, keep, live=False, log=lambda m: None)
        try:
            # no room for the photo (the repro: the old move wrote the sidecar, then failed on the photo), then
            # room for the photo but not its sidecar: a failure at either point leaves the old pair and nothing new
            for free in (pages(len(photo_before)) - 1, pages(len(photo_before))):
                (data / "filler").unlink(missing_ok=True)
                leave_free(data, free)
                code, out = request(ui, "POST", "/api/label", {"name": photo.name, "label": "3"})
                assert tree(data / "3") == [], (free, out)
                assert code >= 400 and "disk full" in out["error"] and str(data / "3") in out["error"], (free, out)
                assert photo.read_bytes() == photo_before and photo.with_suffix(".json").read_bytes() == side_before
            # the same through the function, as a WriteError that says the disk is full
            try:
                move_photo(photo, data / "3", {"label": "3"})
                raise AssertionError("no error on a full disk")
            except WriteError as e:
                assert e.disk_full and e.folder == data / "3"
            # room again: the pair is copied whole to the other file system, then removed from the keep folder
            (data / "filler").unlink()
            code, out = request(ui, "POST", "/api/label", {"name": photo.name, "label": "3"})
            assert code == 200 and out == {"moved_to": f"3/{photo.name}"}, out
        finally:
            ui.close()
        assert tree(keep) == [] and tree(data / "3") == sorted([photo.name, photo.stem + ".json"])
        assert (data / "3" / photo.name).read_bytes() == photo_before
        side = json.loads((data / "3" / photo.with_suffix(".json").name).read_text())
        assert side["label"] == "3" and side["by"] == "keep" and side["labelled_by"] == "ui"


# --- item 5: collect on a full disk, and a label too long for a file name --------------------------------------

def test_collect_onto_a_full_disk_is_one_line_and_the_photos_before_it_are_whole(video, tmp_path):
    with tmpfs(tmp_path / "disk", "size=64k") as disk:
        p = edgecls("collect", disk / "data", "--source", video, "--label", "a", "--json")
        one_line_error(p, "disk full: cannot write in " + str(disk / "data" / "a"))
        saved = assert_whole(disk / "data" / "a")   # every photo decodes and has its sidecar; no temporary file
        assert 1 <= len(saved) < 30 and f"the {len(saved)} photo(s) saved before it are whole" in p.stderr


def test_collect_with_a_300_byte_label_is_one_line_and_writes_nothing(video, tmp_path):
    data = tmp_path / "data"
    label = "日" * 100   # 100 characters, 300 bytes: more than a file name may have
    one_line_error(edgecls("collect", data, "--source", video, "--label", label, "--count", "1"),
                   f"is 300 bytes as a folder name: a class name may be at most {MAX_LABEL_BYTES} bytes")
    assert not data.exists()
    fits = "日" * (MAX_LABEL_BYTES // 3)   # the longest that fits is taken
    p = edgecls("collect", data, "--source", video, "--label", fits, "--count", "1")
    assert p.returncode == 0, p.stderr
    assert len(assert_whole(data / fits)) == 1


# --- item 7: what a SIGKILL leaves, cleaned at the next start of collect, keep and the page --------------------

STUCK_SAVE = ("import os, sys, time\n"
              "from pathlib import Path\n"
              "import numpy as np\n"
              "from edgecls.device.data.photos import save_photo\n"
              "def stuck(fd):\n"
              "    print('ready', flush=True)\n"
              "    time.sleep(600)\n"
              "os.fsync = stuck   # the real save, held where its first temporary file is written, before its rename\n"
              "save_photo(Path(sys.argv[1]), np.zeros((64, 64, 3), np.uint8), {'by': 'collect'})\n")


def save_held_half_way(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", STUCK_SAVE, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def leftovers_of_a_killed_and_a_live_save(folder: Path) -> tuple[subprocess.Popen, list[str], list[str]]:
    """In `folder`: the temporary file of a save killed half-way (SIGKILL), an old version's sidecar whose photo
    was never written, and what must stay — a live save's temporary file, a user's own JSON files. Returns (the
    live process, the names that must go, the names that must stay)."""
    folder.mkdir(parents=True, exist_ok=True)
    killed = save_held_half_way(folder)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    dead = sorted(n for n in os.listdir(folder) if f".{killed.pid}." in n)
    assert len(dead) == 1 and dead[0].startswith(".") and dead[0].endswith(".tmp"), dead
    orphan = {"time": "2026-12-05T07:00:00.000+00:00", "source": "cam", "frame": 3, "by": "collect",
              "camera": {}, "width": 64, "height": 64}
    (folder / "20261205-070000-000-abcdef.json").write_text(json.dumps(orphan))
    (folder / "notes.json").write_text(json.dumps({"by": "me", "time": "yesterday"}))   # not edgecls's
    (folder / "20261205-070000-000-fedcba.json").write_text(json.dumps({**orphan, "by": "someone"}))
    live = save_held_half_way(folder)
    mine = sorted(n for n in os.listdir(folder) if f".{live.pid}." in n)
    assert len(mine) == 1
    return live, dead + ["20261205-070000-000-abcdef.json"], mine + ["notes.json", "20261205-070000-000-fedcba.json"]


def stop(p: subprocess.Popen) -> None:
    p.kill()
    p.wait()


def test_leftovers_of_a_killed_save_are_cleaned_at_the_next_collect_and_keep_but_not_a_live_ones(video, tmp_path):
    data = tmp_path / "data"
    live, gone, stay = leftovers_of_a_killed_and_a_live_save(data / "a")
    try:
        p = edgecls("collect", data, "--source", video, "--label", "a", "--count", "2")
        assert p.returncode == 0, p.stderr
        assert f"removed 2 leftover(s) of an interrupted edgecls in {data / 'a'}" in p.stderr
        names = os.listdir(data / "a")
        assert not set(gone) & set(names) and set(stay) <= set(names), names
        assert len([n for n in names if n.endswith(".jpg")]) == 2
    finally:
        stop(live)
    keep = tmp_path / "keep"
    live, gone, stay = leftovers_of_a_killed_and_a_live_save(keep)
    try:
        p = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-below", "0.01")
        assert p.returncode == 0, p.stderr
        names = os.listdir(keep)
        assert not set(gone) & set(names) and set(stay) <= set(names), names
    finally:
        stop(live)


def test_leftovers_are_cleaned_when_the_page_starts(tmp_path):
    from test_device_events import free_port

    data, keep = tmp_path / "data", tmp_path / "keep"
    live_a, gone_a, stay_a = leftovers_of_a_killed_and_a_live_save(data / "cat")
    live_k, gone_k, stay_k = leftovers_of_a_killed_and_a_live_save(keep)
    page = subprocess.Popen([sys.executable, "-m", "edgecls", "ui", str(data), "--keep", str(keep), "--port",
                             str(free_port())], stderr=subprocess.PIPE, text=True)
    try:
        assert "web page on" in page.stderr.readline()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and set(gone_a + gone_k) & set(os.listdir(data / "cat") + os.listdir(keep)):
            time.sleep(0.1)
        for folder, gone, stay in ((data / "cat", gone_a, stay_a), (keep, gone_k, stay_k)):
            names = os.listdir(folder)
            assert not set(gone) & set(names) and set(stay) <= set(names), (folder, names)
    finally:
        page.send_signal(signal.SIGTERM)
        page.communicate(timeout=20)
        stop(live_a)
        stop(live_k)


HOLD_TEMPS = ("import sys, time\n"
              "from edgecls.fsutil import atomic_dir, temp_file\n"
              "with atomic_dir(sys.argv[1] + '/bundle-' + sys.argv[2], overwrite=True):\n"
              "    temp_file(sys.argv[1], '.clip-' + sys.argv[2] + '.', '.avi')   # as --save names its video\n"
              "    print('ready', flush=True)\n"
              "    time.sleep(600)\n")


def test_a_dead_exports_folder_and_hidden_video_go_whatever_the_next_output_is_called(tmp_path):
    from edgecls.fsutil import atomic_dir, temp_file

    def hold(name: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD_TEMPS, str(tmp_path), name], stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "ready"
        return p

    live = hold("live")   # (first: a process starting cleans the dead ones' leftovers)
    killed = hold("old")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    try:
        before = sorted(os.listdir(tmp_path))
        assert len([n for n in before if f".{killed.pid}." in n]) == 2, before
        with atomic_dir(tmp_path / "bundle-new") as tmp:   # another name than the killed export's
            (tmp / "edgecls.json").write_text("{}")
        temp_file(tmp_path, ".clip-new.", ".avi").unlink()   # another name than the killed recording's
        after = sorted(os.listdir(tmp_path))
        assert not [n for n in after if f".{killed.pid}." in n], after
        assert len([n for n in after if f".{live.pid}." in n]) == 2, after   # a live one's stay
    finally:
        stop(live)


# --- item 8: keeping onto a full disk says so ---------------------------------------------------------------

def test_keep_onto_a_full_disk_says_so_once_and_the_run_goes_on(video, tmp_path):
    with tmpfs(tmp_path / "keep", "size=48k") as keep:
        p = edgecls("run", BUNDLE, video, "--json", "--keep", keep, "--keep-below", "1", "--keep-rate", "1000")
        assert p.returncode == 0, p.stderr
        recs, summary = json_lines(p.stdout)
        assert len(recs) == 30 and summary["stopped_by"] == "end of source"
        warnings = [line for line in p.stderr.splitlines() if line.startswith("edgecls: warning:")
                    and "disk full" in line]
        assert len(warnings) == 1 and f"disk full: cannot write in {keep}" in warnings[0], p.stderr
        k = summary["keep"]
        assert 1 <= k["kept"] < 30 and k["disk_dropped"] >= 1 and k["disk_error"].startswith("disk full")
        chosen = sum(r["confidence"] < 1 for r in recs)
        assert k["kept"] + k["dropped"] + k["rate_limited"] == chosen and not k["budget_reached"]
        assert f"{k['dropped']} dropped, {k['disk_dropped']} of them: disk full" in p.stderr
        assert len(assert_whole(keep)) == k["kept"]


# --- item 9: a label click, a move or a save never replaces a file --------------------------------------------

def test_a_label_click_never_replaces_an_existing_file(tmp_path, monkeypatch):
    keep, data = tmp_path / "keep", tmp_path / "data"
    keep.mkdir()
    first, second = kept_photo(keep, seed=1), kept_photo(keep, seed=2)
    cls = data / "3"
    cls.mkdir(parents=True)
    # the repro: the photo's own name is taken, and so is the name drawn for it (N-0b2e.jpg); and a sidecar
    # without its photo has the second photo's name
    taken = {cls / first.name: b"someone's photo", cls / f"{first.stem}-0b2e.jpg": b"an earlier click's photo",
             cls / f"{second.stem}.json": b'{"by": "keep", "note": "an old sidecar"}'}
    for path, content in taken.items():
        path.write_bytes(content)
    drawn = iter(["0b2e", "0b2e", "c0de", "0b2e", "beef"])
    monkeypatch.setattr(photos.secrets, "token_hex", lambda n: next(drawn))   # the random tail, made to clash
    ui = WebUi("127.0.0.1", 0, LABELS, data, keep, live=False, log=lambda m: None)
    try:
        assert request(ui, "POST", "/api/label", {"name": first.name, "label": "3"}) == \
            (200, {"moved_to": f"3/{first.stem}-c0de.jpg"})
        assert request(ui, "POST", "/api/label", {"name": second.name, "label": "3"}) == \
            (200, {"moved_to": f"3/{second.stem}-0b2e.jpg"})
    finally:
        ui.close()
    for path, content in taken.items():
        assert path.read_bytes() == content, path
    assert tree(keep) == []
    for stem in (f"{first.stem}-c0de", f"{second.stem}-0b2e"):
        assert json.loads((cls / f"{stem}.json").read_text())["label"] == "3"
        assert cv2.imread(str(cls / f"{stem}.jpg")) is not None


def test_a_save_never_replaces_an_existing_photo_or_sidecar(tmp_path, monkeypatch):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"a photo")
    (folder / "y.json").write_bytes(b"a sidecar without its photo")
    names = iter(["x", "y", "z"])
    monkeypatch.setattr(photos, "photo_name", lambda prefix="": next(names))   # the names drawn, made to clash
    saved = save_photo(folder, np.zeros((8, 8, 3), np.uint8), {"by": "collect"})
    assert saved == folder / "z.jpg" and sorted(os.listdir(folder)) == ["x.jpg", "y.json", "z.jpg", "z.json"]
    assert (folder / "x.jpg").read_bytes() == b"a photo"
    assert (folder / "y.json").read_bytes() == b"a sidecar without its photo"


def test_a_sidecar_name_taken_between_the_two_links_gives_the_photos_name_back(tmp_path, monkeypatch):
    """Another process takes NAME.json after this one linked NAME.jpg: the photo's name is given up (no photo
    left without its sidecar, no sidecar replaced) and the pair goes under the next name drawn."""
    folder = tmp_path / "a"
    folder.mkdir()
    link_new = photos.link_new

    def then_another_process(src, dest):
        link_new(src, dest)
        if Path(dest).name == "x.jpg":
            (folder / "x.json").write_bytes(b"another process's sidecar")

    monkeypatch.setattr(photos, "link_new", then_another_process)
    names = iter(["x", "z"])
    monkeypatch.setattr(photos, "photo_name", lambda prefix="": next(names))
    saved = save_photo(folder, np.zeros((8, 8, 3), np.uint8), {"by": "collect"})
    assert saved == folder / "z.jpg" and sorted(os.listdir(folder)) == ["x.json", "z.jpg", "z.json"]
    assert (folder / "x.json").read_bytes() == b"another process's sidecar"

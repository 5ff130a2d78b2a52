"""Signed fleet updates, the repository and `edgecls update` (edgecls.fleet): a real nginx on 127.0.0.1 serves the
repository `edgecls publish` writes; every refusal leaves the running slot byte-identical. The bundles are the
session's real tiny digits bundle and edited copies of it. The live side (`run --updates`) is test_fleet_live.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, cli
from fleet_fixtures import Fleet, fleet, keys, tree, variant, web  # noqa: F401  (fixtures)
from webserver import free_port


def test_publish_update_installs_then_promotes_a_newer_version(fleet, digits_bundle, tmp_path):
    v1 = fleet.publish(digits_bundle)
    r, out = fleet.update()
    assert r.returncode == 0 and out["action"] == "installed" and out["current"]["version"] == v1["version"] == 1
    assert tree((fleet.dev / "current").resolve()) == tree(digits_bundle)   # exactly the published bundle
    assert cli("verify", fleet.dev / "current").returncode == 0
    r, out = fleet.update()
    assert out["action"] == "up-to-date" and r.returncode == 0

    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    r, out = fleet.update()
    assert out["action"] == "installed" and out["current"]["version"] == 2 and out["previous"]["version"] == 1
    assert os.readlink(fleet.dev / "current") == "slots/b"
    status = json.loads(cli("status", fleet.dev, "--json").stdout)
    assert status["current"]["version"] == 2 and status["last_result"] == "installed version 2"


def _resign_with(repo: Path, other_keys: Path, role: str):
    """An attacker holding only other keys re-signs one role's newest metadata file."""
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata

    from edgecls.fleet import keys as k

    path = repo / "metadata" / "timestamp.json"
    md = Metadata.from_file(str(path))
    md.signed.version += 1
    md.signatures.clear()
    md.sign(CryptoSigner.from_priv_key_uri(f"file2:{other_keys / (role + '.pem')}", k.public_key(other_keys, role)))
    md.to_file(str(path))


BAD_CASES = ["unsigned", "wrong-signature", "tampered", "rollback", "expired", "incompatible", "exam-fails", "unreachable"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_every_bad_release_is_refused_with_its_reason_and_the_running_bundle_untouched(fleet, digits_bundle,
                                                                                       tmp_path, case):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    before, link = fleet.current(), os.readlink(fleet.dev / "current")
    bundle2 = variant(digits_bundle, tmp_path / "b2", release_note="v2")
    url, reason = None, None
    if case == "unsigned":
        fleet.publish(bundle2)
        path = fleet.repo / "metadata" / "timestamp.json"
        doc = json.loads(path.read_text())
        doc["signatures"] = []
        path.write_text(json.dumps(doc))
        reason = "not signed by the keys this device trusts"
    elif case == "wrong-signature":
        fleet.publish(bundle2)
        other = tmp_path / "other-keys"
        assert cli("keygen", other).returncode == 0
        _resign_with(fleet.repo, other, "timestamp")
        reason = "not signed by the keys this device trusts"
    elif case == "tampered":
        fleet.publish(bundle2)
        _tamper_archive_of(fleet.repo, "v2")
        reason = "differs from its signed hash or length"
    elif case == "rollback":
        saved = (fleet.repo / "metadata" / "timestamp.json").read_bytes()
        fleet.publish(bundle2)
        assert fleet.update()[1]["action"] == "installed"
        before, link = fleet.current(), os.readlink(fleet.dev / "current")
        (fleet.repo / "metadata" / "timestamp.json").write_bytes(saved)   # the server replays an older state
        reason = "older than what this device has already seen"
    elif case == "expired":
        fleet.publish(bundle2, "--timestamp-days", "0.00002")   # ~2 s
        time.sleep(2.5)
        reason = "expired"
    elif case == "incompatible":
        fleet.publish(bundle2, "--min-edgecls", "99.0")
        reason = "needs edgecls 99.0"
    elif case == "exam-fails":
        pre = json.loads((bundle2 / "edgecls.json").read_text())["preprocessing"]
        fleet.publish(variant(digits_bundle, tmp_path / "b3", preprocessing={**pre, "color_order": "BGR"}))
        reason = "fails its own exam on this device"
    elif case == "unreachable":
        url = f"http://127.0.0.1:{free_port()}/nothing"
        reason = "download failed"
    r, out = fleet.update(url=url)
    assert r.returncode == 1 and out["action"] == "refused", out
    assert reason in out["reason"], out["reason"]
    assert "Traceback" not in r.stderr
    assert fleet.current() == before and os.readlink(fleet.dev / "current") == link
    state = json.loads(cli("status", fleet.dev, "--json").stdout)
    assert reason in state["last_refusal"]["reason"]
    assert not list((fleet.dev / "slots").glob(".*")), "a refused install left a half-made slot"


class CuttingProxy:
    """Forwards to nginx but closes every connection after `limit` bytes of the reply: a download cut mid-way."""

    def __init__(self, upstream_port: int, limit: int):
        self.limit, self.upstream = limit, upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client):
        with client, socket.create_connection(("127.0.0.1", self.upstream)) as up:
            request = client.recv(65536)
            up.sendall(request)
            sent, big = 0, b"/bundles/" in request.split(b"\r\n", 1)[0]
            while chunk := up.recv(65536):
                if big and sent + len(chunk) > self.limit:
                    client.sendall(chunk[: self.limit - sent])
                    return
                client.sendall(chunk)
                sent += len(chunk)


def test_a_download_cut_mid_way_is_refused_and_retried_later(fleet, digits_bundle, tmp_path, web):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    before = fleet.current()
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    proxy = CuttingProxy(int(web[1].rsplit(":", 1)[1]), limit=20_000)
    r, out = fleet.update(url=f"http://127.0.0.1:{proxy.port}/{fleet.repo.name}")
    assert out["action"] == "refused" and "download failed" in out["reason"], out
    assert fleet.current() == before
    r, out = fleet.update()   # a network fault is not held against the release: the next poll installs it
    assert out["action"] == "installed" and out["current"]["version"] == 2


def test_a_full_disk_refuses_in_one_line_and_keeps_the_running_bundle(fleet, digits_bundle, tmp_path):
    fleet.publish(digits_bundle)
    from test_reliability_device import tmpfs

    size = sum(len(b) for b in tree(digits_bundle).values())
    with tmpfs(tmp_path / "small", f"size={int(size * 2.6)}") as fleet.dev:
        assert fleet.update()[1]["action"] == "installed"     # room for a slot and an archive, not for two slots and one
        before = fleet.current()
        fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
        r, out = fleet.update()
        assert out["action"] == "refused" and "No space left" in out["reason"], out
        assert fleet.current() == before
        assert not list((fleet.dev / "slots").glob(".*"))


KILLER = textwrap.dedent("""\
    import os, signal, sys
    from pathlib import Path
    from edgecls.fleet.update import check_once
    n, calls = int(sys.argv[3]), [0]
    real = os.replace
    def replace(a, b):          # SIGKILL at the n-th rename: each step of an install is one
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(a, b)
    os.replace = replace
    out = check_once(sys.argv[1], Path(sys.argv[2]))
    print(out.action)
    """)


@pytest.mark.slow
def test_sigkill_at_each_install_step_leaves_a_device_that_starts_on_a_good_bundle(fleet, digits_bundle, tmp_path):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    on_v1 = tmp_path / "dev-on-v1"
    shutil.copytree(fleet.dev, on_v1, symlinks=True)
    new = variant(digits_bundle, tmp_path / "b2", release_note="v2")
    fleet.publish(new)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    n = 1
    while True:
        shutil.rmtree(fleet.dev)
        shutil.copytree(on_v1, fleet.dev, symlinks=True)   # a device on version 1, the repository at version 2
        p = subprocess.run([sys.executable, str(script), fleet.url, str(fleet.dev), str(n)], capture_output=True,
                           text=True, timeout=300)
        if p.returncode == 0:
            assert p.stdout.strip() == "installed"
            break
        assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
        # The device starts: its state reads and what `current` names is a whole bundle that passes its exam.
        assert cli("status", fleet.dev).returncode == 0
        assert fleet.current() in (tree(digits_bundle), tree(new)), f"killed at rename {n}: current is neither"
        assert cli("verify", fleet.dev / "current").returncode == 0
        r, out = fleet.update()    # the next start repairs the folder and finishes the update
        assert out["action"] in ("installed", "up-to-date"), out
        assert fleet.current() == tree(new)
        assert not list((fleet.dev / "slots").glob(".*")), f"killed at rename {n}: a half-made slot stayed"
        n += 1
    assert n > 3, "an install has several renames to cut"


def test_a_staged_rollout_picks_the_same_tenth_of_devices_every_time():
    from edgecls.fleet.release import Release, in_rollout

    ids = [f"device-{i:03d}" for i in range(100)]
    r10 = Release(7, "bundles/x.tar", "id", {}, rollout_percent=10)
    picked = [d for d in ids if in_rollout(d, r10)]
    assert 3 <= len(picked) <= 19            # binomial(100, 0.1): 99.9% of draws fall here
    assert picked == [d for d in ids if in_rollout(d, r10)]       # the same ones every time
    r50 = Release(7, "bundles/x.tar", "id", {}, rollout_percent=50)
    assert set(picked) <= {d for d in ids if in_rollout(d, r50)}  # widening keeps the first ones
    assert all(in_rollout(d, Release(7, "t", "id", {}, rollout_percent=100)) for d in ids)
    assert not any(in_rollout(d, Release(7, "t", "id", {}, rollout_percent=0)) for d in ids)


def test_a_device_outside_the_rollout_waits_until_it_is_widened(fleet, digits_bundle, tmp_path):
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"), "--rollout", "0")
    assert fleet.update()[1]["action"] == "up-to-date"
    r = cli("release", fleet.repo, "--keys", fleet.keys, "--version", "2", "--rollout", "100")
    assert r.returncode == 0, r.stderr
    assert fleet.update()[1]["current"]["version"] == 2


@pytest.mark.parametrize("args,message", [
    (("publish", "{bundle}", "{tmp}/r", "--keys", "{tmp}/nokeys"), "no root public key"),
    (("publish", "{bundle}", "{tmp}/r", "--keys", "{keys}", "--rollout", "150"), "percentage"),
    (("publish", "{tmp}/notabundle", "{tmp}/r", "--keys", "{keys}"), "edgecls.json"),
    (("update", "http://127.0.0.1:9/x", "--device-dir", "{tmp}/d"), "trusts no repository yet"),
    (("release", "{tmp}/r2", "--keys", "{keys}", "--refresh"), "not an update repository"),
    (("keygen", "{keys}"), "never replaces a key"),
])
def test_bad_fleet_input_is_one_line(tmp_path, digits_bundle, keys, args, message):
    (tmp_path / "notabundle").mkdir()
    fill = {"bundle": digits_bundle, "tmp": tmp_path, "keys": keys}
    r = cli(*(a.format(**fill) for a in args))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("edgecls: error:"), r.stderr
    assert message in lines[0], lines[0]


def test_the_canary_rule_promotes_a_faithful_model_and_refuses_a_broken_or_collapsed_one():
    from edgecls.fleet.canary import judge

    scene = ["cat"] * 120 + ["dog"] * 80                    # what the running model says on 200 live frames
    faithful = [(c, c, c) for c in scene[:197]] + [("dog", "cat", "cat")] * 3
    assert judge(faithful, expected=(307, 310), floor=None).promote   # 197/200 agree: not shown below 307/310
    broken = [("dog" if i % 3 else c, c, c) for i, c in enumerate(scene)]   # int8 no longer answers as its float
    v = judge(broken, expected=(307, 310), floor=None)
    assert not v.promote and "agrees with its own float" in v.reason
    collapsed = [("dog", "dog", c) for c in scene]          # one class for everything, int8 and float alike
    v = judge(collapsed, expected=(307, 310), floor=None)
    assert not v.promote and "collapsed" in v.reason
    one_scene = [("cat", "cat", "cat")] * 200               # a camera that sees one class is not a collapse
    assert judge(one_scene, expected=(307, 310), floor=None).promote
    relabelled = [("kitty" if c == "cat" else c, "kitty" if c == "cat" else c, c) for c in scene]
    v = judge(relabelled, expected=(307, 310), floor=0.9)         # the publisher's floor vs the running model
    assert not v.promote and "publisher's floor" in v.reason
    assert judge(relabelled, expected=(307, 310), floor=None).promote


def test_the_canary_weighs_the_exports_count_as_a_sample_not_an_exact_rate():
    """A small export that measured 90 of 90 held-out photos: one flip in 40 live frames is within chance of it (it
    refused every faithful update in CI, judged against an exact 100%); five flips are not."""
    from edgecls.fleet.canary import judge

    def frames(flips):
        return [("a", "a", "a")] * (40 - flips) + [("b", "a", "a")] * flips

    assert judge(frames(1), expected=(90, 90), floor=None).promote
    v = judge(frames(5), expected=(90, 90), floor=None)
    assert not v.promote and "35 of 40 distinct live frames, shown below the 90 of 90" in v.reason, v.reason
    assert v.figures["export_agreement"] == [90, 90]


def test_a_repository_on_a_usb_stick_file_url_updates_like_one_on_a_web_server(fleet, digits_bundle, tmp_path):
    fleet.publish(digits_bundle)
    fleet.url = fleet.repo.resolve().as_uri()          # file:///…: the same files, no server
    r, out = fleet.update()
    assert out["action"] == "installed" and fleet.current() == tree(digits_bundle), (out, r.stderr)
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    _tamper_archive_of(fleet.repo, "v2")
    r, out = fleet.update()
    assert out["action"] == "refused" and "differs from its signed hash" in out["reason"]


def _tamper_archive_of(repo: Path, version: str):
    tar = next((repo / "targets" / "bundles").glob(f"*{version}.tar"))
    data = bytearray(tar.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tar.write_bytes(bytes(data))


def test_a_version_taught_on_the_device_goes_into_a_slot_and_updates_go_on(fleet, digits_bundle, tmp_path):
    """Issue 33 in a device folder: a version `edgecls teach` wrote from the current slot is installed into the free
    slot (DeviceDir.install_taught, what the page's "Run it now" does there): the publisher's bundle is previous,
    the record keeps the release's number (so the same release is not fetched again) and says what was taught;
    going back does not refuse the publisher's version; a newer release replaces the taught one as any other."""
    from edgecls.fleet.slots import DeviceDir

    photos = tmp_path / "daisies"
    photos.mkdir()
    for p in sorted((SHARED / "data" / "flowers" / "daisy").glob("*.jpg"))[:6]:   # EDGECLS_SHARED or ../shared
        shutil.copy(p, photos / p.name)
    fleet.publish(digits_bundle)
    assert fleet.update()[1]["action"] == "installed"
    published = fleet.current()
    bad = cli("teach", digits_bundle, "--label", "daisy", "--source", photos, "--install")   # not a device folder
    assert bad.returncode == 2 and "--install puts the new version into a device folder" in bad.stderr, bad.stderr
    assert not list(digits_bundle.parent.glob(f"{digits_bundle.name}-v*"))   # refused before anything is written
    r = cli("teach", fleet.dev / "current", "--label", "daisy", "--source", photos, "--count", "6", "--install",
            "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    written = json.loads(r.stdout.strip().splitlines()[-1])
    version = Path(written["bundle"])
    assert version == fleet.dev / "slots" / "a-v2", version   # written beside the slots, then moved into one
    assert written["installed"] == {"device": str(fleet.dev), "slot": "b"}, written
    dev = DeviceDir(fleet.dev)
    state = dev.state()
    assert state["current"]["slot"] == "b" and state["current"]["version"] == 1 and not version.exists()
    assert state["current"]["taught"]["label"] == "daisy" and state["previous"]["slot"] == "a"
    assert tree(fleet.dev / "slots" / "a") == published and os.readlink(fleet.dev / "current") == "slots/b"
    assert "daisy" in (fleet.dev / "current" / "labels.txt").read_text()
    assert cli("verify", fleet.dev / "current").returncode == 0
    assert "taught on this device: 'daisy'" in cli("status", fleet.dev).stdout
    assert fleet.update()[1]["action"] == "up-to-date"            # release 1 is what the taught version came from
    reverted = dev.revert("the user went back")
    assert reverted["current"]["slot"] == "a" and reverted["refused"] == {}, reverted   # release 1 not refused
    assert fleet.current() == published
    dev.install_taught(fleet.dev / "slots" / "b", {"label": "daisy"})   # the reverted slot, taught again
    fleet.publish(variant(digits_bundle, tmp_path / "b2", release_note="v2"))
    r, out = fleet.update()
    assert out["action"] == "installed" and out["current"]["version"] == 2 and "taught" not in out["current"]
    assert out["previous"]["taught"]["label"] == "daisy", out      # the taught version is the one to go back to


def test_a_taught_version_that_cannot_start_gives_its_slot_back(tmp_path):
    """run's fallback after "Run it now" (device/live.py → fleet/live.py: start_failed): in a device folder the
    taught slot stops being current and the publisher's runs again, its version not refused; a confirmed current
    (one that already ran) is left alone."""
    from edgecls.fleet.live import start_failed
    from edgecls.fleet.slots import STATE_FORMAT, DeviceDir

    for slot in ("a", "b"):
        (tmp_path / "slots" / slot).mkdir(parents=True)
    published = {"version": 1, "bundle_id": "p", "slot": "a", "confirmed": True}
    taught = {"version": 1, "bundle_id": "t", "slot": "b", "taught": {"label": "daisy"}}
    (tmp_path / "state.json").write_text(json.dumps({"format": STATE_FORMAT, "current": taught,
                                                     "previous": published, "refused": {}}))
    (tmp_path / "current").symlink_to("slots/b")
    said = []
    start_failed(tmp_path / "current", "labels.txt edited", said.append)
    state = DeviceDir(tmp_path).state()
    assert state["current"] == published and state["refused"] == {} and os.readlink(tmp_path / "current") == "slots/a"
    assert "could not start: labels.txt edited" in state["last_result"] and "went back to slot a" in said[0], said
    start_failed(tmp_path / "current", "again", said.append)     # the publisher's, confirmed: stays
    assert DeviceDir(tmp_path).state()["current"] == published and len(said) == 1


def test_a_taught_version_that_cannot_be_installed_stays_where_teach_wrote_it(tmp_path):
    """install_taught moves a version out of DEVICE_DIR/slots/a-v2 first: if it then fails (here: no edgecls.json
    to name it by), the version is moved back, whole, and the state is unchanged."""
    from edgecls.fleet.slots import STATE_FORMAT, DeviceDir

    (tmp_path / "slots" / "a").mkdir(parents=True)
    version = tmp_path / "slots" / "a-v2"
    version.mkdir()
    (version / "labels.txt").write_text("0\n1\ndaisy\n")
    state = {"format": STATE_FORMAT, "current": {"version": 1, "bundle_id": "p", "slot": "a"}, "previous": None,
             "refused": {}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(OSError):
        DeviceDir(tmp_path).install_taught(version, {"label": "daisy"})
    assert (version / "labels.txt").read_text() == "0\n1\ndaisy\n" and DeviceDir(tmp_path).state() == state
    assert sorted(p.name for p in (tmp_path / "slots").iterdir()) == ["a", "a-v2"]   # no half-made slot left

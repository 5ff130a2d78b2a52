"""Issue 33: "teach as a new class" from the device's web page (device/teach/page.py), the same code path as
`edgecls teach`. A real `edgecls run BUNDLE --ui` in a subprocess on a copy of the tiny digits bundle (a version
is written beside the bundle taught: never beside the shared fixture), a video of daisies it never saw, Debian's
Chromium driven by Selenium for the page, plain HTTP for the bad inputs.
"""
from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path

import cv2

from edgecls.bundle import MANIFEST
from edgecls.device.teach.page import CAPTURE_GAP_S, WAIT_S
from edgecls.fsutil import sha256_file
from test_device_events import free_port
from test_device_run import edgecls
from test_device_webui_browser import need_browser, open_browser, shoot, status, wait
from test_security_http import TOKEN_LINK, Served, ask, bearer
from test_teach import DAISY, tree_hashes

SIDE, FPS = 160, 10
CAPTURE = int(WAIT_S / CAPTURE_GAP_S) + 4   # live frames taught from: their capture alone outlasts the POST's wait


def bundle_copy(digits_bundle: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy to teach (its versions land beside it, in tmp_path) and its file hashes."""
    root = tmp_path / "bundle"
    shutil.copytree(digits_bundle, root)
    return root, tree_hashes(root)


def daisy_video(path: Path, photos: int = 8, frames_each: int = 3) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIDE, SIDE))
    for p in sorted(DAISY.glob("*.jpg"))[:photos]:
        img = cv2.resize(cv2.imread(str(p)), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        for _ in range(frames_each):
            w.write(img)
    w.release()
    return path


def running(port: int) -> bool:
    try:
        return status(port)["mode"] == "run"
    except OSError:
        return False


def test_the_page_teaches_a_new_class_from_kept_frames_in_a_real_browser(digits_bundle, tmp_path):
    need_browser()
    from selenium.webdriver.common.by import By

    bundle, before = bundle_copy(digits_bundle, tmp_path)
    keep, port = tmp_path / "keep", free_port()
    s = Served("run", bundle, "--source", daisy_video(tmp_path / "daisies.avi"), "--headless", "--loop",
               "--realtime", "--ui", port, "--keep", keep, "--keep-policy", "random", "--keep-chance", "1",
               "--keep-rate", "10")
    driver = None
    try:
        wait(lambda: running(port), timeout=90)
        wait(lambda: status(port)["keep"].get("kept", 0) >= 6)
        driver = open_browser()
        driver.get(f"http://127.0.0.1:{port}/")
        wait(lambda: driver.execute_script("return !document.getElementById('teach').hidden"))
        driver.find_element(By.ID, "tab-gallery").click()
        cards = wait(lambda: (lambda c: c if len(c) >= 6 else None)(
            driver.find_elements(By.CSS_SELECTOR, "#gallery .card")))
        picked = [c.get_attribute("data-name") for c in cards[:6]]
        for card in cards[:6]:
            card.find_element(By.CSS_SELECTOR, "input.pick").click()
        assert driver.find_element(By.ID, "teach-picked").text == "6"
        driver.find_element(By.ID, "teach-label").send_keys("daisy")
        driver.find_element(By.ID, "teach-kept").click()
        shown = wait(lambda: (lambda t: t if t.startswith(("taught", "teach failed")) else None)(
            driver.find_element(By.ID, "teach-result").text), timeout=90)
        shoot(driver, tmp_path, "taught")
        assert shown.startswith(f"taught daisy: new version {tmp_path / 'bundle-v2'} (exam passed"), shown
        started = status(port)["started"]
        # "Run it now": run starts again on the version (model, exam, page, source) and the page reloads itself.
        driver.find_element(By.ID, "teach-use").click()
        wait(lambda: driver.execute_script("return status !== null && status.labels.includes('daisy')"), timeout=90)
        after = status(port)
        assert after["started"] != started and after["bundle"] == str(tmp_path / "bundle-v2"), after
        wait(lambda: status(port)["label"] == "daisy", timeout=30)   # the live daisies, named by the new class
        shoot(driver, tmp_path, "switched")
    finally:
        if driver is not None:
            driver.quit()
        err = s.stop()
    version = tmp_path / "bundle-v2"
    assert "Run it now" in shown
    assert f"switching to the taught version {version} (asked on the web page)" in err, err[-3000:]
    meta = json.loads((version / MANIFEST).read_text())
    assert meta["labels"] == json.loads((bundle / MANIFEST).read_text())["labels"] + ["daisy"]
    used = {Path(u["file"]).name: u["sha256"] for u in meta["derived"]["photos"]}
    assert sorted(used) == sorted(picked) and all(sha256_file(keep / n) == h for n, h in used.items())
    p = edgecls("verify", version)
    assert p.returncode == 0 and "verdict: PASS" in p.stdout, p.stdout + p.stderr
    assert tree_hashes(bundle) == before   # the version run started with, untouched
    assert "Traceback" not in err and "the web page taught 'daisy'" in err, err[-3000:]


def status_while_switching(port: int, token: str) -> dict:
    """/api/status, or {} while run is starting again (its page server is down for a moment)."""
    try:
        code, _, data = ask(port, "/api/status", headers=bearer(token))
    except OSError:
        return {}
    return json.loads(data) if code == 200 else {}


def teach(port: int, token: str, body, ctype: str = "application/json") -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("POST", "/api/teach", body=json.dumps(body).encode(),
                  headers={**bearer(token), "Content-Type": ctype})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        c.close()


def test_bad_teach_requests_get_the_cli_reason_and_write_nothing_and_capture_teaches(digits_bundle, tmp_path):
    """Bad input: 4xx with teach's one-line reason, nothing written, nothing started. Behind the token on a LAN
    bind, like every POST. Then a teach from 3 live frames, through the same server."""
    bundle, before = bundle_copy(digits_bundle, tmp_path)
    keep, port = tmp_path / "keep", free_port()
    keep.mkdir()
    (keep / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (keep / "corrupt.json").write_text("{}")
    s = Served("run", bundle, "--source", daisy_video(tmp_path / "daisies.avi", 4), "--headless", "--loop",
               "--realtime", "--host", "0.0.0.0", "--ui", port, "--keep", keep, "--keep-rate", "0.001")
    try:
        s.wait_for("protected by that token")
        token = TOKEN_LINK.search(s.stderr).group(1)
        assert ask(port, "/api/teach", "POST", body={"label": "x", "capture": 1})[0] == 401   # no token
        cases = [({"label": "3", "capture": 2}, 400, "the bundle already has a class '3'"),
                 ({"label": "../up", "capture": 2}, 400, "is not a class name"),
                 ({"label": "a/b", "names": ["corrupt.jpg"]}, 400, "is not a class name"),
                 ({"label": "new", "names": []}, 400, "no photos"),
                 ({"label": "new"}, 400, "no photos"),
                 ({"label": "new", "names": ["corrupt.jpg"]}, 400, "cannot read"),
                 ({"label": "new", "names": ["../bundle/labels.txt"]}, 400, "bad photo name"),
                 ({"label": "new", "names": ["gone.jpg"]}, 404, "no such photo"),
                 ({"label": "new", "capture": 0}, 400, "'capture' must be"),
                 ({"label": 3, "capture": 1}, 400, "missing 'label'")]
        for body, code, fragment in cases:
            got, reply = teach(port, token, body)
            assert got == code and fragment in reply["error"] and "\n" not in reply["error"], (body, got, reply)
        assert teach(port, token, {"label": "new", "capture": 1}, ctype="text/plain")[0] == 415
        assert json.loads(ask(port, "/api/teach", headers=bearer(token))[2]) == {"state": "idle"}
        code, _, data = ask(port, "/api/teach/use", "POST", body={"bundle": str(bundle)}, headers=bearer(token))
        assert code == 409 and "no taught version" in json.loads(data)["error"], data
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "daisies.avi", "keep"]
        assert tree_hashes(bundle) == before
        # CAPTURE frames CAPTURE_GAP_S apart outlast WAIT_S: the POST answers 202 and the page's poll takes over.
        code, reply = teach(port, token, {"label": "daisy", "capture": CAPTURE})
        assert code == 202 and reply["state"] == "capturing", reply
        polled = []
        while code == 202 or reply.get("state") in ("capturing", "teaching"):
            time.sleep(0.3)
            code, _, data = ask(port, "/api/teach", headers=bearer(token))
            reply = json.loads(data)
            polled.append((reply["state"], reply.get("captured")))
        taught = reply
        # Run it: only the version the last teach wrote (not a path of the asker's choosing), behind the token.
        other = {"bundle": str(tmp_path / "bundle")}
        assert ask(port, "/api/teach/use", "POST", body=other, headers=bearer(token))[0] == 400
        assert ask(port, "/api/teach/use", "POST", body={"bundle": reply["bundle"]})[0] == 401
        assert ask(port, "/api/teach/use", headers=bearer(token))[0] == 405
        started = json.loads(ask(port, "/api/status", headers=bearer(token))[2])["started"]
        # A version that cannot start (its labels.txt edited since): run goes back to the version it had.
        labels_txt = tmp_path / "bundle-v2" / "labels.txt"
        labels_txt.write_text(labels_txt.read_text().replace("daisy", "rose"))
        code, _, data = ask(port, "/api/teach/use", "POST", body={"bundle": reply["bundle"]}, headers=bearer(token))
        assert code == 202 and json.loads(data) == {"state": "switching", "bundle": reply["bundle"]}, data
        now = wait(lambda: (lambda st: st if st.get("started") not in (None, started) and st["frames"] else None)(
            status_while_switching(port, token)), timeout=90)
        assert now["bundle"] == str(bundle) and "daisy" not in now["labels"], now
        labels_txt.write_text(labels_txt.read_text().replace("rose", "daisy"))
    finally:
        err = s.stop()
    reply = taught
    assert code == 202 and reply["state"] == "done" and reply["bundle"] == str(tmp_path / "bundle-v2"), reply
    assert polled[0][0] == "capturing" and polled[-1][0] == "done" and polled[-1][1] == CAPTURE, polled
    meta = json.loads((tmp_path / "bundle-v2" / MANIFEST).read_text())
    assert meta["labels"][-1] == "daisy" and [("frame" in u) for u in meta["derived"]["photos"]] == [True] * CAPTURE
    assert tree_hashes(bundle) == before and "Traceback" not in err, err[-3000:]
    assert f"the taught version {tmp_path / 'bundle-v2'} could not start" in err and "going on with" in err, err[-3000:]


def test_a_bundle_exported_before_teach_and_the_labelling_page_say_why_they_cannot_teach(digits_bundle, tmp_path):
    """A bundle whose edgecls.json holds no teach set (as export wrote them before issue 33) runs, and its page
    says to re-export; `edgecls ui DATA_DIR` has no model: no teach button, and 409."""
    old, _ = bundle_copy(digits_bundle, tmp_path)
    meta = json.loads((old / MANIFEST).read_text())
    del meta["teach"]
    (old / MANIFEST).write_text(json.dumps(meta))
    before, port = tree_hashes(old), free_port()
    s = Served("run", old, "--source", daisy_video(tmp_path / "d.avi", 2), "--headless", "--loop",
               "--realtime", "--ui", port)
    try:
        s.wait_for("web page on")
        code, _, data = ask(port, "/api/teach", "POST", body={"label": "daisy", "capture": 1})
        assert code == 400 and "re-export it" in json.loads(data)["error"], data
    finally:
        err = s.stop()
    assert "Traceback" not in err and not list(tmp_path.glob("bundle-v*")) and tree_hashes(old) == before, err[-3000:]
    (tmp_path / "data" / "a").mkdir(parents=True)
    s = Served("ui", tmp_path / "data", "--port", port)
    try:
        s.wait_for("web page on")
        assert status(port)["can_teach"] is False
        code, _, data = ask(port, "/api/teach", "POST", body={"label": "daisy", "names": ["x.jpg"]})
        assert code == 409 and "teaching needs the model" in json.loads(data)["error"], data
    finally:
        err = s.stop()
    assert "Traceback" not in err


def test_a_run_in_a_device_folder_installs_the_taught_version_into_its_free_slot(digits_bundle, tmp_path):
    """DEVICE_DIR/current of `edgecls update` (state.json, two slots, the link): "Run it now" installs the taught
    version into the free slot first (fleet/slots.py: install_taught), then `run` starts again on the link — so
    going back, a crash loop and the next update treat it as any installed version; the publisher's slot is
    untouched and is the one to go back to."""
    from edgecls.fleet.live import CONFIRM_AFTER_FRAMES
    from edgecls.fleet.slots import STATE_FORMAT

    device = tmp_path / "device"
    (device / "slots").mkdir(parents=True)
    shutil.copytree(digits_bundle, device / "slots" / "a")
    before = tree_hashes(device / "slots" / "a")
    record = {"version": 3, "bundle_id": sha256_file(device / "slots" / "a" / MANIFEST)[:16], "slot": "a",
              "confirmed": True}
    (device / "state.json").write_text(json.dumps({"format": STATE_FORMAT, "current": record, "previous": None,
                                                   "refused": {}}))
    (device / "current").symlink_to("slots/a")
    port = free_port()
    s = Served("run", device / "current", "--source", daisy_video(tmp_path / "d.avi", 2), "--headless", "--loop",
               "--realtime", "--ui", port)
    try:
        s.wait_for("web page on")
        started = status(port)["started"]
        code, _, data = ask(port, "/api/teach", "POST", body={"label": "daisy", "capture": 2})
        done = json.loads(data)
        while done.get("state") in ("capturing", "teaching"):
            time.sleep(0.3)
            done = json.loads(ask(port, "/api/teach")[2])
        assert done["state"] == "done" and done["bundle"] == str(device / "slots" / "a-v2"), done
        code, _, data = ask(port, "/api/teach/use", "POST", body={"bundle": done["bundle"]})
        assert code == 202 and json.loads(data)["bundle"] == str(device / "current"), data

        def restarted():
            try:
                st = status(port)
            except OSError:
                return None
            return st if st.get("started") not in (None, started) and st["frames"] > CONFIRM_AFTER_FRAMES else None
        now = wait(restarted, timeout=90)
        assert now["bundle"] == str(device / "current") and now["labels"][-1] == "daisy", now
    finally:
        err = s.stop()
    state = json.loads((device / "state.json").read_text())
    assert state["current"]["slot"] == "b" and state["current"]["taught"]["label"] == "daisy", state
    assert state["current"]["version"] == 3 and state["previous"]["slot"] == "a", state
    assert state["current"].get("confirmed"), state   # it classified frames after its exam: no crash loop
    assert tree_hashes(device / "slots" / "a") == before and not (device / "slots" / "a-v2").exists()
    assert "installed in slot b" in err and "switching to" in err and "Traceback" not in err, err[-3000:]

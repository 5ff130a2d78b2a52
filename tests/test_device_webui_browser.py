"""Issue 15: the device's web page in a real browser — Debian's Chromium, headless, driven by Selenium through
the system chromedriver (Selenium Manager never runs: nothing downloads a browser or a driver).

`edgecls run --ui` plays a video of held-out photos at its own rate, keeping uncertain frames; the browser sees the
stream update and the top-k change, opens the gallery, files a kept frame with one click, and the file is found in
DATA_DIR/<class>; a capture button saves the current frame there too. A screenshot of each page goes to the test's folder (and to $EDGECLS_SCREENSHOTS, if set: that
is how docs/img/webui-*.png were made).
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from test_device_events import BUNDLE, free_port
from test_device_labelling import held_out  # noqa: F401  (a fixture)
from test_security_http import small_tmpfs  # noqa: F401  (a fixture: a real tmpfs, as root)
from test_device_run import ENV, WRAPPER

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FRAMES_PER_PHOTO, FPS, SIDE = 5, 10, 320


def need_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        why = f"no browser to drive: {', '.join(missing)} missing (apt install chromium chromium-driver)"
        if os.environ.get("CI"):  # .ci/run installs them: missing in CI is a broken setup
            pytest.fail(why)
        pytest.skip(why)


def open_browser():
    os.environ["SE_OFFLINE"] = "true"   # belt and braces: Selenium Manager may never reach the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,1300", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def wait(what, timeout=30.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def status(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/api/status")
        return json.loads(c.getresponse().read())
    finally:
        c.close()


def shoot(driver, tmp_path: Path, name: str) -> None:
    driver.save_screenshot(str(tmp_path / f"webui-{name}.png"))
    if os.environ.get("EDGECLS_SCREENSHOTS"):
        shutil.copy(tmp_path / f"webui-{name}.png", Path(os.environ["EDGECLS_SCREENSHOTS"]) / f"webui-{name}.png")


def test_the_page_shows_the_live_run_and_files_a_kept_frame_with_one_click(held_out, tmp_path):  # noqa: F811
    need_browser()
    from selenium.webdriver.common.by import By

    video = tmp_path / "held_out.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIDE, SIDE))
    for p in held_out:  # one photo per class, in class order: frame i shows class (i // 5) % 10
        img = cv2.resize(cv2.imread(str(p)), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        for _ in range(FRAMES_PER_PHOTO):
            w.write(img)
    w.release()
    keep, data, port = tmp_path / "keep", tmp_path / "data", free_port()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, "run", str(BUNDLE), "--source", str(video), "--headless",
                             "--loop", "--realtime", "--ui", str(port), "--data", str(data), "--keep", str(keep),
                             "--keep-policy", "uncertain", "--keep-below", "0.99", "--keep-rate", "2", "--on", "0.9"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    driver = None
    try:
        wait(lambda: _up(port))
        driver = open_browser()
        driver.get(f"http://127.0.0.1:{port}/")
        # the stream: an image that loaded, and figures that move
        wait(lambda: driver.execute_script("return document.getElementById('stream').naturalWidth") == SIDE)
        frames0 = int(wait(lambda: driver.find_element(By.ID, "frames").text))
        wait(lambda: int(driver.find_element(By.ID, "frames").text) >= frames0 + 10)
        wait(lambda: float(driver.find_element(By.ID, "fps").text.replace("–", "0")) > 3)
        # the top-k bars change with the scene (the video changes class every half second)
        tops = set()
        top1 = "const b = document.querySelector('#topk .bar'); return b && b.dataset.label"  # (redrawn twice a second)
        wait(lambda: tops.add(driver.execute_script(top1)) or len(tops - {None}) >= 3)
        wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#events li:not(.muted)"))
        shoot(driver, tmp_path, "live")
        # a capture button saves the current frame (full size, no overlay) into DATA_DIR/<class>
        driver.find_element(By.CSS_SELECTOR, "button.capture[data-label='2']").click()
        captured = wait(lambda: list((data / "2").glob("*.jpg")))
        assert cv2.imread(str(captured[0])).shape == (SIDE, SIDE, 3)
        assert json.loads(captured[0].with_suffix(".json").read_text())["by"] == "ui-capture"
        # the gallery: kept frames with the model's guess; one click files one
        wait(lambda: status(port)["keep"].get("kept", 0) >= 2)
        driver.find_element(By.ID, "tab-gallery").click()
        cards = wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#gallery .card"))
        wait(lambda: driver.execute_script("return document.querySelector('#gallery .card img').naturalWidth") == SIDE)
        shoot(driver, tmp_path, "gallery")
        card = cards[0]
        name = card.get_attribute("data-name")
        side = json.loads((keep / name).with_suffix(".json").read_text())
        truth = status(port)["labels"][(side["frame"] // FRAMES_PER_PHOTO) % len(held_out)]
        assert card.find_element(By.CSS_SELECTOR, ".guess").text.startswith(f"model: {side['model']['label']} ")
        card.find_element(By.CSS_SELECTOR, f"button.label[data-label='{truth}']").click()
        filed = data / truth / name
        # The page's reply says the move is done (photo, then sidecar, then the kept pair removed: device/data/photos.py)
        wait(lambda: f"filed as {truth}/{name}" in driver.find_element(By.ID, "message").text)
        assert filed.is_file() and not (keep / name).exists() and not (keep / name).with_suffix(".json").exists()
        assert cv2.imread(str(filed)).shape == (SIDE, SIDE, 3)
        assert json.loads(filed.with_suffix(".json").read_text())["label"] == truth
        assert not driver.find_elements(By.CSS_SELECTOR, f"#gallery .card[data-name='{name}']")
        shoot(driver, tmp_path, "filed")
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]


def _up(port: int) -> bool:
    try:
        return status(port)["mode"] == "run"
    except OSError:
        return False


def test_the_token_link_opens_the_page_on_a_lan_bind_and_it_shows_a_full_disk(  # noqa: F811
        held_out, small_tmpfs, tmp_path):  # noqa: F811
    """Issue 27: `--host 0.0.0.0` needs the token. The browser opens the link edgecls prints (…/?token=T); the
    cookie it sets carries the page's own requests (the stream, /api/…) without the token in any URL. A capture
    onto a full DATA_DIR shows the server's reason on the page; once there is room, it saves."""
    need_browser()
    from selenium.webdriver.common.by import By

    from test_security_http import TOKEN_LINK, Served, fill

    video = tmp_path / "held_out.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (SIDE, SIDE))
    for p in held_out:
        w.write(cv2.resize(cv2.imread(str(p)), (SIDE, SIDE), interpolation=cv2.INTER_AREA))
    w.release()
    data, port = small_tmpfs / "data", free_port()
    s = Served("run", BUNDLE, "--source", video, "--headless", "--loop", "--realtime", "--host", "0.0.0.0",
               "--ui", port, "--data", data)
    driver = None
    try:
        s.wait_for("web page on")
        assert _answer(port, "/api/status") == 401
        s.wait_for("protected by that token")
        token = TOKEN_LINK.search(s.stderr).group(1)
        driver = open_browser()
        driver.get(f"http://127.0.0.1:{port}/?token={token}")
        wait(lambda: driver.execute_script("return document.getElementById('stream').naturalWidth") == SIDE)
        frames0 = int(wait(lambda: driver.find_element(By.ID, "frames").text))
        wait(lambda: int(driver.find_element(By.ID, "frames").text) >= frames0 + 5)   # /api/status polls pass
        assert "token" not in driver.execute_script("return document.cookie")   # HttpOnly: no script reads it
        filler = fill(small_tmpfs)
        driver.find_element(By.CSS_SELECTOR, "button.capture[data-label='2']").click()
        wait(lambda: "capture failed: disk full" in driver.find_element(By.ID, "message").text)
        shoot(driver, tmp_path, "disk-full")
        filler.unlink()
        driver.find_element(By.CSS_SELECTOR, "button.capture[data-label='2']").click()
        wait(lambda: "saved 2/" in driver.find_element(By.ID, "message").text)
        assert len(list((data / "2").glob("*.jpg"))) == 1
    finally:
        if driver is not None:
            driver.quit()
        err = s.stop()
    assert "Traceback" not in err and err.count(token) == 1, err[-3000:]
    assert sum(line.startswith("edgecls: warning: the web page") for line in err.splitlines()) == 1, err[-3000:]


def _answer(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()

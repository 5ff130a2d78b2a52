"""Sources: files, folders, globs, network streams served from localhost, reconnects, picamera2 formats, CSI."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.device.capture.cameras import (PICAM_LAYOUT, UVC_SIZES, CvCapture, SourceOpenError, covering_size, csi_pipeline,
                                    picam_config, picam_image, uvc_requests)
from edgecls.device.capture.frame import Orientation
from edgecls.device.output.mjpeg import MjpegServer
from edgecls.device.capture.sources import (ImageFilesSource, LiveSource, SourceOptions, VideoFileSource, open_source)
from edgecls.errors import EdgeclsError


@pytest.fixture(scope="module")
def digit_files(shared) -> list[Path]:
    """Real photos from the shared dataset: 4 of each of 3 classes."""
    digits = shared / "data" / "sign_language_digits"
    return [p for c in ("0", "4", "7") for p in sorted((digits / c).glob("*.JPG"))[:4]]


@pytest.fixture(scope="module")
def digit_video(tmp_path_factory, digit_files) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("vid") / "digits.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (100, 100))
    for p in digit_files:
        w.write(cv2.resize(cv2.imread(str(p)), (100, 100)))
    w.release()
    return path, len(digit_files)


class StreamServer:
    """A real MJPEG HTTP stream on 127.0.0.1 publishing dataset photos at ~fps until stopped."""

    def __init__(self, images: list[np.ndarray], port: int = 0, fps: float = 50.0):
        self.server = MjpegServer("127.0.0.1", port)
        self.port, self.url = self.server.port, f"http://127.0.0.1:{self.server.port}/stream"
        self.published, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._pump, args=(images, fps), daemon=True)
        self._thread.start()

    def _pump(self, images, fps):
        while not self._stop.wait(1.0 / fps):
            self.server.publish(images[self.published % len(images)])
            self.published += 1

    def close(self):
        self._stop.set()
        self._thread.join()
        self.server.close()


@pytest.fixture
def stream_images(digit_files):
    return [cv2.imread(str(p)) for p in digit_files]


# --- finite sources -------------------------------------------------------------------------------------

def test_video_file_gives_every_frame_in_order(digit_video):
    path, n = digit_video
    src = open_source(str(path))
    assert isinstance(src, VideoFileSource) and not src.live
    frames = list(src)
    src.close()
    assert [f.index for f in frames] == list(range(n))
    assert all(f.order == "BGR" and f.image.shape == (100, 100, 3) for f in frames)


def test_slow_consumer_still_gets_every_video_frame(digit_video):
    path, n = digit_video
    got = []
    for f in open_source(str(path)):
        time.sleep(0.02)  # a model slower than the file's frame rate: a file must not drop frames
        got.append(f.index)
    assert got == list(range(n))


def test_video_loop_starts_again(digit_video):
    path, n = digit_video
    src = open_source(str(path), SourceOptions(loop=True))
    idx = []
    for f in src:
        idx.append(f.index)
        if len(idx) == 2 * n + 3:
            break
    src.close()
    assert idx == list(range(2 * n + 3))


def test_folder_gives_each_image_once_with_its_file(tmp_path, digit_files):
    for p in digit_files:  # class sub-folders, as a test split is laid out
        (tmp_path / p.parent.name).mkdir(exist_ok=True)
        (tmp_path / p.parent.name / p.name).write_bytes(p.read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageFilesSource)
    frames = list(src)
    assert sorted(Path(f.file).name for f in frames) == sorted(p.name for p in digit_files)
    assert all(f.order == "RGB" for f in frames)
    # RGB from PIL equals OpenCV's BGR reversed, pixel for pixel (same JPEG decoder family, same file)
    first = frames[0]
    np.testing.assert_allclose(first.image.astype(int), cv2.imread(first.file)[..., ::-1].astype(int), atol=3)


def test_glob_and_single_image(digit_files):
    pattern = str(digit_files[0].parent / "*.JPG")
    files = list(open_source(pattern))
    assert len(files) == len(list(digit_files[0].parent.glob("*.JPG")))
    one = list(open_source(str(digit_files[0])))
    assert len(one) == 1 and one[0].file == str(digit_files[0])


def test_corrupt_image_in_folder_is_skipped_not_fatal(tmp_path, digit_files, capsys):
    (tmp_path / "a.jpg").write_bytes(digit_files[0].read_bytes())
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    src = open_source(str(tmp_path))
    frames = list(src)
    assert [Path(f.file).name for f in frames] == ["a.jpg"] and src.skipped == [str(tmp_path / "b.jpg")]
    assert "skipping unreadable image" in capsys.readouterr().err


def test_orientation_flips_and_rotates():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(Orientation("h").apply(img), img[:, ::-1])
    assert np.array_equal(Orientation("v").apply(img), img[::-1])
    assert np.array_equal(Orientation(rotate=90).apply(img), np.rot90(img, k=-1))
    assert Orientation("both", 180).apply(img).shape == (2, 3, 3)
    with pytest.raises(EdgeclsError):
        Orientation(rotate=45)


@pytest.mark.parametrize("uri, msg", [("/nonexistent/video.mp4", "source not found"),
                                      ("usb:x", "camera number"),
                                      ("/dev/video99", "camera not found"),
                                      ("usb:7", "cannot open video source 7"),
                                      ("/nonexistent/*.jpg", "no image files match"),
                                      ("http://127.0.0.1:1/stream", "cannot open")])
def test_unopenable_sources_raise_one_clear_error(uri, msg):
    with pytest.raises(EdgeclsError, match=msg):
        open_source(uri)


def test_non_video_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(EdgeclsError, match="cannot open .* as a video"):
        open_source(str(bad))


# --- live sources: a real HTTP MJPEG stream from localhost ----------------------------------------------

def test_http_stream_keeps_only_the_newest_frame(stream_images):
    srv = StreamServer(stream_images, fps=50)
    try:
        src = open_source(srv.url)
        assert isinstance(src, LiveSource) and src.live
        got, lags = [], []
        for f in src:
            lags.append(time.monotonic() - f.t_capture)
            got.append(f.index)
            if len(got) == 6:
                break
            time.sleep(0.2)  # a slow model: 10 stream frames arrive meanwhile
        src.close()
    finally:
        srv.close()
    assert got == sorted(got) and len(set(got)) == 6
    assert got[-1] - got[0] >= 5 * 4, f"stale frames were queued: {got}"
    # With a queue each frame would be >= 0.2 s older than the last; the newest one is a frame period old.
    assert np.median(lags[1:]) < 0.1, f"frames were old when delivered: {lags}"
    assert src.captured > len(got)


def test_stream_that_dies_is_reopened_and_the_loop_keeps_going(stream_images):
    srv = StreamServer(stream_images)
    port = srv.port
    src = open_source(srv.url, SourceOptions(backoff=(0.1, 0.4)))
    try:
        it = iter(src)
        first = [next(it).index for _ in range(3)]
        srv.close()                      # the stream dies ...
        time.sleep(0.6)                  # ... and stays down through a few reopen attempts
        srv = StreamServer(stream_images, port=port)   # ... then comes back
        after = [next(it) for _ in range(3)]
    finally:
        src.close()
        srv.close()
    assert src.reconnects >= 1
    assert after[0].index > first[-1] and all(f.image.shape == (100, 100, 3) for f in after)


class DiesAfter:
    """A real capture (OpenCV on a video file standing in for /dev/video0) whose device vanishes after k reads."""

    def __init__(self, path, k):
        self.cap, self.k, self.order = CvCapture(str(path)), k, "BGR"

    def read(self):
        self.k -= 1
        return self.cap.read() if self.k >= 0 else None

    def release(self):
        self.cap.release()


def test_camera_that_disconnects_is_reopened_with_backoff(digit_video):
    path, _ = digit_video
    opens: list[float] = []

    def opener():
        opens.append(time.monotonic())
        if 2 <= len(opens) <= 3:         # unplugged: the first two reopen attempts fail
            raise SourceOpenError("/dev/video0: no such device")
        return DiesAfter(path, 4)

    src = LiveSource(opener, "v4l2-like", SourceOptions(backoff=(0.05, 1.0)), log=lambda m: None)
    frames = []
    for f in src:
        frames.append(f)
        if len(opens) >= 5 and len(frames) >= 3:
            break
    src.close()
    gaps = np.diff(opens[:4])
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2, f"no exponential backoff: {gaps}"
    assert src.reconnects >= 2 and frames[-1].index >= 4


def test_live_source_stop_releases_the_capture(digit_video):
    path, _ = digit_video
    released = []

    class Endless(DiesAfter):
        def read(self):
            time.sleep(0.01)
            img = self.cap.read()
            if img is None:
                self.cap.release()
                self.cap = CvCapture(str(path))
                img = self.cap.read()
            return img

        def release(self):
            released.append(True)
            super().release()

    src = LiveSource(lambda: Endless(path, 0), "cam", SourceOptions())
    t = threading.Timer(0.3, src.stop)   # what the SIGTERM handler does
    t.start()
    n = sum(1 for _ in src)
    src.close()
    assert n > 0 and released == [True] and not src._thread.is_alive()


# --- cameras that cannot exist here: format handling and pipeline strings ------------------------------

def test_picamera2_rgb888_is_bgr_in_memory_and_used_without_conversion():
    # picamera2 docs: "RGB888" gives an HxWx3 array whose pixels are [B, G, R].
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[..., 0] = 255  # pure blue, as picamera2 stores it
    img, order = picam_image(arr, "RGB888")
    assert order == "BGR" and img is arr
    assert np.array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[0, 0], [0, 0, 255])


def test_picamera2_xrgb8888_drops_the_padding_byte():
    # "XRGB8888": HxWx4, pixels [B, G, R, 255].
    arr = np.zeros((4, 6, 4), np.uint8)
    arr[..., 2], arr[..., 3] = 200, 255  # red, padding
    img, order = picam_image(arr, "XRGB8888")
    assert order == "BGR" and img.shape == (4, 6, 3) and img.flags.c_contiguous
    assert np.array_equal(img[0, 0], [0, 0, 200])


@pytest.mark.parametrize("fmt, expect", [("BGR888", "RGB"), ("XBGR8888", "RGB")])
def test_picamera2_bgr_named_formats_are_rgb_in_memory(fmt, expect):
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, PICAM_LAYOUT[fmt][1]), dtype=np.uint8)
    img, order = picam_image(arr, fmt)
    assert order == expect and np.array_equal(img, arr[..., :3])


def test_picamera2_wrong_shape_or_format_is_an_error():
    with pytest.raises(EdgeclsError, match="HxWx4"):
        picam_image(np.zeros((4, 6, 3), np.uint8), "XRGB8888")
    with pytest.raises(EdgeclsError, match="not supported"):
        picam_image(np.zeros((4, 6, 3), np.uint8), "YUV420")


def test_picamera2_is_asked_for_rgb888_explicitly():
    class Recorder:  # records the call picamera2's create_video_configuration receives
        def create_video_configuration(self, **kw):
            self.kw = kw
            return kw

    cam = Recorder()
    picam_config(cam, (640, 480), 30)
    assert cam.kw["main"] == {"format": "RGB888", "size": (640, 480)} and cam.kw["controls"] == {"FrameRate": 30.0}


def test_picam_uri_without_picamera2_is_a_clear_error():
    with pytest.raises(EdgeclsError, match="picamera2"):
        open_source("picam:0")


def test_csi_pipeline_string():
    p = csi_pipeline(1, (1280, 720), 30)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1" in p
    assert "format=BGR ! appsink drop=true max-buffers=1" in p
    with pytest.raises(EdgeclsError, match="GStreamer"):  # this OpenCV has no GStreamer
        open_source("csi://0")


def test_flip_and_rotate_options_reach_the_frames(digit_video, stream_images):
    path, _ = digit_video
    plain = next(iter(open_source(str(path)))).image
    turned = next(iter(open_source(str(path), SourceOptions(orientation=Orientation("h", 90))))).image
    assert np.array_equal(turned, np.rot90(plain[:, ::-1], k=-1))
    srv = StreamServer(stream_images[:1])
    try:
        src = open_source(srv.url, SourceOptions(orientation=Orientation("v")))
        live = next(iter(src)).image
        src.close()
    finally:
        srv.close()
    decoded = cv2.imdecode(cv2.imencode(".jpg", stream_images[0], [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
    assert np.abs(live.astype(int) - decoded[::-1]).mean() < 2


# ---- issue 29: cameras that scale in hardware are asked for a frame near the model input ------------------

@pytest.mark.parametrize("model, aspect, align, want", [
    ((224, 224), (3280, 2464), (32, 2), (320, 242)),    # Pi camera v2 (4:3), RGB888's 32 px width alignment
    ((160, 160), (4608, 2592), (32, 2), (288, 162)),    # Pi camera v3 (16:9)
    ((224, 224), (1280, 720), (2, 2), (400, 226)),      # Jetson CSI at its 1280x720 mode
    ((96, 96), (4, 3), (1, 1), (128, 96)),
    ((320, 64), (4, 3), (2, 2), (320, 240)),            # a wide model: its width decides
])
def test_camera_frame_just_covers_the_model_at_the_cameras_aspect(model, aspect, align, want):
    """The smallest aligned frame of the camera's aspect that is at least the model input on both sides: every
    resize mode then only shrinks it, and a narrower aligned frame would not cover the model."""
    w, h = covering_size(model, aspect, align)
    assert (w, h) == want
    assert w >= model[0] and h >= model[1] and w % align[0] == 0 and h % align[1] == 0
    assert abs(w / h - aspect[0] / aspect[1]) < 0.02                  # the field of view kept, not cropped
    narrower = w - align[0]
    assert narrower < model[0] or narrower * aspect[1] / aspect[0] < model[1]


def test_picamera2_main_stream_is_scaled_by_the_isp_to_near_the_model():
    class Camera:   # what picam_config reads of a Picamera2: sensor_resolution, create_video_configuration
        sensor_resolution = (3280, 2464)

        def create_video_configuration(self, **kw):
            self.kw = kw
            return kw

    cam = Camera()
    assert picam_config(cam, None, None, (224, 224))["main"] == {"format": "RGB888", "size": (320, 242)}
    assert picam_config(cam, (1920, 1080), None, (224, 224))["main"]["size"] == (1920, 1080)   # --resolution wins
    assert picam_config(cam, None, None)["main"]["size"] == (1280, 720)                      # no model: as before


def test_csi_pipeline_scales_in_hardware_to_near_the_model():
    p = csi_pipeline(0, None, 30, (224, 224))
    assert "video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1, format=NV12" in p   # the sensor mode
    assert "nvvidconv ! video/x-raw, width=400, height=226, format=BGRx" in p                   # scaled by the VIC
    assert "nvvidconv ! video/x-raw, width=1920, height=1080" in csi_pipeline(0, (1920, 1080), 30, (224, 224))


def test_v4l2_is_asked_for_the_smallest_common_size_covering_the_model():
    assert uvc_requests((224, 224))[:3] == [(320, 240), (352, 288), (424, 240)]
    assert uvc_requests((96, 96))[0] == (160, 120) and uvc_requests((500, 400))[0] == (640, 480)
    assert all(w >= 640 and h >= 480 for w, h in uvc_requests((640, 480)))
    assert uvc_requests((4000, 3000)) == [] and len(set(UVC_SIZES)) == len(UVC_SIZES)


def test_live_source_says_the_size_it_delivers(stream_images):
    """The size is read back from the capture, not assumed: a real MJPEG stream of 100x100 photos."""
    srv = StreamServer(stream_images[:1])
    try:
        src = open_source(srv.url, SourceOptions(model_input=(96, 96)))
        frame = next(iter(src))
        src.close()
    finally:
        srv.close()
    assert frame.image.shape[:2] == (100, 100) and src.frame_size == (100, 100)
    assert src.delivers == f"{srv.url} delivers 100x100 frames (model input 96x96)"

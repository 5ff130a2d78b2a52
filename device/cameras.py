"""Capture adapters: the thin layer between a camera/stream library and a `Frame`.

Each adapter opens in its constructor (raising `SourceOpenError`), returns one picture per `read()`
(None when the device or stream failed) and frees the device in `release()`. `LiveSource` owns the
threading and the reconnects; adapters only talk to their library.

Not testable here (no hardware): the picamera2 calls and the Jetson `nvarguscamerasrc` pipeline. They follow
the libraries' documentation; the format handling and the pipeline string are unit-tested.
"""
from __future__ import annotations

import os

import cv2
import numpy as np

from edgecls.errors import EdgeclsError
from edgecls.images import ImageRefused, check_pixels

# FFmpeg and OpenCV print their own lines for every failed (re)connect; our one-line errors and reconnect
# messages say it once. Set OPENCV_FFMPEG_LOGLEVEL / OPENCV_LOG_LEVEL to see them again.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when FFmpeg opens a stream
if "OPENCV_LOG_LEVEL" not in os.environ:  # errors only: no "[ WARN:0@0.4] ... can't be used to capture by name"
    if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):   # OpenCV 5
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    else:                                                        # OpenCV 4.x (what NumPy<2 systems get)
        cv2.setLogLevel(2)


class SourceOpenError(EdgeclsError):
    """The source could not be opened (first open: fatal; after a disconnect: retried with backoff)."""


class FramesTooLarge(SourceOpenError):
    """The source opened, but its frames have more pixels than edgecls decodes (images.MAX_IMAGE_PIXELS)."""


# --- OpenCV (V4L2 cameras, network streams, Jetson CSI through GStreamer) -------------------------------

NETWORK_TIMEOUT_MS = 5000  # FFmpeg otherwise blocks for ever on a stream that stalls without closing


class CvCapture:
    """cv2.VideoCapture: frames arrive BGR."""

    order = "BGR"

    def __init__(self, target, api: int = cv2.CAP_ANY, size: tuple[int, int] | None = None,
                 fps: float | None = None, timeouts: bool = False):
        params = []
        if timeouts:
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, NETWORK_TIMEOUT_MS]
        self.cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
        if not self.cap.isOpened():
            self.cap.release()
            raise SourceOpenError(f"cannot open video source {target}")
        try:  # frames as large as a decompression bomb are refused before the first read decodes one
            check_pixels(int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         f"video source {target}: a frame")
        except ImageRefused as e:
            self.cap.release()
            raise FramesTooLarge(str(e)) from None
        if size:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        if fps:
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2: keep the driver queue short; others ignore it

    def read(self) -> np.ndarray | None:
        ok, img = self.cap.read()
        return img if ok and img is not None else None

    def release(self) -> None:
        self.cap.release()


def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def csi_pipeline(sensor_id: int, size: tuple[int, int] | None, fps: float | None) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc → BGR appsink for OpenCV).

    NVMM NV12 from the ISP, converted by nvvidconv (hardware) to BGRx, then videoconvert to the BGR OpenCV
    wants. appsink keeps one buffer and drops the rest: the newest frame wins. Untested on hardware here.
    """
    w, h = size or (1280, 720)
    rate = int(round(fps or 30))
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={w}, height={h}, framerate={rate}/1, format=NV12 ! "
            f"nvvidconv ! video/x-raw, width={w}, height={h}, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def open_csi(sensor_id: int, size, fps) -> CvCapture:
    if not opencv_has_gstreamer():
        raise SourceOpenError("csi:// needs OpenCV built with GStreamer (on Jetson: JetPack's python3-opencv, "
                              "not pip's opencv-python); see `edgecls doctor`")
    return CvCapture(csi_pipeline(sensor_id, size, fps), cv2.CAP_GSTREAMER)


# --- picamera2 (Raspberry Pi camera modules via libcamera) ----------------------------------------------

# picamera2/libcamera name formats by the 32-bit word, so in memory "RGB888" is B,G,R and "XRGB8888" is
# B,G,R,X; "BGR888"/"XBGR8888" are R,G,B(,X). (picamera2 docs; its own PIL mode table says the same.)
PICAM_LAYOUT = {"RGB888": ("BGR", 3), "BGR888": ("RGB", 3), "XRGB8888": ("BGR", 4), "XBGR8888": ("RGB", 4)}
PICAM_FORMAT = "RGB888"  # what we request: 3 bytes/pixel, BGR in memory = OpenCV's order, no conversion


def picam_image(array: np.ndarray, fmt: str) -> tuple[np.ndarray, str]:
    """A picamera2 `capture_array()` result in format `fmt` → (HxWx3 uint8 image, its channel order)."""
    if fmt not in PICAM_LAYOUT:
        raise EdgeclsError(f"picamera2 format {fmt} is not supported (use one of {', '.join(PICAM_LAYOUT)})")
    order, channels = PICAM_LAYOUT[fmt]
    if array.ndim != 3 or array.shape[2] != channels or array.dtype != np.uint8:
        raise EdgeclsError(f"picamera2 {fmt} frame should be HxWx{channels} uint8, got {array.shape} {array.dtype}")
    if channels == 4:
        # Drop the padding byte in one pass (the channel order of the first three is unchanged).
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array, order


def picam_config(camera, size: tuple[int, int] | None, fps: float | None):
    main = {"format": PICAM_FORMAT, "size": tuple(size or (1280, 720))}
    controls = {"FrameRate": float(fps)} if fps else {}
    # buffer_count 2 + capture_array() returning the latest completed request: no stale-frame queue.
    return camera.create_video_configuration(main=main, controls=controls, buffer_count=2)


class PicamCapture:
    def __init__(self, index: int, size=None, fps=None):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceOpenError("picam: needs picamera2 (Raspberry Pi OS: sudo apt install python3-picamera2; "
                                  "in a venv create it with --system-site-packages)") from None
        cams = Picamera2.global_camera_info()
        if index >= len(cams):
            raise SourceOpenError(f"picam:{index}: no such camera ({len(cams)} found by libcamera)")
        try:
            self.cam = Picamera2(camera_num=index)
            self.config = picam_config(self.cam, size, fps)
            self.cam.configure(self.config)
            self.cam.start()
        except Exception as e:  # libcamera raises RuntimeError/OSError variants when busy or absent
            raise SourceOpenError(f"picam:{index}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        # Read back what libcamera actually configured rather than trusting the request.
        self.fmt = self.cam.camera_configuration()["main"]["format"]
        self.order = PICAM_LAYOUT[self.fmt][0]

    def read(self) -> np.ndarray | None:
        try:
            image, _ = picam_image(self.cam.capture_array("main"), self.fmt)
            return image
        except Exception:  # camera unplugged / pipeline stopped: report a failed read, LiveSource reopens
            return None

    def release(self) -> None:
        try:
            self.cam.stop()
        finally:
            self.cam.close()

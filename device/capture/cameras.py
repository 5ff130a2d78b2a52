"""Capture adapters: the thin layer between a camera/stream library and a `Frame`.

Each adapter opens in its constructor (raising `SourceOpenError`), returns one picture per `read()`
(None when the device or stream failed) and frees the device in `release()`. `LiveSource` owns the
threading and the reconnects; adapters only talk to their library.

Not testable here (no hardware): the picamera2 calls and the Jetson `nvarguscamerasrc` pipeline. They follow
the libraries' documentation; the format handling, the pipeline string and the frame size asked for (below) are
unit-tested as pure functions.

The frame size (issue 29): with no --resolution, a camera that can scale in hardware is asked for the smallest
frame of its own aspect ratio that still covers the model input (`covering_size`), so the CPU only shrinks a
little; the size it then delivers is read back and said at start-up (`frame_size`).
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


# --- the frame size to ask for ----------------------------------------------------------------------------

# Frame sizes UVC webcams commonly list. V4L2's VIDIOC_S_FMT answers a size the driver lacks with the nearest one
# it has, and uvcvideo's nearest can be smaller than asked, so a V4L2 camera is asked for one of these.
UVC_SIZES = ((160, 120), (176, 144), (320, 240), (352, 288), (424, 240), (640, 360), (640, 480), (800, 600),
             (960, 540), (1280, 720), (1920, 1080))


def covering_size(model: tuple[int, int], aspect: tuple[int, int], align: tuple[int, int] = (2, 2)) -> tuple[int, int]:
    """The smallest (width, height) with the camera's `aspect` that is at least the model input (width, height) on
    both sides, each rounded up to a multiple of `align`: every resize mode then only shrinks, and the
    camera's field of view is kept (no hardware crop)."""
    (mw, mh), (aw, ah) = model, aspect
    w = max(mw, -(-mh * aw // ah))                   # wide enough, and tall enough once at the camera's aspect
    w = -(-w // align[0]) * align[0]
    h = -(-w * ah // aw)                             # the height from the width as aligned: the aspect kept
    return w, -(-max(h, mh) // align[1]) * align[1]


def uvc_requests(model: tuple[int, int]) -> list[tuple[int, int]]:
    """UVC sizes covering the model input, smallest first: what to ask a V4L2 camera for, in turn."""
    return sorted((s for s in UVC_SIZES if s[0] >= model[0] and s[1] >= model[1]), key=lambda s: s[0] * s[1])


def covers(size: tuple[int, int], model: tuple[int, int]) -> bool:
    return size[0] >= model[0] and size[1] >= model[1]


# --- OpenCV (V4L2 cameras, network streams, Jetson CSI through GStreamer) -------------------------------

NETWORK_TIMEOUT_MS = 5000  # FFmpeg otherwise blocks for ever on a stream that stalls without closing


class CvCapture:
    """cv2.VideoCapture: frames arrive BGR."""

    order = "BGR"

    def __init__(self, target, api: int = cv2.CAP_ANY, size: tuple[int, int] | None = None,
                 fps: float | None = None, timeouts: bool = False, model: tuple[int, int] | None = None):
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
            self._set_size(size)
        elif model:   # no --resolution: the smallest common size covering the model that the driver keeps
            for request in uvc_requests(model):
                if covers(self._set_size(request), model):
                    break
        if fps:
            self.cap.set(cv2.CAP_PROP_FPS, fps)
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2: keep the driver queue short; others ignore it
        self.frame_size = self._size()

    def _set_size(self, size: tuple[int, int]) -> tuple[int, int]:
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
        return self._size()

    def _size(self) -> tuple[int, int]:
        return int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))

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


CSI_SENSOR_SIZE = (1280, 720)   # the sensor mode asked of nvarguscamerasrc unless --resolution says otherwise


def csi_out_size(size: tuple[int, int] | None, model: tuple[int, int] | None) -> tuple[int, int]:
    """What nvvidconv hands OpenCV: --resolution if given, else the sensor mode's 16:9 shrunk in hardware to just
    cover the model input (even sides, as nvvidconv's BGRx wants), else the sensor mode itself."""
    if size or not model:
        return tuple(size or CSI_SENSOR_SIZE)
    return covering_size(model, CSI_SENSOR_SIZE)


def csi_pipeline(sensor_id: int, size: tuple[int, int] | None, fps: float | None,
                 model: tuple[int, int] | None = None) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc → BGR appsink for OpenCV).

    NVMM NV12 from the ISP at the sensor mode's size, scaled and converted by nvvidconv (the VIC, in hardware) to
    BGRx at `csi_out_size`, then videoconvert to the BGR OpenCV wants — on a frame already near the model's size.
    appsink keeps one buffer and drops the rest: the newest frame wins. Untested on hardware here.
    """
    w, h = size or CSI_SENSOR_SIZE
    ow, oh = csi_out_size(size, model)
    rate = int(round(fps or 30))
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={w}, height={h}, framerate={rate}/1, format=NV12 ! "
            f"nvvidconv ! video/x-raw, width={ow}, height={oh}, format=BGRx ! "
            f"videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")


def open_csi(sensor_id: int, size, fps, model: tuple[int, int] | None = None) -> CvCapture:
    if not opencv_has_gstreamer():
        raise SourceOpenError("csi:// needs OpenCV built with GStreamer (on Jetson: JetPack's python3-opencv, "
                              "not pip's opencv-python); see `edgecls doctor`")
    return CvCapture(csi_pipeline(sensor_id, size, fps, model), cv2.CAP_GSTREAMER)


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


PICAM_ALIGN = (32, 2)   # RGB888's optimal width alignment in the Picamera2 manual (appendix A); even heights


def picam_main_size(size: tuple[int, int] | None, model: tuple[int, int] | None,
                    sensor: tuple[int, int] | None) -> tuple[int, int]:
    """The main stream's size: --resolution if given, else the sensor's aspect shrunk by the ISP (in hardware) to
    just cover the model input, else 1280x720."""
    if size or not model or not sensor:
        return tuple(size or (1280, 720))
    return covering_size(model, sensor, PICAM_ALIGN)


def picam_config(camera, size: tuple[int, int] | None, fps: float | None, model: tuple[int, int] | None = None):
    main = {"format": PICAM_FORMAT,
            "size": picam_main_size(size, model, getattr(camera, "sensor_resolution", None))}
    controls = {"FrameRate": float(fps)} if fps else {}
    # buffer_count 2 + capture_array() returning the latest completed request: no stale-frame queue.
    return camera.create_video_configuration(main=main, controls=controls, buffer_count=2)


class PicamCapture:
    def __init__(self, index: int, size=None, fps=None, model: tuple[int, int] | None = None):
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
            self.config = picam_config(self.cam, size, fps, model)
            self.cam.configure(self.config)
            self.cam.start()
        except Exception as e:  # libcamera raises RuntimeError/OSError variants when busy or absent
            raise SourceOpenError(f"picam:{index}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        # Read back what libcamera actually configured rather than trusting the request.
        main = self.cam.camera_configuration()["main"]
        self.fmt, self.frame_size = main["format"], tuple(main["size"])
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

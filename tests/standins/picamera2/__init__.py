"""A stand-in for picamera2 with exactly the names edgecls's AI Camera adapter uses (device/capture/imx500_camera.py),
as the picamera2 manual and its IMX500 examples document them. Not a package of the tests: a test puts this folder's
parent on PYTHONPATH (or sys.path) to play the camera.

No camera: every frame is a flat grey picture. The network's output for the n-th frame that has one is row n (cycling)
of the .npy file $STANDIN_IMX500_OUTPUTS; the first $STANDIN_IMX500_LOADING frames (default 0) have none, as while the
network uploads. Each call that matters is appended to CALLS and, as a JSON line, to the file $STANDIN_IMX500_LOG.
"""
import json
import os
import time

import numpy as np

CALLS = []
FRAME_S = 0.01   # a fast camera: the test's frames arrive in a few ms each


def log(*call):
    CALLS.append(call)
    path = os.environ.get("STANDIN_IMX500_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(call) + "\n")


class CompletedRequest:
    def __init__(self, metadata, main):
        self.metadata, self.main = metadata, main

    def get_metadata(self):
        return self.metadata

    def make_array(self, name):
        assert name == "main", name
        width, height = self.main["size"]
        channels = 4 if self.main["format"].startswith("X") else 3
        return np.full((height, width, channels), 128, np.uint8)

    def release(self):
        pass


# What global_camera_info() gives for an AI Camera on a Pi 5 (picamera2 manual: Model, Location, Rotation, Id, Num);
# $STANDIN_CAMERAS (a JSON list) replaces it.
AI_CAMERA = {"Model": "imx500", "Location": 2, "Rotation": 0, "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx500@1a",
             "Num": 0}


class Picamera2:
    @staticmethod
    def global_camera_info():
        return json.loads(os.environ["STANDIN_CAMERAS"]) if "STANDIN_CAMERAS" in os.environ else [AI_CAMERA]

    def __init__(self, camera_num=0):
        log("Picamera2", camera_num)
        self.frames, self.config = 0, None

    def create_preview_configuration(self, main=None, controls=None, buffer_count=4):
        return {"main": {"format": "XBGR8888", "size": (640, 480), **(main or {})}, "controls": dict(controls or {}),
                "buffer_count": buffer_count}

    def start(self, config=None, show_preview=False):
        log("start", config["main"]["format"], config["controls"].get("FrameRate"), config["buffer_count"],
            show_preview)
        self.config = config

    def camera_configuration(self):
        return self.config

    def capture_request(self):
        time.sleep(FRAME_S)
        self.frames += 1
        return CompletedRequest({"FrameNumber": self.frames, "CnnOutputTensor": "…"}, self.config["main"])

    def stop(self):
        log("stop")

    def close(self):
        log("close")

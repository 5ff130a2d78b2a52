"""Drawing the answer on the picture: label, confidence and FPS, sized to the frame."""
from __future__ import annotations

import cv2
import numpy as np

from edgecls.device.model.classifier import Prediction

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_overlay(bgr: np.ndarray, result: Prediction, fps: float, shadow_lines=(), alarm: bool = False) -> np.ndarray:
    """A copy of the BGR frame with a banner: "label 97.3%" and the FPS, then the float shadow's lines (`run
    --shadow`: agreement and margin; red while drift is reported). The input is not modified."""
    out = bgr.copy()
    h, w = out.shape[:2]
    scale = max(0.35, min(w, h) / 480.0)
    thick = max(1, int(round(scale * 2)))
    line_h = int(30 * scale)
    colour = (0, 200, 255) if result.uncertain else (0, 255, 0)
    lines = [(f"{result.label} {result.confidence * 100:.1f}%", colour), (f"FPS {fps:.1f}", (255, 255, 255))]
    lines += [(text, (0, 0, 255) if alarm else (255, 200, 0)) for text in shadow_lines]
    cv2.rectangle(out, (0, 0), (w, line_h * len(lines) + line_h // 3), (0, 0, 0), -1)
    for i, (text, col) in enumerate(lines):
        cv2.putText(out, text, (int(6 * scale), line_h * (i + 1)), _FONT, scale, col, thick, cv2.LINE_AA)
    return out

"""Match pictures: side-by-side (CLI) and overlaid on the frame (debug image)."""
from __future__ import annotations

import cv2
import numpy as np


def score_colors(scores: np.ndarray) -> np.ndarray:
    """BGR colours from red (low score) through yellow to green (high score)."""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float32)), 0.0, 1.0)
    red = np.clip(2 * (1 - s), 0, 1)
    green = np.clip(2 * s, 0, 1)
    return (np.stack([np.zeros_like(s), green, red], axis=1) * 255).astype(np.uint8)


def to_bgr(image: np.ndarray) -> np.ndarray:
    """RGB / mono (uint8 or float in [0, 1]) → BGR uint8 for drawing."""
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def draw_side_by_side(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, points1: np.ndarray,
                      scores: np.ndarray, keypoints0: np.ndarray | None = None,
                      keypoints1: np.ndarray | None = None, text: str = "") -> np.ndarray:
    a, b = to_bgr(image0), to_bgr(image1)
    height = max(a.shape[0], b.shape[0])
    canvas = np.zeros((height, a.shape[1] + b.shape[1] + 10, 3), np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    offset = a.shape[1] + 10
    canvas[:b.shape[0], offset:] = b
    for kps, dx in ((keypoints0, 0), (keypoints1, offset)):
        for x, y in (kps if kps is not None else []):
            cv2.circle(canvas, (int(round(x)) + dx, int(round(y))), 1, (255, 128, 0), -1, cv2.LINE_AA)
    for (x0, y0), (x1, y1), color in zip(points0, points1, score_colors(scores)):
        c = tuple(int(v) for v in color)
        cv2.line(canvas, (int(round(x0)), int(round(y0))), (int(round(x1)) + offset, int(round(y1))), c, 1,
                 cv2.LINE_AA)
    if text:
        cv2.putText(canvas, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def draw_tracks(image: np.ndarray, points_keyframe: np.ndarray, points_frame: np.ndarray, scores: np.ndarray,
                inliers: np.ndarray | None = None, text: str = "") -> np.ndarray:
    """Matches drawn on the current frame: a line from the keyframe position to the current one,
    coloured by score; outliers of the pose drawn grey."""
    canvas = to_bgr(image).copy()
    colors = score_colors(scores)
    for i, ((x0, y0), (x1, y1)) in enumerate(zip(points_keyframe, points_frame)):
        c = tuple(int(v) for v in colors[i])
        if inliers is not None and len(inliers) == len(points_frame) and not inliers[i]:
            c = (128, 128, 128)
        cv2.line(canvas, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), c, 1, cv2.LINE_AA)
        cv2.circle(canvas, (int(round(x1)), int(round(y1))), 2, c, -1, cv2.LINE_AA)
    if text:
        cv2.putText(canvas, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas

"""Match pictures, the one drawing module: side by side (``glue-ros-match``, the demo) and overlaid
on the current frame (the node's ``~/debug_image``); its selection, colours and order are also those
of the node's ``~/match_markers`` / ``~/match_points`` (``select_drawn``, ``match_colours``,
``drawing_order``), so Foxglove's overlay looks like the debug image.

Readable at a glance:

* at most ``MAX_DRAWN`` (150) matches are drawn, chosen evenly through the score order (so every
  score range shows) and in proportion among inliers and outliers (``select_drawn``);
* pose inliers are coloured by score on a cool ramp (blue = low score → cyan → green = high);
  outliers are red and drawn underneath; matches that were not verified (no ``inliers`` given) use
  the score ramp;
* a legend in the top-left corner: the backend, the counts (matches, how many are drawn, inliers and
  their share), timings when given, extra notes, and a colour key.

Images are RGB or mono (uint8, or float in [0, 1]); pictures are BGR uint8 (``cv2.imwrite`` ready).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

__all__ = ["MAX_DRAWN", "OUTLIER_BGR", "KEYPOINT_BGR", "score_ramp", "match_colours", "select_drawn", "drawing_order",
           "to_bgr", "draw_matches", "draw_matches_on_frame"]

MAX_DRAWN = 150
OUTLIER_BGR = (40, 40, 230)  # red
KEYPOINT_BGR = (150, 150, 150)  # grey: keypoints without a drawn match
# score ramp stops (BGR): 0 → blue, 0.5 → cyan, 1 → green
_RAMP = np.array([[255, 110, 0], [220, 220, 0], [40, 230, 40]], np.float64)


def score_ramp(scores: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] (clipped; NaN = 0) → BGR uint8 colours (M, 3), blue → cyan → green."""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64).reshape(-1)), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(s.astype(int), len(_RAMP) - 2)
    f = (s - i)[:, None]
    return np.round(_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def match_colours(scores: np.ndarray, inliers: np.ndarray | None = None) -> np.ndarray:
    """The colour of each match (BGR uint8, (M, 3)): its score on ``score_ramp``, or ``OUTLIER_BGR``
    for a pose outlier (``inliers`` given and False). The one colour rule of every match picture and
    of the node's ``~/match_markers``."""
    colours = score_ramp(scores)
    if inliers is not None:
        colours[~np.asarray(inliers, bool).reshape(-1)] = OUTLIER_BGR
    return colours


def drawing_order(chosen: np.ndarray, scores: np.ndarray, inliers: np.ndarray | None = None) -> list[int]:
    """``chosen`` match indices in the order they are drawn: outliers first (underneath), then from
    low to high score (the best on top)."""
    s = np.nan_to_num(np.asarray(scores, np.float64).reshape(-1))
    inl = None if inliers is None else np.asarray(inliers, bool).reshape(-1)
    return sorted((int(i) for i in np.asarray(chosen).reshape(-1)),
                  key=lambda i: (inl is None or bool(inl[i]), s[i]))


def _stratified(indices: np.ndarray, scores: np.ndarray, count: int) -> np.ndarray:
    """``count`` of ``indices``, evenly spaced through their score order (lowest and highest kept)."""
    if count >= len(indices):
        return indices
    order = indices[np.argsort(scores[indices], kind="stable")]
    return order[np.round(np.linspace(0, len(order) - 1, count)).astype(int)]


def select_drawn(scores: np.ndarray, inliers: np.ndarray | None = None, max_drawn: int = MAX_DRAWN) -> np.ndarray:
    """Sorted indices of at most ``max_drawn`` matches to draw: inliers and outliers in proportion
    (each group with at least one), each group stratified by score."""
    s = np.nan_to_num(np.asarray(scores, np.float64).reshape(-1))
    n = len(s)
    if n <= max_drawn:
        return np.arange(n)
    if inliers is None or len(inliers) != n:
        return np.sort(_stratified(np.arange(n), s, max_drawn))
    inl = np.asarray(inliers, bool)
    groups = [np.flatnonzero(inl), np.flatnonzero(~inl)]
    quotas = [min(len(g), max(1, int(round(max_drawn * len(g) / n)))) if len(g) else 0 for g in groups]
    quotas[0] = min(len(groups[0]), max_drawn - quotas[1])  # the rounding remainder goes to the inliers
    return np.sort(np.concatenate([_stratified(g, s, q) for g, q in zip(groups, quotas)]))


def to_bgr(image: np.ndarray) -> np.ndarray:
    """RGB / mono (uint8 or float in [0, 1]) → BGR uint8 for drawing (a new array)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2BGR)


def _pixel(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _legend_lines(title: str, count: int, drawn: int, inliers: np.ndarray | None,
                  timings_ms: Mapping[str, float] | None, notes: Sequence[str]) -> list[str]:
    lines = [title] if title else []
    shown = f" ({drawn} drawn)" if drawn < count else ""
    if inliers is None:
        lines.append(f"{count} matches{shown}, not verified")
    else:
        n_in = int(np.count_nonzero(inliers))
        share = f" ({100.0 * n_in / count:.0f}%)" if count else ""
        lines.append(f"{count} matches{shown}, {n_in} inliers{share}")
    if timings_ms:
        lines.append("  ".join(f"{name.removesuffix('_ms')} {float(ms):.1f} ms" for name, ms in timings_ms.items()))
    lines.extend(str(n) for n in notes if n)
    return lines


def _draw_legend(canvas: np.ndarray, lines: list[str], verified: bool) -> None:
    """Text lines and a colour key on a darkened box in the top-left corner (in place)."""
    scale = max(0.4, min(canvas.shape[0], canvas.shape[1]) / 960.0)
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    line_h = int(round(22 * scale / 0.5))
    pad = max(4, line_h // 4)
    key = ["score 0", "1"] + (["outlier"] if verified else [])
    widths = [cv2.getTextSize(t, font, scale, thickness)[0][0] for t in lines]
    ramp_w = 4 * line_h
    key_w = sum(cv2.getTextSize(t, font, scale, thickness)[0][0] for t in key) + ramp_w + (3 * line_h if verified else
                                                                                           line_h)
    width = min(canvas.shape[1], max(widths + [key_w]) + 2 * pad)
    height = min(canvas.shape[0], line_h * (len(lines) + 1) + 2 * pad)
    box = canvas[:height, :width]
    box[:] = (box.astype(np.float32) * 0.3).astype(np.uint8)
    y = pad + line_h - line_h // 4
    for text in lines:
        cv2.putText(canvas, text, (pad, y), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
        y += line_h
    x = pad  # colour key: "score 0 [ramp] 1   [red] outlier"
    cv2.putText(canvas, key[0], (x, y), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    x += cv2.getTextSize(key[0], font, scale, thickness)[0][0] + line_h // 4
    top, bottom = y - (2 * line_h) // 3, y
    ramp = score_ramp(np.linspace(0.0, 1.0, ramp_w))
    for i, colour in enumerate(ramp.tolist()):
        cv2.line(canvas, (x + i, top), (x + i, bottom), colour, 1)
    x += ramp_w + line_h // 4
    cv2.putText(canvas, key[1], (x, y), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    if verified:
        x += cv2.getTextSize(key[1], font, scale, thickness)[0][0] + line_h
        cv2.rectangle(canvas, (x, top), (x + line_h // 2, bottom), OUTLIER_BGR, -1)
        cv2.putText(canvas, key[2], (x + line_h // 2 + line_h // 4, y), font, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)


def _draw(canvas: np.ndarray, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, inliers: np.ndarray | None,
          max_drawn: int, both_ends: bool) -> int:
    """Lines start → end with a dot at the end (and the start if ``both_ends``); returns how many."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    chosen = select_drawn(scores, inliers, max_drawn)
    colours = match_colours(scores, inliers)
    thickness = max(1, int(round(min(canvas.shape[:2]) / 600)))
    radius = thickness + 1
    order = drawing_order(chosen, scores, inliers)
    segments = [(_pixel(starts[i]), _pixel(ends[i])) for i in order]
    for a, b in segments:  # a dark outline under everything: lines stay visible on busy images
        cv2.line(canvas, a, b, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        for p in (a, b) if both_ends else (b,):
            cv2.circle(canvas, p, radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
    for i, (a, b) in zip(order, segments):
        colour = tuple(int(c) for c in colours[i])
        cv2.line(canvas, a, b, colour, thickness, cv2.LINE_AA)
        for p in (a, b) if both_ends else (b,):
            cv2.circle(canvas, p, radius, colour, -1, cv2.LINE_AA)
    return len(chosen)


def _checked(points0, points1, scores, inliers):
    p0 = np.asarray(points0, np.float64).reshape(-1, 2)
    p1 = np.asarray(points1, np.float64).reshape(-1, 2)
    s = np.asarray(scores, np.float64).reshape(-1)
    if not len(p0) == len(p1) == len(s):
        raise ValueError(f"points0, points1 and scores differ in length ({len(p0)}, {len(p1)}, {len(s)})")
    inl = None
    if inliers is not None:
        inl = np.asarray(inliers, bool).reshape(-1)
        if len(inl) != len(s):
            raise ValueError(f"inliers has {len(inl)} entries for {len(s)} matches")
    return p0, p1, s, inl


def _keypoints(canvas: np.ndarray, keypoints: np.ndarray | None, dx: int = 0) -> None:
    for x, y in np.round(np.asarray(keypoints if keypoints is not None else np.zeros((0, 2)),
                                    np.float64).reshape(-1, 2)).astype(int).tolist():
        cv2.circle(canvas, (x + dx, y), 1, KEYPOINT_BGR, -1, cv2.LINE_AA)


def draw_matches(image0: np.ndarray, image1: np.ndarray, points0: np.ndarray, points1: np.ndarray,
                 scores: np.ndarray, *, inliers: np.ndarray | None = None, keypoints0: np.ndarray | None = None,
                 keypoints1: np.ndarray | None = None, title: str = "", timings_ms: Mapping[str, float] | None = None,
                 notes: Sequence[str] = (), max_drawn: int = MAX_DRAWN) -> np.ndarray:
    """Side-by-side picture: ``image0`` left, ``image1`` right (10 px apart), a line per drawn match
    from ``points0`` to ``points1``, grey keypoints, and the legend."""
    p0, p1, s, inl = _checked(points0, points1, scores, inliers)
    a, b = to_bgr(image0), to_bgr(image1)
    canvas = np.zeros((max(a.shape[0], b.shape[0]), a.shape[1] + b.shape[1] + 10, 3), np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    offset = a.shape[1] + 10
    canvas[:b.shape[0], offset:] = b
    _keypoints(canvas, keypoints0)
    _keypoints(canvas, keypoints1, offset)
    drawn = _draw(canvas, p0, p1 + [offset, 0], s, inl, max_drawn, both_ends=True)
    _draw_legend(canvas, _legend_lines(title, len(s), drawn, inl, timings_ms, notes), inl is not None)
    return canvas


def draw_matches_on_frame(image: np.ndarray, points_keyframe: np.ndarray, points_frame: np.ndarray,
                          scores: np.ndarray, *, inliers: np.ndarray | None = None,
                          keypoints: np.ndarray | None = None, title: str = "",
                          timings_ms: Mapping[str, float] | None = None, notes: Sequence[str] = (),
                          max_drawn: int = MAX_DRAWN) -> np.ndarray:
    """The current frame with a line per drawn match from its keyframe position to its current one
    (a dot at the current end), grey keypoints, and the legend."""
    pk, pf, s, inl = _checked(points_keyframe, points_frame, scores, inliers)
    canvas = to_bgr(image)
    _keypoints(canvas, keypoints)
    drawn = _draw(canvas, pk, pf, s, inl, max_drawn, both_ends=False)
    _draw_legend(canvas, _legend_lines(title, len(s), drawn, inl, timings_ms, notes), inl is not None)
    return canvas

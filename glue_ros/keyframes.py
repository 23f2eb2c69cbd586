"""Keyframe buffer and keyframe policy.

Each keyframe keeps its features on the compute device, so a keyframe is extracted exactly once
(when it was a frame) and never again; the newest ``match_against`` keyframes are matched against
every new frame in one batched matcher call.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from .config import KeyframeConfig
from .features import Features


@dataclass
class Keyframe:
    id: int  # unique for the life of the pipeline
    stamp_ns: int
    frame_id: str
    features: Features  # on the compute device
    keypoints: np.ndarray  # (N, 2) float32, host copy for geometry
    track_ids: np.ndarray  # (N,) int64
    camera: object | None  # geometry.CameraModel or None
    image_size: tuple[int, int]


class KeyframeBuffer:
    """Bounded FIFO of keyframes, newest last."""

    def __init__(self, capacity: int):
        self._frames: deque[Keyframe] = deque(maxlen=capacity)

    @property
    def capacity(self) -> int:
        return self._frames.maxlen or 0

    def resize(self, capacity: int) -> None:
        self._frames = deque(self._frames, maxlen=capacity)

    def add(self, keyframe: Keyframe) -> None:
        self._frames.append(keyframe)

    def newest(self, count: int = 1) -> list[Keyframe]:
        """Up to ``count`` keyframes, newest first."""
        return list(reversed(self._frames))[:count]

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self):
        return iter(self._frames)


@dataclass(frozen=True)
class KeyframeSignals:
    """What the policy looks at, measured against the newest keyframe."""

    num_matches: int
    inlier_ratio: float | None  # None when no pose was estimated (no intrinsics)
    parallax_px: float  # median displacement of inliers (or of all matches without pose)
    seconds_since_keyframe: float


def keyframe_reason(signals: KeyframeSignals, config: KeyframeConfig) -> str:
    """Why this frame should become a keyframe, or "" if it should not.

    The checks go from "tracking is about to be lost" to "enough baseline for triangulation":
    too few matches or a poor inlier ratio means the reference is getting stale; large parallax
    means a good baseline has built up; the interval bounds the time between keyframes.
    """
    if signals.num_matches < config.min_matches:
        return "few_matches"
    if signals.inlier_ratio is not None and signals.inlier_ratio < config.min_inlier_ratio:
        return "low_inlier_ratio"
    if signals.parallax_px > config.parallax_px:
        return "parallax"
    if config.max_interval_s > 0 and signals.seconds_since_keyframe >= config.max_interval_s:
        return "interval"
    return ""


def reset_reason(stamp_ns: int, image_size: tuple[int, int], last_stamp_ns: int | None,
                 keyframe_size: tuple[int, int] | None, config: KeyframeConfig) -> str:
    """Why the buffer must be reset before this frame, or "" if not."""
    if keyframe_size is not None and image_size != keyframe_size:
        return "image_size_changed"
    if last_stamp_ns is not None:
        if stamp_ns < last_stamp_ns:
            return "stamp_backwards"
        if config.reset_gap_s > 0 and (stamp_ns - last_stamp_ns) > config.reset_gap_s * 1e9:
            return "stamp_gap"
    return ""


def median_displacement(points0: np.ndarray, points1: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        points0, points1 = points0[mask], points1[mask]
    if len(points0) == 0:
        return 0.0
    return float(np.median(np.linalg.norm(points1 - points0, axis=1)))

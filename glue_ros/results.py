"""Typed results of the front-end: what every adapter (node, replay, CLI) publishes.

Pose convention (used everywhere in glue_ros): ``RelativePose`` is the pose of the *current*
camera expressed in the *keyframe* camera's frame, in optical axes (REP 103 ``_optical``: x right,
y down, z forward). It maps points from current-camera coordinates to keyframe coordinates:
``X_kf = R @ X_cur + t``. Monocular: ``t`` has unit norm, the metric scale is unknown.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RelativePose:
    valid: bool  # R and t usable (enough inliers, not degenerate)
    reason: str  # "ok" or why not: "no_intrinsics", "too_few_matches", "too_few_inliers", "pure_rotation", ...
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) R_kf_cur
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) unit t_kf_cur (zero if unknown)
    inliers: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (M,) over the pair's matches
    num_inliers: int = 0
    rotation_valid: bool = False  # rotation usable even when not valid (pure rotation case)
    rotation_only: bool = False  # near-pure rotation detected: translation direction meaningless
    parallax_px: float = 0.0  # median inlier displacement (pixels)
    covariance: np.ndarray = field(default_factory=lambda: np.full((6, 6), 0.0))  # (x y z roll pitch yaw)

    def matrix(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = self.rotation
        T[:3, 3] = self.translation
        return T


@dataclass
class KeyframeMatches:
    """Matches of the current frame to one keyframe."""

    keyframe_id: int  # sequence number of the keyframe (unique for the pipeline's life)
    keyframe_stamp_ns: int
    matches: np.ndarray  # (M, 2) int64 [index in keyframe keypoints, index in frame keypoints]
    scores: np.ndarray  # (M,) float32
    points_keyframe: np.ndarray  # (M, 2) float32 pixels in the keyframe image
    points_frame: np.ndarray  # (M, 2) float32 pixels in the current image
    track_ids: np.ndarray  # (M,) int64
    inliers: np.ndarray  # (M,) bool pose inliers (all False when no pose)
    pose: RelativePose
    stop_layer: int = -1
    pruned: tuple[int, int] = (0, 0)

    def __len__(self) -> int:
        return int(self.matches.shape[0])


@dataclass
class KeyframeDecision:
    is_keyframe: bool
    reason: str  # "first_frame", "reset:<why>", "few_matches", "low_inlier_ratio", "parallax", "interval", "" if not
    keyframe_id: int  # id of this frame if it became one, else of the newest keyframe


@dataclass
class FrameResult:
    stamp_ns: int
    frame_id: str
    image_size: tuple[int, int]  # (width, height)
    keypoints: np.ndarray  # (N, 2) float32 pixels
    keypoint_scores: np.ndarray  # (N,) float32
    track_ids: np.ndarray  # (N,) int64
    track_velocities: np.ndarray  # (N, 2) float32 pixels/s (0 for new tracks)
    matches: list[KeyframeMatches]  # newest keyframe first
    keyframe: KeyframeDecision
    reset_reason: str = ""  # non-empty when the keyframe buffer was reset before this frame
    timings_ms: dict[str, float] = field(default_factory=dict)
    stop_layer: int = -1  # LightGlue layers run (max over keyframes); -1 for other matchers
    status: str = "ok"  # "ok" or why the frame gave no matches: "invalid_image", "repeated_stamp", ...

    @property
    def pose(self) -> RelativePose | None:
        """Pose relative to the newest matched keyframe (None for the first frame / after reset)."""
        return self.matches[0].pose if self.matches else None

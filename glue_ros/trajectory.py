"""The keyframe chain: keyframe-relative poses composed into one path, up to scale (ROS-free).

Every ``FrameResult`` carries the pose of the current camera in its newest keyframe's camera frame
(``RelativePose``: ``X_kf = R X_cur + t``, optical axes, **unit** ``t`` for a monocular camera).
``KeyframeTrajectory`` composes these: the first keyframe (and the first one after a reset) is the
origin, the identity; a frame's pose is its newest keyframe's pose times its relative pose
(``T_origin_cur = T_origin_kf @ T_kf_cur``); a frame that becomes a keyframe keeps that pose.

**Up to scale, per step**: every keyframe-to-keyframe step has translation length 1 (the monocular
relative pose has no scale), so the path shows the rotations and the directions of motion, not the
distances — it is a picture of the keyframe chain, not odometry. Rules:

* valid relative pose: ``R`` and the unit ``t``;
* only the rotation usable (``rotation_valid``, e.g. pure rotation): ``R`` and no translation;
* neither (too few matches, no intrinsics ...): the frame has no pose (``TrajectoryStep.camera`` is
  None); if it still becomes a keyframe, that keyframe keeps its predecessor's pose (a ``gap``: the
  path does not move there);
* a keyframe whose predecessor is unknown to the chain, the first frame, or a reset (the pipeline
  cleared its keyframes: stamps went backwards, a gap, a new image size) **restarts** the chain at the
  origin; the path starts over.

At most ``max_poses`` keyframe poses are kept (the oldest are dropped). Rotations are re-orthonormalised
at every keyframe so long chains stay rotations.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from .results import FrameResult, RelativePose

__all__ = ["KeyframePose", "TrajectoryStep", "KeyframeTrajectory", "relative_step", "orthonormalised"]


@dataclass(frozen=True)
class KeyframePose:
    keyframe_id: int
    stamp_ns: int
    pose: np.ndarray  # (4, 4) T_origin_kf (optical axes; unit-length steps)


@dataclass(frozen=True)
class TrajectoryStep:
    """What one frame did to the chain."""

    stamp_ns: int
    camera: np.ndarray | None  # (4, 4) T_origin_cur, or None when the frame has no usable relative pose
    keyframe_added: bool  # the frame became a keyframe: the path grew (or restarted with it)
    restarted: bool  # the chain starts over at this frame (first frame, reset, unknown keyframe)


def orthonormalised(R: np.ndarray) -> np.ndarray:
    """The rotation nearest to ``R`` (SVD; determinant +1)."""
    U, _, Vt = np.linalg.svd(np.asarray(R, np.float64).reshape(3, 3))
    return U @ np.diag([1.0, 1.0, float(np.sign(np.linalg.det(U @ Vt)) or 1.0)]) @ Vt


def relative_step(pose: RelativePose | None) -> np.ndarray | None:
    """(4, 4) ``T_kf_cur`` of a relative pose: R and unit t when valid, R alone when only the rotation
    is usable, None otherwise."""
    if pose is None or not (pose.valid or pose.rotation_valid):
        return None
    T = np.eye(4)
    T[:3, :3] = orthonormalised(pose.rotation)
    if pose.valid:
        t = np.asarray(pose.translation, np.float64).reshape(3)
        norm = float(np.linalg.norm(t))
        if not np.isfinite(norm):
            return None
        T[:3, 3] = t / norm if norm > 0 else 0.0
    return T


class KeyframeTrajectory:
    """The chain of keyframe poses of one pipeline; feed it every published ``FrameResult`` in order."""

    def __init__(self, max_poses: int = 1000):
        if max_poses < 1:
            raise ValueError("max_poses must be >= 1")
        self._poses: collections.deque[KeyframePose] = collections.deque(maxlen=int(max_poses))
        self._by_id: dict[int, np.ndarray] = {}
        self.restarts = 0  # chain starts (the first one included)
        self.gaps = 0  # keyframes added without a usable pose to their predecessor

    @property
    def poses(self) -> list[KeyframePose]:
        """The kept keyframe poses, oldest first."""
        return list(self._poses)

    def update(self, result: FrameResult) -> TrajectoryStep:
        decision = result.keyframe
        newest = result.matches[0] if result.matches else None
        base = self._by_id.get(newest.keyframe_id) if newest is not None else None
        if base is None:  # nothing to compose with: the first frame, a reset, a keyframe the chain never saw
            if not decision.is_keyframe:
                return TrajectoryStep(result.stamp_ns, None, False, False)
            self._restart()
            self._add(decision.keyframe_id, result.stamp_ns, np.eye(4))
            return TrajectoryStep(result.stamp_ns, np.eye(4), True, True)
        step = relative_step(newest.pose)
        camera = base @ step if step is not None else None
        if decision.is_keyframe:
            if camera is None:
                self.gaps += 1
            pose = (camera if camera is not None else base).copy()
            pose[:3, :3] = orthonormalised(pose[:3, :3])
            self._add(decision.keyframe_id, result.stamp_ns, pose)
            camera = pose if camera is not None else None
        return TrajectoryStep(result.stamp_ns, camera, decision.is_keyframe, False)

    def _restart(self) -> None:
        self._poses.clear()
        self._by_id.clear()
        self.restarts += 1

    def _add(self, keyframe_id: int, stamp_ns: int, pose: np.ndarray) -> None:
        if len(self._poses) == self._poses.maxlen:
            self._by_id.pop(self._poses[0].keyframe_id, None)
        self._poses.append(KeyframePose(int(keyframe_id), int(stamp_ns), pose))
        self._by_id[int(keyframe_id)] = pose

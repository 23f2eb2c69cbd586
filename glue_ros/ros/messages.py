"""The message contract: ``FrameResult`` → the node's per-frame topics, and decoders back to numpy.

Builders take a ``msg_types.MessageFactory`` (rclpy or rosbags classes) and the frame's
``FrameResult``; decoders are duck-typed and accept either flavour. Per processed frame,
``header.stamp`` = the INPUT IMAGE's stamp, ``header.frame_id`` = the image's frame_id unless
overridden. The other topics: ``~/features`` (VINS) in ``vins.py``, ``~/debug_image`` in
``outputs.py``, ``/diagnostics`` in ``diagnostics.py``.

``~/matches`` — sensor_msgs/PointCloud2, height 1, width M (one point per match, to every matched
keyframe, newest keyframe first), little-endian, packed, ``is_dense`` true. Published for every
processed frame (width 0 when nothing matched). Fields (``MATCH_FIELDS``)::

    x, y            float32  pixel in the current frame
    kf_x, kf_y      float32  pixel in the keyframe
    track_id        float64  track id (exact integer; see below)
    score           float32  match confidence
    kf_stamp_sec    int32    keyframe stamp (builtin_interfaces/Time sec)
    kf_stamp_nanosec uint32  keyframe stamp (nanosec)
    keyframe_id     uint32   keyframe sequence number
    kp_index        uint32   keypoint index in the current frame
    kf_kp_index     uint32   keypoint index in the keyframe
    inlier          uint8    1 = inlier of that keyframe pair's relative pose
    kf_rank         uint8    0 = newest matched keyframe (the one ~/relative_pose refers to), 1 …

``~/relative_pose`` — geometry_msgs/PoseWithCovarianceStamped, only when the pose is valid:
pose of the current camera in the newest matched keyframe's camera frame (``X_kf = R X_cur + t``,
optical axes, unit ``t`` for monocular), covariance row-major 6x6 (x y z roll pitch yaw).
``header.stamp`` = current image stamp (the same stamp as ``~/matches``, so message_filters
exact-time pairing works); the keyframe's stamp and id are those of the ``kf_rank == 0`` points of
the ``~/matches`` message with the same stamp (``pose_keyframe``).

``~/keyframes`` — sensor_msgs/PointCloud2 event when a frame becomes a keyframe,
``header.stamp`` = the keyframe's stamp; one point per keypoint: ``x, y`` float32, ``track_id``
float64, ``score`` float32, ``keyframe_id`` uint32 (``KEYFRAME_FIELDS``).

Track ids: sensor_msgs/PointField has no INT64 before ROS 2 Lyrical (Kilted: INT8..FLOAT64 only),
so ``track_id`` is FLOAT64, exact for |id| <= 2**53 (the builder refuses larger ids). Decoders read
fields by name and datatype, so a future INT64 field (datatype 9 in Lyrical) decodes the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from glue_ros.geometry import matrix_from_quaternion, quaternion_from_matrix
from glue_ros.results import FrameResult

from .msg_types import NS, MessageFactory, header_stamp_ns, ns_to_stamp
from .pointcloud import column, make_cloud, packed_dtype, read_points

__all__ = [
    "MATCH_FIELDS", "KEYFRAME_FIELDS", "MAX_EXACT_TRACK_ID",
    "build_matches", "build_relative_pose", "build_keyframe",
    "MatchesArrays", "KeyframeArrays", "RelativePoseArrays",
    "decode_matches", "decode_keyframe", "decode_relative_pose", "pose_keyframe",
]

MAX_EXACT_TRACK_ID = 2 ** 53

MATCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("x", "f4"), ("y", "f4"), ("kf_x", "f4"), ("kf_y", "f4"), ("track_id", "f8"), ("score", "f4"),
    ("kf_stamp_sec", "i4"), ("kf_stamp_nanosec", "u4"), ("keyframe_id", "u4"), ("kp_index", "u4"),
    ("kf_kp_index", "u4"), ("inlier", "u1"), ("kf_rank", "u1"),
)
KEYFRAME_FIELDS: tuple[tuple[str, str], ...] = (
    ("x", "f4"), ("y", "f4"), ("track_id", "f8"), ("score", "f4"), ("keyframe_id", "u4"),
)


def _track_ids_f8(track_ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(track_ids).astype(np.int64, copy=False).reshape(-1)
    if ids.size and int(np.abs(ids).max()) > MAX_EXACT_TRACK_ID:
        raise ValueError(f"track id {int(np.abs(ids).max())} exceeds 2**53: not exactly representable in the "
                         "FLOAT64 track_id field")
    return ids.astype(np.float64)


def _uint32(values: Any, what: str) -> np.ndarray:
    a = np.asarray(values).astype(np.int64, copy=False).reshape(-1)
    if a.size and (int(a.min()) < 0 or int(a.max()) >= 2 ** 32):
        raise ValueError(f"{what} must be in [0, 2**32), got [{int(a.min())}, {int(a.max())}]")
    return a.astype(np.uint32)


# --------------------------------------------------------------------------- ~/matches


def build_matches(factory: MessageFactory, result: FrameResult, frame_id: str | None = None) -> Any:
    """``~/matches`` PointCloud2: one point per match, to every matched keyframe (newest first)."""
    dtype = packed_dtype(MATCH_FIELDS)
    parts = []
    for rank, km in enumerate(result.matches):
        m = len(km)
        idx = np.asarray(km.matches, np.int64).reshape(-1, 2)
        pf = np.asarray(km.points_frame, np.float32).reshape(-1, 2)
        pk = np.asarray(km.points_keyframe, np.float32).reshape(-1, 2)
        scores = np.asarray(km.scores, np.float32).reshape(-1)
        track_ids = np.asarray(km.track_ids).reshape(-1)
        inliers = np.asarray(km.inliers, bool).reshape(-1)
        if inliers.size == 0:
            inliers = np.zeros(m, bool)
        lengths = {len(idx), len(pf), len(pk), len(scores), len(track_ids), len(inliers)}
        if lengths != {m}:
            raise ValueError(f"keyframe {km.keyframe_id}: inconsistent match array lengths {sorted(lengths)}")
        if rank > 255:
            raise ValueError("more than 256 matched keyframes")
        sec, nanosec = ns_to_stamp(km.keyframe_stamp_ns)
        part = np.zeros(m, dtype)
        part["x"], part["y"] = pf[:, 0], pf[:, 1]
        part["kf_x"], part["kf_y"] = pk[:, 0], pk[:, 1]
        part["track_id"] = _track_ids_f8(track_ids)
        part["score"] = scores
        part["kf_stamp_sec"], part["kf_stamp_nanosec"] = sec, nanosec
        part["keyframe_id"] = _uint32([km.keyframe_id], "keyframe_id")[0]
        part["kp_index"] = _uint32(idx[:, 1], "kp_index")
        part["kf_kp_index"] = _uint32(idx[:, 0], "kf_kp_index")
        part["inlier"] = inliers.astype(np.uint8)
        part["kf_rank"] = rank
        parts.append(part)
    points = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return make_cloud(factory, result.stamp_ns, result.frame_id if frame_id is None else frame_id, points)


@dataclass
class MatchesArrays:
    """Decoded ``~/matches``. Per-match arrays have length M; ``stamp_ns`` is the current frame's."""

    stamp_ns: int
    frame_id: str
    points: np.ndarray  # (M, 2) float32 pixels in the current frame
    keyframe_points: np.ndarray  # (M, 2) float32 pixels in the keyframe
    scores: np.ndarray  # (M,) float32
    track_ids: np.ndarray  # (M,) int64
    inliers: np.ndarray  # (M,) bool
    keyframe_stamp_ns: np.ndarray  # (M,) int64
    keyframe_ids: np.ndarray  # (M,) int64
    kp_indices: np.ndarray  # (M,) int64 keypoint index in the current frame
    kf_kp_indices: np.ndarray  # (M,) int64 keypoint index in the keyframe
    kf_rank: np.ndarray  # (M,) int64, 0 = newest matched keyframe

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def matches(self) -> np.ndarray:
        """(M, 2) int64 [keyframe keypoint index, frame keypoint index] (KeyframeMatches order)."""
        return np.stack([self.kf_kp_indices, self.kp_indices], axis=1)

    def select(self, mask: np.ndarray) -> "MatchesArrays":
        kw = {f: (v[mask] if isinstance(v, np.ndarray) else v) for f, v in self.__dict__.items()}
        return MatchesArrays(**kw)

    def for_keyframe(self, keyframe_id: int) -> "MatchesArrays":
        return self.select(self.keyframe_ids == int(keyframe_id))


def decode_matches(msg: Any) -> MatchesArrays:
    points = read_points(msg)
    col = lambda name, dt: column(points, name, dt)  # noqa: E731
    sec = col("kf_stamp_sec", np.int64)
    nsec = col("kf_stamp_nanosec", np.int64)
    return MatchesArrays(
        stamp_ns=header_stamp_ns(msg), frame_id=str(msg.header.frame_id),
        points=np.stack([col("x", np.float32), col("y", np.float32)], axis=1),
        keyframe_points=np.stack([col("kf_x", np.float32), col("kf_y", np.float32)], axis=1),
        scores=col("score", np.float32), track_ids=col("track_id", np.int64),
        inliers=col("inlier", np.uint8).astype(bool), keyframe_stamp_ns=sec * NS + nsec,
        keyframe_ids=col("keyframe_id", np.int64), kp_indices=col("kp_index", np.int64),
        kf_kp_indices=col("kf_kp_index", np.int64), kf_rank=column(points, "kf_rank", np.int64, 0),
    )


# --------------------------------------------------------------------------- ~/relative_pose


def build_relative_pose(factory: MessageFactory, result: FrameResult, frame_id: str | None = None) -> Any | None:
    """``~/relative_pose`` (PoseWithCovarianceStamped) for the newest matched keyframe, or None
    when there is no valid pose (first frame, after a reset, too few inliers …)."""
    pose = result.pose
    if pose is None or not pose.valid:
        return None
    t = np.asarray(pose.translation, np.float64).reshape(3)
    qx, qy, qz, qw = (float(v) for v in quaternion_from_matrix(pose.rotation))
    cov = np.asarray(pose.covariance, np.float64)
    if cov.size != 36:
        raise ValueError(f"covariance must be 6x6, got shape {cov.shape}")
    msg_pose = factory.new(
        "geometry_msgs/msg/Pose",
        position=factory.new("geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=factory.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))
    return factory.new(
        "geometry_msgs/msg/PoseWithCovarianceStamped",
        header=factory.header(result.stamp_ns, result.frame_id if frame_id is None else frame_id),
        pose=factory.new("geometry_msgs/msg/PoseWithCovariance", pose=msg_pose,
                         covariance=factory.float64_array(cov.reshape(36))))


class RelativePoseArrays(NamedTuple):
    stamp_ns: int  # current frame stamp
    rotation: np.ndarray  # (3, 3) R_kf_cur
    translation: np.ndarray  # (3,) t_kf_cur
    covariance: np.ndarray  # (6, 6)


def decode_relative_pose(msg: Any) -> RelativePoseArrays:
    """``~/relative_pose`` → (stamp_ns, R, t, covariance); ``X_kf = R @ X_cur + t``. A quaternion
    that is not a rotation (zero or non-finite norm) is a ValueError."""
    p = msg.pose.pose
    q = [float(p.orientation.x), float(p.orientation.y), float(p.orientation.z), float(p.orientation.w)]
    norm = math.sqrt(sum(v * v for v in q))
    if not (norm > 0 and math.isfinite(norm)):
        raise ValueError(f"invalid quaternion {q}")
    return RelativePoseArrays(
        header_stamp_ns(msg), matrix_from_quaternion(q),
        np.array([float(p.position.x), float(p.position.y), float(p.position.z)]),
        np.asarray(msg.pose.covariance, np.float64).reshape(6, 6).copy())


def pose_keyframe(pose_msg_or_stamp: Any, matches: Any) -> tuple[int, int]:
    """(keyframe_id, keyframe_stamp_ns) that a ``~/relative_pose`` message refers to, from the
    ``~/matches`` message (or its ``MatchesArrays``) with the same header stamp."""
    m = matches if isinstance(matches, MatchesArrays) else decode_matches(matches)
    if isinstance(pose_msg_or_stamp, (int, np.integer)):
        stamp = int(pose_msg_or_stamp)
    else:
        stamp = header_stamp_ns(pose_msg_or_stamp)
    if int(stamp) != m.stamp_ns:
        raise ValueError(f"pose stamp {int(stamp)} != matches stamp {m.stamp_ns}: not the same frame")
    newest = m.kf_rank == 0
    if not newest.any():
        raise ValueError("the matches message has no match to the newest keyframe (kf_rank 0)")
    return int(m.keyframe_ids[newest][0]), int(m.keyframe_stamp_ns[newest][0])


# --------------------------------------------------------------------------- ~/keyframes


def build_keyframe(factory: MessageFactory, result: FrameResult, frame_id: str | None = None) -> Any | None:
    """``~/keyframes`` event (PointCloud2 of the new keyframe's keypoints), or None if this frame
    did not become a keyframe."""
    if not result.keyframe.is_keyframe:
        return None
    kps = np.asarray(result.keypoints, np.float32).reshape(-1, 2)
    n = kps.shape[0]
    scores = np.asarray(result.keypoint_scores, np.float32).reshape(-1)
    track_ids = np.asarray(result.track_ids).reshape(-1)
    if {len(scores), len(track_ids)} != {n}:
        raise ValueError(f"inconsistent keypoint array lengths ({n}, {len(scores)}, {len(track_ids)})")
    points = np.zeros(n, packed_dtype(KEYFRAME_FIELDS))
    points["x"], points["y"] = kps[:, 0], kps[:, 1]
    points["track_id"] = _track_ids_f8(track_ids)
    points["score"] = scores
    points["keyframe_id"] = _uint32([result.keyframe.keyframe_id], "keyframe_id")[0]
    return make_cloud(factory, result.stamp_ns, result.frame_id if frame_id is None else frame_id, points)


@dataclass
class KeyframeArrays:
    stamp_ns: int  # the keyframe's stamp
    frame_id: str
    keyframe_id: int  # -1 for an empty keyframe (no keypoints)
    points: np.ndarray  # (N, 2) float32
    track_ids: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float32


def decode_keyframe(msg: Any) -> KeyframeArrays:
    points = read_points(msg)
    ids = column(points, "keyframe_id", np.int64, -1)
    return KeyframeArrays(
        stamp_ns=header_stamp_ns(msg), frame_id=str(msg.header.frame_id),
        keyframe_id=int(ids[0]) if ids.size else -1,
        points=np.stack([column(points, "x", np.float32), column(points, "y", np.float32)], axis=1),
        track_ids=column(points, "track_id", np.int64), scores=column(points, "score", np.float32))

"""Outputs for looking at the front-end (Foxglove, RViz): match overlays for the image panel, the
keyframe path and the camera transform; with their decoders. Builders take a
``msg_types.MessageFactory`` (rclpy or rosbags classes); decoders accept either flavour.

``~/match_markers`` / ``~/match_points`` — visualization_msgs/ImageMarker, one message each per
processed frame, ``header`` = the **image's** stamp and frame_id (what Foxglove's Image panel pairs
an annotation with). The matches to the newest keyframe that ``glue_ros.viz`` would draw (at most
``MAX_DRAWN``, stratified by score, inliers and outliers in proportion), in drawing order (outliers
first, then by score), coloured as in every match picture (``viz.match_colours``: score ramp blue →
cyan → green, pose outliers red), one colour per point in ``outline_colors``:

* ``~/match_markers``: ``LINE_LIST``, two points per match: keyframe position → current position;
  ``scale`` = line width (pixels);
* ``~/match_points``: ``POINTS``, the current positions; ``scale`` = point size (pixels).

Two topics because the Image panel shows the newest message of each annotation topic: two markers on
one topic would hide each other. Coordinates are image pixels with the origin at the **top-left
corner** of the top-left pixel (Foxglove's convention): the ``~/matches`` pixel ``(x, y)`` (pixel
centres at integers) is the marker point ``(x + 0.5, y + 0.5)``; ``z`` = 0.

``~/keyframe_path`` — nav_msgs/Path of the keyframe chain (``glue_ros.trajectory``), in
``output.tf_parent_frame`` (the first keyframe's camera frame since the last reset, optical axes), one
PoseStamped per keyframe at its stamp. **Up to scale**: every keyframe step has length 1 (monocular),
so it shows rotations and directions of motion, not distances; it is not odometry.

``/tf`` — tf2_msgs/TFMessage with one TransformStamped ``output.tf_parent_frame`` →
``output.tf_child_frame`` (default: the outputs' frame_id): the current camera's pose in the chain
(same scale caveat), at the image's stamp.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ..geometry import matrix_from_quaternion, quaternion_from_matrix
from ..results import FrameResult
from ..trajectory import KeyframePose
from ..viz import MAX_DRAWN, drawing_order, match_colours, select_drawn
from .msg_types import MessageFactory, header_stamp_ns, stamp_to_ns

__all__ = ["MARKER_NS", "LINE_WIDTH_PX", "POINT_SIZE_PX", "PIXEL_ORIGIN_OFFSET", "build_match_markers",
           "build_keyframe_path", "build_tf", "ImageMarkerArrays", "decode_image_marker", "PathArrays",
           "decode_path", "TransformArrays", "decode_tf"]

MARKER_NS = "glue_ros_matches"
LINE_LIST, POINTS = 2, 4  # visualization_msgs/ImageMarker types
MARKER_IDS = {LINE_LIST: 0, POINTS: 1}
LINE_WIDTH_PX = 2.0
POINT_SIZE_PX = 5.0
PIXEL_ORIGIN_OFFSET = 0.5  # marker = pixel centre coordinate + 0.5 (origin at the top-left pixel's corner)


# --------------------------------------------------------------------------- ~/match_markers, ~/match_points


def _colour(factory: MessageFactory, bgr) -> Any:
    b, g, r = (float(v) / 255.0 for v in bgr)
    return factory.new("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=1.0)


def _point(factory: MessageFactory, x: float, y: float, z: float = 0.0) -> Any:
    return factory.new("geometry_msgs/msg/Point", x=float(x), y=float(y), z=float(z))


def build_match_markers(factory: MessageFactory, result: FrameResult, kind: str = "lines", *,
                        max_drawn: int = MAX_DRAWN) -> Any:
    """One ImageMarker of the frame's matches to its newest keyframe: ``kind`` "lines" (LINE_LIST,
    keyframe → current position, ``~/match_markers``) or "points" (POINTS at the current positions,
    ``~/match_points``). Empty (no points) when nothing matched."""
    if kind not in ("lines", "points"):
        raise ValueError(f"kind must be 'lines' or 'points', got {kind!r}")
    marker_type = LINE_LIST if kind == "lines" else POINTS
    newest = result.matches[0] if result.matches else None
    points, colours = [], []
    if newest is not None and len(newest):
        scores = np.asarray(newest.scores, np.float64).reshape(-1)
        inliers = np.asarray(newest.inliers, bool).reshape(-1)
        inliers = inliers if inliers.size == scores.size and inliers.any() else None  # no pose: not verified
        palette = match_colours(scores, inliers)
        ends = np.asarray(newest.points_frame, np.float64).reshape(-1, 2) + PIXEL_ORIGIN_OFFSET
        starts = np.asarray(newest.points_keyframe, np.float64).reshape(-1, 2) + PIXEL_ORIGIN_OFFSET
        for i in drawing_order(select_drawn(scores, inliers, max_drawn), scores, inliers):
            colour = _colour(factory, palette[i])
            if marker_type == LINE_LIST:
                points += [_point(factory, *starts[i]), _point(factory, *ends[i])]
                colours += [colour, colour]
            else:
                points.append(_point(factory, *ends[i]))
                colours.append(colour)
    clear = factory.new("std_msgs/msg/ColorRGBA", r=0.0, g=0.0, b=0.0, a=0.0)
    return factory.new(
        "visualization_msgs/msg/ImageMarker", header=factory.header(result.stamp_ns, result.frame_id),
        ns=MARKER_NS, id=MARKER_IDS[marker_type], type=marker_type, action=0, position=_point(factory, 0.0, 0.0),
        scale=LINE_WIDTH_PX if marker_type == LINE_LIST else POINT_SIZE_PX,
        outline_color=_colour(factory, (255, 255, 255)), filled=0, fill_color=clear,
        lifetime=factory.new("builtin_interfaces/msg/Duration", sec=0, nanosec=0),
        points=points, outline_colors=colours)


class ImageMarkerArrays(NamedTuple):
    stamp_ns: int
    frame_id: str
    type: int  # 2 = LINE_LIST, 4 = POINTS
    scale: float
    points: np.ndarray  # (N, 2) float64, marker coordinates (origin at the top-left pixel's corner)
    colours: np.ndarray  # (N, 4) float64 RGBA in [0, 1]

    def pixels(self) -> np.ndarray:
        """The points as pixel-centre coordinates (those of ``~/matches``)."""
        return self.points - PIXEL_ORIGIN_OFFSET


def decode_image_marker(msg: Any) -> ImageMarkerArrays:
    points = np.array([[float(p.x), float(p.y)] for p in msg.points], np.float64).reshape(-1, 2)
    colours = np.array([[float(c.r), float(c.g), float(c.b), float(c.a)] for c in msg.outline_colors],
                       np.float64).reshape(-1, 4)
    return ImageMarkerArrays(header_stamp_ns(msg), str(msg.header.frame_id), int(msg.type), float(msg.scale),
                             points, colours)


# --------------------------------------------------------------------------- ~/keyframe_path, /tf


def _pose(factory: MessageFactory, T: np.ndarray) -> Any:
    T = np.asarray(T, np.float64).reshape(4, 4)
    qx, qy, qz, qw = (float(v) for v in quaternion_from_matrix(T[:3, :3]))
    return factory.new("geometry_msgs/msg/Pose", position=_point(factory, *T[:3, 3]),
                       orientation=factory.new("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))


def _matrix(position, orientation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = matrix_from_quaternion([orientation.x, orientation.y, orientation.z, orientation.w])
    T[:3, 3] = [float(position.x), float(position.y), float(position.z)]
    return T


def build_keyframe_path(factory: MessageFactory, poses: Sequence[KeyframePose], stamp_ns: int, frame_id: str,
                        cache: dict | None = None) -> Any:
    """``~/keyframe_path``: nav_msgs/Path in ``frame_id`` stamped ``stamp_ns`` (the frame that changed
    it), one PoseStamped per keyframe at the keyframe's stamp. ``cache`` (a dict the caller keeps):
    keyframe poses never change once added, so their messages are reused (entries of keyframes that
    left the path are dropped)."""
    entries = []
    for kp in poses:
        key = (kp.keyframe_id, kp.stamp_ns)
        msg = cache.get(key) if cache is not None else None
        if msg is None:
            msg = factory.new("geometry_msgs/msg/PoseStamped", header=factory.header(kp.stamp_ns, frame_id),
                              pose=_pose(factory, kp.pose))
        entries.append((key, msg))
    if cache is not None:
        cache.clear()
        cache.update(entries)
    return factory.new("nav_msgs/msg/Path", header=factory.header(stamp_ns, frame_id), poses=[m for _, m in entries])


def build_tf(factory: MessageFactory, camera: np.ndarray, stamp_ns: int, parent: str, child: str) -> Any:
    """/tf: tf2_msgs/TFMessage with one transform ``parent`` → ``child`` (the child's pose in the
    parent: ``X_parent = R X_child + t``) at ``stamp_ns``."""
    T = np.asarray(camera, np.float64).reshape(4, 4)
    pose = _pose(factory, T)
    transform = factory.new(
        "geometry_msgs/msg/Transform",
        translation=factory.new("geometry_msgs/msg/Vector3", x=float(T[0, 3]), y=float(T[1, 3]), z=float(T[2, 3])),
        rotation=pose.orientation)
    stamped = factory.new("geometry_msgs/msg/TransformStamped", header=factory.header(stamp_ns, parent),
                          child_frame_id=str(child), transform=transform)
    return factory.new("tf2_msgs/msg/TFMessage", transforms=[stamped])


class PathArrays(NamedTuple):
    stamp_ns: int
    frame_id: str
    stamps_ns: np.ndarray  # (K,) int64 keyframe stamps
    poses: np.ndarray  # (K, 4, 4)


def decode_path(msg: Any) -> PathArrays:
    stamps = np.array([stamp_to_ns(p.header.stamp) for p in msg.poses], np.int64)
    poses = np.array([_matrix(p.pose.position, p.pose.orientation) for p in msg.poses]).reshape(-1, 4, 4)
    return PathArrays(header_stamp_ns(msg), str(msg.header.frame_id), stamps, poses)


class TransformArrays(NamedTuple):
    stamp_ns: int
    parent: str
    child: str
    matrix: np.ndarray  # (4, 4)


def decode_tf(msg: Any) -> list[TransformArrays]:
    return [TransformArrays(header_stamp_ns(t), str(t.header.frame_id), str(t.child_frame_id),
                            _matrix(t.transform.translation, t.transform.rotation)) for t in msg.transforms]

"""FrameResult → the node's output messages, shared by the live node and the offline replay so both
publish exactly the same types, fields and stamps; and the ``~/debug_image`` builder.

Per frame: the contract topics (``messages.py``: ``~/matches``, ``~/relative_pose``, ``~/keyframes``;
``vins.py``: ``~/features``), and the visual ones (``visual.py``): ``~/debug_image``,
``~/match_markers`` / ``~/match_points`` (only those asked for: the node asks while they have
subscribers), ``~/keyframe_path`` (when the keyframe chain changed) and ``/tf`` (when asked for and
the frame has a pose in the chain). The chain (``glue_ros.trajectory``) lives in ``OutputState``,
one per pipeline.
"""
from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from ..config import ParameterError
from ..geometry import CameraModel, normalize_points
from ..results import FrameResult
from ..trajectory import KeyframeTrajectory
from ..viz import draw_matches_on_frame
from .image_codec import encode_image, to_gray_or_rgb_uint8
from .messages import build_keyframe, build_matches, build_relative_pose
from .msg_types import MessageFactory
from .vins import build_features
from .visual import build_keyframe_path, build_match_markers, build_tf

# Topic suffixes under the node's private namespace (~/...), with their message types.
OUTPUT_TOPICS: dict[str, str] = {
    "matches": "sensor_msgs/msg/PointCloud2",
    "relative_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "keyframes": "sensor_msgs/msg/PointCloud2",
    "features": "sensor_msgs/msg/PointCloud",
    "debug_image": "sensor_msgs/msg/Image",
    "match_markers": "visualization_msgs/msg/ImageMarker",
    "match_points": "visualization_msgs/msg/ImageMarker",
    "keyframe_path": "nav_msgs/msg/Path",
}
MARKER_TOPICS = ("match_markers", "match_points")  # ImageMarker overlays: LINE_LIST, POINTS
TF_TOPIC = ("/tf", "tf2_msgs/msg/TFMessage")  # absolute; frame_outputs yields it under the key "/tf"


def check_output_params(params: Mapping[str, Any]) -> None:
    """The output parameters that validate() cannot check alone (ParameterError naming one)."""
    parent = params["output.tf_parent_frame"].strip()
    if not parent:
        raise ParameterError("parameter 'output.tf_parent_frame': must not be empty")
    if parent == params["output.tf_child_frame"].strip():
        raise ParameterError("parameter 'output.tf_child_frame': must differ from output.tf_parent_frame")


class OutputState:
    """What the outputs keep between frames of one pipeline: the keyframe chain and the path's
    cached pose messages."""

    def __init__(self, params: Mapping[str, Any]):
        self.trajectory = KeyframeTrajectory(params["output.path_max_poses"])
        self.path_cache: dict = {}


def frame_outputs(result: FrameResult, types: MessageFactory, params: Mapping[str, Any], *,
                  camera: CameraModel | None = None, debug_image: np.ndarray | None = None,
                  backend: str = "", markers: Collection[str] = (), state: OutputState | None = None,
                  path: bool = True, tf: bool = False) -> list[tuple[str, object]]:
    """(topic suffix, message) pairs for one processed frame, all stamped with the frame's stamp and
    framed in ``output.frame_id`` (empty: the image's frame_id) — except the overlays, which are in
    the image's own frame_id, and the path / TF, framed in ``output.tf_parent_frame``.

    ``~/features`` when ``output.features`` is set and the frame had intrinsics (``camera``);
    ``~/debug_image`` when ``debug_image`` (the decoded frame) is given, titled ``backend``;
    ``markers``: which of ``MARKER_TOPICS`` to build. With ``state`` (the pipeline's ``OutputState``,
    updated here: pass every published frame, in order): ``~/keyframe_path`` when the chain changed
    and ``path`` is true, and ``"/tf"`` (key = the absolute topic) when ``tf`` is true and the frame
    has a pose in the chain.
    """
    frame_id = params["output.frame_id"] or result.frame_id
    out: list[tuple[str, object]] = [("matches", build_matches(types, result, frame_id))]
    pose = build_relative_pose(types, result, frame_id)
    if pose is not None:
        out.append(("relative_pose", pose))
    keyframe = build_keyframe(types, result, frame_id)
    if keyframe is not None:
        out.append(("keyframes", keyframe))
    if params["output.features"] and camera is not None:
        out.append(("features", build_features(
            types, result, lambda pts: normalize_points(pts, camera), layout=params["output.features_layout"],
            num_cameras=params["output.features_num_cameras"], camera_id=params["output.features_camera_id"],
            frame_id=frame_id)))
    if debug_image is not None:
        out.append(("debug_image", build_debug_image(types, debug_image, result, frame_id=frame_id,
                                                     backend=backend)))
    for suffix, kind in zip(MARKER_TOPICS, ("lines", "points")):
        if suffix in markers:
            out.append((suffix, build_match_markers(types, result, kind)))
    if state is not None:
        step = state.trajectory.update(result)
        parent = params["output.tf_parent_frame"]
        if step.keyframe_added and path:
            out.append(("keyframe_path", build_keyframe_path(types, state.trajectory.poses, result.stamp_ns, parent,
                                                             state.path_cache)))
        child = params["output.tf_child_frame"] or frame_id
        if tf and step.camera is not None and child != parent:
            out.append((TF_TOPIC[0], build_tf(types, step.camera, result.stamp_ns, parent, child)))
    return out


def build_debug_image(factory: MessageFactory, image: np.ndarray, result: FrameResult, *, max_keyframes: int = 1,
                      encoding: str = "", frame_id: str | None = None, backend: str = "") -> Any:
    """``~/debug_image``: bgr8 Image of the current frame with its matches to the newest
    ``max_keyframes`` keyframes drawn by ``glue_ros.viz.draw_matches_on_frame`` (inliers by score,
    outliers red — no inlier at all means no pose: not verified, all by score —, at most 150 drawn,
    a legend with ``backend``, counts, timings, the pose status and keyframe events). Build it only when someone subscribes. ``image``: the decoded frame (any
    ``decode_image`` output; normalised with ``to_gray_or_rgb_uint8(image, encoding)``)."""
    shown = result.matches[:max(0, int(max_keyframes))]
    notes = []
    for km in shown:
        status = "ok" if km.pose.valid else km.pose.reason
        notes.append(f"keyframe {km.keyframe_id}: {len(km)} matches, pose {status}")
    if result.keyframe.is_keyframe:
        notes.append(f"new keyframe {result.keyframe.keyframe_id} ({result.keyframe.reason})")
    if not shown:
        notes.append(f"{len(result.keypoints)} keypoints, no keyframe matched")

    def stacked(name: str, dtype, width: int | None = None) -> np.ndarray:
        parts = [np.asarray(getattr(km, name), dtype).reshape((-1, width) if width else -1) for km in shown]
        return np.concatenate(parts) if parts else np.zeros((0, width) if width else 0, dtype)

    inliers = [np.asarray(km.inliers, bool).reshape(-1) for km in shown]
    inliers = [inl if inl.size == len(km) else np.zeros(len(km), bool) for inl, km in zip(inliers, shown)]
    verified = np.concatenate(inliers) if inliers else np.zeros(0, bool)
    canvas = draw_matches_on_frame(
        to_gray_or_rgb_uint8(image, encoding), stacked("points_keyframe", np.float32, 2),
        stacked("points_frame", np.float32, 2), stacked("scores", np.float32),
        inliers=verified if verified.any() else None, keypoints=result.keypoints,  # no pose: not verified
        title=backend, timings_ms=result.timings_ms, notes=notes)
    return encode_image(canvas, "bgr8", factory, stamp_ns=result.stamp_ns,
                        frame_id=result.frame_id if frame_id is None else frame_id)

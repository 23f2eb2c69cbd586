"""FrameResult → the node's output messages, shared by the live node and the offline replay so both
publish exactly the same types, fields and stamps."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..results import FrameResult
from . import messages

# Topic suffixes under the node's private namespace (~/...), with their message types.
OUTPUT_TOPICS: dict[str, str] = {
    "matches": "sensor_msgs/msg/PointCloud2",
    "relative_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",
    "keyframes": "sensor_msgs/msg/PointCloud2",
    "features": "sensor_msgs/msg/PointCloud",
    "debug_image": "sensor_msgs/msg/Image",
}
DIAGNOSTICS_TOPIC = ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")


def frame_outputs(result: FrameResult, types, frame_id: str, *,
                  normalizer: Callable[[np.ndarray], np.ndarray] | None = None,
                  image: np.ndarray | None = None, features_options: dict | None = None
                  ) -> list[tuple[str, object]]:
    """(topic suffix, message) pairs for one processed frame, all stamped with the frame's stamp.

    ``normalizer`` (pixels → normalised camera coordinates) enables ``features``; ``image`` enables
    ``debug_image``. ``features_options``: layout / num_cameras / camera_id of ``features``.
    """
    header = messages.make_header(types, result.stamp_ns, frame_id)
    out: list[tuple[str, object]] = [("matches", messages.matches_cloud(result, types, header))]
    pose = result.pose
    if pose is not None and pose.valid:
        out.append(("relative_pose", messages.relative_pose(result, types, header)))
    if result.keyframe.is_keyframe:
        out.append(("keyframes", messages.keyframe_cloud(result, types, header)))
    if normalizer is not None:
        out.append(("features", messages.features_cloud(result, types, header, normalizer,
                                                                **(features_options or {}))))
    if image is not None:
        out.append(("debug_image", messages.debug_image(result, image, types, header)))
    return out


def features_options(flat: dict) -> dict:
    """The ~/features builder options from the flat parameters."""
    return {"layout": flat["output.features_layout"], "num_cameras": flat["output.features_num_cameras"],
            "camera_id": flat["output.features_camera_id"]}

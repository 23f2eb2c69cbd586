"""CameraInfo / parameters → CameraModel, and stamp conversion (duck-typed: rclpy or rosbags messages)."""
from __future__ import annotations

import numpy as np


def stamp_to_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def camera_from_info(msg):
    """sensor_msgs/CameraInfo → CameraModel (may be unusable: check .problem())."""
    from ..geometry import CameraModel

    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        k = np.full(9, np.nan)
    model = (msg.distortion_model or "none").strip() or "none"
    d = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    if model in ("plumb_bob", "rational_polynomial") and np.all(d == 0):
        model, d = "none", np.zeros(0)  # no or all-zero coefficients (common in simulators): nothing to undo
    return CameraModel(K=k.reshape(3, 3), D=d, distortion_model=model, width=int(msg.width), height=int(msg.height))


def camera_from_params(flat: dict):
    from ..geometry import CameraModel

    if flat["camera.fx"] <= 0 or flat["camera.fy"] <= 0:
        return None
    model = flat["camera.distortion_model"]
    return CameraModel.from_intrinsics(flat["camera.fx"], flat["camera.fy"], flat["camera.cx"], flat["camera.cy"],
                                       distortion_model=model,
                                       D=() if model == "none" else tuple(flat["camera.distortion"]))

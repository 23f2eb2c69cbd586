"""CameraInfo / ``camera.*`` parameters → CameraModel, and CameraModel → CameraInfo (duck-typed:
rclpy or rosbags messages)."""
from __future__ import annotations

import numpy as np


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


def camera_info_message(types, camera, stamp_ns: int, frame_id: str):
    """CameraModel → sensor_msgs/CameraInfo (either message flavour, via a msg_types.MessageFactory)."""
    K = np.asarray(camera.K, dtype=np.float64).reshape(3, 3)
    P = np.zeros((3, 4))
    P[:, :3] = K
    model = camera.distortion_model if camera.distortion_model not in ("", "none") else "plumb_bob"
    D = np.asarray(camera.D, dtype=np.float64).reshape(-1)
    if camera.distortion_model in ("", "none"):
        D = np.zeros(5)
    roi = types.new("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                    do_rectify=False)
    return types.new("sensor_msgs/msg/CameraInfo", header=types.header(stamp_ns, frame_id),
                     height=int(camera.height), width=int(camera.width), distortion_model=model,
                     d=D.copy(), k=K.reshape(-1).copy(), r=np.eye(3).reshape(-1), p=P.reshape(-1),
                     binning_x=0, binning_y=0, roi=roi)

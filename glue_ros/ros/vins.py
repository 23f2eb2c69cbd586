"""``~/features``: sensor_msgs/PointCloud in the format the VINS estimators read from
``/feature_tracker/feature`` (VINS-Mono and VINS-Fusion layouts), and its decoder.

Builders take a ``msg_types.MessageFactory`` (rclpy or rosbags classes); the decoder is duck-typed.
``header.stamp`` = the input image's stamp, as for every per-frame topic (see ``messages.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from glue_ros.results import FrameResult

from .msg_types import MessageFactory, header_stamp_ns

__all__ = ["VINS_FLOAT_ID_LIMIT", "VINS_MONO_CHANNELS", "VINS_FUSION_CHANNELS", "build_features", "FeaturesArrays",
           "decode_features"]

VINS_FLOAT_ID_LIMIT = 2 ** 24  # float32 represents every integer below this exactly
VINS_MONO_CHANNELS = ("id_of_point", "u_of_point", "v_of_point", "velocity_x_of_point", "velocity_y_of_point")
VINS_FUSION_CHANNELS = ("feature_id", "camera_id", "p_u", "p_v", "velocity_x", "velocity_y",
                        "gt_x", "gt_y", "gt_z")


def _normalised_velocity(normaliser: Callable[[np.ndarray], np.ndarray], points: np.ndarray,
                         velocities_px: np.ndarray) -> np.ndarray:
    """Pixel velocity → velocity on the normalised image plane (what VINS uses), by a central
    difference of the normaliser along the motion direction (±0.5 px, float64), times the speed."""
    speed = np.linalg.norm(velocities_px, axis=1)
    moving = speed > 0
    out = np.zeros_like(velocities_px, dtype=np.float64)
    if moving.any():
        direction = velocities_px[moving] / speed[moving, None]
        p = points[moving].astype(np.float64)
        ahead = np.asarray(normaliser(p + 0.5 * direction), np.float64).reshape(-1, 2)
        behind = np.asarray(normaliser(p - 0.5 * direction), np.float64).reshape(-1, 2)
        out[moving] = (ahead - behind) * speed[moving, None]
    return out


def build_features(factory: MessageFactory, result: FrameResult,
                   normaliser: Callable[[np.ndarray], np.ndarray], *, layout: str = "vins_mono",
                   num_cameras: int = 1, camera_id: int = 0, mask: np.ndarray | None = None,
                   normalised_velocities: np.ndarray | None = None, frame_id: str | None = None) -> Any:
    """``~/features``: sensor_msgs/PointCloud in the format VINS estimators read from
    ``/feature_tracker/feature``. ``points[i] = (x_n, y_n, 1)`` are normalised undistorted
    coordinates from ``normaliser`` ((N, 2) pixels → (N, 2) normalised, e.g. a cv2.undistortPoints
    wrapper); ``z`` is exactly 1 (the estimators assert it).

    ``layout="vins_mono"`` (VINS-Mono's feature_tracker and estimator, and their ROS 2 ports):
    5 channels ``id_of_point, u_of_point, v_of_point, velocity_x_of_point, velocity_y_of_point``
    with ``id_of_point = feature_id * num_cameras + camera_id`` (the estimator recovers
    ``feature_id = v / NUM_OF_CAM``, ``camera_id = v % NUM_OF_CAM`` after adding 0.5).

    ``layout="vins_fusion"`` (VINS-Fusion's ``rosNodeTest.cpp`` ``feature_callback``): channels
    ``feature_id, camera_id, p_u, p_v, velocity_x, velocity_y`` plus three zero channels
    ``gt_x, gt_y, gt_z``: VINS-Fusion reads channels 6..8 (debug ground truth) whenever there are
    more than 5 channels, so a 6-channel message would be read out of bounds.

    Velocities are on the normalised plane per second, as VINS computes them (its feature tracker
    differentiates undistorted normalised points); they are derived from
    ``result.track_velocities`` (pixels/s) through ``normaliser`` unless ``normalised_velocities``
    ((N, 2)) is given. Feature ids are float32 in the message: ids are wrapped modulo
    ``2**24 // num_cameras`` so every published id is exact (a wrapped id collides only with a
    track ~16.7 M ids older, long gone from any sliding window). ``mask`` selects keypoints
    (default: all with ``track_id >= 0``).
    """
    if layout not in ("vins_mono", "vins_fusion"):
        raise ValueError(f"layout must be 'vins_mono' or 'vins_fusion', got {layout!r}")
    if not 0 <= camera_id < num_cameras:
        raise ValueError(f"camera_id {camera_id} not in [0, num_cameras={num_cameras})")
    kps = np.asarray(result.keypoints, np.float32).reshape(-1, 2)
    track_ids = np.asarray(result.track_ids, np.int64).reshape(-1)
    velocities = np.asarray(result.track_velocities, np.float32).reshape(-1, 2)
    if normalised_velocities is not None:
        velocities_n = np.asarray(normalised_velocities, np.float64).reshape(-1, 2)
    else:
        velocities_n = None
    keep = track_ids >= 0 if mask is None else np.asarray(mask, bool).reshape(-1)
    if len(keep) != len(kps) or len(track_ids) != len(kps) or len(velocities) != len(kps):
        raise ValueError("keypoints, track_ids, track_velocities and mask must have the same length")
    kps, track_ids, velocities = kps[keep], track_ids[keep], velocities[keep]
    n = len(kps)
    normalised = np.asarray(normaliser(kps), np.float64).reshape(-1, 2) if n else np.zeros((0, 2))
    if len(normalised) != n:
        raise ValueError(f"normaliser returned {len(normalised)} points for {n}")
    if velocities_n is None:
        velocities_n = _normalised_velocity(normaliser, kps, velocities.astype(np.float64)) if n else np.zeros((0, 2))
    else:
        velocities_n = velocities_n[keep]
    wrap = VINS_FLOAT_ID_LIMIT // num_cameras
    feature_ids = np.mod(track_ids, wrap)
    point_cls = factory.get("geometry_msgs/msg/Point32")
    xs, ys = normalised[:, 0].tolist(), normalised[:, 1].tolist()
    points = [point_cls(x=x, y=y, z=1.0) for x, y in zip(xs, ys)]
    if layout == "vins_mono":
        columns = [feature_ids * num_cameras + camera_id, kps[:, 0], kps[:, 1], velocities_n[:, 0], velocities_n[:, 1]]
        names = VINS_MONO_CHANNELS
    else:
        zeros = np.zeros(n)
        columns = [feature_ids, np.full(n, camera_id), kps[:, 0], kps[:, 1], velocities_n[:, 0], velocities_n[:, 1],
                   zeros, zeros, zeros]
        names = VINS_FUSION_CHANNELS
    channels = [factory.new("sensor_msgs/msg/ChannelFloat32", name=name,
                            values=factory.float32_seq(np.asarray(values, np.float32)))
                for name, values in zip(names, columns)]
    return factory.new("sensor_msgs/msg/PointCloud",
                       header=factory.header(result.stamp_ns, result.frame_id if frame_id is None else frame_id),
                       points=points, channels=channels)


@dataclass
class FeaturesArrays:
    stamp_ns: int
    frame_id: str
    feature_ids: np.ndarray  # (N,) int64 (wrapped track ids)
    camera_ids: np.ndarray  # (N,) int64
    normalised: np.ndarray  # (N, 2) float64 undistorted normalised coordinates (z = 1)
    pixels: np.ndarray  # (N, 2) float32
    velocities: np.ndarray  # (N, 2) float32 normalised-plane velocity (1/s)


def decode_features(msg: Any, *, layout: str = "auto", num_cameras: int = 1) -> FeaturesArrays:
    """``~/features`` → arrays, the way the VINS estimators read them. ``layout="auto"`` picks
    vins_fusion when channel 1 is named ``camera_id``, else vins_mono."""
    channels = list(msg.channels)
    if layout == "auto":
        layout = "vins_fusion" if len(channels) >= 6 and str(channels[1].name) == "camera_id" else "vins_mono"
    values = [np.asarray(c.values, np.float32) for c in channels]
    pts = list(msg.points)
    normalised = np.array([[float(p.x), float(p.y)] for p in pts], np.float64).reshape(-1, 2)
    if layout == "vins_mono":
        v = np.floor(values[0].astype(np.float64) + 0.5).astype(np.int64)
        feature_ids, camera_ids = v // num_cameras, v % num_cameras
        u, vv, vx, vy = values[1:5]
    elif layout == "vins_fusion":
        feature_ids, camera_ids = values[0].astype(np.int64), values[1].astype(np.int64)
        u, vv, vx, vy = values[2:6]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return FeaturesArrays(header_stamp_ns(msg), str(msg.header.frame_id), feature_ids, camera_ids, normalised,
                          np.stack([u, vv], axis=1), np.stack([vx, vy], axis=1))

"""The message contract: ``FrameResult`` → standard ROS 2 messages, and decoders back to numpy.

Every builder takes a ``MessageFactory`` and works with both message flavours:

* ``RclpyTypes()``: the generated rclpy classes (``sensor_msgs.msg`` …), imported lazily;
* ``RosbagsTypes(typestore)``: rosbags typestore classes (the offline replay tool writes mcap bags
  with rosbags and must not need rclpy).

Builders pass every field as a keyword (rosbags classes have no defaults) and convert numpy scalars
to Python ``int``/``float`` (rclpy with ``ROS_PYTHON_CHECK_FIELDS=1`` rejects numpy scalars).
Decoders are duck-typed and accept either flavour (and anything with the same fields).

Contract (per processed frame; ``header.stamp`` = the INPUT IMAGE's stamp, ``header.frame_id`` =
the image's frame_id unless overridden):

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
exact-time pairing works) and ``header.frame_id`` = the camera frame (the keyframe's camera: same
frame name, earlier time). The keyframe's stamp and id are those of the ``kf_rank == 0`` points of
the ``~/matches`` message with the same stamp (``pose_keyframe``).

``~/keyframes`` — sensor_msgs/PointCloud2 event when a frame becomes a keyframe,
``header.stamp`` = the keyframe's stamp; one point per keypoint: ``x, y`` float32, ``track_id``
float64, ``score`` float32, ``keyframe_id`` uint32 (``KEYFRAME_FIELDS``).

``~/features`` — sensor_msgs/PointCloud for VINS estimators (``build_features``).

``~/debug_image`` — sensor_msgs/Image bgr8 (``build_debug_image``).

``/diagnostics`` — diagnostic_msgs/DiagnosticArray (``build_diagnostics``).

Track ids: sensor_msgs/PointField has no INT64 before ROS 2 Lyrical (Kilted: INT8..FLOAT64 only),
so ``track_id`` is FLOAT64, exact for |id| <= 2**53 (the builder refuses larger ids). Decoders read
fields by name and datatype, so a future INT64 field (datatype 9 in Lyrical) decodes the same way.
"""
from __future__ import annotations

import array as _array
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from glue_ros.results import FrameResult
from glue_ros.ros.image_codec import encode_image, to_gray_or_rgb_uint8

__all__ = [
    "MessageFactory", "RclpyTypes", "RosbagsTypes", "factory_for", "default_typestore",
    "stamp_to_ns", "ns_to_stamp", "header_stamp_ns",
    "MATCH_FIELDS", "KEYFRAME_FIELDS", "MAX_EXACT_TRACK_ID", "DIAGNOSTIC_NAME",
    "build_matches", "build_relative_pose", "build_keyframe", "build_features", "build_debug_image",
    "build_diagnostics", "diagnostic_level", "DiagnosticThresholds",
    "MatchesArrays", "KeyframeArrays", "RelativePoseArrays", "FeaturesArrays", "DiagnosticsReport",
    "decode_matches", "decode_keyframe", "decode_relative_pose", "decode_features", "decode_diagnostics",
    "pose_keyframe", "read_points", "make_cloud", "rotation_to_quaternion", "quaternion_to_rotation",
    # header-first adapters (outputs.py / node.py / replay.py call shapes)
    "make_header", "matches_cloud", "relative_pose", "keyframe_cloud", "features_cloud", "debug_image", "diagnostics",
]

NS = 1_000_000_000
MAX_EXACT_TRACK_ID = 2 ** 53
DIAGNOSTIC_NAME = "glue_ros_matcher: front-end"

# --------------------------------------------------------------------------- factories


class MessageFactory:
    """Resolves ``"pkg/msg/Type"`` names to message classes and adapts field representations."""

    flavour = "abstract"

    def get(self, type_name: str) -> type:
        raise NotImplementedError

    def new(self, type_name: str, **fields: Any) -> Any:
        return self.get(type_name)(**fields)

    # representations that differ between flavours
    def uint8_seq(self, data: np.ndarray) -> Any:
        raise NotImplementedError

    def float32_seq(self, values: np.ndarray) -> Any:
        raise NotImplementedError

    def float64_array(self, values: np.ndarray) -> Any:
        """Fixed-size float64 arrays (covariance): a float64 numpy array for both flavours."""
        return np.ascontiguousarray(values, dtype=np.float64).reshape(-1).copy()

    def byte(self, value: int) -> Any:
        raise NotImplementedError

    def time(self, stamp_ns: int) -> Any:
        sec, nanosec = ns_to_stamp(stamp_ns)
        return self.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        return self.new("std_msgs/msg/Header", stamp=self.time(stamp_ns), frame_id=str(frame_id))

    def serialize(self, msg: Any) -> bytes:
        raise NotImplementedError

    def deserialize(self, data: bytes, type_name: str) -> Any:
        raise NotImplementedError


class RclpyTypes(MessageFactory):
    """rclpy generated classes (imported lazily; rclpy.init() is not needed)."""

    flavour = "rclpy"

    def __init__(self) -> None:
        self._cache: dict[str, type] = {}

    def get(self, type_name: str) -> type:
        cls = self._cache.get(type_name)
        if cls is None:
            package, kind, name = type_name.split("/")
            cls = getattr(importlib.import_module(f"{package}.{kind}"), name)
            self._cache[type_name] = cls
        return cls

    def uint8_seq(self, data: np.ndarray) -> Any:
        # The generated constructor does array.array('B', value): from array('B') or bytes that is a
        # memcpy (~0.2-2 ms for a VGA rgb8 image), from a numpy array it iterates element by element
        # (~100 ms). array('B') is also the setter's fast path when ROS_PYTHON_CHECK_FIELDS=1.
        out = _array.array("B")
        out.frombytes(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1).view(np.uint8))
        return out

    def float32_seq(self, values: np.ndarray) -> Any:
        out = _array.array("f")
        out.frombytes(np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint8))
        return out

    def byte(self, value: int) -> Any:
        return bytes([int(value)])  # rclpy maps 'byte' to a length-1 bytes object

    def serialize(self, msg: Any) -> bytes:
        from rclpy.serialization import serialize_message

        return serialize_message(msg)

    def deserialize(self, data: bytes, type_name: str) -> Any:
        from rclpy.serialization import deserialize_message

        return deserialize_message(bytes(data), self.get(type_name))


def default_typestore():
    """rosbags typestore for ROS 2 Kilted (or the newest this rosbags knows)."""
    from rosbags.typesys import Stores, get_typestore

    store = getattr(Stores, "ROS2_KILTED", None) or getattr(Stores, "LATEST")
    return get_typestore(store)


class RosbagsTypes(MessageFactory):
    """rosbags typestore classes (pure Python; no rclpy)."""

    flavour = "rosbags"

    def __init__(self, typestore: Any = None) -> None:
        self.typestore = typestore if typestore is not None else default_typestore()

    def get(self, type_name: str) -> type:
        return self.typestore.types[type_name]

    def uint8_seq(self, data: np.ndarray) -> Any:
        return np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)

    def float32_seq(self, values: np.ndarray) -> Any:
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1)

    def byte(self, value: int) -> Any:
        return int(value)

    def serialize(self, msg: Any) -> bytes:
        return bytes(self.typestore.serialize_cdr(msg, msg.__msgtype__))

    def deserialize(self, data: bytes, type_name: str) -> Any:
        return self.typestore.deserialize_cdr(data, type_name)


_DEFAULT_FACTORIES: dict[str, MessageFactory] = {}


def factory_for(obj: Any) -> MessageFactory:
    """A factory, or a message class/instance of either flavour → the matching factory."""
    if isinstance(obj, MessageFactory):
        return obj
    if hasattr(obj, "__msgtype__"):  # rosbags class or instance
        flavour = "rosbags"
    elif hasattr(obj, "get_fields_and_field_types") or hasattr(obj, "_TYPE_SUPPORT"):
        flavour = "rclpy"
    else:
        raise TypeError(f"not a MessageFactory or ROS message class: {obj!r}")
    if flavour not in _DEFAULT_FACTORIES:
        _DEFAULT_FACTORIES[flavour] = RosbagsTypes() if flavour == "rosbags" else RclpyTypes()
    return _DEFAULT_FACTORIES[flavour]


# --------------------------------------------------------------------------- stamps


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds → (sec int32, nanosec uint32 < 1e9); negative stamps floor (sec < 0, nanosec >= 0)."""
    sec, nanosec = divmod(int(stamp_ns), NS)
    if not -(2 ** 31) <= sec < 2 ** 31:
        raise ValueError(f"stamp {stamp_ns} ns does not fit builtin_interfaces/Time (int32 seconds)")
    return sec, nanosec


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * NS + int(stamp.nanosec)


def header_stamp_ns(msg: Any) -> int:
    return stamp_to_ns(msg.header.stamp)


# --------------------------------------------------------------------------- PointCloud2 helpers

# PointField datatype → numpy type. 1..8 exist in every distro; 9/10/11 (INT64, UINT64, BOOL) were
# added in ROS 2 Lyrical and are accepted by the readers only.
_PF_TO_NP = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8", 9: "i8", 10: "u8", 11: "u1"}
_NP_TO_PF = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}

MATCH_FIELDS: tuple[tuple[str, str], ...] = (
    ("x", "f4"), ("y", "f4"), ("kf_x", "f4"), ("kf_y", "f4"), ("track_id", "f8"), ("score", "f4"),
    ("kf_stamp_sec", "i4"), ("kf_stamp_nanosec", "u4"), ("keyframe_id", "u4"), ("kp_index", "u4"),
    ("kf_kp_index", "u4"), ("inlier", "u1"), ("kf_rank", "u1"),
)
KEYFRAME_FIELDS: tuple[tuple[str, str], ...] = (
    ("x", "f4"), ("y", "f4"), ("track_id", "f8"), ("score", "f4"), ("keyframe_id", "u4"),
)


def _packed_dtype(fields: Sequence[tuple[str, str]]) -> np.dtype:
    return np.dtype([(name, "<" + code) for name, code in fields])  # packed, little-endian


def make_cloud(factory: MessageFactory, stamp_ns: int, frame_id: str, points: np.ndarray) -> Any:
    """Structured numpy array (packed, little-endian, fields of PointField types) → PointCloud2."""
    dtype = points.dtype
    point_fields = []
    for name in dtype.names:
        sub, offset = dtype.fields[name][:2]
        code = sub.base.str[1:]
        if code not in _NP_TO_PF:
            raise ValueError(f"field {name}: numpy type {sub} has no PointField datatype")
        count = int(np.prod(sub.shape)) if sub.shape else 1
        point_fields.append(factory.new("sensor_msgs/msg/PointField", name=name, offset=int(offset),
                                        datatype=_NP_TO_PF[code], count=count))
    n = int(points.shape[0])
    data = np.ascontiguousarray(points).view(np.uint8).reshape(-1) if n else np.zeros(0, np.uint8)
    return factory.new(
        "sensor_msgs/msg/PointCloud2", header=factory.header(stamp_ns, frame_id), height=1, width=n,
        fields=point_fields, is_bigendian=False, point_step=int(dtype.itemsize),
        row_step=int(dtype.itemsize) * n, data=factory.uint8_seq(data), is_dense=True)


def _field_dtype(msg: Any) -> np.dtype:
    big = bool(msg.is_bigendian)
    names, formats, offsets = [], [], []
    for f in msg.fields:
        code = _PF_TO_NP.get(int(f.datatype))
        if code is None:
            raise ValueError(f"PointCloud2 field {f.name!r}: unknown datatype {f.datatype}")
        base = np.dtype(("bool" if int(f.datatype) == 11 else (">" if big else "<") + code))
        count = int(f.count)
        names.append(str(f.name))
        formats.append(base if count == 1 else np.dtype((base, (count,))))
        offsets.append(int(f.offset))
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})
    return dtype


def read_points(msg: Any) -> np.ndarray:
    """Any PointCloud2 (either flavour, any endianness, height >= 1, padded rows) → structured
    numpy array of shape (height * width,) in native byte order (a copy)."""
    height, width, point_step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    dtype = _field_dtype(msg)
    native = np.dtype({"names": dtype.names,
                       "formats": [dtype.fields[nm][0].newbyteorder("=") for nm in dtype.names]})
    n = height * width
    if n == 0:
        return np.zeros(0, native)
    if row_step < width * point_step:
        raise ValueError(f"PointCloud2 row_step {row_step} < width {width} x point_step {point_step}")
    data = msg.data
    if isinstance(data, np.ndarray):
        buf = data.reshape(-1).view(np.uint8)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    needed = (height - 1) * row_step + width * point_step
    if buf.size < needed:
        raise ValueError(f"PointCloud2 has {buf.size} data bytes, {needed} needed")
    if row_step == width * point_step:
        points = np.frombuffer(buf[: n * point_step].tobytes(), dtype, count=n)
    else:
        rows = [np.frombuffer(buf[r * row_step: r * row_step + width * point_step].tobytes(), dtype, count=width)
                for r in range(height)]
        points = np.concatenate(rows)
    out = np.empty(n, native)
    for name in dtype.names:
        out[name] = points[name]
    return out


def _column(points: np.ndarray, name: str, dtype: Any, default: Any = None) -> np.ndarray:
    if name in (points.dtype.names or ()):
        return np.asarray(points[name]).astype(dtype, copy=True)
    if default is None:
        raise ValueError(f"PointCloud2 has no field {name!r} (fields: {', '.join(points.dtype.names or ())})")
    return np.full(points.shape[0], default, dtype)


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
    dtype = _packed_dtype(MATCH_FIELDS)
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
    col = lambda name, dt: _column(points, name, dt)  # noqa: E731
    sec = col("kf_stamp_sec", np.int64)
    nsec = col("kf_stamp_nanosec", np.int64)
    return MatchesArrays(
        stamp_ns=header_stamp_ns(msg), frame_id=str(msg.header.frame_id),
        points=np.stack([col("x", np.float32), col("y", np.float32)], axis=1),
        keyframe_points=np.stack([col("kf_x", np.float32), col("kf_y", np.float32)], axis=1),
        scores=col("score", np.float32), track_ids=col("track_id", np.int64),
        inliers=col("inlier", np.uint8).astype(bool), keyframe_stamp_ns=sec * NS + nsec,
        keyframe_ids=col("keyframe_id", np.int64), kp_indices=col("kp_index", np.int64),
        kf_kp_indices=col("kf_kp_index", np.int64), kf_rank=_column(points, "kf_rank", np.int64, 0),
    )


# --------------------------------------------------------------------------- ~/relative_pose


def rotation_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """3x3 rotation → unit quaternion (x, y, z, w) with w >= 0."""
    R = np.asarray(rotation, np.float64).reshape(3, 3)
    trace = R[0, 0] + R[1, 1] + R[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = ((R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s)
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + R[0, 0] - R[1, 1] - R[2, 2], 1e-300))
        q = (0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s)
    elif R[1, 1] > R[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + R[1, 1] - R[0, 0] - R[2, 2], 1e-300))
        q = ((R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s)
    else:
        s = 2.0 * math.sqrt(max(1.0 + R[2, 2] - R[0, 0] - R[1, 1], 1e-300))
        q = ((R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s)
    v = np.array(q, np.float64)
    v /= np.linalg.norm(v)
    if v[3] < 0:
        v = -v
    return float(v[0]), float(v[1]), float(v[2]), float(v[3])


def quaternion_to_rotation(x: float, y: float, z: float, w: float) -> np.ndarray:
    q = np.array([x, y, z, w], np.float64)
    n = float(np.linalg.norm(q))
    if not n > 0 or not math.isfinite(n):
        raise ValueError(f"invalid quaternion {q.tolist()}")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def build_relative_pose(factory: MessageFactory, result: FrameResult, frame_id: str | None = None) -> Any | None:
    """``~/relative_pose`` (PoseWithCovarianceStamped) for the newest matched keyframe, or None
    when there is no valid pose (first frame, after a reset, too few inliers …)."""
    pose = result.pose
    if pose is None or not pose.valid:
        return None
    t = np.asarray(pose.translation, np.float64).reshape(3)
    qx, qy, qz, qw = rotation_to_quaternion(pose.rotation)
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
    """``~/relative_pose`` → (stamp_ns, R, t, covariance); ``X_kf = R @ X_cur + t``."""
    p = msg.pose.pose
    o = p.orientation
    return RelativePoseArrays(
        header_stamp_ns(msg), quaternion_to_rotation(float(o.x), float(o.y), float(o.z), float(o.w)),
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
    points = np.zeros(n, _packed_dtype(KEYFRAME_FIELDS))
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
    ids = _column(points, "keyframe_id", np.int64, -1)
    return KeyframeArrays(
        stamp_ns=header_stamp_ns(msg), frame_id=str(msg.header.frame_id),
        keyframe_id=int(ids[0]) if ids.size else -1,
        points=np.stack([_column(points, "x", np.float32), _column(points, "y", np.float32)], axis=1),
        track_ids=_column(points, "track_id", np.int64), scores=_column(points, "score", np.float32))


# --------------------------------------------------------------------------- ~/features (VINS)

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


# --------------------------------------------------------------------------- ~/debug_image


def _score_colours(scores: np.ndarray) -> np.ndarray:
    """Score in [0, 1] → BGR colour (red 0 … yellow … green 1), (M, 3) uint8."""
    s = np.clip(np.nan_to_num(np.asarray(scores, np.float64)), 0.0, 1.0)
    red = np.where(s < 0.5, 255, np.round(255 * 2 * (1 - s)))
    green = np.where(s < 0.5, np.round(255 * 2 * s), 255)
    return np.stack([np.zeros_like(s), green, red], axis=1).astype(np.uint8)


def build_debug_image(factory: MessageFactory, image: np.ndarray, result: FrameResult, *,
                      max_keyframes: int = 1, encoding: str = "", frame_id: str | None = None) -> Any:
    """``~/debug_image``: bgr8 Image of the current frame with its matches drawn.

    For the newest ``max_keyframes`` keyframes: a line from each match's keyframe position to its
    current position, coloured by score (red 0 → yellow → green 1); inliers get a filled dot,
    outliers a small magenta cross; unmatched keypoints are grey dots. A text line gives the
    keyframe id, match/inlier counts and the pose status. Build it only when someone subscribes.
    ``image``: the decoded frame (any ``decode_image`` output; normalised with
    ``to_gray_or_rgb_uint8(image, encoding)``).
    """
    import cv2

    base = to_gray_or_rgb_uint8(image, encoding)
    canvas = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR) if base.ndim == 2 else cv2.cvtColor(
        np.ascontiguousarray(base), cv2.COLOR_RGB2BGR)
    kps = np.asarray(result.keypoints, np.float32).reshape(-1, 2)
    for x, y in np.round(kps).astype(np.int32).tolist():
        cv2.circle(canvas, (x, y), 1, (160, 160, 160), -1, cv2.LINE_AA)
    text = []
    for km in result.matches[:max(0, int(max_keyframes))]:
        pf = np.round(np.asarray(km.points_frame, np.float32).reshape(-1, 2)).astype(np.int32)
        pk = np.round(np.asarray(km.points_keyframe, np.float32).reshape(-1, 2)).astype(np.int32)
        inl = np.asarray(km.inliers, bool).reshape(-1)
        if inl.size != len(pf):
            inl = np.zeros(len(pf), bool)
        colours = _score_colours(km.scores).tolist()
        for (x1, y1), (x0, y0), colour, is_in in zip(pf.tolist(), pk.tolist(), colours, inl.tolist()):
            cv2.line(canvas, (x0, y0), (x1, y1), colour, 1, cv2.LINE_AA)
            if is_in:
                cv2.circle(canvas, (x1, y1), 2, colour, -1, cv2.LINE_AA)
            else:
                cv2.drawMarker(canvas, (x1, y1), (255, 0, 255), cv2.MARKER_CROSS, 5, 1)
        pose = km.pose
        status = "ok" if pose.valid else pose.reason
        text.append(f"kf {km.keyframe_id}: {len(km)} matches, {int(inl.sum())} inliers, pose {status}")
    if result.keyframe.is_keyframe:
        text.append(f"new keyframe {result.keyframe.keyframe_id} ({result.keyframe.reason})")
    if not text:
        text.append(f"{len(kps)} keypoints, no keyframe matched")
    for i, line in enumerate(text):
        org = (5, 15 + 16 * i)
        (w, h), baseline = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(canvas, (org[0] - 2, org[1] - h - 3), (org[0] + w + 2, org[1] + baseline), (0, 0, 0), -1)
        cv2.putText(canvas, line, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return encode_image(canvas, "bgr8", factory, stamp_ns=result.stamp_ns,
                        frame_id=result.frame_id if frame_id is None else frame_id)


# --------------------------------------------------------------------------- diagnostics

OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class DiagnosticThresholds:
    """When diagnostics leave OK. Figures absent from the dict are not checked."""

    stall_s: float = 5.0  # ERROR: no output for this long while frames arrive (seconds_since_output)
    max_dropped: int = 0  # WARN: frames_dropped (this period) above this
    min_pose_ratio: float = 0.5  # WARN: pose_valid_ratio below this


def diagnostic_level(figures: Mapping[str, Any], thresholds: DiagnosticThresholds = DiagnosticThresholds()
                     ) -> tuple[int, str]:
    """(level, message) from a dict of figures. Recognised keys (all optional):

    * ERROR: ``stalled`` (truthy), ``seconds_since_output`` > ``stall_s``, ``error`` (non-empty str);
    * WARN: ``frames_dropped`` > ``max_dropped``, ``decode_errors`` > 0, ``pose_valid_ratio`` <
      ``min_pose_ratio``, ``no_pose`` (truthy, e.g. no intrinsics), ``warning`` (non-empty str).
    """
    errors, warnings = [], []
    if figures.get("stalled"):
        errors.append("stalled")
    since = figures.get("seconds_since_output")
    if since is not None and float(since) > thresholds.stall_s:
        errors.append(f"no output for {float(since):.1f} s")
    if figures.get("error"):
        errors.append(str(figures["error"]))
    dropped = figures.get("frames_dropped")
    if dropped is not None and int(dropped) > thresholds.max_dropped:
        warnings.append(f"{int(dropped)} frames dropped")
    if figures.get("decode_errors"):
        warnings.append(f"{int(figures['decode_errors'])} decode errors")
    ratio = figures.get("pose_valid_ratio")
    if ratio is not None and float(ratio) < thresholds.min_pose_ratio:
        warnings.append(f"valid pose in {100 * float(ratio):.0f}% of frames")
    if figures.get("no_pose"):
        warnings.append(str(figures["no_pose"]) if isinstance(figures["no_pose"], str) else "no pose")
    if figures.get("warning"):
        warnings.append(str(figures["warning"]))
    if errors:
        return ERROR, "; ".join(errors + warnings)
    if warnings:
        return WARN, "; ".join(warnings)
    return OK, "ok"


def _format_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def build_diagnostics(factory: MessageFactory, stamp_ns: int, figures: Mapping[str, Any], *, hardware_id: str,
                      name: str = DIAGNOSTIC_NAME, thresholds: DiagnosticThresholds = DiagnosticThresholds()) -> Any:
    """diagnostic_msgs/DiagnosticArray with one DiagnosticStatus: ``name``, ``hardware_id`` (the
    compute device), level/message from ``diagnostic_level``, every figure as a KeyValue (floats
    with 6 significant digits, bools as true/false), in the dict's order."""
    level, message = diagnostic_level(figures, thresholds)
    values = [factory.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=_format_value(v))
              for k, v in figures.items()]
    status = factory.new("diagnostic_msgs/msg/DiagnosticStatus", level=factory.byte(level), name=str(name),
                         message=message, hardware_id=str(hardware_id), values=values)
    return factory.new("diagnostic_msgs/msg/DiagnosticArray", header=factory.header(stamp_ns, ""), status=[status])


class DiagnosticsReport(NamedTuple):
    stamp_ns: int
    level: int
    name: str
    message: str
    hardware_id: str
    values: dict


def decode_diagnostics(msg: Any) -> list[DiagnosticsReport]:
    out = []
    for status in msg.status:
        level = status.level
        level = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
        out.append(DiagnosticsReport(header_stamp_ns(msg), int(level), str(status.name), str(status.message),
                                     str(status.hardware_id), {str(kv.key): str(kv.value) for kv in status.values}))
    return out


# --------------------------------------------------------------------------- header-first adapters
# Thin wrappers with the call shapes used by glue_ros/ros/outputs.py, node.py and tools/replay.py
# (``types`` = a MessageFactory, ``header`` = a std_msgs/Header of that flavour). The header's
# frame_id is used; its stamp must be the frame's stamp (the contract), else ValueError.


def make_header(types: MessageFactory, stamp_ns: int, frame_id: str) -> Any:
    return types.header(stamp_ns, frame_id)


def _header_frame(result: FrameResult, header: Any) -> str:
    if stamp_to_ns(header.stamp) != int(result.stamp_ns):
        raise ValueError(f"header stamp {stamp_to_ns(header.stamp)} != frame stamp {result.stamp_ns}")
    return str(header.frame_id)


def matches_cloud(result: FrameResult, types: MessageFactory, header: Any) -> Any:
    return build_matches(types, result, frame_id=_header_frame(result, header))


def relative_pose(result: FrameResult, types: MessageFactory, header: Any) -> Any | None:
    return build_relative_pose(types, result, frame_id=_header_frame(result, header))


def keyframe_cloud(result: FrameResult, types: MessageFactory, header: Any) -> Any | None:
    return build_keyframe(types, result, frame_id=_header_frame(result, header))


def features_cloud(result: FrameResult, types: MessageFactory, header: Any,
                   normalizer: Callable[[np.ndarray], np.ndarray], **options: Any) -> Any:
    return build_features(types, result, normalizer, frame_id=_header_frame(result, header), **options)


def debug_image(result: FrameResult, image: np.ndarray, types: MessageFactory, header: Any, **options: Any) -> Any:
    return build_debug_image(types, image, result, frame_id=_header_frame(result, header), **options)


def diagnostics(figures: Mapping[str, Any], types: MessageFactory, stamp_ns: int, *, name: str = DIAGNOSTIC_NAME,
                hardware_id: str = "", thresholds: DiagnosticThresholds = DiagnosticThresholds()) -> Any:
    return build_diagnostics(types, stamp_ns, figures, hardware_id=hardware_id, name=name, thresholds=thresholds)

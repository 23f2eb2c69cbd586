"""sensor_msgs/PointCloud2 ⇄ structured numpy arrays (either message flavour).

``make_cloud`` packs a structured array (packed, little-endian, fields of PointField types) into a
PointCloud2 (height 1, ``is_dense`` true); ``read_points`` reads any PointCloud2 (any endianness,
height >= 1, padded rows) back into a native-byte-order structured array; ``column`` takes one field
with a type (or a default when the field is absent).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .msg_types import MessageFactory

__all__ = ["packed_dtype", "make_cloud", "read_points", "column"]

# PointField datatype → numpy type. 1..8 exist in every distro; 9/10/11 (INT64, UINT64, BOOL) were
# added in ROS 2 Lyrical and are accepted by the readers only.
_PF_TO_NP = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8", 9: "i8", 10: "u8", 11: "u1"}
_NP_TO_PF = {"i1": 1, "u1": 2, "i2": 3, "u2": 4, "i4": 5, "u4": 6, "f4": 7, "f8": 8}


def packed_dtype(fields: Sequence[tuple[str, str]]) -> np.dtype:
    """``(name, numpy code)`` pairs → a packed, little-endian structured dtype."""
    return np.dtype([(name, "<" + code) for name, code in fields])


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
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": int(msg.point_step)})


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


def column(points: np.ndarray, name: str, dtype: Any, default: Any = None) -> np.ndarray:
    """One field of ``read_points``' result as ``dtype`` (a copy); ``default`` fills an absent field,
    without one an absent field is a ValueError naming the fields there are."""
    if name in (points.dtype.names or ()):
        return np.asarray(points[name]).astype(dtype, copy=True)
    if default is None:
        raise ValueError(f"PointCloud2 has no field {name!r} (fields: {', '.join(points.dtype.names or ())})")
    return np.full(points.shape[0], default, dtype)

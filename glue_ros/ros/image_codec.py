"""Our own cv_bridge replacement: sensor_msgs/Image and sensor_msgs/CompressedImage ⇄ numpy.

Works on *any* object with the sensor_msgs fields (duck typing): rclpy messages, rosbags typestore
messages, or a ``types.SimpleNamespace``. Nothing here imports rclpy.

What ``decode_image`` returns (always C-order ``(H, W)`` or ``(H, W, 3)``, native byte order):

==============================================  =========================  ==========================
encoding                                        result                     notes
==============================================  =========================  ==========================
``mono8``, ``8UC1``                             ``(H, W)`` uint8           zero-copy
``mono16``, ``16UC1``                           ``(H, W)`` uint16          zero-copy if native endian
``32FC1``                                       ``(H, W)`` float32         zero-copy if native endian
``rgb8``                                        ``(H, W, 3)`` uint8 RGB    zero-copy
``bgr8``, ``8UC3`` (OpenCV order = BGR)         ``(H, W, 3)`` uint8 RGB
``rgba8``, ``bgra8``, ``8UC4`` (BGRA)           ``(H, W, 3)`` uint8 RGB    alpha dropped
``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``,   ``(H, W, 3)`` uint8 RGB    scaled by 255/65535 (rounded)
``16UC3`` (BGR)
``bayer_{rggb,bggr,gbrg,grbg}8``                ``(H, W, 3)`` uint8 RGB    bilinear demosaic (OpenCV)
``bayer_{rggb,bggr,gbrg,grbg}16``               ``(H, W, 3)`` uint8 RGB    demosaic in 16 bit, then scaled
``yuv422`` / ``uyvy`` (UYVY),                   ``(H, W, 3)`` uint8 RGB    width must be even
``yuv422_yuy2`` / ``yuyv`` (YUYV)
==============================================  =========================  ==========================

Colour is always RGB uint8; mono/depth-like data keeps its type. Encoding names are matched
case-insensitively after stripping whitespace.

Zero-copy results are **read-only views** on the message's buffer (they keep that buffer alive,
so they are safe to keep after the message is gone; they may have padded rows, i.e. be
row-strided rather than contiguous). Pass ``copy=True`` for an owned, writable, contiguous array.

Validation (``ImageDecodeError``, a ``ValueError``, with a machine-readable ``.reason``):

* ``bad_field``: height/width/step/is_bigendian not non-negative integers, data not bytes-like;
* ``unknown_encoding``: encoding not in the table above;
* ``zero_size``: width or height is 0;
* ``too_large``: more than ``MAX_PIXELS`` (100 Mpixel) or a row wider than ``MAX_STEP`` bytes;
* ``bad_step``: ``step < width * bytes_per_pixel``;
* ``bad_size``: geometry the encoding cannot have (odd width for YUV 4:2:2);
* ``short_data``: ``len(data) < (height - 1) * step + width * bytes_per_pixel``. The *last row may
  be exactly row-size long* (its padding may be missing): nothing is read past the row, so this
  is accepted; trailing bytes beyond ``height * step`` are ignored;
* ``corrupt_compressed``: compressed bytes that do not decode, or that are refused before decoding
  because they are truncated or corrupt (a PNG chunk longer than the data, a Huffman JPEG
  declaring more pixels than its bytes can encode: > 512 pixels per byte);
* ``decode_failed``: any other conversion failure (should not happen; never a raw cv2.error).

``is_bigendian`` is honoured for 16- and 32-bit data (any non-zero value means big-endian).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from .msg_types import factory_for, ns_to_stamp, stamp_to_ns

__all__ = [
    "ImageDecodeError", "ENCODINGS", "MAX_PIXELS", "MAX_STEP", "decode_image", "decode_compressed",
    "to_gray_or_rgb_uint8", "encode_image", "encode_compressed",
]

MAX_PIXELS = 100_000_000  # refuse anything larger (a 100 Mpixel frame is not a camera stream)
MAX_STEP = 1 << 28  # 256 MiB per row: larger step values are corrupt headers


class ImageDecodeError(ValueError):
    """An image message cannot be decoded. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Enc:
    kind: str  # mono | rgb | bgr | rgba | bgra | bayer | uyvy | yuyv
    dtype: np.dtype  # element type
    channels: int  # elements per pixel (yuv: 2 bytes per pixel)
    bayer: str = ""  # RGGB, BGGR, GBRG, GRBG (top-left 2x2 block, row-major)

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


_U8, _U16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)

ENCODINGS: dict[str, _Enc] = {
    "mono8": _Enc("mono", _U8, 1), "8uc1": _Enc("mono", _U8, 1),
    "mono16": _Enc("mono", _U16, 1), "16uc1": _Enc("mono", _U16, 1),
    "32fc1": _Enc("mono", _F32, 1),
    "rgb8": _Enc("rgb", _U8, 3), "bgr8": _Enc("bgr", _U8, 3), "8uc3": _Enc("bgr", _U8, 3),
    "rgba8": _Enc("rgba", _U8, 4), "bgra8": _Enc("bgra", _U8, 4), "8uc4": _Enc("bgra", _U8, 4),
    "rgb16": _Enc("rgb", _U16, 3), "bgr16": _Enc("bgr", _U16, 3), "16uc3": _Enc("bgr", _U16, 3),
    "rgba16": _Enc("rgba", _U16, 4), "bgra16": _Enc("bgra", _U16, 4),
    "yuv422": _Enc("uyvy", _U8, 2), "uyvy": _Enc("uyvy", _U8, 2),
    "yuv422_yuy2": _Enc("yuyv", _U8, 2), "yuyv": _Enc("yuyv", _U8, 2),
}
for _pattern in ("rggb", "bggr", "gbrg", "grbg"):
    ENCODINGS[f"bayer_{_pattern}8"] = _Enc("bayer", _U8, 1, _pattern.upper())
    ENCODINGS[f"bayer_{_pattern}16"] = _Enc("bayer", _U16, 1, _pattern.upper())

# ROS names the Bayer pattern by its top-left 2x2 block (bayer_rggb8: R at (0,0)). OpenCV's
# historical codes name it by the 2nd row's 2nd/3rd pixels, so ROS RGGB == OpenCV "BG"; OpenCV >= 4.x
# also has explicit COLOR_BayerRGGB2RGB (== COLOR_BayerBG2RGB). Verified against a synthetic mosaic
# in test/test_image_codec.py.
_BAYER_TO_RGB = {
    "RGGB": getattr(cv2, "COLOR_BayerRGGB2RGB", cv2.COLOR_BayerBG2RGB),
    "BGGR": getattr(cv2, "COLOR_BayerBGGR2RGB", cv2.COLOR_BayerRG2RGB),
    "GBRG": getattr(cv2, "COLOR_BayerGBRG2RGB", cv2.COLOR_BayerGR2RGB),
    "GRBG": getattr(cv2, "COLOR_BayerGRBG2RGB", cv2.COLOR_BayerGB2RGB),
}

_NATIVE_BIG = np.little_endian is False


def _lookup(encoding: Any) -> tuple[str, _Enc]:
    if not isinstance(encoding, str):
        raise ImageDecodeError("bad_field", f"encoding must be a string, got {type(encoding).__name__}")
    key = encoding.strip().lower()
    spec = ENCODINGS.get(key)
    if spec is None:
        raise ImageDecodeError("unknown_encoding", f"unsupported image encoding {encoding[:40]!r}")
    return key, spec


def _uint(msg: Any, name: str) -> int:
    value = getattr(msg, name, None)
    if isinstance(value, (bytes, bytearray)) and len(value) == 1:  # rclpy 'byte'-typed fields
        value = value[0]
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)) or value < 0:
        raise ImageDecodeError("bad_field", f"{name} must be a non-negative integer, got {value!r}"[:120])
    return int(value)


def _as_bytes(data: Any) -> np.ndarray:
    """Any bytes-like / uint8 sequence → 1-D uint8 array (a view where possible)."""
    try:
        if isinstance(data, np.ndarray):
            if data.dtype == np.uint8:
                return data.reshape(-1)
            if data.dtype.kind in "biuf" and data.flags.c_contiguous:
                return data.reshape(-1).view(np.uint8)
            raise TypeError(f"array of dtype {data.dtype}")
        if isinstance(data, (str, int, float)) or data is None:
            raise TypeError(type(data).__name__)
        try:
            view = memoryview(data)
        except TypeError:
            return np.asarray(list(data), dtype=np.uint8).reshape(-1)  # list/tuple of ints
        if not view.c_contiguous:
            raise TypeError("non-contiguous buffer")
        return np.frombuffer(view.cast("B") if view.ndim != 1 or view.itemsize != 1 else view, np.uint8)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageDecodeError("bad_field", f"data is not bytes-like ({exc})"[:120]) from None


def _rows(buf: np.ndarray, height: int, step: int, row_bytes: int) -> np.ndarray:
    """(height, row_bytes) uint8 view of the pixel bytes (validated lengths)."""
    if buf.size >= height * step:
        return buf[: height * step].reshape(height, step)[:, :row_bytes]
    # The last row is shorter than step (padding missing) but at least row_bytes long.
    return np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1), writeable=False)


def _readonly(array: np.ndarray) -> np.ndarray:
    array = array.view()
    array.flags.writeable = False
    return array


def decode_image(msg: Any, *, copy: bool = False) -> np.ndarray:
    """sensor_msgs/Image (any flavour) → numpy; see the module docstring for the result table.

    Raises ``ImageDecodeError`` (and only that) for anything that cannot be decoded.
    """
    height, width, step = _uint(msg, "height"), _uint(msg, "width"), _uint(msg, "step")
    bigendian = bool(_uint(msg, "is_bigendian")) if hasattr(msg, "is_bigendian") else False
    key, spec = _lookup(getattr(msg, "encoding", None))
    if height == 0 or width == 0:
        raise ImageDecodeError("zero_size", f"{width}x{height} image")
    if height * width > MAX_PIXELS or step > MAX_STEP:
        raise ImageDecodeError("too_large", f"{width}x{height} image, step {step} exceeds the limits "
                                            f"({MAX_PIXELS} pixels, {MAX_STEP} bytes per row)")
    row_bytes = width * spec.bytes_per_pixel
    if step < row_bytes:
        raise ImageDecodeError("bad_step", f"step {step} < width {width} x {spec.bytes_per_pixel} bytes "
                                           f"per pixel ({key})")
    if spec.kind in ("uyvy", "yuyv") and width % 2:
        raise ImageDecodeError("bad_size", f"{key} needs an even width, got {width}")
    buf = _as_bytes(getattr(msg, "data", None))
    needed = (height - 1) * step + row_bytes
    if buf.size < needed:
        raise ImageDecodeError("short_data", f"{buf.size} data bytes < {needed} needed for {height} rows "
                                             f"of step {step}")
    rows = _rows(buf, height, step, row_bytes)
    try:
        out, zero_copy = _convert(rows, spec, height, width, bigendian)
    except cv2.error as exc:  # pragma: no cover - validated above; keep the contract anyway
        raise ImageDecodeError("decode_failed", str(exc).strip().splitlines()[-1][:120]) from None
    if zero_copy:
        return np.array(out, copy=True, order="C") if copy else _readonly(out)
    return out


def _convert(rows: np.ndarray, spec: _Enc, height: int, width: int, bigendian: bool) -> tuple[np.ndarray, bool]:
    dtype = spec.dtype
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if bigendian else "<")
    pixels = rows.view(dtype)
    native = dtype.itemsize == 1 or dtype.isnative
    if not native:
        pixels = pixels.astype(spec.dtype)  # byte swap (copy)
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    pixels = pixels.reshape(shape)
    kind = spec.kind
    if kind == "mono":
        return pixels, native
    if kind == "bayer":
        rgb = cv2.cvtColor(np.ascontiguousarray(pixels), _BAYER_TO_RGB[spec.bayer])
        return _to_u8(rgb), False
    if kind in ("uyvy", "yuyv"):
        code = cv2.COLOR_YUV2RGB_UYVY if kind == "uyvy" else cv2.COLOR_YUV2RGB_YUYV
        return cv2.cvtColor(np.ascontiguousarray(pixels), code), False
    if kind == "rgb":
        return (pixels, native) if spec.dtype == _U8 else (_to_u8(pixels), False)
    src = np.ascontiguousarray(pixels)
    code = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB}[kind]
    return _to_u8(cv2.cvtColor(src, code)), False


def _to_u8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    # 16 bit → 8 bit by 255/65535 with rounding (as cv_bridge's convertTo does).
    return cv2.convertScaleAbs(np.ascontiguousarray(array), alpha=255.0 / 65535.0)


# --------------------------------------------------------------------------- compressed


def _png_size(buf: np.ndarray) -> tuple[int, int] | None:
    if buf.size >= 24 and bytes(buf[:8]) == b"\x89PNG\r\n\x1a\n" and bytes(buf[12:16]) == b"IHDR":
        width, height = struct.unpack(">II", bytes(buf[16:24]))
        return width, height
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOF_HUFFMAN = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7}  # the others are arithmetic-coded

# Huffman-coded JPEG spends at least one bit per 8x8 block of its full-resolution component (the DC
# code; sequential scans also need an end-of-block code): at most 64 * 8 = 512 pixels per byte of
# data. A small message declaring far more is truncated or corrupt — and libjpeg would allocate and
# grey-fill the whole declared frame (a 1 KB message declaring 9000x9000 costs ~0.5 GB and seconds).
JPEG_MAX_PIXELS_PER_BYTE = 512


def _jpeg_info(buf: np.ndarray) -> tuple[int, int, int] | None:
    """(width, height, SOF marker) from the first SOF marker, without decoding; None if not found."""
    if buf.size < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    data = bytes(buf[: min(buf.size, 1 << 20)])  # SOF comes early (after APPn/DQT/DHT segments)
    i, n = 2, len(data)
    for _ in range(10000):
        if i + 4 > n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / start of scan before any frame header
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height, marker
        i += 2 + length
    return None


def _jpeg_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker, without decoding; None if not found."""
    info = _jpeg_info(buf)
    return None if info is None else (info[0], info[1])


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MAX_CHUNKS = 100_000


def _png_problem(buf: np.ndarray) -> str:
    """Why a PNG's chunk structure is broken ("" if it is sound), checked before decoding: OpenCV's
    PNG reader trusts chunk lengths and allocates (and zero-fills) what a corrupt one declares — a
    2 KB message whose IDAT length was flipped to 4 GB took 10+ s and 4 GB of memory to reject."""
    data = bytes(buf)
    pos, n = len(_PNG_SIGNATURE), len(data)
    for _ in range(_PNG_MAX_CHUNKS):
        if pos + 12 > n:
            return f"truncated after {pos} of {n} bytes (no IEND chunk)"
        length = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4:pos + 8]
        if length > 0x7FFFFFFF or pos + 12 + length > n:
            return (f"chunk {kind.decode('latin-1')!r} at byte {pos} declares {length} bytes, only "
                    f"{max(n - pos - 12, 0)} remain (truncated or corrupt)")
        if kind == b"IEND":
            return ""
        pos += 12 + length
    return f"more than {_PNG_MAX_CHUNKS} chunks"


def _check_pixels(width: int, height: int, what: str) -> None:
    if width * height > MAX_PIXELS:
        raise ImageDecodeError("too_large", f"{what} declares {width}x{height} pixels (> {MAX_PIXELS})")
    if width == 0 or height == 0:
        raise ImageDecodeError("corrupt_compressed", f"{what} declares a {width}x{height} image")


def _imdecode(buf: np.ndarray, what: str) -> np.ndarray:
    # Everything that makes the decoder allocate is checked before it runs (decompression bombs,
    # corrupt or truncated headers): declared size, PNG chunk lengths, JPEG size vs data length.
    png_size = _png_size(buf)
    if png_size is not None:
        _check_pixels(*png_size, what)
        problem = _png_problem(buf)
        if problem:
            raise ImageDecodeError("corrupt_compressed", f"{what}: PNG {problem}")
    jpeg = _jpeg_info(buf) if png_size is None else None
    if jpeg is not None:
        width, height, marker = jpeg
        _check_pixels(width, height, what)
        if marker in _SOF_HUFFMAN and width * height > JPEG_MAX_PIXELS_PER_BYTE * buf.size:
            raise ImageDecodeError("corrupt_compressed", f"{what}: JPEG declares {width}x{height} pixels, more "
                                                         f"than {buf.size} bytes can encode (truncated or corrupt)")
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageDecodeError("corrupt_compressed", f"{what}: " + (str(exc).strip().splitlines() or [""])[-1][:100]) \
            from None
    if image is None or image.size == 0:
        raise ImageDecodeError("corrupt_compressed", f"{what}: {buf.size} bytes do not decode")
    _check_pixels(image.shape[1], image.shape[0], what)
    return image


def decode_compressed(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (any flavour) → numpy, same conventions as ``decode_image``:
    colour → ``(H, W, 3)`` uint8 RGB (16-bit colour PNG scaled to 8 bit), grey → ``(H, W)``
    uint8 or uint16 (16-bit PNG).

    ``format`` follows image_transport: ``"jpeg"``, ``"png"``, ``"rgb8; jpeg compressed bgr8"``,
    ``"bgr8; compressed bgr8"`` … OpenCV decodes to BGR, which is what image_transport stores, so
    the channel order in the format string is not needed. ``compressedDepth`` (``"16UC1;
    compressedDepth png"``, ``"32FC1; compressedDepth"``) is decoded to uint16 / float32 depth.
    The declared dimensions of PNG/JPEG data are checked before decoding (decompression bombs:
    ``too_large``); other formats are checked after decoding.
    """
    fmt = getattr(msg, "format", "")
    if not isinstance(fmt, str):
        raise ImageDecodeError("bad_field", f"format must be a string, got {type(fmt).__name__}")
    buf = _as_bytes(getattr(msg, "data", None))
    if buf.size == 0:
        raise ImageDecodeError("corrupt_compressed", "no data")
    if "compresseddepth" in fmt.lower():
        return _decode_compressed_depth(buf, fmt)
    image = _imdecode(buf, f"compressed image ({fmt.strip()[:40]!r})")  # repr: no control characters in logs
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image if image.dtype in (np.uint8, np.uint16) else _to_u8(image)
    code = cv2.COLOR_BGR2RGB if image.shape[2] == 3 else cv2.COLOR_BGRA2RGB
    return _to_u8(cv2.cvtColor(image, code))


def _decode_compressed_depth(buf: np.ndarray, fmt: str) -> np.ndarray:
    # compressed_depth_image_transport: 12-byte ConfigHeader {int32 format; float depthQuantA, B}
    # followed by a 16-bit PNG. 16UC1 stores depth directly; 32FC1 stores quantised inverse depth.
    if buf.size <= 12:
        raise ImageDecodeError("corrupt_compressed", "compressedDepth data shorter than its header")
    if "rvl" in fmt.lower():
        raise ImageDecodeError("unknown_encoding", "compressedDepth RVL is not supported")
    quant_a, quant_b = struct.unpack("<ff", bytes(buf[4:12]))
    image = _imdecode(buf[12:], "compressedDepth")
    if image.dtype != np.uint16 or image.ndim != 2:
        raise ImageDecodeError("corrupt_compressed", "compressedDepth payload is not a 16-bit grey PNG")
    if fmt.strip().lower().startswith("32fc1"):
        inv = image.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.float32(quant_a) / (inv - np.float32(quant_b))
        depth[image == 0] = np.nan
        return depth
    return image


# --------------------------------------------------------------------------- normalisation


def to_gray_or_rgb_uint8(array: np.ndarray, encoding: str = "", *, bit_depth: int | None = None,
                         float_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Normalise a decoded image for the feature extractor: ``(H, W)`` or ``(H, W, 3)`` uint8.

    * uint8 input is returned unchanged (no copy).
    * uint16 input (``mono16``, ``bayer_*16`` …): right shift by ``bit_depth - 8`` and saturate.
      ``bit_depth`` defaults to 16, i.e. a fixed mapping, so brightness stays consistent from frame
      to frame (what matching needs). Cameras packing 10/12 bits into mono16 should set bit_depth.
      ``16UC1`` (depth or generic data, which has no natural range) with ``bit_depth=None`` is
      stretched per frame: the 0.5th..99.5th percentile of its non-zero pixels maps to 0..255.
    * float input (``32FC1``): clipped to ``float_range`` (default [0, 1]) then scaled to 0..255;
      NaN/inf become 0.
    * ``(H, W, 1)`` is squeezed; ``(H, W, 4)`` loses its alpha channel.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ImageDecodeError("bad_size", f"expected (H, W) or (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        key = encoding.strip().lower() if isinstance(encoding, str) else ""
        if bit_depth is None and key == "16uc1":
            valid = a[a > 0]
            if valid.size == 0:
                return np.zeros(a.shape, np.uint8)
            lo, hi = np.percentile(valid, [0.5, 99.5])
            scale = 255.0 / max(float(hi - lo), 1.0)
            out = (a.astype(np.float32) - np.float32(lo)) * np.float32(scale)
            return np.clip(out, 0, 255).round().astype(np.uint8)
        shift = (16 if bit_depth is None else int(bit_depth)) - 8
        if not 0 <= shift <= 8:
            raise ValueError(f"bit_depth must be in [8, 16], got {bit_depth}")
        return np.minimum(a >> shift, 255).astype(np.uint8)
    if a.dtype.kind == "f":
        lo, hi = float(float_range[0]), float(float_range[1])
        if not hi > lo:
            raise ValueError(f"float_range must be increasing, got {float_range}")
        out = np.nan_to_num(a.astype(np.float32), nan=lo, posinf=lo, neginf=lo)
        out = (np.clip(out, lo, hi) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        return out.round().astype(np.uint8)
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    raise ImageDecodeError("bad_field", f"unsupported array dtype {a.dtype}")


# --------------------------------------------------------------------------- encoders (tests, tools)


def _header_fields(header: Any, stamp_ns: int | None, frame_id: str | None) -> tuple[int, str]:
    if header is not None:
        stamp = stamp_to_ns(header.stamp)
        frame = str(header.frame_id)
    else:
        stamp, frame = 0, ""
    return (stamp if stamp_ns is None else int(stamp_ns)), (frame if frame_id is None else str(frame_id))


def _namespace_header(stamp_ns: int, frame_id: str) -> SimpleNamespace:
    sec, nanosec = ns_to_stamp(stamp_ns)
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id=frame_id)


def encode_image(array: np.ndarray, encoding: str, msg_cls_or_factory: Any = None, *, header: Any = None,
                 stamp_ns: int | None = None, frame_id: str | None = None, step: int | None = None,
                 bigendian: bool = False) -> Any:
    """numpy → sensor_msgs/Image (for tests and tools), like cv_bridge's ``cv2_to_imgmsg``.

    ``array`` is in the encoding's **own** pixel layout (not converted): ``(H, W, 3)`` BGR for
    ``bgr8``, the raw mosaic ``(H, W)`` for ``bayer_*``, ``(H, W, 2)`` byte pairs for YUV 4:2:2,
    ``(H, W)`` or ``(H, W, 1)`` for single-channel encodings; its dtype must match the encoding.
    ``step`` (default: compact rows) may be larger than the row size: padding bytes are zero.
    ``bigendian`` stores 16/32-bit data big-endian with ``is_bigendian = 1``.

    ``msg_cls_or_factory``: a ``MessageFactory``, an Image class of either flavour (rclpy or
    rosbags), or None for a plain ``SimpleNamespace`` with the same fields (data as bytes).
    The header comes from ``header`` (any flavour) and/or ``stamp_ns`` / ``frame_id``.
    """
    key, spec = _lookup(encoding)
    a = np.asarray(array)
    if a.dtype != spec.dtype:
        raise ValueError(f"{encoding}: expected dtype {spec.dtype}, got {a.dtype}")
    if spec.channels == 1 and a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    expected_ndim = 2 if spec.channels == 1 else 3
    if a.ndim != expected_ndim or (expected_ndim == 3 and a.shape[2] != spec.channels):
        raise ValueError(f"{encoding}: expected {'(H, W)' if expected_ndim == 2 else f'(H, W, {spec.channels})'}, "
                         f"got shape {a.shape}")
    height, width = int(a.shape[0]), int(a.shape[1])
    row_bytes = width * spec.bytes_per_pixel
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ValueError(f"step {step} < row size {row_bytes}")
    if spec.dtype.itemsize > 1:
        a = a.astype(spec.dtype.newbyteorder(">" if bigendian else "<"), copy=False)
    raw = np.ascontiguousarray(a).view(np.uint8).reshape(height, row_bytes)
    if step > row_bytes:
        padded = np.zeros((height, step), np.uint8)
        padded[:, :row_bytes] = raw
        raw = padded
    data = raw.reshape(-1)
    stamp, frame = _header_fields(header, stamp_ns, frame_id)
    fields = dict(height=height, width=width, encoding=encoding, is_bigendian=int(bool(bigendian)), step=step)
    if msg_cls_or_factory is None:
        return SimpleNamespace(header=_namespace_header(stamp, frame), data=data.tobytes(), **fields)
    factory = factory_for(msg_cls_or_factory)
    return factory.new("sensor_msgs/msg/Image", header=factory.header(stamp, frame),
                       data=factory.uint8_seq(data), **fields)


def encode_compressed(array: np.ndarray, fmt: str = "jpeg", msg_cls_or_factory: Any = None, *,
                      header: Any = None, stamp_ns: int | None = None, frame_id: str | None = None,
                      quality: int = 95) -> Any:
    """numpy (``decode_compressed`` conventions: RGB ``(H, W, 3)`` uint8 or grey ``(H, W)`` uint8,
    uint16 for PNG only) → sensor_msgs/CompressedImage with an image_transport style format
    string (``"rgb8; jpeg compressed bgr8"``, ``"mono8; png compressed mono8"`` …)."""
    kind = fmt.strip().lower()
    if kind not in ("jpeg", "jpg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    kind = "jpeg" if kind == "jpg" else kind
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        source, target = "rgb8", "bgr8"
        pixels = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2BGR)
    elif a.ndim == 2 and a.dtype == np.uint8:
        source = target = "mono8"
        pixels = a
    elif a.ndim == 2 and a.dtype == np.uint16 and kind == "png":
        source = target = "mono16"
        pixels = a
    else:
        raise ValueError(f"cannot {kind}-compress an array of shape {a.shape} and dtype {a.dtype}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ok, encoded = cv2.imencode("." + ("jpg" if kind == "jpeg" else "png"), np.ascontiguousarray(pixels), params)
    if not ok:  # pragma: no cover
        raise ValueError(f"OpenCV could not {kind}-encode the image")
    data = encoded.reshape(-1)
    format_string = f"{source}; {kind} compressed {target}"
    stamp, frame = _header_fields(header, stamp_ns, frame_id)
    if msg_cls_or_factory is None:
        return SimpleNamespace(header=_namespace_header(stamp, frame), format=format_string, data=data.tobytes())
    factory = factory_for(msg_cls_or_factory)
    return factory.new("sensor_msgs/msg/CompressedImage", header=factory.header(stamp, frame),
                       format=format_string, data=factory.uint8_seq(data))

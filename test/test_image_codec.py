"""glue_ros.ros.image_codec: our cv_bridge replacement (no ROS needed except the flavour tests)."""
from __future__ import annotations

import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glue_ros.ros.image_codec import (ENCODINGS, MAX_PIXELS, ImageDecodeError, decode_compressed, decode_image,
                                      encode_compressed, encode_image, to_gray_or_rgb_uint8)

RNG = np.random.default_rng(1234)
H, W = 6, 8


def raw_for(encoding: str, rng=RNG, height=H, width=W) -> np.ndarray:
    """A random array in the encoding's own layout."""
    spec = ENCODINGS[encoding.lower()]
    shape = (height, width) if spec.channels == 1 else (height, width, spec.channels)
    if spec.dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32) * 1000
    if spec.dtype == np.uint16 and spec.kind != "mono":
        # multiples of 257 map exactly to 8 bit (v * 255 / 65535 = v / 257)
        return rng.integers(0, 256, shape).astype(np.uint16) * 257
    return rng.integers(0, np.iinfo(spec.dtype).max + 1, shape, dtype=np.uint64).astype(spec.dtype)


def expected_decode(encoding: str, raw: np.ndarray) -> np.ndarray:
    spec = ENCODINGS[encoding.lower()]
    eight = (raw // 257).astype(np.uint8) if raw.dtype == np.uint16 and spec.kind != "mono" else raw
    if spec.kind == "mono":
        return raw
    if spec.kind == "rgb":
        return eight
    if spec.kind == "bgr":
        return eight[..., ::-1]
    if spec.kind == "rgba":
        return eight[..., :3]
    if spec.kind == "bgra":
        return eight[..., 2::-1]
    if spec.kind == "bayer":
        code = {"RGGB": cv2.COLOR_BayerRGGB2RGB, "BGGR": cv2.COLOR_BayerBGGR2RGB,
                "GBRG": cv2.COLOR_BayerGBRG2RGB, "GRBG": cv2.COLOR_BayerGRBG2RGB}[spec.bayer]
        out = cv2.cvtColor(raw, code)
        return out if out.dtype == np.uint8 else cv2.convertScaleAbs(out, alpha=255 / 65535)
    code = cv2.COLOR_YUV2RGB_UYVY if spec.kind == "uyvy" else cv2.COLOR_YUV2RGB_YUYV
    return cv2.cvtColor(raw, code)


ALL_ENCODINGS = ["mono8", "mono16", "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16",
                 "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8", "bayer_rggb16", "bayer_grbg16",
                 "8UC1", "8UC3", "8UC4", "16UC1", "16UC3", "32FC1", "yuv422", "uyvy", "yuv422_yuy2", "yuyv"]


@pytest.mark.parametrize("encoding", ALL_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("bigendian", [False, True])
def test_round_trip_every_encoding(encoding, pad, bigendian):
    raw = raw_for(encoding)
    spec = ENCODINGS[encoding.lower()]
    step = W * spec.bytes_per_pixel + pad
    msg = encode_image(raw, encoding, step=step, bigendian=bigendian, stamp_ns=5, frame_id="cam")
    assert msg.step == step and msg.is_bigendian == int(bigendian) and len(msg.data) == H * step
    out = decode_image(msg)
    expected = expected_decode(encoding, raw)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    if spec.channels > 1 or spec.kind != "mono":
        assert out.dtype == np.uint8 and out.ndim == 3  # colour is always RGB uint8
    np.testing.assert_array_equal(out, expected)
    owned = decode_image(msg, copy=True)
    np.testing.assert_array_equal(owned, expected)
    assert owned.flags.writeable and owned.flags.c_contiguous


def test_big_endian_bytes_are_really_big_endian():
    raw = np.array([[0x0102, 0xA0B0]], np.uint16)
    msg = encode_image(raw, "mono16", bigendian=True)
    assert bytes(msg.data) == b"\x01\x02\xa0\xb0"
    np.testing.assert_array_equal(decode_image(msg), raw)
    little = SimpleNamespace(**{**vars(msg), "is_bigendian": 0})
    np.testing.assert_array_equal(decode_image(little), raw.byteswap())
    f = np.array([[1.5, -2.25]], np.float32)
    msg = encode_image(f, "32FC1", bigendian=True)
    assert bytes(msg.data[:4]) == struct.pack(">f", 1.5)
    np.testing.assert_array_equal(decode_image(msg), f)


def test_zero_copy_views_are_read_only_and_safe_to_keep():
    raw = raw_for("mono8")
    msg = encode_image(raw, "mono8")
    msg.data = bytearray(msg.data)  # a mutable buffer, like rclpy's array('B')
    out = decode_image(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))
    assert not out.flags.writeable
    copied = decode_image(msg, copy=True)
    assert not np.shares_memory(copied, np.frombuffer(msg.data, np.uint8))
    del msg
    np.testing.assert_array_equal(out, raw)  # the view keeps the buffer alive
    # padded rows: still zero-copy (row-strided), values right
    padded = encode_image(raw_for("rgb8"), "rgb8", step=W * 3 + 7)
    view = decode_image(padded)
    assert view.strides[0] == W * 3 + 7 and not view.flags.writeable


def test_last_row_may_be_exactly_row_size():
    raw = raw_for("mono16")
    msg = encode_image(raw, "mono16", step=W * 2 + 6)
    msg.data = msg.data[:-6]  # the last row's padding is missing
    np.testing.assert_array_equal(decode_image(msg), raw)
    msg.data = msg.data[:-1]  # one byte short of the last row
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(msg)
    assert exc.value.reason == "short_data"


def test_trailing_bytes_ignored_and_data_types_accepted():
    raw = raw_for("rgb8")
    msg = encode_image(raw, "rgb8")
    for data in (bytes(msg.data) + b"xyz", bytearray(msg.data), memoryview(bytes(msg.data)),
                 np.frombuffer(msg.data, np.uint8), list(msg.data)):
        np.testing.assert_array_equal(decode_image(SimpleNamespace(**{**vars(msg), "data": data})), raw)
    np.testing.assert_array_equal(decode_image(SimpleNamespace(**{**vars(msg), "encoding": " RGB8 "})), raw)


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer filter whose top-left 2x2 block is ``pattern``."""
    out = np.zeros(rgb.shape[:2], rgb.dtype)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(pattern[2 * dy + dx])]
    return out


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GBRG", "GRBG"])
def test_bayer_pattern_mapping_against_synthetic_mosaic(pattern):
    # A constant colour with distinct R, G, B: a wrong OpenCV code swaps R and B (or reads G as R).
    colour = np.array([200, 100, 30], np.uint8)
    rgb = np.broadcast_to(colour, (16, 20, 3)).copy()
    msg = encode_image(mosaic(rgb, pattern), f"bayer_{pattern.lower()}8")
    np.testing.assert_array_equal(decode_image(msg), rgb)
    for other in {"RGGB", "BGGR", "GBRG", "GRBG"} - {pattern}:  # the other codes do not
        wrong = encode_image(mosaic(rgb, pattern), f"bayer_{other.lower()}8")
        assert not np.array_equal(decode_image(wrong)[8, 10], colour)
    # A smooth image (a known RGB gradient) is reconstructed closely away from the border.
    yy, xx = np.mgrid[0:32, 0:40].astype(np.float32)
    smooth = np.stack([60 + 3 * xx, 40 + 4 * yy, 200 - 2 * xx - yy], axis=-1).round().astype(np.uint8)
    for bits, dtype in ((8, np.uint8), (16, np.uint16)):
        src = smooth if bits == 8 else smooth.astype(np.uint16) * 257
        msg = encode_image(mosaic(src, pattern), f"bayer_{pattern.lower()}{bits}", step=40 * bits // 8 + 4)
        out = decode_image(msg)
        err = np.abs(out[2:-2, 2:-2].astype(int) - smooth[2:-2, 2:-2].astype(int))
        assert err.max() <= 2, (bits, err.max())


def test_yuv422_byte_orders():
    rng = np.random.default_rng(5)
    uyvy = rng.integers(0, 256, (H, W, 2), dtype=np.uint8)
    # the same pixels in YUYV order: swap each (U Y)(V Y) pair into (Y U)(Y V)
    yuyv = uyvy[:, :, ::-1].copy()
    a = decode_image(encode_image(uyvy, "uyvy"))
    b = decode_image(encode_image(yuyv, "yuyv", step=W * 2 + 4))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(decode_image(encode_image(uyvy, "yuv422")), a)
    # grey: U = V = 128 → R = G = B
    grey = np.stack([np.full((H, W), 128, np.uint8), rng.integers(16, 235, (H, W), dtype=np.uint8)], axis=-1)
    out = decode_image(encode_image(grey, "uyvy"))
    assert np.abs(out[..., 0].astype(int) - out[..., 2]).max() <= 1


# --------------------------------------------------------------------------- errors


def ns(**kw):
    base = dict(height=H, width=W, encoding="mono8", is_bigendian=0, step=W, data=bytes(H * W))
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("msg, reason", [
    (ns(step=W - 1), "bad_step"),
    (ns(encoding="rgb8", step=W * 3 - 1, data=bytes(H * W * 3)), "bad_step"),
    (ns(data=bytes(H * W - 1)), "short_data"),
    (ns(data=b""), "short_data"),
    (ns(encoding="mono12"), "unknown_encoding"),
    (ns(encoding=""), "unknown_encoding"),
    (ns(encoding=None), "bad_field"),
    (ns(width=0, step=0, data=b""), "zero_size"),
    (ns(height=0), "zero_size"),
    (ns(height=20000, width=10000, step=10000), "too_large"),
    (ns(step=2 ** 40), "too_large"),
    (ns(height=-1), "bad_field"),
    (ns(width=2.5), "bad_field"),
    (ns(step="8"), "bad_field"),
    (ns(data="not bytes"), "bad_field"),
    (ns(data=None), "bad_field"),
    (ns(data=[1, 2, 300] * 100), "bad_field"),
    (ns(encoding="yuv422", width=7, step=14, data=bytes(14 * H)), "bad_size"),
])
def test_decode_errors_have_reason_codes(msg, reason):
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(msg)
    assert exc.value.reason == reason
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)


def _png(array):
    return cv2.imencode(".png", array)[1].tobytes()


def _jpeg(array):
    return cv2.imencode(".jpg", array)[1].tobytes()


def test_compressed_errors():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png, jpeg = _png(img), _jpeg(img)
    cases = {
        "garbage": (rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(), "corrupt_compressed"),
        "empty": (b"", "corrupt_compressed"),
        "truncated png": (png[: len(png) // 2], "corrupt_compressed"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "corrupt_compressed"),
        "jpeg header + zeros": (b"\xff\xd8" + bytes(300), "corrupt_compressed"),
        "png signature only": (png[:8], "corrupt_compressed"),
        # decompression bombs: headers claiming 50000 x 50000 pixels are refused before decoding
        "png bomb": (png[:16] + struct.pack(">II", 50000, 50000) + png[24:], "too_large"),
        "zero-size png": (png[:16] + struct.pack(">II", 0, 10) + png[24:], "corrupt_compressed"),
    }
    sof = jpeg.index(b"\xff\xc0")
    cases["jpeg bomb"] = (jpeg[:sof + 5] + struct.pack(">HH", 60000, 60000) + jpeg[sof + 9:], "too_large")
    for name, (data, reason) in cases.items():
        for fmt in ("jpeg", "png", "rgb8; jpeg compressed bgr8"):
            with pytest.raises(ImageDecodeError) as exc:
                decode_compressed(SimpleNamespace(format=fmt, data=data))
            assert exc.value.reason == reason, name
    with pytest.raises(ImageDecodeError) as exc:
        decode_compressed(SimpleNamespace(format="16UC1; compressedDepth png", data=b"\x00" * 12))
    assert exc.value.reason == "corrupt_compressed"
    with pytest.raises(ImageDecodeError) as exc:
        decode_compressed(SimpleNamespace(format="jpeg", data=12))
    assert exc.value.reason == "bad_field"


# --------------------------------------------------------------------------- compressed round trips


def test_compressed_round_trips():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.stack([xx * 4, yy * 5, 255 - xx * 2], axis=-1).astype(np.uint8)
    png = encode_compressed(rgb, "png", stamp_ns=7, frame_id="cam")
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(decode_compressed(png), rgb)
    jpeg = encode_compressed(rgb, "jpeg", quality=98)
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    out = decode_compressed(jpeg)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 2
    # the format string's variants all decode to the same RGB image
    for fmt in ("jpeg", "png", "bgr8; compressed bgr8", "rgb8; jpeg compressed bgr8", ""):
        np.testing.assert_array_equal(decode_compressed(SimpleNamespace(format=fmt, data=png.data)), rgb)
    mono = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(decode_compressed(encode_compressed(mono, "png")), mono)
    mono16 = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    msg = encode_compressed(mono16, "png")
    assert msg.format == "mono16; png compressed mono16"
    np.testing.assert_array_equal(decode_compressed(msg), mono16)
    rgba = np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 9, np.uint8)])  # BGRA file
    np.testing.assert_array_equal(decode_compressed(SimpleNamespace(format="png", data=_png(rgba))), rgb)


def test_compressed_depth():
    depth = np.array([[0, 1000, 65535], [5, 6, 7]], np.uint16)
    data = struct.pack("<iff", 0, 0.0, 0.0) + _png(depth)
    np.testing.assert_array_equal(decode_compressed(SimpleNamespace(format="16UC1; compressedDepth png",
                                                                    data=data)), depth)
    # 32FC1: quantised inverse depth, depth = A / (q - B); q = 0 is invalid (NaN)
    a, b = 1000.0, 2.0
    q = np.array([[0, 502, 1002]], np.uint16)
    data = struct.pack("<iff", 0, a, b) + _png(q)
    out = decode_compressed(SimpleNamespace(format="32FC1; compressedDepth", data=data))
    assert out.dtype == np.float32 and np.isnan(out[0, 0])
    np.testing.assert_allclose(out[0, 1:], [2.0, 1.0])


# --------------------------------------------------------------------------- normalisation


def test_to_gray_or_rgb_uint8():
    u8 = raw_for("rgb8")
    assert to_gray_or_rgb_uint8(u8, "rgb8") is u8
    m16 = np.array([[0, 255, 256, 65535]], np.uint16)
    np.testing.assert_array_equal(to_gray_or_rgb_uint8(m16, "mono16"), [[0, 0, 1, 255]])
    np.testing.assert_array_equal(to_gray_or_rgb_uint8(np.array([[0, 16, 4095]], np.uint16), "mono16", bit_depth=12),
                                  [[0, 1, 255]])
    np.testing.assert_array_equal(to_gray_or_rgb_uint8(np.array([[4096 * 4]], np.uint16), "mono16", bit_depth=12),
                                  [[255]])  # saturates
    depth = np.linspace(500, 5000, 1000).astype(np.uint16).reshape(20, 50)
    depth[0, 0] = 0  # invalid pixels don't set the range
    out = to_gray_or_rgb_uint8(depth, "16UC1")
    assert out.dtype == np.uint8 and out[0, 1] <= 2 and out[-1, -1] >= 253 and out[0, 0] == 0
    f = np.array([[-1.0, 0.0, 0.5, 1.0, 7.0, np.nan, np.inf]], np.float32)
    np.testing.assert_array_equal(to_gray_or_rgb_uint8(f, "32FC1"), [[0, 0, 128, 255, 255, 0, 0]])
    np.testing.assert_array_equal(to_gray_or_rgb_uint8(np.array([[0.0, 10.0]], np.float32), "32FC1",
                                                       float_range=(0, 10)), [[0, 255]])
    assert to_gray_or_rgb_uint8(raw_for("rgb16"), "rgb16").shape == (H, W, 3)
    with pytest.raises(ValueError):
        to_gray_or_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


# --------------------------------------------------------------------------- real message flavours


@pytest.fixture(scope="module", params=["rclpy", "rosbags"])
def flavour(request):
    from glue_ros.ros.msg_types import RclpyTypes, RosbagsTypes

    if request.param == "rosbags":
        yield RosbagsTypes()
        return
    from test_messages import enable_rclpy_field_checks  # generated type checks on (ROS_PYTHON_CHECK_FIELDS=1)

    patched = enable_rclpy_field_checks()
    yield RclpyTypes()
    for module, value in patched:
        module.ros_python_check_fields = value


@pytest.mark.parametrize("encoding", ["mono8", "mono16", "bgr8", "32FC1", "bayer_gbrg8", "yuv422"])
def test_flavours_serialise_and_decode(flavour, encoding):
    raw = raw_for(encoding)
    spec = ENCODINGS[encoding.lower()]
    msg = encode_image(raw, encoding, flavour, stamp_ns=1_700_000_000_000_000_001, frame_id="cam",
                       step=W * spec.bytes_per_pixel + 3, bigendian=spec.dtype.itemsize > 1)
    wire = flavour.serialize(msg)
    back = flavour.deserialize(wire, "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(decode_image(back), expected_decode(encoding, raw))
    assert back.header.stamp.sec == 1_700_000_000 and back.header.stamp.nanosec == 1
    assert back.header.frame_id == "cam"
    cmsg = encode_compressed(np.ascontiguousarray(expected_decode("rgb8", raw_for("rgb8"))), "png", flavour)
    cback = flavour.deserialize(flavour.serialize(cmsg), "sensor_msgs/msg/CompressedImage")
    np.testing.assert_array_equal(decode_compressed(cback), decode_compressed(cmsg))


def test_rclpy_and_rosbags_images_are_wire_compatible():
    # (CDR padding bytes are unspecified, so compare by decoding each flavour's bytes with the other)
    from glue_ros.ros.msg_types import RclpyTypes, RosbagsTypes

    raw = raw_for("rgb8")
    a, b = RclpyTypes(), RosbagsTypes()
    wire_a = a.serialize(encode_image(raw, "rgb8", a, stamp_ns=3, frame_id="c", step=W * 3 + 1))
    wire_b = b.serialize(encode_image(raw, "rgb8", b, stamp_ns=3, frame_id="c", step=W * 3 + 1))
    assert len(wire_a) == len(wire_b)
    for wire, reader in ((wire_a, b), (wire_b, a)):
        msg = reader.deserialize(wire, "sensor_msgs/msg/Image")
        np.testing.assert_array_equal(decode_image(msg), raw)
        assert (msg.header.stamp.nanosec, msg.header.frame_id, msg.step) == (3, "c", W * 3 + 1)


# --------------------------------------------------------------------------- property test

ENCODING_NAMES = sorted(ENCODINGS) + ["8UC1", "MONO8", "bayer_rggb12", "junk", "", "rgb8\x00"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoding=st.sampled_from(ENCODING_NAMES), height=st.integers(0, 9), width=st.integers(0, 9),
       extra=st.integers(-3, 12), bigendian=st.integers(0, 2), data=st.binary(max_size=900),
       step_mode=st.sampled_from(["exact", "random"]), step_rand=st.integers(0, 100))
def test_random_images_decode_or_raise_decode_error(encoding, height, width, extra, bigendian, data, step_mode,
                                                    step_rand):
    spec = ENCODINGS.get(encoding.strip().lower())
    bpp = spec.bytes_per_pixel if spec else 1
    step = width * bpp + extra if step_mode == "exact" else step_rand
    msg = SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                          step=max(step, 0), data=data)
    try:
        out = decode_image(msg)
    except ImageDecodeError as exc:
        assert exc.reason in {"bad_step", "short_data", "unknown_encoding", "zero_size", "bad_size", "bad_field"}
        return
    assert spec is not None
    if spec.kind == "mono":
        assert out.shape == (height, width) and out.dtype == spec.dtype
    else:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8", "",
                                                           "16UC1; compressedDepth png", "32FC1; compressedDepth"]),
       prefix=st.sampled_from([b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]))
def test_random_compressed_bytes_raise_decode_error(data, fmt, prefix):
    try:
        out = decode_compressed(SimpleNamespace(format=fmt, data=prefix + data))
    except ImageDecodeError as exc:
        assert exc.reason in {"corrupt_compressed", "too_large", "unknown_encoding"}
        return
    assert out.ndim in (2, 3)


def test_max_pixels_constant():
    assert MAX_PIXELS == 100_000_000

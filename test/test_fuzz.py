"""Fuzzed input, property-based (hypothesis): nothing crashes, every bad input is accounted for.

Three layers, each with the real parts:

* the codec (``glue_ros.ros.image_codec``): random sensor_msgs/Image and CompressedImage messages —
  every encoding, sizes 0, 1x1 and declared giants (8000x8000 ... 2^32-1) carried by a few bytes
  (declared vs actual data length: nothing proportional to the declared size is ever allocated,
  measured as the process' peak resident memory), step shorter/longer than a row, truncated data,
  big-endian flags, odd field types, garbage / truncated / mutated JPEG and PNG (incl. headers
  declaring huge frames and corrupt chunk lengths). Only ``ImageDecodeError`` may escape, with a
  documented ``reason``; what decodes has the declared shape.
* CameraInfo → CameraModel: NaN, inf, zero and negative focal lengths, wrong-length D, unknown
  distortion models; never raises; a camera without ``problem()`` is usable by the geometry.
* the pipeline (``FrontEnd.process``, ORB + nn and SuperPoint + LightGlue with random weights): a
  random sequence of bad images (dtypes, shapes, NaN), good frames with fuzzed stamps (repeated,
  backwards, zero, negative, far future, gaps) and fuzzed cameras. Checked against a model of the
  contract: a rejected frame returns its status and leaves the pipeline state untouched; resets
  happen exactly when the contract says, with the reason; the next good frames are matched.
* the running node (own process, real DDS, ORB + nn, 160x120, reliable QoS on both sides): bursts
  of fuzzed Image / CompressedImage / CameraInfo messages, then good frames: the node is alive,
  ``rejected.<reason>`` in /diagnostics equals, reason by reason, what the codec and the front-end
  say about each message sent; CameraInfo rejections likewise; the next good frame is published.
  Fuzzed stamps (repeated, backwards, zero, negative, far future) are counted / reset as specified;
  a rejected message with a far-future stamp does not reset the keyframes of the next good frame.

Example counts are bounded (the file runs in well under 90 s on 2 cores); the examples are
derandomised (a fixed seed per test: every run, on every machine, tries the same examples, so a
failure reproduces) and the example database is off (nothing is written into the repository).
Nothing here asserts a duration: the cost of a hostile message is measured as peak memory, which
does not depend on the machine's speed or load (pytest-timeout catches hangs).
"""
from __future__ import annotations

import functools
import re
import struct
import time
import types
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import rosgraph as rg  # before any rclpy.init: isolates this process' DDS graph
from glue_ros.config import FrontEndConfig, PoseConfig
from glue_ros.frontend import Frame, FrontEnd
from glue_ros.geometry import estimate_relative_pose, normalize_points
from glue_ros.ros import image_codec as ic
from glue_ros.ros.camera_info import camera_from_info
from glue_ros.synthetic import render_sequence

_FUZZ = settings(deadline=None, database=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])


def fuzz(max_examples: int) -> settings:
    return settings(_FUZZ, max_examples=max_examples)

RAW_REASONS = {"bad_field", "unknown_encoding", "zero_size", "too_large", "bad_step", "bad_size", "short_data"}
COMPRESSED_REASONS = {"bad_field", "unknown_encoding", "corrupt_compressed", "too_large", "bad_size"}
MIB = 1 << 20
MAX_FUZZ_DATA = 1 << 20  # actual bytes carried by a fuzzed message (declared sizes go far beyond)


# =============================================================================== helpers


def _status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    """Reset the kernel's peak resident set mark (VmHWM); False where the kernel or a sandbox does
    not support it (the high-water mark would then be the whole session's)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    status = _status()
    return status["VmHWM"] <= status["VmRSS"] + 8 * MIB


def within(peak: int | None, limit: int) -> bool:
    """Peak memory (from measured()) below ``limit``; None = not measurable here, nothing to check."""
    return peak is None or peak < limit


def measured(fn):
    """(result or the exception raised, seconds, peak resident bytes above the resident set before,
    or None where the peak cannot be measured). ``seconds`` is for notes only: never asserted.

    The peak is the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs), so it
    sees OpenCV's C++ allocations too, not only Python/numpy ones."""
    supported = _reset_peak()
    before = _status()["VmRSS"]
    start = time.perf_counter()
    try:
        outcome = fn()
    except Exception as exc:  # the callers check which exceptions are allowed
        outcome = exc
    seconds = time.perf_counter() - start
    return outcome, seconds, max(_status()["VmHWM"] - before, 0) if supported else None


def _bytes_of(rng_seed: int, length: int) -> bytes:
    return np.random.default_rng(rng_seed).integers(0, 256, length, dtype=np.uint8).tobytes()


def _decode_raw(msg, bit_depth):
    image = ic.decode_image(msg)
    encoding = msg.encoding if isinstance(getattr(msg, "encoding", None), str) else ""
    return image, ic.to_gray_or_rgb_uint8(image, encoding, bit_depth=bit_depth)


def _decode_compressed(msg):
    image = ic.decode_compressed(msg)
    return image, ic.to_gray_or_rgb_uint8(image, "")


# =============================================================================== codec: sensor_msgs/Image


ENCODINGS = sorted(ic.ENCODINGS)
DIMS = st.one_of(st.integers(0, 40), st.sampled_from([0, 1, 2, 3, 17, 8000, 65535, 2 ** 31 - 1, 2 ** 32 - 1]))


@st.composite
def image_messages(draw, wire: bool = False):
    """A sensor_msgs/Image-shaped namespace: mostly plausible, often inconsistent, sometimes absurd.
    ``wire``: only what a sensor_msgs/Image can carry over DDS (a known encoding most of the time)."""
    odd = st.sampled_from(["", "16UC2", "32FC3", "64FC1", "bayer_rggb32", "jpeg", "MONO8", " rgb8 "])
    if wire:
        encoding = draw(st.one_of(st.sampled_from(ENCODINGS), st.sampled_from(ENCODINGS), odd))
    else:
        encoding = draw(st.one_of(
            st.sampled_from(ENCODINGS), st.sampled_from(ENCODINGS).map(str.upper),
            st.sampled_from(ENCODINGS).map(lambda e: f" {e}\t"), st.text(max_size=12), odd,
            st.sampled_from([None, 7, b"mono8"])))
    spec = ic.ENCODINGS.get(encoding.strip().lower()) if isinstance(encoding, str) else None
    bpp = spec.bytes_per_pixel if spec else draw(st.integers(1, 8))
    height, width = draw(DIMS), draw(DIMS)
    row = width * bpp
    step = draw(st.one_of(st.just(row), st.integers(row + 1, row + 17), st.integers(max(row - 7, 0), row),
                          st.just(0), st.sampled_from([1, 2 ** 28 + 1, 2 ** 31, 2 ** 32 - 1])))
    needed = max(height - 1, 0) * step + row
    length = draw(st.one_of(st.just(needed), st.just(needed - 1), st.just(height * step), st.integers(0, 64),
                            st.integers(needed - 9, needed + 9)))
    if not 0 <= length <= MAX_FUZZ_DATA:  # a declared giant carried by a few bytes
        length = draw(st.integers(0, 4096))
    raw = _bytes_of(draw(st.integers(0, 2 ** 32 - 1)), length)
    container = "bytes" if wire else draw(st.sampled_from(["bytes", "bytearray", "memoryview", "numpy", "numpy_u16",
                                                           "list", "none", "str", "strided"]))
    if container == "bytearray":
        data = bytearray(raw)
    elif container == "memoryview":
        data = memoryview(raw)
    elif container == "numpy":
        data = np.frombuffer(raw, np.uint8)
    elif container == "numpy_u16":
        data = np.frombuffer(raw[: len(raw) // 2 * 2], np.uint16)
    elif container == "list":
        data = list(raw[:4096])
    elif container == "none":
        data = None
    elif container == "str":
        data = "not bytes"
    elif container == "strided":
        data = np.frombuffer(raw, np.uint8)[::2]
    else:
        data = raw
    bigendian = draw(st.sampled_from([0, 1, 2, 255] if wire else [0, 1, 2, 255, True, False, b"\x01", -1, None, 1.5]))
    fields = dict(height=height, width=width, step=step, encoding=encoding, is_bigendian=bigendian, data=data)
    if wire:
        return types.SimpleNamespace(**fields)
    spoil = draw(st.sampled_from([None] * 6 + ["height", "width", "step", "is_bigendian", "data", "encoding"]))
    if spoil is not None:
        fields[spoil] = draw(st.sampled_from([-1, 1.5, "3", None, [1], 2 ** 70]))
    if draw(st.booleans()) and spoil is None:
        del fields[draw(st.sampled_from(sorted(fields)))]  # a missing field
    return types.SimpleNamespace(**fields)


@fuzz(400)
@given(msg=image_messages(), bit_depth=st.sampled_from([None, 8, 10, 12, 16]))
def test_codec_image_only_image_decode_error_escapes(msg, bit_depth):
    outcome, seconds, peak = measured(lambda: _decode_raw(msg, bit_depth))
    data = getattr(msg, "data", None)
    carried = len(data) * getattr(data, "itemsize", 1) if hasattr(data, "__len__") else 0
    note(f"{getattr(msg, 'encoding', '?')!r} {getattr(msg, 'width', '?')}x{getattr(msg, 'height', '?')} "
         f"step {getattr(msg, 'step', '?')} data {carried} B -> {outcome!r:.120} {seconds:.2f} s peak {peak} B")
    if isinstance(outcome, Exception):
        assert isinstance(outcome, ic.ImageDecodeError), repr(outcome)
        assert outcome.reason in RAW_REASONS and "\n" not in str(outcome), str(outcome)
    else:
        image, normalised = outcome
        assert (image.shape[0], image.shape[1]) == (msg.height, msg.width)
        assert normalised.dtype == np.uint8 and normalised.shape[:2] == image.shape[:2]
        assert normalised.ndim == 2 or normalised.shape[2] == 3
    # Nothing proportional to the *declared* size: at most a few copies of the bytes carried.
    assert within(peak, 16 * carried + 24 * MIB + 1), f"{peak} B peak for a message carrying {carried} bytes"


@pytest.mark.parametrize("encoding, width, height, step, length, reason", [
    ("rgb8", 8000, 8000, 24000, 100, "short_data"),  # declared 183 MiB, carries 100 bytes
    ("mono16", 8000, 8000, 16000, 0, "short_data"),
    ("rgb8", 8000, 8000, 3, 24000, "bad_step"),  # step shorter than a row
    ("rgb8", 2 ** 32 - 1, 2 ** 32 - 1, 0, 16, "too_large"),
    ("mono8", 100_000, 1001, 100_000, 16, "too_large"),  # just above 100 Mpixel
    ("mono8", 1, 1, 2 ** 31, 16, "too_large"),  # corrupt step
    ("bayer_rggb8", 0, 8000, 0, 0, "zero_size"),
    ("yuv422", 8001, 2, 16002, 32004, "bad_size"),
    ("mono8", 3, 3, 3, 8, "short_data"),  # truncated by one byte
])
def test_codec_declared_giants_refused_without_allocating(encoding, width, height, step, length, reason):
    msg = types.SimpleNamespace(height=height, width=width, step=step, encoding=encoding, is_bigendian=0,
                                data=bytes(length))
    outcome, seconds, peak = measured(lambda: ic.decode_image(msg))
    assert isinstance(outcome, ic.ImageDecodeError) and outcome.reason == reason, repr(outcome)
    assert within(peak, 8 * MIB), (peak, seconds)


def test_codec_tiny_and_padded_images_decode_exactly():
    """1x1 in every encoding, big-endian flags and padded / unpadded last rows decode to the pixels."""
    for key, spec in ic.ENCODINGS.items():
        width = 2 if spec.kind in ("uyvy", "yuyv") else 1
        row = width * spec.bytes_per_pixel
        for step, length in ((row, row), (row + 5, row), (row + 5, 2 * (row + 5))):
            msg = types.SimpleNamespace(height=2 if length > row else 1, width=width, step=step, encoding=key,
                                        is_bigendian=1, data=bytes(range(1, length + 1)))
            image = ic.decode_image(msg)
            assert image.shape[:2] == (msg.height, width), key
            assert ic.to_gray_or_rgb_uint8(image, key).dtype == np.uint8
    msg = types.SimpleNamespace(height=1, width=2, step=4, encoding="mono16", is_bigendian=1,
                                data=b"\x01\x02\x03\x04")
    assert ic.decode_image(msg).tolist() == [[0x0102, 0x0304]]
    msg.is_bigendian = 0
    assert ic.decode_image(msg).tolist() == [[0x0201, 0x0403]]


# =============================================================================== codec: CompressedImage


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_declaring(width: int, height: int, depth: int = 8, colour: int = 0, idat: bytes = b"") -> bytes:
    """A well-formed PNG (valid CRCs) whose IHDR declares width x height, with a small IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", idat or zlib.compress(bytes(4096))) + _png_chunk(b"IEND", b""))


def _set_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    i = 2
    while i + 4 <= len(out):
        marker, length = out[i + 1], (out[i + 2] << 8) | out[i + 3]
        if marker in (0xC0, 0xC1, 0xC2):
            out[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + length
    raise AssertionError("no SOF marker")


def _png_chunks(data: bytes) -> list[int]:
    """Byte offsets of the chunk headers of a PNG."""
    offsets, pos = [], 8
    while pos + 12 <= len(data):
        offsets.append(pos)
        length = struct.unpack_from(">I", data, pos)[0]
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + length
    return offsets


@functools.lru_cache(maxsize=1)
def compressed_bases() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (3, 3), 0)
    grey = colour[:, :, 0].copy()
    depth16 = rng.integers(1, 65535, (24, 32), dtype=np.uint16)
    enc = lambda ext, a, *p: cv2.imencode(ext, a, list(p))[1].tobytes()  # noqa: E731
    return {
        "jpeg": enc(".jpg", colour), "jpeg_grey": enc(".jpg", grey),
        "jpeg_progressive": enc(".jpg", colour, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "png": enc(".png", colour), "png_grey16": enc(".png", depth16),
        "png_rgba": enc(".png", np.dstack([colour, grey])),
        "depth": struct.pack("<iff", 0, 0.0, 0.0) + enc(".png", depth16),
    }


COMPRESSED_FORMATS = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "mono16; png compressed mono16", "",
                      "16UC1; compressedDepth png", "32FC1; compressedDepth", "32FC1; compressedDepth rvl", "tiff"]
# (width, height) a mutated header declares: under and over the 100 Mpixel limit, and absurd
HUGE = [(8000, 8000), (9000, 9000), (10000, 9999), (4000, 3000), (65535, 65535), (2 ** 31 - 1, 1),
        (1, 2 ** 32 - 1), (2 ** 32 - 1, 2 ** 32 - 1)]
MUTATIONS = ["none", "truncate", "flip", "flip", "garbage", "empty", "declare_huge", "declare_huge", "declare_zero",
             "chunk_length", "chunk_length", "signature_only", "tail_garbage"]


@st.composite
def compressed_messages(draw):
    name = draw(st.sampled_from(sorted(compressed_bases())))
    data = bytearray(compressed_bases()[name])
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    mutation = draw(st.sampled_from(MUTATIONS))
    offset = 12 if name == "depth" else 0
    body = bytes(data[offset:])
    if mutation == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mutation == "flip":
        for _ in range(draw(st.integers(1, 24))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
    elif mutation == "garbage":
        data = bytearray(_bytes_of(seed, draw(st.integers(1, 5000))))
    elif mutation == "empty":
        data = bytearray()
    elif mutation in ("declare_huge", "declare_zero"):
        width, height = draw(st.sampled_from(HUGE)) if mutation == "declare_huge" \
            else (draw(st.sampled_from([0, 1, 32])), 0)
        if body.startswith(b"\x89PNG"):
            width, height = min(width, 2 ** 31 - 1), min(height, 2 ** 31 - 1)
            new = _png_declaring(width, height, depth=16 if "16" in name or name == "depth" else 8)
        else:
            new = _set_jpeg_size(body, min(width, 65535), min(height, 65535))
        data = data[:offset] + bytearray(new)
    elif mutation == "chunk_length" and body.startswith(b"\x89PNG"):
        chunks = _png_chunks(body)
        idat = [p for p in chunks if body[p + 4:p + 8] == b"IDAT"]
        pos = offset + draw(st.one_of(st.sampled_from(idat), st.sampled_from(chunks)))
        data[pos:pos + 4] = struct.pack(">I", draw(st.one_of(st.integers(0, 2 ** 32 - 1), st.integers(0, 4096),
                                                             st.sampled_from([2 ** 31 - 1, 0xECFF0000, 2 ** 26]))))
    elif mutation == "signature_only":
        data = data[: offset + (8 if body.startswith(b"\x89PNG") else 2)]
    elif mutation == "tail_garbage":
        data += _bytes_of(seed, 100)
    fmt = draw(st.one_of(st.sampled_from(COMPRESSED_FORMATS), st.text(max_size=24), st.sampled_from([None, 3])))
    return types.SimpleNamespace(format=fmt, data=bytes(data)), f"{name}/{mutation}"


@fuzz(300)
@given(case=compressed_messages())
def test_codec_compressed_only_image_decode_error_escapes(case):
    msg, label = case
    outcome, seconds, peak = measured(lambda: _decode_compressed(msg))
    note(f"{label} format {msg.format!r} {len(msg.data)} B -> {outcome!r:.150} {seconds:.2f} s "
         f"peak {peak} B")
    if isinstance(outcome, Exception):
        assert isinstance(outcome, ic.ImageDecodeError), repr(outcome)
        assert outcome.reason in COMPRESSED_REASONS and "\n" not in str(outcome), str(outcome)
    else:
        image, normalised = outcome
        assert image.size <= ic.MAX_PIXELS * 3 and normalised.dtype == np.uint8
        assert normalised.ndim == 2 or normalised.shape[2] == 3
        if label.endswith("/none") and not str(msg.format).lower().count("compresseddepth"):
            assert image.shape[:2] == (24, 32)
    # A few KB of message never costs more than a few MB or a noticeable time, whatever it declares.
    assert within(peak, 64 * MIB), f"{label}: {peak} B peak"


def test_codec_png_with_corrupt_chunk_length_is_refused_cheaply():
    """Regression: OpenCV's PNG reader trusts chunk lengths; a 2 KB PNG whose IDAT length reads
    0xECFF0000 made cv2.imdecode allocate ~4 GB and spend 10-17 s before failing."""
    body = bytearray(compressed_bases()["png"])
    idat = next(p for p in _png_chunks(bytes(body)) if body[p + 4:p + 8] == b"IDAT")
    body[idat:idat + 4] = struct.pack(">I", 0xECFF0000)
    for fmt, prefix in (("png", b""), ("16UC1; compressedDepth png", bytes(12))):
        msg = types.SimpleNamespace(format=fmt, data=prefix + bytes(body))
        outcome, seconds, peak = measured(lambda: ic.decode_compressed(msg))
        assert isinstance(outcome, ic.ImageDecodeError) and outcome.reason == "corrupt_compressed", repr(outcome)
        assert "IDAT" in str(outcome)
        assert within(peak, 32 * MIB), (seconds, peak)


def test_codec_jpeg_declaring_more_than_its_bytes_hold_is_refused():
    """Regression: a 1 KB JPEG whose SOF declares 9000x9000 decoded (grey-filled) into a 243 MB
    frame (0.5 GB peak, 0.5-1.5 s); now refused before decoding. Real JPEGs pass: even a constant
    4000x3000 frame with optimised Huffman tables holds 255 pixels per byte, under the bound (512)."""
    small = _set_jpeg_size(compressed_bases()["jpeg"], 9000, 9000)
    outcome, seconds, peak = measured(lambda: ic.decode_compressed(types.SimpleNamespace(format="jpeg",
                                                                                         data=small)))
    assert isinstance(outcome, ic.ImageDecodeError) and outcome.reason == "corrupt_compressed", repr(outcome)
    assert within(peak, 32 * MIB), (peak, seconds)
    for shape, params in (((3000, 4000), [cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
                          ((480, 640, 3), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1]),
                          ((480, 640, 3), [])):
        flat = cv2.imencode(".jpg", np.zeros(shape, np.uint8), params)[1].tobytes()
        image = ic.decode_compressed(types.SimpleNamespace(format="jpeg", data=flat))
        assert image.shape == shape


def test_codec_png_bombs_refused_before_decoding():
    for width, height in ((100_000, 100_000), (20_000, 20_000), (2 ** 31 - 1, 1)):
        msg = types.SimpleNamespace(format="png", data=_png_declaring(width, height))
        outcome, seconds, peak = measured(lambda: ic.decode_compressed(msg))
        assert isinstance(outcome, ic.ImageDecodeError) and outcome.reason == "too_large", repr(outcome)
        assert within(peak, 16 * MIB), (peak, seconds)
    # 8000x8000 (64 Mpixel, under the limit) carried by ~100 bytes of IDAT: fails fast, small
    outcome, seconds, peak = measured(lambda: ic.decode_compressed(
        types.SimpleNamespace(format="png", data=_png_declaring(8000, 8000))))
    assert isinstance(outcome, ic.ImageDecodeError) and outcome.reason == "corrupt_compressed"
    assert within(peak, 96 * MIB), (peak, seconds)


# =============================================================================== CameraInfo


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -0.0, -500.0, 1e-300, 1e300, 500.0, float("nan"), float("inf")]))
GOOD_K = [200.0, 0.0, 79.5, 0.0, 200.0, 59.5, 0.0, 0.0, 1.0]
MODELS = ["plumb_bob", "rational_polynomial", "equidistant", "none", "", "fisheye", "kannala_brandt",
          "PLUMB_BOB", " plumb_bob ", "equidistant\n"]


@st.composite
def camera_infos(draw):
    k = list(GOOD_K)
    for index in draw(st.lists(st.integers(0, 8), max_size=4)):
        k[index] = draw(FLOATS)
    if draw(st.integers(0, 9)) == 0:
        k = k[: draw(st.integers(0, 8))] if draw(st.booleans()) else k + [1.0] * draw(st.integers(1, 3))
    model = draw(st.one_of(st.sampled_from(MODELS), st.text(max_size=12)))
    d = draw(st.one_of(st.lists(st.just(0.0), max_size=14), st.lists(FLOATS, max_size=14),
                       st.lists(st.floats(-0.5, 0.5), min_size=4, max_size=8)))
    size = draw(st.sampled_from([(160, 120), (0, 0), (-1, 5), (70000, 70000)]))
    return types.SimpleNamespace(k=k, d=d, distortion_model=model, width=size[0], height=size[1],
                                 header=types.SimpleNamespace(stamp=types.SimpleNamespace(sec=1, nanosec=0),
                                                              frame_id="camera"))


@functools.lru_cache(maxsize=1)
def _correspondences():
    rng = np.random.default_rng(2)
    p0 = rng.uniform([5, 5], [155, 115], (60, 2))
    return p0, p0 + rng.normal(0, 0.5, p0.shape) + [3.0, 1.0]


@fuzz(300)
@given(info=camera_infos())
def test_camera_info_never_raises_and_usable_cameras_work(info):
    camera = camera_from_info(info)
    problem = camera.problem()
    note(f"{camera!r} -> {problem}")
    assert problem is None or (isinstance(problem, str) and problem)
    p0, p1 = _correspondences()
    if problem is None:
        assert np.all(np.isfinite(camera.K)) and camera.fx > 0 and camera.fy > 0
        normalize_points(p0, camera)  # never raises; NaN rows allowed for absurd distortion
        pose = estimate_relative_pose(p0, p1, camera, camera, PoseConfig())
        assert isinstance(pose.valid, bool) and pose.inliers.shape == (len(p0),)
        if pose.valid:
            assert np.all(np.isfinite(pose.rotation)) and abs(np.linalg.norm(pose.translation) - 1) < 1e-6


# =============================================================================== pipeline


@functools.lru_cache(maxsize=1)
def sequence():
    return render_sequence(8, 160, 120, motion="sideways", speed=1.5, seed=4)


PERIOD_NS = 33_333_333
GAP_S = 2.0
BAD_REASONS = {"invalid_image", "image_too_small"}


def _bad_image(kind: str, rng: np.random.Generator):
    """(array or junk, the status FrontEnd must return)."""
    good = sequence().images[0]
    table = {
        "empty": (np.zeros((0, 0), np.uint8), "image_too_small"),
        "1x1": (np.zeros((1, 1), np.uint8), "image_too_small"),
        "1x1_rgb": (np.zeros((1, 1, 3), np.uint8), "image_too_small"),
        "thin": (np.zeros((15, 300), np.uint8), "image_too_small"),
        "rgba": (np.zeros((120, 160, 4), np.uint8), "invalid_image"),
        "one_channel": (np.zeros((120, 160, 1), np.uint8), "invalid_image"),
        "batch": (np.stack([good, good]), "invalid_image"),
        "vector": (np.zeros(19200, np.uint8), "invalid_image"),
        "bool": (rng.integers(0, 2, (120, 160)).astype(bool), "invalid_image"),
        "int64": (rng.integers(-9, 9, (120, 160)), "invalid_image"),
        "complex": (np.ones((120, 160), np.complex64), "invalid_image"),
        "object": (np.full((120, 160), None, object), "invalid_image"),
        "nan": (np.where(rng.random((120, 160)) < 0.01, np.nan, 0.5).astype(np.float32), "invalid_image"),
        "inf_rgb": (np.full((120, 160, 3), np.inf, np.float64), "invalid_image"),
        "beyond_f32": (np.full((120, 160), 1e300), "invalid_image"),
        "none": (None, "invalid_image"),
        "list": ([[0] * 160] * 120, "invalid_image"),
        "text": ("image", "invalid_image"),
    }
    return table[kind]


BAD_KINDS = sorted(["empty", "1x1", "1x1_rgb", "thin", "rgba", "one_channel", "batch", "vector", "bool", "int64",
                    "complex", "object", "nan", "inf_rgb", "beyond_f32", "none", "list", "text"])
STAMP_OPS = ["next", "next", "next", "repeat", "backwards", "zero", "negative", "far_future", "gap"]
GOOD_KINDS = ["seq", "seq", "seq", "uint16", "float", "other_size", "flat"]


@st.composite
def pipeline_events(draw):
    events = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            events.append(("bad", draw(st.sampled_from(BAD_KINDS)), draw(st.sampled_from(STAMP_OPS))))
        else:
            events.append(("good", draw(st.sampled_from(GOOD_KINDS)), draw(st.sampled_from(STAMP_OPS)),
                           draw(st.integers(0, 5)), draw(st.one_of(st.none(), st.just("good"), camera_infos()))))
    return events


def _good_image(kind: str, index: int):
    image = sequence().images[index]
    if kind == "uint16":
        return image.astype(np.uint16) * 257
    if kind == "float":
        return image.astype(np.float32) / 255.0
    if kind == "other_size":
        return cv2.resize(image, (200, 150))
    if kind == "flat":
        return np.full_like(image, 128)  # no features at all
    return image


def _stamp(op: str, last: int | None, clock: int) -> int:
    base = clock if last is None else last
    return {"next": base + PERIOD_NS, "repeat": base, "backwards": base - 10_000_000, "zero": 0,
            "negative": -5_000_000_000, "far_future": 2 ** 62, "gap": base + int((GAP_S + 1) * 1e9)}[op]


def _state(fe: FrontEnd):
    return ([kf.id for kf in fe.buffer], fe._last_stamp_ns, fe.stats.frames, fe.tracks.next_id, len(fe.tracks),
            fe.stats.keyframes, fe.stats.resets)


def run_pipeline_model(fe: FrontEnd, events, check_matches: bool, arrivals: bool = False) -> None:
    """Feed ``events`` and check every result against the contract (see the module docstring).

    ``arrivals``: pass ``previous_input_stamp_ns`` as the node does (the stamp of whatever input came
    before, rejected or not): it may only shorten the measured camera gap, never cause a reset."""
    rng = np.random.default_rng(0)
    seq = sequence()
    clock = 1_000_000_000_000
    previous_input = None  # stamp of the previous event, whatever became of it
    last_stamp = None  # of the last accepted frame
    last_size = None  # of the newest keyframe (= of the last accepted frame)
    last_accepted_seq_like = False
    rejected = 0
    for event in events:
        clock += PERIOD_NS
        before = _state(fe)
        if event[0] == "bad":
            _, kind, op = event
            image, expected = _bad_image(kind, rng)
            stamp = _stamp(op, last_stamp, clock)
            result = fe.process(Frame(image, stamp, "camera", seq.camera),
                                previous_input_stamp_ns=previous_input if arrivals else None)
            previous_input = stamp
            assert result.status == expected, (kind, result.status)
            assert _state(fe) == before, f"rejected frame {kind} changed the pipeline state"
            assert len(result.keypoints) == 0 and result.matches == [] and not result.keyframe.is_keyframe
            rejected += 1
            continue
        _, kind, op, index, cam = event
        image = _good_image(kind, index)
        camera = seq.camera if cam == "good" else (camera_from_info(cam) if cam is not None else None)
        stamp = _stamp(op, last_stamp, clock)
        size = (image.shape[1], image.shape[0])
        result = fe.process(Frame(image, stamp, "camera", camera),
                            previous_input_stamp_ns=previous_input if arrivals else None)
        arrived_before, previous_input = previous_input, stamp
        if last_stamp is not None and stamp == last_stamp:
            assert result.status == "repeated_stamp" and _state(fe) == before
            rejected += 1
            continue
        assert result.status in ("ok", "no_features"), result.status
        expected_reset = ""
        if last_size is not None and size != last_size:
            expected_reset = "image_size_changed"
        elif last_stamp is not None and stamp < last_stamp:
            expected_reset = "stamp_backwards"
        elif last_stamp is not None:
            gap_reference = last_stamp
            if arrivals and arrived_before is not None and last_stamp < arrived_before <= stamp:
                gap_reference = arrived_before
            if stamp - gap_reference > GAP_S * 1e9:
                expected_reset = "stamp_gap"
        assert result.reset_reason == expected_reset, (op, kind, result.reset_reason)
        if expected_reset or last_stamp is None:
            assert result.matches == [] and result.keyframe.is_keyframe
            assert result.keyframe.reason == (f"reset:{expected_reset}" if expected_reset else "first_frame")
        assert result.stamp_ns == stamp and result.image_size == size
        assert len(result.track_ids) == len(result.keypoints) == len(np.unique(result.track_ids))
        assert np.all(np.isfinite(result.track_velocities))
        if camera is None or camera.problem():
            assert result.pose is None or not result.pose.valid
        if kind == "flat" and check_matches:  # ORB finds nothing on a constant image
            assert result.status == "no_features"
        last_stamp, last_size = stamp, size
        last_accepted_seq_like = kind in ("seq", "uint16", "float")
    assert sum(fe.stats.rejected.values()) == rejected

    # Then good frames: processed normally, matched against the keyframe buffer.
    for n in range(2):
        stamp = (last_stamp if last_stamp is not None else clock) + PERIOD_NS
        result = fe.process(Frame(seq.images[6 + n], stamp, "camera", seq.camera))
        assert result.status == "ok"
        continued = n == 1 or (last_accepted_seq_like and result.reset_reason == "")
        if continued and check_matches:
            assert result.matches and len(result.matches[0]) >= 20, \
                f"good frame {n} after the fuzz: {len(result.matches[0]) if result.matches else 0} matches"
        elif continued:
            assert result.matches, "matched against the keyframe buffer"
        last_stamp = stamp


def _classical_frontend() -> FrontEnd:
    flat = FrontEndConfig().to_flat()
    flat.update({"device": "cpu", "extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 300,
                 "keyframes.reset_gap_s": GAP_S})
    return FrontEnd(FrontEndConfig.from_flat(flat), on_reset=lambda reason: None)


@fuzz(60)
@given(events=pipeline_events(), arrivals=st.booleans())
def test_pipeline_never_raises_rejects_cleanly_and_recovers(events, arrivals):
    note(repr([e[:4] for e in events]))
    run_pipeline_model(_classical_frontend(), events, check_matches=True, arrivals=arrivals)


@pytest.fixture(scope="module")
def learned_frontend_factory(checkpoint_dirs):
    flat = FrontEndConfig().to_flat()
    flat.update({"device": "cpu", "extractor.type": "superpoint", "matcher.type": "lightglue",
                 "extractor.weights": str(checkpoint_dirs["superpoint"]),
                 "matcher.weights": str(checkpoint_dirs["lightglue"]), "extractor.max_keypoints": 128,
                 "keyframes.reset_gap_s": GAP_S})
    first = FrontEnd(FrontEndConfig.from_flat(flat), on_reset=lambda reason: None)

    def make() -> FrontEnd:  # shares the loaded models: a fresh pipeline state per example
        return FrontEnd(first.config, extractor=first.extractor, matcher=first.matcher, on_reset=lambda r: None)

    return make


@fuzz(5)
@given(events=pipeline_events())
def test_pipeline_learned_models_never_raise(learned_frontend_factory, events):
    """SuperPoint + LightGlue (random weights: matches are not meaningful, so only counted)."""
    note(repr([e[:4] for e in events]))
    run_pipeline_model(learned_frontend_factory(), events, check_matches=False)


# =============================================================================== the running node


NODE_PARAMS = {"device": "cpu", "extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 300,
               "diagnostics.period_s": 0.1, "input.qos": "reliable", "input.queue_size": 100,
               "keyframes.reset_gap_s": GAP_S}
# Messages published in one burst: reliable input keeps every sample (KEEP_ALL) and the node's own queue
# (input.queue_size 100) holds them all, so nothing may be dropped anywhere and every one is accounted for.
CHUNK = 64


class ReliableTopics(rg.MatcherTopics):
    """MatcherTopics with reliable camera publishers (the node runs with input.qos: reliable; a
    best-effort writer does not match a reliable reader)."""

    def __init__(self, graph: rg.Graph, namespace: str, compressed: bool = False):
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        super().__init__(graph, namespace, compressed=compressed)
        graph.node.destroy_publisher(self.image_pub)
        graph.node.destroy_publisher(self.info_pub)
        image_topic = f"{namespace}/image" + ("/compressed" if compressed else "")
        self.image_pub = graph.publisher(image_topic, CompressedImage if compressed else Image, sensor_data=False,
                                         depth=1000)
        self.info_pub = graph.publisher(f"{namespace}/camera_info", CameraInfo, sensor_data=False, depth=1000)

    def latest(self) -> dict:
        return self.wait_for_diagnostics(lambda d: True, 5.0)

    def settled(self, timeout: float = 20.0) -> dict:
        """Diagnostics once nothing is pending and two reports agree on the input count."""
        seen: list[int] = []

        def idle(d):
            if int(d["frames_pending"]):
                return False
            seen.append(int(d["frames_received"]) + int(d["camera_info_received"]))
            return len(seen) >= 2 and seen[-1] == seen[-2]

        return self.wait_for_diagnostics(idle, timeout, "idle node diagnostics")

    def send_paced(self, messages, key: str, publisher) -> None:
        """Publish in bursts of CHUNK, each once the node has taken the previous one (counter ``key``)."""
        start = int(self.latest()[key])
        for i in range(0, len(messages), CHUNK):
            for msg in messages[i:i + CHUNK]:
                publisher.publish(msg)
            want = start + min(i + CHUNK, len(messages))
            self.wait_for_diagnostics(lambda d: int(d[key]) >= want, 15.0, f"{key} >= {want}")


@pytest.fixture(scope="module")
def fuzz_graph():
    with rg.Graph("test_fuzz") as graph:
        yield graph


@pytest.fixture(scope="module")
def fuzz_nodes(fuzz_graph, tmp_path_factory):
    """Two matcher processes started together: raw Image input and CompressedImage input."""
    tmp = tmp_path_factory.mktemp("fuzz_nodes")
    procs = {}
    try:
        procs["raw"] = rg.start_node(namespace="/f_raw", params=NODE_PARAMS, log_dir=tmp, label="raw")
        procs["compressed"] = rg.start_node(namespace="/f_cmp", params=dict(NODE_PARAMS, **{"input.compressed": True}),
                                            log_dir=tmp, label="compressed")
        topics = {"raw": ReliableTopics(fuzz_graph, "/f_raw"),
                  "compressed": ReliableTopics(fuzz_graph, "/f_cmp", compressed=True)}
        for kind in procs:
            topics[kind].wait_ready(procs[kind])
        yield procs, topics
    finally:
        for proc in procs.values():
            proc.close()


_node_clock = [0]


def node_stamps(count: int) -> list[int]:
    """Wall-clock stamps, 1 ms apart, always after all earlier ones (no resets between fuzz rounds)."""
    start = max(time.time_ns(), _node_clock[0] + 1_000_000)
    _node_clock[0] = start + (count - 1) * 1_000_000
    return [start + i * 1_000_000 for i in range(count)]


def _rclpy_image(ns: types.SimpleNamespace, stamp: int):
    """A fuzzed namespace (``image_messages(wire=True)``) as a sendable sensor_msgs/Image."""
    from sensor_msgs.msg import Image

    from glue_ros.ros.msg_types import RclpyTypes

    msg = Image(height=ns.height, width=ns.width, step=ns.step, is_bigendian=ns.is_bigendian, data=ns.data)
    msg.header = RclpyTypes().header(stamp, "camera")
    msg.encoding = ns.encoding if ns.encoding.isprintable() and ns.encoding.isascii() else "weird"
    return msg


def _rclpy_compressed(ns: types.SimpleNamespace, stamp: int):
    from sensor_msgs.msg import CompressedImage

    from glue_ros.ros.msg_types import RclpyTypes

    fmt = ns.format if isinstance(ns.format, str) and ns.format.isprintable() and ns.format.isascii() else "jpeg"
    return CompressedImage(header=RclpyTypes().header(stamp, "camera"), format=fmt, data=bytes(ns.data))


def predict(msg, compressed: bool) -> str:
    """What the node must do with ``msg``: 'processed' or the rejected.<reason> it must count —
    decided here by the same codec and front-end checks, run in this process."""
    from glue_ros.frontend import image_problem

    try:
        image = ic.decode_compressed(msg) if compressed else ic.decode_image(msg)
        image = ic.to_gray_or_rgb_uint8(image, getattr(msg, "encoding", ""))
    except ic.ImageDecodeError as exc:
        return exc.reason
    return image_problem(image) or "processed"


def _deltas(before: dict, after: dict) -> dict[str, int]:
    keys = {k for k in set(before) | set(after) if k.startswith("rejected.")}
    return {k[len("rejected."):]: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys
            if int(after.get(k, 0)) != int(before.get(k, 0))}


def _fuzz_round(procs, topics, kind: str, fuzzed: list, camera_infos_sent: list = ()) -> None:
    from glue_ros.ros.messages import decode_matches

    proc, t = procs[kind], topics[kind]
    seq = sequence()
    compressed = kind == "compressed"
    before = t.settled()
    stamps = node_stamps(len(fuzzed) + 2)
    messages = [(_rclpy_compressed if compressed else _rclpy_image)(m, s) for m, s in zip(fuzzed, stamps)]
    expected: dict[str, int] = {}
    for msg in messages:
        outcome = predict(msg, compressed)
        expected[outcome] = expected.get(outcome, 0) + 1
    processed = expected.pop("processed", 0)
    note(f"{kind}: {len(messages)} fuzzed messages, expected {expected}, {processed} valid")
    t.send_paced(messages, "frames_received", t.image_pub)
    if camera_infos_sent:
        t.send_paced(list(camera_infos_sent), "camera_info_received", t.info_pub)

    # then good frames: the first is published (maybe after a reset), the second is matched
    info = rg.camera_info_msg(seq.camera, stamps[-2])
    first = decode_matches(t.publish_and_wait(seq.images[6], stamps[-2], camera_info=info, timeout=20.0))
    assert first.stamp_ns == stamps[-2]
    second = decode_matches(t.publish_and_wait(seq.images[7], stamps[-1], seq.camera, timeout=20.0))
    assert len(second) >= 20, f"good frame after the fuzz: {len(second)} matches"

    after = t.settled()
    assert proc.alive(), proc.output()[-3000:]
    assert _deltas(before, after) == expected, (_deltas(before, after), expected)
    assert int(after["frames_received"]) - int(before["frames_received"]) == len(messages) + 2
    assert int(after["frames_processed"]) - int(before["frames_processed"]) == processed + 2
    assert int(after["frames_dropped_queue_total"]) == int(before["frames_dropped_queue_total"])
    assert int(after["frames_lost_transport_total"]) == 0
    assert int(after["errors"]) == 0 and "Traceback" not in proc.output()
    if camera_infos_sent:
        rejected = sum(camera_from_info(m).problem() is not None for m in camera_infos_sent)
        assert int(after["camera_info_received"]) - int(before["camera_info_received"]) == len(camera_infos_sent) + 2
        assert int(after["camera_info_rejected"]) - int(before["camera_info_rejected"]) == rejected


def _rclpy_camera_info(ns: types.SimpleNamespace, stamp: int):
    from sensor_msgs.msg import CameraInfo

    from glue_ros.ros.msg_types import RclpyTypes

    msg = CameraInfo()
    msg.header = RclpyTypes().header(stamp, "camera")
    k = (list(ns.k) + [float("nan")] * 9)[:9]  # a fixed float64[9] on the wire
    msg.k = [float(v) for v in k]
    msg.d = [float(v) for v in ns.d]
    model = ns.distortion_model
    msg.distortion_model = model if model.isprintable() and model.isascii() else "fisheye"
    msg.width, msg.height = max(ns.width, 0), max(ns.height, 0)
    return msg


NODE_FUZZ = settings(_FUZZ, max_examples=3, phases=[p for p in settings.default.phases if p.name != "shrink"])


@NODE_FUZZ
@given(fuzzed=st.lists(image_messages(wire=True), min_size=10, max_size=24),
       infos=st.lists(camera_infos(), min_size=4, max_size=12))
def test_node_counts_every_fuzzed_image_and_camera_info(fuzz_nodes, fuzzed, infos):
    procs, topics = fuzz_nodes
    stamps = node_stamps(len(infos))
    _fuzz_round(procs, topics, "raw", fuzzed, [_rclpy_camera_info(i, s) for i, s in zip(infos, stamps)])


@NODE_FUZZ
@given(fuzzed=st.lists(compressed_messages().map(lambda case: case[0]), min_size=10, max_size=24))
def test_node_counts_every_fuzzed_compressed_image(fuzz_nodes, fuzzed):
    procs, topics = fuzz_nodes
    _fuzz_round(procs, topics, "compressed", fuzzed)


def test_node_fuzzed_stamps(fuzz_nodes):
    """Repeated → rejected.repeated_stamp; zero / negative / backwards → reset (stamp_backwards);
    far future → reset (stamp_gap); each reset frame starts a new keyframe (no matches), the next
    frame is matched against it."""
    from builtin_interfaces.msg import Time

    from glue_ros.ros.messages import decode_matches

    procs, topics = fuzz_nodes
    t = topics["raw"]
    seq = sequence()
    now = node_stamps(1)[0]  # (maybe a stamp_gap reset after the previous test: counted before `before`)

    def frame(index: int, stamp: int | Time):
        msg = rg.image_msg(seq.images[index], 0)
        if isinstance(stamp, Time):
            msg.header.stamp = stamp
        else:
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return msg

    def publish(index: int, stamp) -> object:
        msg = frame(index, stamp)
        t.info_pub.publish(rg.camera_info_msg(seq.camera, rg.stamp_of(msg)))
        return decode_matches(t.publish_and_wait(msg, timeout=20.0))

    assert publish(0, now).stamp_ns == now
    assert len(publish(1, now + PERIOD_NS)) >= 20
    before = t.settled()
    t.image_pub.publish(frame(2, now + PERIOD_NS))  # repeated stamp
    t.wait_for_diagnostics(lambda d: int(d.get("rejected.repeated_stamp", 0)) ==
                           int(before.get("rejected.repeated_stamp", 0)) + 1, 10.0, "repeated stamp counted")
    cases = [("zero", Time(sec=0, nanosec=0)), ("negative", Time(sec=-5, nanosec=0)),
             ("far_future", Time(sec=2 ** 31 - 2, nanosec=999_999_999)), ("back_to_now", now + 2 * PERIOD_NS)]
    for n, (label, stamp) in enumerate(cases):
        m = publish(2 + n, stamp)
        assert len(m) == 0, f"{label}: a reset frame has no matches"
        base = rg.stamp_of(frame(2 + n, stamp))
        follow = publish(3 + n, base + PERIOD_NS)  # the next frame is matched against the reset keyframe
        assert len(follow) >= 20 and set(follow.keyframe_stamp_ns.tolist()) == {base}, label
        t.wait_for_diagnostics(lambda d: int(d["resets"]) == int(before["resets"]) + n + 1, 10.0, f"reset {label}")
    # A rejected input stamped in the far future leaves no trace: the next frame is not "backwards".
    junk = rg.image_msg(np.zeros((8, 8), np.uint8), 0, encoding="mono8")
    junk.header.stamp = Time(sec=2 ** 31 - 2, nanosec=0)
    t.image_pub.publish(junk)
    t.wait_for_diagnostics(lambda d: int(d.get("rejected.image_too_small", 0)) ==
                           int(before.get("rejected.image_too_small", 0)) + 1, 10.0, "junk rejected")
    m = publish(7, now + 4 * PERIOD_NS)
    assert len(m) >= 20 and set(m.keyframe_stamp_ns.tolist()) <= {now + 2 * PERIOD_NS, now + 3 * PERIOD_NS}
    _node_clock[0] = max(_node_clock[0], now + 4 * PERIOD_NS)
    after = t.settled()
    assert int(after["resets"]) - int(before["resets"]) == len(cases)
    assert _deltas(before, after) == {"repeated_stamp": 1, "image_too_small": 1}
    assert int(after["errors"]) == 0 and procs["raw"].alive()
    log = procs["raw"].output()
    assert log.count("keyframe buffer reset: stamp_backwards") >= 3 and "keyframe buffer reset: stamp_gap" in log


def test_node_reliable_burst_is_not_silently_lost(fuzz_nodes):
    """Reliable input: a burst that outruns the executor is queued by DDS (KEEP_ALL), not overwritten
    unseen; every frame is either received (and then processed or counted as dropped) or reported lost."""
    procs, topics = fuzz_nodes
    t = topics["raw"]
    before = t.settled()
    stamps = node_stamps(60)
    tiny = np.zeros((8, 8), np.uint8)
    for stamp in stamps:  # one burst, faster than any executor takes them
        t.image_pub.publish(rg.image_msg(tiny, stamp, encoding="mono8"))

    def accounted(d) -> int:
        return (int(d["frames_received"]) - int(before["frames_received"])
                + int(d["frames_lost_transport_total"]) - int(before["frames_lost_transport_total"]))

    # Reliable delivery repairs gaps after the writer's next heartbeat (Fast DDS: up to seconds), so
    # wait for the count rather than for two quiet reports; a sample lost unseen never arrives.
    after = t.wait_for_diagnostics(lambda d: accounted(d) >= len(stamps), 30.0, "every burst frame accounted for")
    assert accounted(after) == len(stamps)

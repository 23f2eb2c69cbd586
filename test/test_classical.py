"""Classical SIFT/ORB + nearest-neighbour baseline, end to end on synthetic sequences."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glue_ros.config import ExtractorConfig, MatcherConfig, PoseConfig
from glue_ros.evaluation import T_0to1_from_pose, match_precision
from glue_ros.features import Features, PairMatches
from glue_ros.geometry import estimate_relative_pose, rotation_angle_deg, translation_angle_deg
from glue_ros.classical import ClassicalExtractor, NearestNeighborMatcher
from glue_ros.synthetic import render_sequence

FRAMES = (0, 10, 20)


@pytest.fixture(scope="module")
def sequences():
    return {motion: render_sequence(21, motion=motion, frames=FRAMES) for motion in ("forward", "sideways", "rotation")}


@pytest.fixture(scope="module")
def features(sequences):
    """(motion, kind) -> features of FRAMES, extracted once."""
    out = {}
    for kind in ("sift", "orb"):
        extractor = ClassicalExtractor(kind, 1024)
        for motion, seq in sequences.items():
            out[motion, kind] = extractor.extract(seq.images)  # frames FRAMES
    return out


def matcher_for(kind):
    return NearestNeighborMatcher(0.8 if kind == "sift" else 0.9)


# --------------------------------------------------------------------------- extractor


@pytest.mark.parametrize("kind, dim, dtype", [("sift", 128, torch.float32), ("orb", 32, torch.uint8)])
def test_extract_contract(sequences, kind, dim, dtype):
    image = sequences["forward"].images[0]
    extractor = ClassicalExtractor(kind, 500)
    (f,) = extractor.extract(image)
    assert isinstance(f, Features) and f.image_size == (640, 480)
    assert 400 <= len(f) <= 500
    assert f.keypoints.dtype == torch.float32 and f.keypoints.shape == (len(f), 2)
    assert f.scores.dtype == torch.float32 and torch.all(f.scores[:-1] >= f.scores[1:])
    assert f.descriptors.dtype == dtype and f.descriptors.shape == (len(f), dim)
    kp = f.keypoints_numpy()
    assert kp.min() >= 0 and kp[:, 0].max() <= 639 and kp[:, 1].max() <= 479
    if kind == "sift":  # RootSIFT: unit L2 norm
        np.testing.assert_allclose(f.descriptors.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert extractor.features == kind


def test_extract_inputs_and_counters(sequences):
    image = sequences["sideways"].images[0]
    extractor = ClassicalExtractor("orb", 300)
    gray = (0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2] + 0.5).astype(np.uint8)
    results = extractor.extract([image, image.astype(np.float32) / 255.0, torch.from_numpy(image)])
    assert extractor.calls == 1 and extractor.images_processed == 3
    for f in results[1:]:
        assert torch.allclose(f.keypoints, results[0].keypoints)
    batch = extractor.extract(np.stack([image, image, image]))  # N×H×W×3
    assert len(batch) == 3 and extractor.calls == 2 and extractor.images_processed == 6
    (fg,) = extractor.extract(gray)
    assert abs(len(fg) - len(results[0])) <= 5
    unlimited = ClassicalExtractor("sift", -1).extract(image)[0]
    assert len(unlimited) > 1024


def test_extract_border_and_resize(sequences):
    image = sequences["forward"].images[0]
    f = ClassicalExtractor("sift", 1024, border=20).extract(image)[0]
    kp = f.keypoints_numpy()
    assert kp.min() >= 20 and kp[:, 0].max() <= 619 and kp[:, 1].max() <= 459
    small = ClassicalExtractor("sift", 1024, resize_max=320).extract(image)[0]
    assert small.image_size == (640, 480) and small.keypoints_numpy()[:, 0].max() > 400  # back in input pixels
    from_cfg = ClassicalExtractor.from_config(ExtractorConfig(type="orb", max_keypoints=100))
    assert from_cfg.kind == "orb" and from_cfg.max_keypoints == 100


@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_extract_degenerate_images(kind):
    extractor = ClassicalExtractor(kind)
    dim, dtype = (128, torch.float32) if kind == "sift" else (32, torch.uint8)
    for image in (np.full((480, 640, 3), 128, np.uint8), np.zeros((480, 640), np.float32),
                  np.zeros((0, 0), np.uint8), np.zeros((4, 4), np.uint8)):
        (f,) = extractor.extract(image)
        assert len(f) == 0 and f.descriptors.shape == (0, dim) and f.descriptors.dtype == dtype
        assert f.image_size == (image.shape[1], image.shape[0])
    with pytest.raises(ValueError):
        ClassicalExtractor("surf")


# --------------------------------------------------------------------------- matcher


def distances(d0, d1, metric):
    if metric == "hamming":
        bits0, bits1 = np.unpackbits(d0, axis=1).astype(int), np.unpackbits(d1, axis=1).astype(int)
        return (bits0[:, None, :] != bits1[None]).sum(-1).astype(float)
    return np.linalg.norm(d0[:, None, :].astype(float) - d1[None], axis=-1)


@pytest.mark.parametrize("metric", ["l2", "hamming"])
@pytest.mark.parametrize("ratio", [0.0, 0.9])
def test_matcher_equals_brute_force(metric, ratio):
    rng = np.random.default_rng(1)
    if metric == "hamming":
        d0 = rng.integers(0, 256, (60, 32), dtype=np.uint8)
        d1 = d0[rng.permutation(60)[:50]].copy()
        d1[:, :2] ^= rng.integers(0, 256, (50, 2), dtype=np.uint8)  # perturb a few bits
        d1 = np.concatenate([d1, rng.integers(0, 256, (20, 32), dtype=np.uint8)])
    else:
        d0 = rng.normal(size=(60, 16)).astype(np.float32)
        d1 = np.concatenate([d0[rng.permutation(60)[:50]] + rng.normal(0, 0.3, (50, 16)),
                             rng.normal(size=(20, 16))]).astype(np.float32)

    def feats(d):
        return Features(torch.zeros(len(d), 2), torch.zeros(len(d)), torch.from_numpy(d), (100, 100))

    matcher = NearestNeighborMatcher(ratio)
    (m,) = matcher.match([feats(d0)], [feats(d1)])
    dist = distances(d0, d1, metric)
    # Every match is a mutual nearest neighbour passing the ratio test (ties allowed: Hamming
    # distances are integers and the tie-break order is unspecified)...
    assert len(m) > 10 and len(np.unique(m.matches[:, 0])) == len(m) == len(np.unique(m.matches[:, 1]))
    for i, j in m.matches:
        assert dist[i, j] == dist[i].min() == dist[:, j].min()
        if ratio:
            assert dist[i, j] < ratio * np.sort(dist[i])[1] + 1e-4
    # ...and every unambiguous brute-force match is found.
    found = set(map(tuple, m.matches.tolist()))
    for i in range(len(d0)):
        order = np.argsort(dist[i])
        j = order[0]
        unique = dist[i, j] < dist[i, order[1]] and np.sum(dist[:, j] == dist[i, j]) == 1
        if unique and np.argmin(dist[:, j]) == i and (not ratio or dist[i, j] < ratio * dist[i, order[1]] - 1e-4):
            assert (i, j) in found
    assert m.matches.dtype == np.int64 and m.scores.dtype == np.float32
    assert np.all((m.scores >= 0) & (m.scores <= 1)) and m.stop_layer == -1
    if ratio:
        assert np.all(m.scores > 1 - ratio - 1e-6)


def test_matcher_edge_cases(features):
    f = features["forward", "sift"][0]
    matcher = NearestNeighborMatcher(0.8)
    (same,) = matcher.match([f], [f])
    # Identical images: every keypoint matches itself (except exact duplicates from SIFT orientations).
    assert np.mean(same.matches[:, 0] == same.matches[:, 1]) == 1.0 and len(same) > 0.8 * len(f)
    empty = Features.empty((640, 480), 128)
    results = matcher.match([empty, f, empty], [f, empty, empty])
    assert all(isinstance(r, PairMatches) and len(r) == 0 and r.matches.shape == (0, 2) for r in results)
    one = Features(f.keypoints[:1], f.scores[:1], f.descriptors[:1], f.image_size)
    (m,) = matcher.match([f], [one])
    assert len(m) == 1 and m.scores[0] == 1.0  # no second neighbour
    with pytest.raises(ValueError):
        matcher.match([f, f], [f])
    with pytest.raises(ValueError):
        matcher.match([f], [features["forward", "orb"][0]])
    assert matcher.calls == 3 and matcher.pairs_processed == 5 and matcher.expected_features is None
    assert NearestNeighborMatcher.from_config(MatcherConfig(ratio_test=0.0)).ratio_test == 0.0
    loose = NearestNeighborMatcher(0.0).match([f], [features["forward", "sift"][1]])[0]
    strict = NearestNeighborMatcher(0.8).match([f], [features["forward", "sift"][1]])[0]
    assert len(loose) > len(strict)


def test_matcher_full_size_recovers_a_permutation():
    """A full frame's worth (1024 x 1024 RootSIFT-sized descriptors): a permuted, slightly perturbed
    copy is matched back exactly. (Speed is measured by bench/bench_backends.py, not asserted here.)"""
    rng = torch.Generator().manual_seed(0)
    d0 = torch.nn.functional.normalize(torch.rand(1024, 128, generator=rng), dim=1)
    perm = torch.randperm(1024, generator=rng)
    d1 = torch.nn.functional.normalize(d0[perm] + 1e-3 * torch.randn(1024, 128, generator=rng), dim=1)
    f0 = Features(torch.zeros(1024, 2), torch.zeros(1024), d0, (640, 480))
    f1 = Features(torch.zeros(1024, 2), torch.zeros(1024), d1, (640, 480))
    (m,) = NearestNeighborMatcher(0.8).match([f0], [f1])
    assert set(map(tuple, m.matches.tolist())) == {(int(i), j) for j, i in enumerate(perm)}


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("kind", ["sift", "orb"])
@pytest.mark.parametrize("motion", ["forward", "sideways"])
def test_pose_accuracy_on_synthetic(sequences, features, kind, motion):
    seq = sequences[motion]
    f0, *others = features[motion, kind]
    matcher = matcher_for(kind)
    rot_errors, trans_errors = [], []
    for frame, f1, m in zip(FRAMES[1:], others, matcher.match([f0] * len(others), others)):
        k0 = f0.keypoints_numpy()[m.matches[:, 0]]
        k1 = f1.keypoints_numpy()[m.matches[:, 1]]
        pose = estimate_relative_pose(k0, k1, seq.camera, seq.camera, PoseConfig())
        R_gt, t_gt = seq.relative_pose(0, FRAMES.index(frame))
        assert pose.valid, pose.reason
        assert pose.num_inliers > 150
        rot_errors.append(rotation_angle_deg(pose.rotation, R_gt))
        trans_errors.append(translation_angle_deg(pose.translation, t_gt))
        # SuperGlue's precision metric: most matches are geometrically correct.
        precision, _, _ = match_precision(k0, k1, T_0to1_from_pose(R_gt, t_gt), seq.camera.K, seq.camera.K)
        assert precision > (0.9 if kind == "sift" else 0.8)
    assert np.median(rot_errors) < 0.5 and max(rot_errors) < 1.0
    assert np.median(trans_errors) < 2.0 and max(trans_errors) < 4.0


@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_pure_rotation_on_synthetic(sequences, features, kind):
    """Rotation about the camera centre: flagged pure_rotation (valid=False, rotation_only=True,
    rotation_valid=True) with an accurate rotation."""
    seq = sequences["rotation"]
    f0, *others = features["rotation", kind]
    for frame, f1, m in zip(FRAMES[1:], others, matcher_for(kind).match([f0] * len(others), others)):
        k0 = f0.keypoints_numpy()[m.matches[:, 0]]
        k1 = f1.keypoints_numpy()[m.matches[:, 1]]
        pose = estimate_relative_pose(k0, k1, seq.camera, seq.camera)
        R_gt, _ = seq.relative_pose(0, FRAMES.index(frame))
        assert pose.reason == "pure_rotation" and not pose.valid
        assert pose.rotation_only and pose.rotation_valid
        assert rotation_angle_deg(pose.rotation, R_gt) < 0.5
        assert pose.parallax_px > 20  # large image motion, yet no translation

"""Evaluation metrics (SuperGlue protocol) and sequence evaluation."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from glue_ros.evaluation import (PairSpec, T_0to1_from_pose, epipolar_error, evaluate_sequence, load_pair,
                                 match_precision, matching_score, pose_auc, pose_error, pose_from_T_0to1,
                                 read_pairs_file, rotate_pair)
from glue_ros.geometry import so3_exp
from glue_ros.results import RelativePose
from glue_ros.synthetic import camera_pose, relative_pose_gt


def superglue_pose_auc(errors, thresholds):
    """SuperGluePretrainedNetwork models/utils.py pose_auc (np.trapz → np.trapezoid in numpy 2)."""
    sort_idx = np.argsort(errors)
    errors = np.array(errors.copy())[sort_idx]
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0., errors]
    recall = np.r_[0., recall]
    aucs = []
    for t in thresholds:
        last_index = np.searchsorted(errors, t)
        r = np.r_[recall[:last_index], recall[last_index - 1]]
        e = np.r_[errors[:last_index], t]
        aucs.append(np.trapezoid(r, x=e) / t)
    return aucs


def test_pose_auc_by_hand():
    # errors 1, 3, 8: recall steps 1/3, 2/3, 1.
    # AUC@5 = [1*(0+1/3)/2 + 2*(1/3+2/3)/2 + 2*(2/3+2/3)/2] / 5 = 2.5 / 5
    # AUC@10 = [1/6 + 1 + 5*(2/3+1)/2 + 2*1] / 10
    auc5, auc10 = pose_auc([8.0, 1.0, 3.0], (5, 10))
    assert auc5 == pytest.approx(0.5)
    assert auc10 == pytest.approx((1 / 6 + 1 + 25 / 6 + 2) / 10)
    assert pose_auc([0.0, 0.0], (5, 10, 20)) == pytest.approx([1.0, 1.0, 1.0])
    assert pose_auc([math.inf, float("nan")]) == [0.0, 0.0, 0.0]
    assert pose_auc([]) == [0.0, 0.0, 0.0]
    assert pose_auc([5.0], (10,)) == pytest.approx([0.5 * 0.5 * 1 + 0.5 * 1])  # linear ramp to 5, then 1


def test_pose_auc_matches_superglue():
    rng = np.random.default_rng(0)
    errors = np.concatenate([rng.exponential(6.0, 200), [np.inf] * 10, [5.0, 10.0]])
    np.testing.assert_allclose(pose_auc(errors, (5, 10, 20)), superglue_pose_auc(errors, (5, 10, 20)))


def test_pose_error_conventions():
    R = so3_exp([0.1, -0.2, 0.3])
    t = np.array([0.2, 0.1, 0.9])
    assert pose_error(R, t, R, t) == pytest.approx((0.0, 0.0), abs=1e-6)
    R10 = so3_exp([0.0, 0.0, math.radians(10)]) @ R
    assert pose_error(R10, t, R, t)[0] == pytest.approx(10.0)
    # Sign of t: SuperGlue folds it (E is defined up to sign), VO should not.
    assert pose_error(R, -t, R, t)[1] == pytest.approx(0.0, abs=1e-6)
    assert pose_error(R, -t, R, t, ignore_sign=False)[1] == pytest.approx(180.0)
    assert pose_error(R, t * 5, R, t)[1] == pytest.approx(0.0, abs=1e-6)  # scale-free
    ortho = np.cross(t, [1, 0, 0])
    assert pose_error(R, ortho, R, t)[1] == pytest.approx(90.0)
    assert pose_error(None, None, R, t) == (math.inf, math.inf)
    assert pose_error(R, np.zeros(3), R, t)[1] == math.inf
    assert pose_error(R, t, R, np.zeros(3))[1] == 0.0
    assert pose_error(np.full((3, 3), np.nan), t, R, t) == (math.inf, math.inf)


def test_T_0to1_conversion_matches_glue_ros_convention():
    """SuperGlue's T_0to1 maps camera-0 points to camera 1; ours is camera 1's pose in camera 0."""
    T_w0, T_w1 = camera_pose("mixed", 0.3), camera_pose("mixed", 1.1)
    T_0to1 = np.linalg.inv(T_w1) @ T_w0  # X1 = T_0to1 X0
    R, t = pose_from_T_0to1(T_0to1)
    R_gt, t_unit = relative_pose_gt(T_w0, T_w1)
    np.testing.assert_allclose(R, R_gt, atol=1e-12)
    np.testing.assert_allclose(t / np.linalg.norm(t), t_unit, atol=1e-12)
    np.testing.assert_allclose(T_0to1_from_pose(R, t), T_0to1, atol=1e-12)
    # Rotation errors agree across conventions; translation errors agree when R is right.
    R_est = so3_exp([0.01, 0, 0]) @ R
    err_ours = pose_error(R_est, t, R, t)[0]
    err_theirs = pose_error(R_est.T, -R_est.T @ t, T_0to1[:3, :3], T_0to1[:3, 3])[0]
    assert err_ours == pytest.approx(err_theirs)


def exact_matches(n=200, seed=0):
    rng = np.random.default_rng(seed)
    K0 = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    K1 = np.array([[600.0, 0, 300], [0, 600, 250], [0, 0, 1]])
    X0 = np.c_[rng.uniform(-2, 2, (n, 2)), rng.uniform(3, 8, n)]
    T = np.eye(4)
    T[:3, :3] = so3_exp([0.02, -0.05, 0.01])
    T[:3, 3] = [-0.3, 0.05, 0.1]
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    k0 = X0 @ K0.T
    k1 = X1 @ K1.T
    return k0[:, :2] / k0[:, 2:], k1[:, :2] / k1[:, 2:], T, K0, K1


def test_epipolar_precision_and_matching_score():
    k0, k1, T, K0, K1 = exact_matches()
    assert np.all(epipolar_error(k0, k1, T, K0, K1) < 1e-20)
    k1_bad = k1.copy()
    k1_bad[:50] += np.random.default_rng(1).normal(0, 30, (50, 2))
    precision, correct, errors = match_precision(k0, k1_bad, T, K0, K1)
    assert errors.shape == (200,) and correct == np.sum(errors < 5e-4)
    assert 0.75 <= precision <= 0.9  # some perturbed points stay near their epipolar lines
    assert matching_score(correct, 400) == pytest.approx(correct / 400)
    assert matching_score(3, 0) == 0.0
    assert match_precision(np.zeros((0, 2)), np.zeros((0, 2)), T, K0, K1)[:2] == (0.0, 0)


def test_read_pairs_file(tmp_path):
    K = "500 0 320 0 500 240 0 0 1"
    T = " ".join(str(v) for v in np.eye(4).reshape(-1))
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join([
        "# comment",
        "a.jpg b.jpg",
        "",
        "c.png d.png 1 3",
        f"e.png f.png 0 0 {K} {K} {T}",
    ]) + "\n")
    pairs = read_pairs_file(path)
    assert [(p.name0, p.name1, p.rot0, p.rot1) for p in pairs] == [
        ("a.jpg", "b.jpg", 0, 0), ("c.png", "d.png", 1, 3), ("e.png", "f.png", 0, 0)]
    assert not pairs[0].has_ground_truth and pairs[2].has_ground_truth
    np.testing.assert_allclose(pairs[2].K0, [[500, 0, 320], [0, 500, 240], [0, 0, 1]])
    np.testing.assert_allclose(pairs[2].T_0to1, np.eye(4))
    R, t = pairs[2].relative_pose()
    np.testing.assert_allclose(R, np.eye(3))
    with pytest.raises(ValueError):
        pairs[0].relative_pose()
    path.write_text("a b c\n")
    with pytest.raises(ValueError, match=":1:"):
        read_pairs_file(path)
    path.write_text(f"a b x 0 {K} {K} {T}\n")
    with pytest.raises(ValueError, match=":1:"):
        read_pairs_file(path)


def rotated_pixels(k, shape, rot):
    """Where pixel k of an image of ``shape`` lands after np.rot90(image, rot)."""
    h, w = shape[:2]
    x, y = k[:, 0], k[:, 1]
    if rot == 1:
        return np.c_[y, w - 1 - x]
    if rot == 2:
        return np.c_[w - 1 - x, h - 1 - y]
    return np.c_[h - 1 - y, x]


@pytest.mark.parametrize("rot0, rot1", [(1, 0), (0, 2), (3, 1)])
def test_exif_rotation_keeps_geometry_consistent(rot0, rot1):
    k0, k1, T, K0, K1 = exact_matches(seed=2)
    img0, img1 = np.zeros((480, 640, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)
    img0[10, 20] = 255  # a marker to follow through np.rot90
    spec = PairSpec("a", "b", rot0, rot1, K0, K1, T)
    r0, r1, K0r, K1r, Tr = rotate_pair(spec, img0, img1)
    m = rotated_pixels(np.array([[20.0, 10.0]]), img0.shape, rot0)[0] if rot0 else (20, 10)
    assert r0[int(m[1]), int(m[0])].max() == 255
    k0r = rotated_pixels(k0, img0.shape, rot0) if rot0 else k0
    k1r = rotated_pixels(k1, img1.shape, rot1) if rot1 else k1
    assert np.all(epipolar_error(k0r, k1r, Tr, K0r, K1r) < 1e-16)
    assert np.median(epipolar_error(k0r, k1r, T, K0r, K1r)) > 1e-6  # the rotation mattered


def test_load_pair(tmp_path):
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    cv2.imwrite(str(tmp_path / "b.png"), image)
    K = np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]])
    img0, img1, K0, K1, T = load_pair(PairSpec("a.png", "b.png", 1, 0, K, K, np.eye(4)), tmp_path, resize=(32, 24))
    assert img0.shape == (32, 24, 3) and img1.shape == (24, 32, 3)
    np.testing.assert_allclose(K1, [[25, 0, 16], [0, 25, 12], [0, 0, 1]])
    with pytest.raises(FileNotFoundError):
        load_pair(PairSpec("missing.png", "b.png"), tmp_path)


def test_evaluate_sequence():
    stamps = [1_000_000_000 + i * 33_333_333 for i in range(10)]
    poses = [camera_pose("mixed", i / 30.0) for i in range(10)]

    def pose_of(i, j, flip=False, valid=True):
        R, t = relative_pose_gt(poses[i], poses[j])
        return RelativePose(valid, "ok" if valid else "pure_rotation", R, -t if flip else t,
                            rotation_valid=True)

    estimates = [(stamps[0], stamps[j], pose_of(0, j)) for j in range(1, 5)]
    estimates.append((stamps[0], stamps[5], pose_of(0, 5, flip=True)))
    estimates.append((stamps[0], stamps[6], pose_of(0, 6, valid=False)))
    estimates.append((stamps[0], stamps[9] + 10**9, pose_of(0, 9)))  # no ground truth nearby
    result = evaluate_sequence(estimates, stamps, poses)
    assert len(result) == 6 and result.unmatched == 1
    np.testing.assert_allclose(result.rotation_error_deg, 0, atol=1e-5)
    np.testing.assert_allclose(result.translation_error_deg[:4], 0, atol=1e-5)
    assert result.translation_error_deg[4] == pytest.approx(180)
    assert result.translation_error_deg[5] == math.inf and not result.valid[5]
    summary = result.summary()
    assert summary["pairs"] == 6 and summary["valid"] == 5 and summary["rotation_valid"] == 6
    assert summary["rotation_median_deg"] == pytest.approx(0, abs=1e-5)
    assert summary["translation_median_deg"] == pytest.approx(0, abs=1e-5)
    assert summary["reasons"] == {"ok": 5, "pure_rotation": 1}
    assert 0.6 < summary["auc@5"] < 4 / 6 + 1e-9
    # FrameResult-like objects (newest keyframe first) are accepted too.
    frames = [SimpleNamespace(stamp_ns=stamps[j], matches=[SimpleNamespace(keyframe_stamp_ns=stamps[0],
                                                                           pose=pose_of(0, j))])
              for j in range(1, 4)] + [SimpleNamespace(stamp_ns=stamps[0], matches=[])]
    result = evaluate_sequence(frames, stamps, poses)
    assert len(result) == 3 and np.all(result.valid)
    empty = evaluate_sequence([], stamps, poses)
    assert len(empty) == 0 and math.isnan(empty.summary()["rotation_median_deg"])

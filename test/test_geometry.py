"""Two-view geometry with exact synthetic correspondences (no images)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from glue_ros.config import PoseConfig
from glue_ros.geometry import (UNOBSERVABLE_VARIANCE, CameraModel, estimate_relative_pose, matrix_from_quaternion,
                               normalize_points, project_points, quaternion_from_matrix, rotation_angle_deg,
                               skew, so3_exp, translation_angle_deg)
from glue_ros.synthetic import render_sequence

CAM = CameraModel.from_intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)


def make_pair(R, t, camera0=CAM, camera1=None, n=400, noise_px=0.0, outliers=0.0, planar=False, seed=0):
    """Points seen by both cameras. (R, t): pose of camera 1 in camera 0 (X0 = R X1 + t).

    Returns pixels in both images (through each camera's distortion) and the outlier mask."""
    camera1 = camera1 or camera0
    rng = np.random.default_rng(seed)
    X0 = np.c_[rng.uniform(-2.5, 2.5, (4 * n, 2)), rng.uniform(3.0, 10.0, 4 * n)]
    if planar:
        X0[:, 2] = 6.0 + 0.3 * X0[:, 0]
    X1 = (X0 - t) @ R  # R^T (X0 - t)
    p0, p1 = project_points(X0, camera0), project_points(X1, camera1)
    inside = ((X1[:, 2] > 0.5) & (p0[:, 0] > 0) & (p0[:, 0] < 640) & (p0[:, 1] > 0) & (p0[:, 1] < 480)
              & (p1[:, 0] > 0) & (p1[:, 0] < 640) & (p1[:, 1] > 0) & (p1[:, 1] < 480))
    p0, p1 = p0[inside][:n], p1[inside][:n]
    assert len(p0) == n
    p0 = p0 + rng.normal(0, noise_px, p0.shape)
    p1 = p1 + rng.normal(0, noise_px, p1.shape)
    bad = np.zeros(n, bool)
    bad[rng.choice(n, int(outliers * n), replace=False)] = True
    p1[bad] = rng.uniform((0, 0), (640, 480), (bad.sum(), 2))
    return p0, p1, bad


MOTION_R = so3_exp(np.radians([2.0, -3.0, 1.5]))
MOTION_T = np.array([0.3, -0.05, 0.25])
T_UNIT = MOTION_T / np.linalg.norm(MOTION_T)


@pytest.mark.parametrize("method", ["magsac", "ransac"])
def test_exact_correspondences_recover_pose(method):
    p0, p1, _ = make_pair(MOTION_R, MOTION_T)
    pose = estimate_relative_pose(p0, p1, CAM, CAM, PoseConfig(method=method))
    assert pose.valid and pose.reason == "ok"
    assert rotation_angle_deg(pose.rotation, MOTION_R) < 0.05
    assert translation_angle_deg(pose.translation, T_UNIT) < 0.05
    assert abs(np.linalg.norm(pose.translation) - 1) < 1e-9
    assert pose.inliers.shape == (400,) and pose.num_inliers == pose.inliers.sum() >= 395
    assert pose.rotation_valid and not pose.rotation_only
    assert pose.parallax_px > 5


def test_convention_forward_motion():
    """Camera 1 is 1 m in front of camera 0 (its centre at z = +1 in camera 0): t = (0, 0, 1)."""
    p0, p1, _ = make_pair(np.eye(3), np.array([0.0, 0.0, 1.0]))
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert pose.valid
    np.testing.assert_allclose(pose.translation, [0, 0, 1], atol=1e-4)
    # Yaw to the right by 5 degrees (camera 1's z axis expressed in camera 0 has positive x).
    R = so3_exp([0.0, math.radians(5.0), 0.0])
    assert (R @ [0, 0, 1])[0] > 0
    p0, p1, _ = make_pair(R, np.array([0.5, 0.0, 0.0]))
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert rotation_angle_deg(pose.rotation, R) < 0.05
    np.testing.assert_allclose(pose.translation, [1, 0, 0], atol=1e-3)


@pytest.mark.parametrize("method", ["magsac", "ransac"])
def test_outliers_rejected(method):
    p0, p1, bad = make_pair(MOTION_R, MOTION_T, noise_px=0.3, outliers=0.3, seed=1)
    pose = estimate_relative_pose(p0, p1, CAM, CAM, PoseConfig(method=method, threshold_px=1.5))
    assert pose.valid
    assert pose.inliers[bad].mean() < 0.05  # random outliers may land on their epipolar line
    assert pose.inliers[~bad].mean() > 0.9
    assert rotation_angle_deg(pose.rotation, MOTION_R) < 0.1
    assert translation_angle_deg(pose.translation, T_UNIT) < 0.5


@pytest.mark.parametrize("model, D", [
    ("plumb_bob", [-0.28, 0.09, 0.0008, -0.0005, -0.01]),
    ("rational_polynomial", [0.4, -0.2, 0.001, 0.0007, 0.05, 0.7, -0.1, 0.08]),
    ("equidistant", [0.05, -0.02, 0.01, -0.003]),
])
def test_distortion(model, D):
    cam = CameraModel.from_intrinsics(480.0, 482.0, 322.0, 241.0, 640, 480, model, D)
    assert cam.problem() is None and cam.has_distortion
    # normalize_points inverts project_points (the distortion).
    X = np.c_[np.random.default_rng(0).uniform(-0.6, 0.6, (200, 2)), np.ones(200)]
    np.testing.assert_allclose(normalize_points(project_points(X, cam), cam), X[:, :2], atol=1e-9)
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, camera0=cam, seed=2)
    pose = estimate_relative_pose(p0, p1, cam, cam)
    assert pose.valid
    assert rotation_angle_deg(pose.rotation, MOTION_R) < 0.05
    assert translation_angle_deg(pose.translation, T_UNIT) < 0.05
    # Ignoring the distortion is measurably worse (the test is not vacuous).
    pinhole = CameraModel(cam.K)
    wrong = estimate_relative_pose(p0, p1, pinhole, pinhole, PoseConfig(threshold_px=3.0))
    assert not wrong.valid or rotation_angle_deg(wrong.rotation, MOTION_R) > 0.05 or \
        wrong.num_inliers < pose.num_inliers


def test_two_different_cameras():
    cam1 = CameraModel.from_intrinsics(700.0, 690.0, 300.0, 250.0, 640, 480, "plumb_bob", [-0.1, 0.02, 0, 0, 0])
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, camera0=CAM, camera1=cam1, seed=3)
    pose = estimate_relative_pose(p0, p1, CAM, cam1)
    assert pose.valid
    assert rotation_angle_deg(pose.rotation, MOTION_R) < 0.05
    assert translation_angle_deg(pose.translation, T_UNIT) < 0.05


@pytest.mark.parametrize("focal", [250.0, 1000.0])
@pytest.mark.parametrize("method", ["magsac", "ransac"])
def test_threshold_is_in_pixels(focal, method):
    """Points pushed 3 px off their epipolar line (Sampson distance ~2.1 px) are outliers at 1 px and
    inliers at 5 px, whatever the focal length: the threshold is converted by 1/f."""
    cam = CameraModel.from_intrinsics(focal, focal, 319.5, 239.5, 640, 480)
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, camera0=cam, seed=4)
    R_cv, t_cv = MOTION_R.T, -MOTION_R.T @ MOTION_T
    h0 = np.c_[normalize_points(p0, cam), np.ones(len(p0))]
    lines = h0 @ (skew(t_cv) @ R_cv).T
    normal = lines[:, :2] / np.linalg.norm(lines[:, :2], axis=1, keepdims=True)
    p1 = p1.copy()
    p1[:40] += 3.0 * normal[:40]
    strict = estimate_relative_pose(p0, p1, cam, cam, PoseConfig(method=method, threshold_px=1.0))
    loose = estimate_relative_pose(p0, p1, cam, cam, PoseConfig(method=method, threshold_px=5.0))
    assert strict.valid and loose.valid
    assert strict.inliers[:40].sum() == 0 and strict.inliers[40:].all()
    assert loose.inliers.all()


def test_covariance_psd_and_calibrated():
    rng = np.random.default_rng(5)
    p0c, p1c, _ = make_pair(MOTION_R, MOTION_T, n=300, seed=5)
    phis, covs = [], []
    for _ in range(25):
        p0 = p0c + rng.normal(0, 0.5, p0c.shape)
        p1 = p1c + rng.normal(0, 0.5, p1c.shape)
        pose = estimate_relative_pose(p0, p1, CAM, CAM, PoseConfig(threshold_px=2.0))
        assert pose.valid
        cov = pose.covariance
        assert cov.shape == (6, 6) and np.all(np.isfinite(cov))
        np.testing.assert_allclose(cov, cov.T, atol=1e-12)
        assert np.linalg.eigvalsh(cov).min() > -1e-9
        # Translation along t is unobservable (scale); across t it is small.
        t = pose.translation
        assert t @ cov[:3, :3] @ t > 0.5 * UNOBSERVABLE_VARIANCE
        across = np.linalg.svd(t[None])[2][1:]
        assert np.all(np.diag(across @ (cov[:3, :3] - UNOBSERVABLE_VARIANCE * np.outer(t, t)) @ across.T) < 1e-3)
        phis.append(cv_log(pose.rotation @ MOTION_R.T))
        covs.append(cov[3:, 3:])
    empirical = np.std(phis, axis=0)
    predicted = np.sqrt(np.diag(np.mean(covs, axis=0)))
    ratio = empirical / predicted
    assert np.all(ratio > 0.4) and np.all(ratio < 2.5), (empirical, predicted)


def cv_log(R):
    import cv2

    return cv2.Rodrigues(R)[0].reshape(3)


def test_pure_rotation_flagged():
    R = so3_exp(np.radians([1.0, 4.0, 0.5]))
    p0, p1, _ = make_pair(R, np.zeros(3), noise_px=0.5, outliers=0.2, seed=6)
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert pose.reason == "pure_rotation" and not pose.valid
    assert pose.rotation_only and pose.rotation_valid
    assert rotation_angle_deg(pose.rotation, R) < 0.1
    assert np.all(pose.translation == 0)
    assert pose.num_inliers > 250
    assert np.all(np.isfinite(pose.covariance)) and np.linalg.eigvalsh(pose.covariance).min() > -1e-9
    # Near-pure rotation: 1 cm baseline at 3-10 m depth.
    p0, p1, _ = make_pair(R, np.array([0.01, 0.0, 0.0]), noise_px=0.5, seed=7)
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert pose.reason == "pure_rotation" and rotation_angle_deg(pose.rotation, R) < 0.5


def test_planar_scene_with_translation_is_not_rotation():
    """A homography explains a planar scene, but not a rotation-only model: not 'pure_rotation'."""
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, planar=True, noise_px=0.3, seed=8)
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert pose.reason != "pure_rotation" and not pose.rotation_only


def test_static_camera_is_rotation_only():
    p0, _, _ = make_pair(np.eye(3), np.zeros(3), seed=9)
    pose = estimate_relative_pose(p0, p0 + 0.1, CAM, CAM)
    assert pose.rotation_only and pose.reason == "pure_rotation" and pose.parallax_px < 1


@pytest.mark.parametrize("camera, fragment", [
    (CameraModel.from_intrinsics(float("nan"), 500, 320, 240), "NaN"),
    (CameraModel.from_intrinsics(0.0, 500, 320, 240), "focal"),
    (CameraModel.from_intrinsics(-500.0, 500, 320, 240), "focal"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1, 0, 0, 0], distortion_model="plumb_bob"), "5"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1] * 5, distortion_model="rational_polynomial"), "8"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1] * 5, distortion_model="equidistant"), "4"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1] * 5, distortion_model="kannala"), "unknown"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1]), "none"),
    (CameraModel.from_intrinsics(500.0, 500, 320, 240, D=[0.1, float("inf"), 0, 0, 0],
                                 distortion_model="plumb_bob"), "NaN"),
    (CameraModel(np.eye(2)), "3x3"),
])
def test_bad_cameras(camera, fragment):
    assert fragment in camera.problem()
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, n=50)
    pose = estimate_relative_pose(p0, p1, camera, CAM)
    assert not pose.valid and pose.reason.startswith("invalid_camera") and fragment in pose.reason
    assert pose.inliers.shape == (50,) and not pose.inliers.any()


def test_no_intrinsics():
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, n=50)
    pose = estimate_relative_pose(p0, p1, None, CAM)
    assert pose.reason == "no_intrinsics" and not pose.valid and pose.inliers.shape == (50,)
    assert pose.parallax_px == pytest.approx(np.median(np.linalg.norm(p1 - p0, axis=1)))  # raw pixels
    assert estimate_relative_pose(p0, p1, CAM, None).reason == "no_intrinsics"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_too_few_matches(n):
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, n=50)
    pose = estimate_relative_pose(p0[:n], p1[:n], CAM, CAM, PoseConfig(min_inliers=5))
    assert not pose.valid and pose.reason == "too_few_matches"
    assert pose.inliers.shape == (n,)
    # Fewer than min_inliers is also too few.
    pose = estimate_relative_pose(p0[:10], p1[:10], CAM, CAM, PoseConfig(min_inliers=15))
    assert pose.reason == "too_few_matches"


def test_too_few_inliers():
    p0, p1, bad = make_pair(MOTION_R, MOTION_T, n=60, outliers=0.85, seed=10)
    pose = estimate_relative_pose(p0, p1, CAM, CAM, PoseConfig(min_inliers=15))
    assert not pose.valid and pose.reason in ("too_few_inliers", "degenerate")


def test_nan_and_malformed_points_never_raise():
    p0, p1, _ = make_pair(MOTION_R, MOTION_T, n=100)
    p0[::10] = np.nan
    p1[5, 1] = np.inf
    pose = estimate_relative_pose(p0, p1, CAM, CAM)
    assert pose.valid and pose.inliers.shape == (100,)
    assert not pose.inliers[::10].any() and not pose.inliers[5]
    assert rotation_angle_deg(pose.rotation, MOTION_R) < 0.05
    all_nan = np.full((30, 2), np.nan)
    assert estimate_relative_pose(all_nan, all_nan, CAM, CAM).reason == "too_few_matches"
    assert estimate_relative_pose(p0, p1[:50], CAM, CAM).reason == "bad_input"
    assert estimate_relative_pose(np.zeros((10, 3)), np.zeros((10, 3)), CAM, CAM).reason == "bad_input"
    assert estimate_relative_pose([[1, 2]] * 20, [[1, 2]] * 20, CAM, CAM).valid is False  # degenerate
    assert estimate_relative_pose(np.zeros(0), np.zeros(0), CAM, CAM).reason == "too_few_matches"


def test_helpers():
    R = so3_exp([0.3, -0.2, 0.9])
    q = quaternion_from_matrix(R)
    assert q[3] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
    np.testing.assert_allclose(matrix_from_quaternion(q), R, atol=1e-12)
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3)):
        np.testing.assert_allclose(matrix_from_quaternion(quaternion_from_matrix(R)), R, atol=1e-12)
    np.testing.assert_allclose(quaternion_from_matrix(so3_exp([0, 0, math.pi / 2])),
                               [0, 0, math.sqrt(0.5), math.sqrt(0.5)], atol=1e-12)
    assert abs(rotation_angle_deg(np.eye(3), so3_exp([0, 0, math.radians(10)])) - 10) < 1e-9
    assert translation_angle_deg([1, 0, 0], [0, 2, 0]) == pytest.approx(90)
    assert translation_angle_deg([1, 0, 0], [-1, 0, 0]) == pytest.approx(180)
    assert translation_angle_deg([0, 0, 0], [1, 0, 0]) == 0.0


def test_camera_model_value_semantics():
    a = CameraModel.from_intrinsics(500, 500, 320, 240, 640, 480, "plumb_bob", [0.1, 0, 0, 0, 0])
    b = CameraModel.from_dict(a.to_dict())
    assert a == b and hash(a) == hash(b)
    assert a != CameraModel.from_intrinsics(501, 500, 320, 240, 640, 480, "plumb_bob", [0.1, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        a.K[0, 0] = 1.0  # read-only
    assert CameraModel(np.eye(3), distortion_model="").distortion_model == "none"
    assert CameraModel.from_intrinsics(500, 500, 320, 240).problem() is None


def test_analytic_jacobian_matches_finite_differences():
    from glue_ros import geometry as G

    p0, p1, _ = make_pair(MOTION_R, MOTION_T, n=50, noise_px=1.0, seed=11)
    h0 = np.c_[normalize_points(p0, CAM), np.ones(50)]
    h1 = np.c_[normalize_points(p1, CAM), np.ones(50)]
    R_cv, t_cv = MOTION_R.T, -MOTION_R.T @ T_UNIT
    B = G._tangent_basis(t_cv)
    np.testing.assert_allclose(G._jacobian(R_cv, t_cv, h0, h1, B), G._numeric_jacobian(R_cv, t_cv, h0, h1, B),
                               rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------- low parallax (ORB)


def _orb_pair_pose(seq, i, j, **pose):
    from glue_ros.classical import ClassicalExtractor, NearestNeighborMatcher
    from glue_ros.config import PoseConfig

    features = ClassicalExtractor("orb", 600).extract([seq.images[i], seq.images[j]])
    pair = NearestNeighborMatcher(0.8).match([features[0]], [features[1]])[0]
    k0, k1 = features[0].keypoints_numpy(), features[1].keypoints_numpy()
    return estimate_relative_pose(k0[pair.matches[:, 0]], k1[pair.matches[:, 1]], seq.camera, seq.camera,
                                  PoseConfig(**pose))


def test_low_parallax_orb_translation_is_not_flipped():
    """Once a repro of ORB at 2-6 px parallax returning a *valid* pose with the translation flipped
    (150-180°): the sign of t is now re-chosen after every re-classification."""
    seq = render_sequence(12, 320, 240, motion="sideways", speed=1.5, seed=4)
    for i, j in ((1, 3), (2, 5)):
        pose = _orb_pair_pose(seq, i, j)
        assert pose.valid, pose.reason  # measured: 1.6° and 3.2° (the old code: 151° and 156°)
        R, t = seq.relative_pose(i, j)
        assert translation_angle_deg(pose.translation, t) < 20.0, (i, j)


def test_low_parallax_gate_invalidates_translation_only():
    seq = render_sequence(12, 320, 240, motion="sideways", speed=1.5, seed=4)
    gated = _orb_pair_pose(seq, 2, 5, min_translation_parallax_px=50.0, min_parallax_px=0.0)  # no pure-rotation flag
    assert gated.reason == "low_parallax" and not gated.valid and gated.rotation_valid
    assert np.allclose(gated.translation, 0) and gated.covariance[0, 0] > 1e5  # translation unobservable
    R, _ = seq.relative_pose(2, 5)
    assert rotation_angle_deg(gated.rotation, R) < 1.0
    assert _orb_pair_pose(seq, 2, 5, min_translation_parallax_px=0.0, min_parallax_px=0.0).reason != "low_parallax"

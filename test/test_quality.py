"""Learned matching with the REAL packaged weights recovers the relative pose on synthetic scenes with
exact ground truth, through the whole front-end (extractor → LightGlue → pose), for every packaged
backend; the classical backends run on the same frames as the baseline.

Thresholds: rotation error < 1° and translation-direction error < 5°, median over the pairs (frame 0,
frame i) with at least 15 px of parallax (the camera moves at twice the nominal speed, so most pairs
qualify). Below ~10 px the translation direction of a 320×240 view is ill-conditioned for every
backend (SIFT too); above it a correct essential matrix gives a few tenths of a degree, and a broken
matcher or a wrong keypoint mapping gives tens of degrees."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from glue_ros.config import FrontEndConfig, load_config
from glue_ros.frontend import Frame, FrontEnd
from glue_ros.geometry import rotation_angle_deg, translation_angle_deg
from glue_ros.synthetic import render_sequence

KEYPOINTS = 384
MIN_PARALLAX_PX = 15.0


@pytest.fixture(scope="module")
def sequence():
    return render_sequence(13, width=320, height=240, motion="mixed", seed=21, speed=2.0)


def pose_errors(profile: str, seq) -> tuple[list[float], list[float], list[int]]:
    """Each frame i > 0 against frame 0 (interval keyframes disabled): rotation and translation
    errors of valid poses with enough parallax, and the inlier counts."""
    flat = load_config(profile=profile, sets=[f"extractor.max_keypoints={KEYPOINTS}", "device=cpu",
                                              "precision=fp32", "keyframes.max_interval_s=0",
                                              "keyframes.min_matches=0", "keyframes.min_inlier_ratio=0",
                                              "keyframes.parallax_px=1000"])
    frontend = FrontEnd(FrontEndConfig.from_flat(flat))
    rot, trans, inliers = [], [], []
    for i, (image, stamp) in enumerate(zip(seq.images, seq.stamps_ns)):
        result = frontend.process(Frame(image, stamp, "cam", seq.camera))
        if i == 0:
            assert result.keyframe.reason == "first_frame"
            continue
        pose = result.pose
        assert pose is not None and result.matches[0].keyframe_stamp_ns == seq.stamps_ns[0]
        inliers.append(pose.num_inliers)
        if pose.valid and pose.parallax_px >= MIN_PARALLAX_PX:
            R, t = seq.relative_pose(0, i)
            rot.append(rotation_angle_deg(pose.rotation, R))
            trans.append(translation_angle_deg(pose.translation, t))
    return rot, trans, inliers


@pytest.fixture(scope="module")
def measured(sequence):
    torch.manual_seed(0)
    return {profile: pose_errors(profile, sequence) for profile in
            ("xfeat_lighterglue", "aliked_lightglue", "disk_lightglue", "sift_nn", "orb_nn")}


@pytest.mark.parametrize("profile", ["xfeat_lighterglue", "aliked_lightglue", "disk_lightglue", "sift_nn"])
def test_backends_recover_the_pose(profile, measured):
    """Measured here (medians): rotation 0.04-0.17°, translation direction 0.5-1.9° for the learned
    backends, SIFT 0.09° / 1.1° — 2.5x or more below the thresholds."""
    rot, trans, inliers = measured[profile]
    assert len(rot) >= 5, f"{profile}: only {len(rot)} valid poses with parallax"
    assert np.median(rot) < 1.0 and np.median(trans) < 5.0, (profile, np.median(rot), np.median(trans))
    assert min(inliers) >= 40, (profile, inliers)


def test_learned_features_give_more_inliers_than_classical_at_equal_keypoints(measured):
    """At 384 keypoints: ALIKED and DISK ~280 pose inliers per pair, SIFT ~160, ORB ~110, XFeat ~125
    (XFeat beats ORB by ~1.15x, not SIFT, on these synthetic textures; its strength is speed)."""
    mean = {profile: float(np.mean(inliers)) for profile, (_, _, inliers) in measured.items()}
    for learned in ("aliked_lightglue", "disk_lightglue"):
        assert mean[learned] > 1.3 * max(mean["sift_nn"], mean["orb_nn"]), mean
    assert mean["xfeat_lighterglue"] > mean["orb_nn"], mean

"""Synthetic sequences: determinism, real depth, trajectories, files."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from glue_ros.geometry import CameraModel, rotation_angle_deg
from glue_ros.synthetic import (MOTIONS, START_STAMP_NS, camera_pose, default_camera, make_scene, read_camera_file,
                                read_tum_trajectory, relative_pose_gt, render_sequence, write_images,
                                write_tum_trajectory)


@pytest.fixture(scope="module")
def forward_depth():
    return render_sequence(11, motion="forward", with_depth=True)


def test_deterministic():
    a = render_sequence(3, motion="mixed", seed=0)
    b = render_sequence(3, motion="mixed", seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
    c = render_sequence(1, motion="mixed", seed=1)
    assert not np.array_equal(a.images[0], c.images[0])
    clean = render_sequence(1, motion="mixed", seed=0, noise_std=0.0)
    assert 0 < np.abs(clean.images[0].astype(int) - a.images[0]).mean() < 2  # mild noise only


def test_images_and_stamps():
    seq = render_sequence(4, width=320, height=240, motion="sideways", fps=20.0)
    assert len(seq) == 4 and seq.name == "synthetic_sideways_s0"
    for image in seq.images:
        assert image.shape == (240, 320, 3) and image.dtype == np.uint8
        assert image.std() > 20  # textured, not blank
    assert seq.stamps_ns[0] == START_STAMP_NS > 0
    assert np.all(np.diff(seq.stamps_ns) == 50_000_000)
    assert seq.camera.image_size == (320, 240) and seq.camera.fx == 250.0
    assert seq.poses.shape == (4, 4, 4)


@pytest.mark.parametrize("motion", MOTIONS)
def test_motion_suits_30hz_vo(motion):
    """A few cm and at most 1 degree per frame, valid rotations, camera inside the room."""
    poses = [camera_pose(motion, i / 30.0) for i in range(0, 600)]
    for T0, T1 in zip(poses, poses[1:]):
        R0, R1 = T0[:3, :3], T1[:3, :3]
        np.testing.assert_allclose(R1 @ R1.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(R1) > 0
        assert np.linalg.norm(T1[:3, 3] - T0[:3, 3]) < 0.05
        assert rotation_angle_deg(R0, R1) < 1.0
        x, y, z = T1[:3, 3]
        assert abs(x) < 2.3 and -1.4 < y < 1.1 and -3.8 < z < 13.8
    moved = np.linalg.norm(poses[30][:3, 3] - poses[0][:3, 3])
    if motion == "rotation":
        assert moved == 0.0 and rotation_angle_deg(poses[0][:3, :3], poses[30][:3, :3]) > 10
    else:
        assert moved > 0.5


def test_speed_scales_motion():
    slow = camera_pose("forward", 1.0, speed=0.5)
    fast = camera_pose("forward", 1.0, speed=2.0)
    start = camera_pose("forward", 0.0)
    assert np.linalg.norm(fast[:3, 3] - start[:3, 3]) == pytest.approx(4 * np.linalg.norm(slow[:3, 3] - start[:3, 3]))


def test_relative_pose_gt_convention():
    T0, T1 = camera_pose("forward", 0.0), camera_pose("forward", 1.0)
    R, t = relative_pose_gt(T0, T1)
    np.testing.assert_allclose(R, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(t, [0, 0, 1], atol=1e-12)  # the current camera is ahead of the keyframe
    T0, T1 = camera_pose("rotation", 0.0), camera_pose("rotation", 1.0)
    R, t = relative_pose_gt(T0, T1)
    np.testing.assert_allclose(t, 0)
    np.testing.assert_allclose(R, T0[:3, :3].T @ T1[:3, :3])


def test_depth_is_not_a_plane(forward_depth):
    seq = forward_depth
    depth = seq.depths[0]
    assert depth.shape == (480, 640) and np.all(np.isfinite(depth)) and depth.min() > 0.05
    lo, hi = np.percentile(depth, [5, 95])
    assert hi / lo > 3  # near floor/boxes and far back wall
    # Ground-truth correspondences frame 0 -> frame 10 from depth: one homography cannot explain them.
    K = seq.camera.K
    rng = np.random.default_rng(0)
    px = np.c_[rng.uniform(0, 639, 2000), rng.uniform(0, 479, 2000)]
    z = depth[np.round(px[:, 1]).astype(int), np.round(px[:, 0]).astype(int)]
    X0 = np.c_[px, np.ones(len(px))] @ np.linalg.inv(K).T * z[:, None]
    T = np.linalg.inv(seq.poses[10]) @ seq.poses[0]
    X1 = X0 @ T[:3, :3].T + T[:3, 3]
    p1 = X1 @ K.T
    p1 = p1[:, :2] / p1[:, 2:3]
    _, mask = cv2.findHomography(px, p1, cv2.RANSAC, 1.0)
    assert mask.mean() < 0.7
    # ...while the correspondences are exact: the rendered images agree at those positions.
    inside = (p1[:, 0] > 2) & (p1[:, 0] < 637) & (p1[:, 1] > 2) & (p1[:, 1] < 477)
    a = seq.images[0][np.round(px[inside, 1]).astype(int), np.round(px[inside, 0]).astype(int)].astype(int)
    b = seq.images[10][np.round(p1[inside, 1]).astype(int), np.round(p1[inside, 0]).astype(int)].astype(int)
    assert np.median(np.abs(a - b)) < 25  # same surface point (texture, noise, rounding differ slightly)


def test_orbit_sequence_renders_moving_textured_frames():
    """(Rendering speed, ~20 ms a frame on an idle core, is a benchmark matter: not asserted here.)"""
    make_scene(0)
    seq = render_sequence(10, motion="orbit")
    assert len(seq) == 10 and len(set(seq.stamps_ns)) == 10
    assert all(image.shape == (480, 640, 3) and image.std() > 20 for image in seq.images)
    assert all(np.abs(a.astype(int) - b).mean() > 4 for a, b in zip(seq.images, seq.images[1:]))  # moves (~8.7)


def test_tum_round_trip(tmp_path):
    seq_poses = np.array([camera_pose("mixed", i / 30.0) for i in range(20)])
    stamps = [START_STAMP_NS + i * 33_333_333 for i in range(20)] + [5]
    poses = np.concatenate([seq_poses, seq_poses[:1]])
    path = tmp_path / "traj" / "gt.txt"
    write_tum_trajectory(path, stamps, poses)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and lines[1].split()[0] == "1700000000.000000000"
    assert lines[-1].split()[0] == "0.000000005"
    assert all(len(line.split()) == 8 for line in lines[1:])
    read_stamps, read_poses = read_tum_trajectory(path)
    assert read_stamps.tolist() == stamps
    np.testing.assert_allclose(read_poses, poses, atol=1e-8)


def test_read_tum_accepts_few_decimals(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("# comment\n\n1305031102.175304 1 2 3 0 0 0 1\n1305031102.2 1 2 3 0 0 0.7071068 0.7071068\n")
    stamps, poses = read_tum_trajectory(path)
    assert stamps.tolist() == [1305031102175304000, 1305031102200000000]
    np.testing.assert_allclose(poses[1][:3, :3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-6)
    path.write_text("1 2 3\n")
    with pytest.raises(ValueError, match="8 fields"):
        read_tum_trajectory(path)


def test_write_images(tmp_path):
    seq = render_sequence(3, width=160, height=120, motion="orbit")
    out = write_images(seq, tmp_path / "ds")
    entries = [line.split() for line in (out / "rgb.txt").read_text().splitlines() if not line.startswith("#")]
    assert len(entries) == 3
    for (stamp, name), image in zip(entries, seq.images):
        png = cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(png, image)
    stamps, poses = read_tum_trajectory(out / "groundtruth.txt")
    assert stamps.tolist() == list(seq.stamps_ns)
    camera = read_camera_file(out / "camera.yaml")
    assert camera == seq.camera or (np.allclose(camera.K, seq.camera.K) and camera.image_size == (160, 120))
    assert isinstance(read_camera_file(out / "camera.json"), CameraModel)


def test_default_camera():
    cam = default_camera()
    assert cam.fx == cam.fy == 500 and (cam.cx, cam.cy) == (319.5, 239.5)
    assert math.degrees(2 * math.atan(320 / 500)) == pytest.approx(65.2, abs=0.1)
    with pytest.raises(ValueError):
        render_sequence(1, motion="teleport")

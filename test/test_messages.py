"""The message contract (glue_ros.ros.messages, vins, diagnostics, visual, outputs; msg_types,
pointcloud underneath), built with rclpy AND rosbags classes, serialised, deserialised and decoded
back exactly; the keyframe chain (glue_ros.trajectory) against exact poses; and the import graph of
glue_ros has no cycle."""
from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from glue_ros.results import FrameResult, KeyframeDecision, KeyframeMatches, RelativePose
from glue_ros.ros.diagnostics import (DIAGNOSTIC_NAME, ERROR, OK, WARN, DiagnosticThresholds, build_diagnostics,
                                      decode_diagnostics, diagnostic_level)
from glue_ros.ros.image_codec import decode_image
from glue_ros.ros.messages import (KEYFRAME_FIELDS, MATCH_FIELDS, MAX_EXACT_TRACK_ID, build_keyframe, build_matches,
                                   build_relative_pose, decode_keyframe, decode_matches, decode_relative_pose,
                                   pose_keyframe)
from glue_ros.ros.msg_types import RclpyTypes, RosbagsTypes, factory_for, ns_to_stamp, stamp_to_ns
from glue_ros.ros.outputs import build_debug_image, frame_outputs
from glue_ros.ros.pointcloud import make_cloud, read_points
from glue_ros.ros.vins import build_features, decode_features
from glue_ros.viz import MAX_DRAWN, OUTLIER_BGR, draw_matches, draw_matches_on_frame, score_ramp, select_drawn

STAMP = 1_700_000_123_000_000_999
KF_STAMPS = (1_700_000_122_999_999_999, 1_700_000_100_000_000_000)
FX, FY, CX, CY = 500.0, 400.0, 320.0, 240.0


def rot(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def make_result(rng=None, *, valid=True, keyframe=True, counts=(37, 11)) -> FrameResult:
    rng = rng or np.random.default_rng(7)
    n = 60
    keypoints = (rng.random((n, 2)) * [640, 480]).astype(np.float32)
    track_ids = np.arange(n, dtype=np.int64) + 1000
    track_ids[0] = MAX_EXACT_TRACK_ID  # the largest exactly representable id
    track_ids[1] = 2 ** 24 + 5  # wraps in the VINS float32 channel
    track_ids[-1] = -1  # an untracked keypoint (not published in ~/features)
    matches = []
    for i, (m, kf_stamp) in enumerate(zip(counts, KF_STAMPS)):
        inliers = rng.random(m) > 0.3
        cov = rng.standard_normal((6, 6))
        pose = RelativePose(valid=valid, reason="ok" if valid else "too_few_inliers",
                            rotation=rot(rng.standard_normal(3), 0.3 + i), translation=np.array([0.6, -0.0, 0.8]),
                            inliers=inliers, num_inliers=int(inliers.sum()), covariance=cov @ cov.T)
        idx = np.stack([rng.permutation(200)[:m], rng.permutation(n)[:m]], axis=1).astype(np.int64)
        matches.append(KeyframeMatches(
            keyframe_id=41 - 3 * i, keyframe_stamp_ns=kf_stamp, matches=idx,
            scores=rng.random(m).astype(np.float32), points_keyframe=(rng.random((m, 2)) * 640).astype(np.float32),
            points_frame=keypoints[idx[:, 1]], track_ids=track_ids[idx[:, 1]], inliers=inliers, pose=pose))
    return FrameResult(
        stamp_ns=STAMP, frame_id="camera_optical", image_size=(640, 480), keypoints=keypoints,
        keypoint_scores=rng.random(n).astype(np.float32), track_ids=track_ids,
        track_velocities=(rng.standard_normal((n, 2)) * 30).astype(np.float32), matches=matches,
        keyframe=KeyframeDecision(keyframe, "parallax" if keyframe else "", 42 if keyframe else 41))


def enable_rclpy_field_checks():
    """Turn on the generated classes' type checks (as ROS_PYTHON_CHECK_FIELDS=1 would): numpy
    scalars, wrong array types and missing fields then fail loudly."""
    for pkg in ("builtin_interfaces", "std_msgs", "sensor_msgs", "geometry_msgs", "diagnostic_msgs",
                "visualization_msgs", "nav_msgs"):
        importlib.import_module(f"{pkg}.msg")
    patched = []
    for name, module in list(sys.modules.items()):
        if re.fullmatch(r"\w+\.msg\._\w+", name) and hasattr(module, "ros_python_check_fields"):
            patched.append((module, module.ros_python_check_fields))
            module.ros_python_check_fields = "1"
    return patched


@pytest.fixture(scope="module", params=["rclpy", "rosbags"])
def factory(request):
    if request.param == "rosbags":
        yield RosbagsTypes()
        return
    patched = enable_rclpy_field_checks()
    yield RclpyTypes()
    for module, value in patched:
        module.ros_python_check_fields = value


def wire(factory, msg, type_name):
    """Serialise and deserialise with the factory's own machinery (rclpy: serialize_message)."""
    data = factory.serialize(msg)
    assert isinstance(data, bytes) and len(data) > 4
    return factory.deserialize(data, type_name)


def expected_matches(result):
    rows = []
    for rank, km in enumerate(result.matches):
        for j in range(len(km)):
            rows.append((km.points_frame[j], km.points_keyframe[j], km.scores[j], km.track_ids[j], km.inliers[j],
                         km.keyframe_stamp_ns, km.keyframe_id, km.matches[j, 1], km.matches[j, 0], rank))
    return rows


# --------------------------------------------------------------------------- ~/matches


def test_matches_round_trip(factory):
    result = make_result()
    msg = build_matches(factory, result)
    assert msg.height == 1 and msg.width == 48 and msg.is_dense and not msg.is_bigendian
    assert [f.name for f in msg.fields] == [name for name, _ in MATCH_FIELDS]
    assert msg.point_step == 50 and msg.row_step == 50 * 48
    back = decode_matches(wire(factory, msg, "sensor_msgs/msg/PointCloud2"))
    assert back.stamp_ns == STAMP and back.frame_id == "camera_optical" and len(back) == 48
    exp = expected_matches(result)
    np.testing.assert_array_equal(back.points, np.array([r[0] for r in exp]))
    np.testing.assert_array_equal(back.keyframe_points, np.array([r[1] for r in exp]))
    np.testing.assert_array_equal(back.scores, np.array([r[2] for r in exp], np.float32))
    np.testing.assert_array_equal(back.track_ids, np.array([r[3] for r in exp], np.int64))
    assert back.track_ids.max() == MAX_EXACT_TRACK_ID
    np.testing.assert_array_equal(back.inliers, np.array([r[4] for r in exp]))
    np.testing.assert_array_equal(back.keyframe_stamp_ns, np.array([r[5] for r in exp], np.int64))
    np.testing.assert_array_equal(back.keyframe_ids, np.array([r[6] for r in exp]))
    np.testing.assert_array_equal(back.kp_indices, np.array([r[7] for r in exp]))
    np.testing.assert_array_equal(back.kf_kp_indices, np.array([r[8] for r in exp]))
    np.testing.assert_array_equal(back.kf_rank, np.array([r[9] for r in exp]))
    first = back.for_keyframe(41)
    np.testing.assert_array_equal(first.matches, result.matches[0].matches)
    assert set(first.keyframe_stamp_ns.tolist()) == {KF_STAMPS[0]}


def test_empty_frame(factory):
    result = make_result(keyframe=True)
    result.matches = []  # first frame / after a reset
    msg = build_matches(factory, result)
    assert msg.width == 0 and len(msg.data) == 0
    back = decode_matches(wire(factory, msg, "sensor_msgs/msg/PointCloud2"))
    assert len(back) == 0 and back.stamp_ns == STAMP and back.points.shape == (0, 2)
    assert build_relative_pose(factory, result) is None


def test_flavours_are_wire_compatible():
    # Each flavour's CDR bytes decode identically with the other (padding bytes may differ).
    result = make_result()
    a, b = RclpyTypes(), RosbagsTypes()
    for build, type_name in ((build_matches, "sensor_msgs/msg/PointCloud2"),
                             (build_relative_pose, "geometry_msgs/msg/PoseWithCovarianceStamped")):
        wa, wb = a.serialize(build(a, result)), b.serialize(build(b, result))
        assert len(wa) == len(wb)
        ma, mb = b.deserialize(wa, type_name), a.deserialize(wb, type_name)
        if type_name.endswith("PointCloud2"):
            assert bytes(ma.data) == bytes(mb.data)
            assert decode_matches(ma).stamp_ns == decode_matches(mb).stamp_ns == STAMP
        else:
            for x, y in zip(decode_relative_pose(ma), decode_relative_pose(mb)):
                np.testing.assert_array_equal(x, y)


# --------------------------------------------------------------------------- ~/relative_pose


def test_relative_pose_round_trip_and_pairing(factory):
    result = make_result()
    msg = build_relative_pose(factory, result)
    assert msg.header.frame_id == "camera_optical"
    back = wire(factory, msg, "geometry_msgs/msg/PoseWithCovarianceStamped")
    stamp, R, t, cov = decode_relative_pose(back)
    pose = result.pose
    assert stamp == STAMP
    np.testing.assert_allclose(R, pose.rotation, atol=1e-14)
    np.testing.assert_array_equal(t, pose.translation)
    np.testing.assert_array_equal(cov, pose.covariance)
    # the keyframe the pose refers to, from the matches message with the same stamp
    matches = wire(factory, build_matches(factory, result), "sensor_msgs/msg/PointCloud2")
    assert pose_keyframe(back, matches) == (41, KF_STAMPS[0])
    other = make_result()
    other.stamp_ns += 1
    with pytest.raises(ValueError):
        pose_keyframe(back, build_matches(factory, other))
    # invalid pose → not published
    assert build_relative_pose(factory, make_result(valid=False)) is None
    # frame_id override
    assert build_relative_pose(factory, result, frame_id="cam2").header.frame_id == "cam2"


def test_relative_pose_rotations_round_trip():
    """Every rotation (incl. the 180 degree ones where w = 0) survives build → decode; the message
    carries a unit quaternion with w >= 0 (geometry.quaternion_from_matrix); a quaternion that is
    not a rotation is refused when decoding."""
    rng = np.random.default_rng(1)
    rotations = [rot(rng.standard_normal(3), a) for a in rng.uniform(0, np.pi, 50)]
    rotations += [np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1]), np.eye(3),
                  rot([1, 1, 0], np.pi)]
    f = RosbagsTypes()
    result = make_result()
    for R in rotations:
        result.matches[0].pose.rotation = R
        msg = build_relative_pose(f, result)
        o = msg.pose.pose.orientation
        q = np.array([o.x, o.y, o.z, o.w])
        assert abs(np.linalg.norm(q) - 1) < 1e-12 and q[3] >= 0
        np.testing.assert_allclose(decode_relative_pose(msg).rotation, R, atol=1e-12)
    for bad in ((0.0, 0.0, 0.0, 0.0), (float("nan"), 0.0, 0.0, 1.0)):
        o.x, o.y, o.z, o.w = bad
        with pytest.raises(ValueError, match="quaternion"):
            decode_relative_pose(msg)


# --------------------------------------------------------------------------- ~/keyframes


def test_keyframe_round_trip(factory):
    result = make_result()
    msg = build_keyframe(factory, result)
    assert [f.name for f in msg.fields] == [name for name, _ in KEYFRAME_FIELDS]
    back = decode_keyframe(wire(factory, msg, "sensor_msgs/msg/PointCloud2"))
    assert back.stamp_ns == STAMP and back.keyframe_id == 42 and back.frame_id == "camera_optical"
    np.testing.assert_array_equal(back.points, result.keypoints)
    np.testing.assert_array_equal(back.track_ids, result.track_ids)
    np.testing.assert_array_equal(back.scores, result.keypoint_scores)
    assert build_keyframe(factory, make_result(keyframe=False)) is None


# --------------------------------------------------------------------------- ~/features (VINS)


def normalise(points):
    return (np.asarray(points, np.float64) - [CX, CY]) / [FX, FY]


@pytest.mark.parametrize("layout", ["vins_mono", "vins_fusion"])
def test_features_vins_layouts(factory, layout):
    result = make_result()
    msg = build_features(factory, result, normalise, layout=layout, num_cameras=2, camera_id=1)
    names = [c.name for c in msg.channels]
    if layout == "vins_mono":
        assert names == ["id_of_point", "u_of_point", "v_of_point", "velocity_x_of_point", "velocity_y_of_point"]
    else:
        assert names[:6] == ["feature_id", "camera_id", "p_u", "p_v", "velocity_x", "velocity_y"]
        assert len(names) == 9  # VINS-Fusion reads channels 6..8 whenever there are more than 5
    back_msg = wire(factory, msg, "sensor_msgs/msg/PointCloud")
    assert all(p.z == 1.0 for p in back_msg.points)  # the estimators ROS_ASSERT(z == 1)
    back = decode_features(back_msg, num_cameras=2)
    keep = result.track_ids >= 0
    assert back.stamp_ns == STAMP and len(back.feature_ids) == keep.sum() == 59
    np.testing.assert_array_equal(back.feature_ids, result.track_ids[keep] % (2 ** 24 // 2))
    assert back.feature_ids[1] == (2 ** 24 + 5) % 2 ** 23
    assert set(back.camera_ids.tolist()) == {1}
    np.testing.assert_array_equal(back.pixels, result.keypoints[keep])
    np.testing.assert_allclose(back.normalised, normalise(result.keypoints[keep]), rtol=1e-6, atol=1e-7)
    # a linear normaliser maps pixel velocity v to v / f
    np.testing.assert_allclose(back.velocities, result.track_velocities[keep] / [FX, FY], rtol=1e-4, atol=1e-7)
    # the raw VINS-Mono arithmetic: v = int(value + 0.5); feature = v / NUM_OF_CAM; camera = v % NUM_OF_CAM
    if layout == "vins_mono":
        raw = np.asarray(back_msg.channels[0].values, np.float32)
        v = (raw.astype(np.float64) + 0.5).astype(np.int64)
        np.testing.assert_array_equal(v // 2, back.feature_ids)
        np.testing.assert_array_equal(v % 2, 1)


def test_features_options(factory):
    result = make_result()
    mask = np.zeros(len(result.keypoints), bool)
    mask[:5] = True
    given = np.full((len(mask), 2), 0.25)
    back = decode_features(build_features(factory, result, normalise, mask=mask, normalised_velocities=given))
    assert len(back.feature_ids) == 5 and np.all(back.velocities == 0.25)
    with pytest.raises(ValueError):
        build_features(factory, result, normalise, layout="orb_slam")
    with pytest.raises(ValueError):
        build_features(factory, result, normalise, camera_id=1)


# --------------------------------------------------------------------------- ~/debug_image


def test_debug_image(factory):
    result = make_result()
    rng = np.random.default_rng(0)
    grey = (rng.random((480, 640)) * 40).astype(np.uint8)
    msg = build_debug_image(factory, grey, result, max_keyframes=2)
    back = wire(factory, msg, "sensor_msgs/msg/Image")
    assert back.encoding == "bgr8" and back.header.frame_id == "camera_optical"
    assert back.header.stamp.sec * 10 ** 9 + back.header.stamp.nanosec == STAMP
    rgb = decode_image(back)
    assert rgb.shape == (480, 640, 3)
    assert (rgb != grey[..., None]).any(axis=-1).sum() > 1000  # something was drawn
    bgr = rgb[..., ::-1]
    outliers = ~np.concatenate([km.inliers for km in result.matches])
    assert outliers.any() and (bgr == OUTLIER_BGR).all(axis=-1).any(), "outliers are drawn red"
    assert (bgr[:, :, 1] > 150).sum() > 100, "inliers are drawn in the green-blue score ramp"
    legend = rgb[:40, :200].astype(int)
    assert (legend == 255).all(axis=-1).sum() > 50, "the legend's white text"
    mono16 = build_debug_image(factory, (grey.astype(np.uint16) << 8), result, encoding="mono16")
    assert decode_image(mono16).shape == (480, 640, 3)


def test_match_pictures_cap_stratify_and_colour():
    """glue_ros.viz (the CLI's, the demo's and the debug image's drawing): at most MAX_DRAWN matches,
    every score range and inliers/outliers in proportion, outliers red, a legend."""
    rng = np.random.default_rng(3)
    n = 1000
    scores = rng.random(n)
    inliers = rng.random(n) > 0.2
    chosen = select_drawn(scores, inliers)
    assert len(chosen) == MAX_DRAWN == 150 and len(np.unique(chosen)) == 150
    for group in (inliers, ~inliers):  # the lowest and highest score of each group are drawn
        idx = np.flatnonzero(group)
        assert {idx[np.argmin(scores[idx])], idx[np.argmax(scores[idx])]} <= set(chosen.tolist())
    assert abs((~inliers[chosen]).mean() - (~inliers).mean()) < 0.02, "outliers in proportion"
    deciles = np.histogram(scores[chosen], bins=10, range=(0, 1))[0]
    assert deciles.min() >= 10, f"every score range shows: {deciles}"
    assert select_drawn(scores[:40]).tolist() == list(range(40))
    assert len(select_drawn(scores, np.zeros(n, bool))) == 150  # no inliers at all: still capped

    image = np.full((240, 320), 90, np.uint8)
    ys = np.linspace(60, 230, n)
    p0 = np.stack([np.full(n, 20.0), ys], axis=1)
    p1 = np.stack([np.full(n, 200.0), ys], axis=1)
    picture = draw_matches(image, image, p0, p1, scores, inliers=inliers, title="superpoint + lightglue",
                           timings_ms={"extract_ms": 1.0})
    assert picture.shape == (240, 650, 3) and picture.dtype == np.uint8
    assert (picture == OUTLIER_BGR).all(axis=-1).any()
    ramp = score_ramp(np.array([0.0, 0.5, 1.0]))
    assert ramp[0, 0] > ramp[0, 1] and ramp[2, 1] > ramp[2, 0], "blue (low score) to green (high score)"
    assert (picture[:30, :150] == 255).all(axis=-1).any(), "legend text"
    assert picture[:30, :150].mean() < 90, "the legend box darkens the image under it"
    unverified = draw_matches_on_frame(image, p0, p1, scores)
    assert not (unverified == OUTLIER_BGR).all(axis=-1).any(), "nothing is an outlier when nothing was verified"
    with pytest.raises(ValueError):
        draw_matches(image, image, p0, p1[:-1], scores)


# --------------------------------------------------------------------------- diagnostics


def test_diagnostic_levels():
    assert diagnostic_level({"frames_processed": 30}) == (OK, "ok")
    assert diagnostic_level({"frames_dropped": 3})[0] == WARN
    assert diagnostic_level({"frames_dropped": 3}, DiagnosticThresholds(max_dropped=5))[0] == OK
    assert diagnostic_level({"pose_valid_ratio": 0.2})[0] == WARN
    assert diagnostic_level({"no_pose": "no CameraInfo"}) == (WARN, "no CameraInfo")
    assert diagnostic_level({"stalled": True, "frames_dropped": 1})[0] == ERROR
    level, message = diagnostic_level({"seconds_since_output": 9.0})
    assert level == ERROR and "9.0 s" in message


def test_diagnostics_round_trip(factory):
    figures = {"frames_processed": 29, "frames_dropped": 2, "rate_hz": 29.123456789, "stalled": False,
               "device": "cuda:0"}
    msg = build_diagnostics(factory, STAMP, figures, hardware_id="cuda:0 (NVIDIA H100)")
    [report] = decode_diagnostics(wire(factory, msg, "diagnostic_msgs/msg/DiagnosticArray"))
    assert report.stamp_ns == STAMP and report.level == WARN and report.name == DIAGNOSTIC_NAME
    assert report.hardware_id == "cuda:0 (NVIDIA H100)" and report.message == "2 frames dropped"
    assert report.values == {"frames_processed": "29", "frames_dropped": "2", "rate_hz": "29.1235",
                             "stalled": "false", "device": "cuda:0"}


# --------------------------------------------------------------------------- helpers and validation


def test_validation_errors(factory):
    result = make_result()
    result.matches[0].track_ids = result.matches[0].track_ids.copy()
    result.matches[0].track_ids[0] = MAX_EXACT_TRACK_ID + 2
    with pytest.raises(ValueError, match="2\\*\\*53"):
        build_matches(factory, result)
    result = make_result()
    result.matches[1].scores = result.matches[1].scores[:-1]
    with pytest.raises(ValueError, match="inconsistent"):
        build_matches(factory, result)
    result = make_result()
    result.matches[0].inliers = np.zeros(0, bool)  # "no pose": empty inliers read as all False
    assert not decode_matches(build_matches(factory, result)).for_keyframe(41).inliers.any()
    with pytest.raises(ValueError):
        ns_to_stamp(2 ** 31 * 10 ** 9)
    assert ns_to_stamp(-1) == (-1, 999_999_999)


def test_read_points_general_clouds():
    """Big-endian, multi-row, padded clouds from other producers decode too."""
    f = RosbagsTypes()
    T = f.get
    fields = [T("sensor_msgs/msg/PointField")(name="x", offset=0, datatype=7, count=1),
              T("sensor_msgs/msg/PointField")(name="track_id", offset=4, datatype=8, count=1),
              T("sensor_msgs/msg/PointField")(name="v", offset=12, datatype=4, count=2)]
    pts = np.zeros(6, np.dtype({"names": ["x", "track_id", "v"], "formats": [">f4", ">f8", (">u2", (2,))],
                                "offsets": [0, 4, 12], "itemsize": 18}))
    pts["x"] = np.arange(6) * 1.5
    pts["track_id"] = np.arange(6) + 2.0 ** 40
    pts["v"] = np.arange(12).reshape(6, 2)
    rows = pts.view(np.uint8).reshape(2, 3 * 18)
    data = np.concatenate([rows, np.zeros((2, 5), np.uint8)], axis=1).reshape(-1)  # row padding
    msg = T("sensor_msgs/msg/PointCloud2")(header=f.header(5, "x"), height=2, width=3, fields=fields,
                                           is_bigendian=True, point_step=18, row_step=3 * 18 + 5, data=data,
                                           is_dense=True)
    out = read_points(f.deserialize(f.serialize(msg), "sensor_msgs/msg/PointCloud2"))
    np.testing.assert_array_equal(out["x"], pts["x"])
    np.testing.assert_array_equal(out["track_id"], pts["track_id"])
    np.testing.assert_array_equal(out["v"], pts["v"])
    cloud = make_cloud(f, 1, "a", np.zeros(2, [("a", "<f4"), ("b", "<u1")]))
    assert [(p.name, p.offset, p.datatype) for p in cloud.fields] == [("a", 0, 7), ("b", 4, 2)]


def test_factory_for():
    from sensor_msgs.msg import Image

    assert factory_for(Image).flavour == "rclpy"
    assert factory_for(RosbagsTypes().get("sensor_msgs/msg/Image")).flavour == "rosbags"
    f = RosbagsTypes()
    assert factory_for(f) is f
    with pytest.raises(TypeError):
        factory_for(object())


def test_rclpy_field_checks_are_active():
    """Guards the fixture: with rclpy the builders above ran with the generated type checks on."""
    patched = enable_rclpy_field_checks()
    try:
        with pytest.raises(AssertionError):
            RclpyTypes().new("geometry_msgs/msg/Point32", x=np.float32(1.0), y=0.0, z=0.0)
    finally:
        for module, value in patched:
            module.ros_python_check_fields = value


def test_frame_outputs(factory):
    """What the node and the replay publish per frame (outputs.frame_outputs): the topics, one stamp,
    the frame_id override, ~/features only with intrinsics, ~/debug_image only when asked for."""
    from glue_ros.config import validate
    from glue_ros.geometry import CameraModel

    result = make_result()
    camera = CameraModel.from_intrinsics(FX, FY, CX, CY, width=640, height=480)
    params = validate({"output.frame_id": "cam_override", "output.features": True})
    out = dict(frame_outputs(result, factory, params, camera=camera, debug_image=np.zeros((480, 640), np.uint8),
                             backend="orb + nn"))
    assert list(out) == ["matches", "relative_pose", "keyframes", "features", "debug_image"]
    assert {stamp_to_ns(m.header.stamp) for m in out.values()} == {STAMP}
    assert {m.header.frame_id for m in out.values()} == {"cam_override"}
    m = decode_matches(out["matches"])
    assert len(m) == 48
    assert decode_keyframe(out["keyframes"]).keyframe_id == 42
    features = decode_features(out["features"])
    assert len(features.feature_ids) == 59
    np.testing.assert_allclose(features.normalised, normalise(result.keypoints[result.track_ids >= 0]), atol=1e-6)
    assert out["debug_image"].encoding == "bgr8"
    plain = dict(frame_outputs(make_result(valid=False, keyframe=False), factory, validate({})))
    assert list(plain) == ["matches"] and plain["matches"].header.frame_id == "camera_optical"
    assert "features" not in dict(frame_outputs(result, factory, params))  # no intrinsics, no ~/features


# --------------------------------------------------------------------------- overlays, keyframe chain, path, TF


def test_match_markers_follow_the_debug_image_rules(factory):
    """~/match_markers (LINE_LIST keyframe → frame) and ~/match_points (POINTS): the image's stamp and
    frame_id, the matches viz draws (newest keyframe, capped, stratified) in its drawing order and
    colours (score ramp, outliers red), Foxglove pixel coordinates (+0.5)."""
    from glue_ros.ros.visual import LINE_LIST, POINTS, build_match_markers, decode_image_marker
    from glue_ros.viz import drawing_order, match_colours

    rng = np.random.default_rng(3)
    result = make_result(rng, counts=(55, 30))
    km, cap = result.matches[0], 20  # more matches to the newest keyframe than drawn
    chosen = drawing_order(select_drawn(km.scores, km.inliers, cap), km.scores, km.inliers)
    assert len(chosen) == cap
    bgr = match_colours(km.scores, km.inliers)[chosen]
    rgba = np.concatenate([bgr[:, ::-1] / 255.0, np.ones((len(chosen), 1))], axis=1)
    lines = decode_image_marker(wire(factory, build_match_markers(factory, result, "lines", max_drawn=cap),
                                     "visualization_msgs/msg/ImageMarker"))
    points = decode_image_marker(wire(factory, build_match_markers(factory, result, "points", max_drawn=cap),
                                      "visualization_msgs/msg/ImageMarker"))
    for marker in (lines, points):
        assert marker.stamp_ns == STAMP and marker.frame_id == "camera_optical"
    assert lines.type == LINE_LIST and len(lines.points) == 2 * cap
    np.testing.assert_allclose(lines.pixels()[0::2], km.points_keyframe[chosen], atol=1e-4)
    np.testing.assert_allclose(lines.pixels()[1::2], km.points_frame[chosen], atol=1e-4)
    np.testing.assert_allclose(lines.points[1::2], km.points_frame[chosen] + 0.5, atol=1e-4)
    np.testing.assert_allclose(lines.colours[0::2], rgba, atol=1e-6)
    np.testing.assert_allclose(lines.colours[1::2], rgba, atol=1e-6)
    assert points.type == POINTS and len(points.points) == cap
    assert len(decode_image_marker(build_match_markers(factory, result, "points")).points) == 55  # < MAX_DRAWN
    np.testing.assert_allclose(points.pixels(), km.points_frame[chosen], atol=1e-4)
    np.testing.assert_allclose(points.colours, rgba, atol=1e-6)
    outliers = ~km.inliers[chosen]
    assert outliers.any() and np.allclose(points.colours[outliers, :3], np.array(OUTLIER_BGR[::-1]) / 255.0)
    assert (np.diff(outliers.astype(int)) <= 0).all(), "outliers first (drawn underneath)"
    # no matches (first frame): an empty marker that clears the overlay; no pose: not verified, no red
    first = make_result(rng, counts=())
    assert len(decode_image_marker(build_match_markers(factory, first, "lines")).points) == 0
    unverified = make_result(rng, counts=(20,))
    unverified.matches[0].inliers[:] = False
    colours = decode_image_marker(build_match_markers(factory, unverified, "points")).colours
    red = np.isclose(colours[:, :3], np.array(OUTLIER_BGR[::-1]) / 255.0, atol=1e-3).all(axis=1)
    assert len(colours) == 20 and not red.any()
    with pytest.raises(ValueError):
        build_match_markers(factory, result, "circles")


def _pose_result(stamp, matched_id, T_rel, *, new_keyframe=None, valid=True, rotation_valid=None):
    """A FrameResult that matched keyframe ``matched_id`` (None: no keyframe matched) with relative
    pose ``T_rel`` (4x4, its translation normalised as the pipeline's), becoming keyframe
    ``new_keyframe`` if given."""
    from glue_ros.results import FrameResult, KeyframeDecision

    matches = []
    if matched_id is not None:
        t = T_rel[:3, 3]
        pose = RelativePose(valid=valid, reason="ok" if valid else "too_few_inliers", rotation=T_rel[:3, :3],
                            translation=t / np.linalg.norm(t) if valid else np.zeros(3),
                            rotation_valid=valid if rotation_valid is None else rotation_valid)
        empty2 = np.zeros((0, 2), np.float32)
        matches = [KeyframeMatches(matched_id, 0, np.zeros((0, 2), np.int64), np.zeros(0, np.float32), empty2,
                                   empty2, np.zeros(0, np.int64), np.zeros(0, bool), pose)]
    decision = KeyframeDecision(new_keyframe is not None, "parallax" if new_keyframe is not None else "",
                                new_keyframe if new_keyframe is not None else (matched_id or 0))
    return FrameResult(stamp, "cam", (640, 480), np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                       np.zeros(0, np.int64), np.zeros((0, 2), np.float32), matches, decision)


def _T(R, t):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def test_keyframe_trajectory_chains_unit_steps_up_to_scale():
    """glue_ros.trajectory against exact camera poses: rotations compose exactly, every keyframe step
    has length 1 in the direction of the true step (monocular: up to scale, per step); an invalid
    pose gives no camera and a keyframe without one holds its predecessor's pose (a gap); a reset or
    an unknown keyframe restarts the chain; the path keeps at most max_poses."""
    from glue_ros.trajectory import KeyframeTrajectory

    rng = np.random.default_rng(5)
    world = [_T(np.eye(3), np.zeros(3))]  # true camera poses T_world_cam; keyframes at 0, 3, 6, 9
    for i in range(1, 10):
        world.append(world[-1] @ _T(rot(rng.standard_normal(3), 0.05), rng.standard_normal(3) * (0.1 + i)))
    chain = KeyframeTrajectory(max_poses=100)
    step = chain.update(_pose_result(0, None, None, new_keyframe=0))
    assert step.restarted and step.keyframe_added and np.allclose(step.camera, np.eye(4))
    keyframe, kf_index, cameras = 0, 0, {0: step.camera}
    for i in range(1, 10):
        T_rel = np.linalg.inv(world[kf_index]) @ world[i]
        becomes = keyframe + 1 if i % 3 == 0 else None
        step = chain.update(_pose_result(i, keyframe, T_rel, new_keyframe=becomes))
        assert not step.restarted and step.keyframe_added == (becomes is not None)
        cameras[i] = step.camera
        if becomes is not None:
            keyframe, kf_index = becomes, i
    poses = chain.poses
    assert [p.keyframe_id for p in poses] == [0, 1, 2, 3] and [p.stamp_ns for p in poses] == [0, 3, 6, 9]
    for a, b in zip(poses, poses[1:]):
        step_est = np.linalg.inv(a.pose) @ b.pose
        step_true = np.linalg.inv(world[a.stamp_ns]) @ world[b.stamp_ns]
        np.testing.assert_allclose(step_est[:3, :3], step_true[:3, :3], atol=1e-9)
        assert abs(np.linalg.norm(step_est[:3, 3]) - 1.0) < 1e-9, "unit length per keyframe step"
        np.testing.assert_allclose(step_est[:3, 3], step_true[:3, 3] / np.linalg.norm(step_true[:3, 3]), atol=1e-9)
        np.testing.assert_allclose(b.pose[:3, :3], world[b.stamp_ns][:3, :3], atol=1e-9)  # rotations are exact
    # a frame: its keyframe's pose times its (unit) relative pose
    rel = np.linalg.inv(world[3]) @ world[4]
    np.testing.assert_allclose(cameras[4], poses[1].pose @ _T(rel[:3, :3], rel[:3, 3] / np.linalg.norm(rel[:3, 3])),
                               atol=1e-9)
    # rotation only (pure rotation): R, no translation; nothing usable: no camera
    R = rot([0, 1, 0], 0.2)
    step = chain.update(_pose_result(10, 3, _T(R, [1, 0, 0]), valid=False, rotation_valid=True))
    np.testing.assert_allclose(step.camera, poses[-1].pose @ _T(R, np.zeros(3)), atol=1e-12)
    assert chain.update(_pose_result(11, 3, _T(R, [1, 0, 0]), valid=False)).camera is None
    # a keyframe without a usable pose holds its predecessor's pose (gap), the chain goes on from it
    step = chain.update(_pose_result(12, 3, _T(R, [1, 0, 0]), valid=False, new_keyframe=4))
    assert step.keyframe_added and step.camera is None and chain.gaps == 1
    np.testing.assert_allclose(chain.poses[-1].pose, poses[-1].pose)
    assert chain.update(_pose_result(13, 4, _T(R, [0, 0, 2]))).camera is not None
    # reset (no keyframe matched, the frame is a keyframe) and an unknown keyframe: the chain restarts
    step = chain.update(_pose_result(14, None, None, new_keyframe=5))
    assert step.restarted and [p.keyframe_id for p in chain.poses] == [5] and chain.restarts == 2
    assert chain.update(_pose_result(15, 99, _T(R, [0, 0, 1]))).camera is None  # not a keyframe: nothing
    assert chain.update(_pose_result(16, 99, _T(R, [0, 0, 1]), new_keyframe=6)).restarted
    # bounded
    small = KeyframeTrajectory(max_poses=3)
    small.update(_pose_result(0, None, None, new_keyframe=0))
    for k in range(1, 6):
        small.update(_pose_result(k, k - 1, _T(np.eye(3), [0, 0, 1]), new_keyframe=k))
    assert [p.keyframe_id for p in small.poses] == [3, 4, 5]
    np.testing.assert_allclose(small.poses[-1].pose[:3, 3], [0, 0, 5])
    assert small.update(_pose_result(6, 5, _T(np.eye(3), [0, 0, 1]))).camera[2, 3] == pytest.approx(6.0)


def test_keyframe_path_and_tf_round_trip(factory):
    from glue_ros.ros.visual import build_keyframe_path, build_tf, decode_path, decode_tf
    from glue_ros.trajectory import KeyframePose

    poses = [KeyframePose(k, 1_000 + k, _T(rot([1, 2, 3], 0.1 * k), [k, -k, 0.5 * k])) for k in range(5)]
    cache: dict = {}
    msg = build_keyframe_path(factory, poses, STAMP, "glue_ros_keyframe", cache)
    back = decode_path(wire(factory, msg, "nav_msgs/msg/Path"))
    assert back.stamp_ns == STAMP and back.frame_id == "glue_ros_keyframe"
    assert back.stamps_ns.tolist() == [1_000 + k for k in range(5)]
    np.testing.assert_allclose(back.poses, np.stack([p.pose for p in poses]), atol=1e-12)
    again = build_keyframe_path(factory, poses[2:], STAMP + 1, "glue_ros_keyframe", cache)
    assert again.poses[0] is msg.poses[2] and len(cache) == 3, "pose messages are reused, old ones dropped"
    if factory.flavour == "rclpy" and importlib.util.find_spec("tf2_msgs") is None:
        return  # no tf2_msgs in the pip venv: /tf is checked with the rosbags classes
    tf = decode_tf(wire(factory, build_tf(factory, poses[3].pose, STAMP, "glue_ros_keyframe", "cam"),
                        "tf2_msgs/msg/TFMessage"))
    (t,) = tf
    assert (t.stamp_ns, t.parent, t.child) == (STAMP, "glue_ros_keyframe", "cam")
    np.testing.assert_allclose(t.matrix, poses[3].pose, atol=1e-12)


def test_frame_outputs_overlays_path_and_tf():
    """frame_outputs with the visual outputs: markers only when asked for, in the image's frame_id;
    the path when the chain changed (keyframe), framed in output.tf_parent_frame; /tf when asked for
    and the frame has a pose, to output.tf_child_frame (default: the outputs' frame_id)."""
    from glue_ros.config import ParameterError, validate
    from glue_ros.ros.outputs import MARKER_TOPICS, TF_TOPIC, OutputState, check_output_params

    factory = RosbagsTypes()
    params = validate({"output.frame_id": "cam_override"})
    state = OutputState(params)
    first = _pose_result(STAMP, None, None, new_keyframe=0)
    out = dict(frame_outputs(first, factory, params, markers=MARKER_TOPICS, state=state, tf=True))
    assert list(out) == ["matches", "keyframes", "match_markers", "match_points", "keyframe_path", "/tf"]
    assert out["match_markers"].header.frame_id == "cam" and out["keyframe_path"].header.frame_id == \
        "glue_ros_keyframe"
    assert out["/tf"].transforms[0].child_frame_id == "cam_override"
    assert {stamp_to_ns(out[k].header.stamp) for k in ("matches", "match_markers", "keyframe_path")} == {STAMP}
    T = _T(rot([0, 0, 1], 0.1), [0, 0, 1])
    plain = dict(frame_outputs(_pose_result(STAMP + 1, 0, T), factory, params, state=state))
    assert "keyframe_path" not in plain and "/tf" not in plain and "match_markers" not in plain
    custom = validate({"output.tf_child_frame": "glue_ros_camera", "output.tf_parent_frame": "odom_vis"})
    state = OutputState(custom)
    frame_outputs(first, factory, custom, state=state)
    out = dict(frame_outputs(_pose_result(STAMP + 2, 0, T, new_keyframe=1), factory, custom, state=state, tf=True,
                             path=False))
    assert "keyframe_path" not in out, "path=False: not built (the node: no subscriber)"
    (tf,) = out[TF_TOPIC[0]].transforms
    assert (tf.header.frame_id, tf.child_frame_id) == ("odom_vis", "glue_ros_camera")
    assert len(state.trajectory.poses) == 2
    for bad in ({"output.tf_parent_frame": " "}, {"output.tf_parent_frame": "a", "output.tf_child_frame": "a"}):
        with pytest.raises(ParameterError, match="output.tf_"):
            check_output_params(validate(bad))


# --------------------------------------------------------------------------- module structure


def import_graph(package: Path) -> dict[str, set[str]]:
    """module → the modules of the same package it imports, at module level or inside functions
    (a lazy import closes a circle as well), from the source (nothing is imported)."""
    root = package.parent
    modules = {".".join(p.relative_to(root).with_suffix("").parts[:-1] if p.name == "__init__.py"
                        else p.relative_to(root).with_suffix("").parts): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]).rstrip(".") \
                    if node.level else node.module
                candidates = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules:  # `from pkg import name` → pkg
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name and candidate != package.name:
                    targets.add(candidate)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle (a → b → … → a), or [] if there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return []


def test_no_import_cycles():
    import glue_ros

    graph = import_graph(Path(glue_ros.__file__).parent)
    assert "glue_ros.ros.msg_types" in graph["glue_ros.ros.image_codec"]  # the graph sees relative imports
    assert "glue_ros.ros.node" in graph and "glue_ros.viz" in graph["glue_ros.ros.outputs"]
    assert find_cycle(graph) == []
    # the checker itself finds a circle closed by a lazy import inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_messages_module_stays_small():
    """messages.py is the contract topics only: types, stamps, PointCloud2 packing, VINS features,
    diagnostics and debug drawing live in their own modules."""
    import glue_ros.ros.messages as messages

    assert len(Path(messages.__file__).read_text().splitlines()) <= 300

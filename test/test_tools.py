"""The command-line tools on real files: rosbag2 bags written and read with rosbags (mcap and
sqlite3), the two-image CLI with real (random-weight) checkpoints, pose evaluation, and the demo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from glue_ros.config import validate
from glue_ros.ros.bag_io import open_reader
from glue_ros.ros.diagnostics import decode_diagnostics
from glue_ros.ros.messages import decode_keyframe, decode_matches, decode_relative_pose, pose_keyframe
from glue_ros.ros.msg_types import RosbagsTypes
from glue_ros.ros.visual import decode_image_marker, decode_path, decode_tf
from glue_ros.synthetic import parse_stamp, render_sequence
from glue_ros.tools.make_bag import BagLayout, make_synthetic_bag
from glue_ros.tools.replay import replay_offline

ROOT = Path(__file__).resolve().parents[1]
CLASSICAL = {"extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 500}


def cli(module: str, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", f"glue_ros.tools.{module}", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=full_env)


def read_bag(path: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    """topic → [(log time, deserialised message, raw bytes)]."""
    types = RosbagsTypes()
    reader = open_reader(path)
    out: dict[str, list] = {}
    try:
        for connection, log_ns, raw in reader.messages():
            out.setdefault(connection.topic, []).append((log_ns, types.deserialize(raw, connection.msgtype),
                                                         bytes(raw)))
    finally:
        reader.close()
    return out


# ----------------------------------------------------------------------------- replay


@pytest.mark.parametrize("storage, compressed", [("mcap", ""), ("sqlite3", "jpeg"), ("mcap", "png")])
def test_replay_bag_round_trip_is_complete_and_deterministic(tmp_path, storage, compressed):
    layout = BagLayout(compressed=compressed, encoding="bgr8")
    seq = make_synthetic_bag(tmp_path / "in", 12, motion="sideways", width=320, height=240, storage=storage,
                             layout=layout)
    params = validate(dict(CLASSICAL, **{"keyframes.max_interval_s": 0.1}))
    outputs = []
    for run, ahead in enumerate(("on", "off")):  # extraction one frame ahead on its thread, then serial
        summary = replay_offline(str(tmp_path / "in"), str(tmp_path / f"out{run}"),
                                 dict(params, **{"pipeline.extract_ahead": ahead}), progress=False)
        assert summary.frames == summary.processed == len(seq) and summary.skipped == 0
        outputs.append(read_bag(tmp_path / f"out{run}"))
    bag = outputs[0]
    prefix = "/glue_ros_matcher/"
    matches = [m for _, m, _ in bag[prefix + "matches"]]
    assert [decode_matches(m).stamp_ns for m in matches] == seq.stamps_ns, "one output per frame, stamps kept"
    assert [log for log, _, _ in bag[prefix + "matches"]] == seq.stamps_ns, "logged at the input stamps"
    keyframe_stamps = [decode_keyframe(m).stamp_ns for _, m, _ in bag[prefix + "keyframes"]]
    assert keyframe_stamps[0] == seq.stamps_ns[0] and len(keyframe_stamps) >= 3
    for m in matches[1:]:
        decoded = decode_matches(m)
        assert len(decoded) > 50
        assert set(decoded.keyframe_stamp_ns.tolist()) <= set(keyframe_stamps)
        assert (decoded.keyframe_stamp_ns < decoded.stamp_ns).all()
    poses = {decode_relative_pose(m).stamp_ns: m for _, m, _ in bag[prefix + "relative_pose"]}
    assert len(poses) >= 4  # frames just after a keyframe have too little parallax for a valid pose
    for stamp in poses:
        _, kf_stamp = pose_keyframe(stamp, matches[seq.stamps_ns.index(stamp)])
        assert kf_stamp in keyframe_stamps
    # a short bag (< 30 frames) still has its /diagnostics: once, at the end, with every frame counted
    (diagnostics,) = bag["/diagnostics"]
    (report,) = decode_diagnostics(diagnostics[1])
    assert diagnostics[0] == seq.stamps_ns[-1] and int(report.values["frames_processed"]) == len(seq)
    # the input as it came (raw or compressed; byte for byte) and the overlays, path and TF
    source = read_bag(tmp_path / "in")
    for topic in source:
        assert [raw for _, _, raw in bag[topic]] == [raw for _, _, raw in source[topic]], topic
    for suffix in ("match_markers", "match_points"):
        markers = [decode_image_marker(m) for _, m, _ in bag[prefix + suffix]]
        assert [mk.stamp_ns for mk in markers] == seq.stamps_ns
        assert {mk.frame_id for mk in markers} == {layout.frame_id}
    paths = [decode_path(m) for _, m, _ in bag[prefix + "keyframe_path"]]
    assert [p.stamp_ns for p in paths] == keyframe_stamps and len(paths[-1].poses) == len(keyframe_stamps)
    tf = [decode_tf(m)[0] for _, m, _ in bag["/tf"]]
    assert {t.stamp_ns for t in tf} >= set(poses) and {(t.parent, t.child) for t in tf} == \
        {("glue_ros_keyframe", layout.frame_id)}
    # second run (serial): byte-identical messages on every topic (diagnostics would carry measured rates)
    second = outputs[1]
    assert set(bag) == set(second)
    for topic in bag:
        if topic != "/diagnostics":
            assert [raw for _, _, raw in bag[topic]] == [raw for _, _, raw in second[topic]], topic


def any_reader_topics(path: Path) -> dict[str, list]:
    """topic → messages, read with rosbags' AnyReader (what other tools use)."""
    from rosbags.highlevel import AnyReader

    from glue_ros.ros.msg_types import default_typestore

    out: dict[str, list] = {}
    with AnyReader([path], default_typestore=default_typestore()) as reader:
        for connection, _, raw in reader.messages():
            out.setdefault(connection.topic, []).append(reader.deserialize(raw, connection.msgtype))
    return out


def test_replay_bag_alone_shows_camera_matches_and_path(tmp_path):
    """glue-ros-replay's output bag holds what Foxglove needs with no other file: the camera images
    and CameraInfo (--images, the default), the overlays, the keyframe path, /tf and /diagnostics every
    30 frames and at the end; --no-images leaves the input out. Read back with rosbags' AnyReader."""
    make_synthetic_bag(tmp_path / "in", 35, motion="sideways", width=160, height=120,
                       layout=BagLayout(compressed="jpeg"))
    sets = ["--set", "extractor.type=orb", "--set", "matcher.type=nn", "--set", "keyframes.max_interval_s=0.2"]
    out = cli("replay", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no-progress", *sets)
    assert out.returncode == 0, out.stderr
    topics = any_reader_topics(tmp_path / "out")
    prefix = "/glue_ros_matcher/"
    assert len(topics["/camera/image"]) == len(topics["/camera/camera_info"]) == 35
    assert "jpeg" in topics["/camera/image"][0].format  # CompressedImage, as it came
    for suffix in ("matches", "match_markers", "match_points"):
        assert len(topics[prefix + suffix]) == 35, suffix
    assert len(topics[prefix + "keyframe_path"]) == len(topics[prefix + "keyframes"]) >= 3 and len(topics["/tf"]) >= 30
    reports = [decode_diagnostics(m)[0].values for m in topics["/diagnostics"]]
    assert [int(r["frames_processed"]) for r in reports] == [30, 35]
    bare = cli("replay", str(tmp_path / "in"), "--output", str(tmp_path / "bare"), "--no-progress", "--no-images",
               *sets)
    assert bare.returncode == 0, bare.stderr
    bare_topics = any_reader_topics(tmp_path / "bare")
    assert not {"/camera/image", "/camera/camera_info"} & set(bare_topics)
    assert len(bare_topics[prefix + "match_markers"]) == 35


def test_replay_stopped_by_sigterm_closes_a_readable_bag(tmp_path):
    """SIGTERM (timeout, docker, systemd) during an offline replay: it stops after the current frame,
    the output bag is closed, readable, consistent (diagnostics at the end count what it holds), one
    line on stderr, exit 143 (the replay is incomplete)."""
    import signal
    import time

    make_synthetic_bag(tmp_path / "in", 150, motion="sideways", width=320, height=240)
    out_bag = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "glue_ros.tools.replay", str(tmp_path / "in"), "--output",
                             str(out_bag), "--no-progress", "--set", "extractor.type=orb", "--set", "matcher.type=nn"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 120
        # a few chunks written (about 4 raw 320x240 frames per MiB): the replay is under way
        def written() -> int:
            return sum(f.stat().st_size for f in out_bag.glob("*.mcap")) if out_bag.exists() else 0

        while written() < 3 * 2 ** 20:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("stopped (SIGTERM) after ")
    assert len(stderr.strip().splitlines()) == 1, stderr
    topics = any_reader_topics(out_bag)
    matches = topics["/glue_ros_matcher/matches"]
    assert 0 < len(matches) < 150
    final = decode_diagnostics(topics["/diagnostics"][-1])[0].values
    assert int(final["frames_processed"]) == len(matches)
    assert f"frames {final['frames_received']} (processed {len(matches)}" in stdout


def test_replay_synthetic_ground_truth_through_cli(tmp_path):
    made = cli("make_bag", str(tmp_path / "in"), "--synthetic", "24", "--motion", "sideways", "--width", "640",
               "--height", "480", "--seed", "3")
    assert made.returncode == 0, made.stderr
    gt = tmp_path / "in.groundtruth.txt"
    assert gt.is_file()
    out = cli("replay", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--no-progress",
              "--set", "extractor.type=sift", "--set", "matcher.type=nn", "--set", "keyframes.max_interval_s=0.5",
              "--summary-json", str(tmp_path / "summary.json"))
    assert out.returncode == 0, out.stderr
    assert "keyframes" in out.stdout and "frames/s" in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 24 and summary["processed"] == 24
    ev = cli("eval_sequence", str(tmp_path / "out"), str(gt), "--json", str(tmp_path / "ev.json"))
    assert ev.returncode == 0, ev.stderr
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["pairs"] >= 20
    assert report["rotation_median_deg"] < 0.5 and report["translation_median_deg"] < 2.0


def test_replay_bad_bags_give_clear_errors(tmp_path):
    make_synthetic_bag(tmp_path / "good", 3, width=160, height=120)
    cases = {
        "missing": (["--output", str(tmp_path / "o1")], str(tmp_path / "nope"), "does not exist"),
        "topic": (["--output", str(tmp_path / "o2"), "--image-topic", "/nope"], str(tmp_path / "good"),
                  "topic '/nope' is not in the bag"),
        "exists": (["--output", str(tmp_path / "good")], str(tmp_path / "good"), "already exists"),
        "param": (["--output", str(tmp_path / "o3"), "--set", "matcher.type=magic"], str(tmp_path / "good"),
                  "parameter 'matcher.type'"),
    }
    # an empty bag (no messages) and a truncated one
    from glue_ros.ros.bag_io import BagWriter

    with BagWriter(tmp_path / "empty") as writer:
        writer.write("/camera/image", "sensor_msgs/msg/Image",
                     RosbagsTypes().new("sensor_msgs/msg/Image", header=RosbagsTypes().header(1, "c"), height=0,
                                        width=0, encoding="rgb8", is_bigendian=0, step=0,
                                        data=np.zeros(0, np.uint8)), 1)
    cases["empty"] = (["--output", str(tmp_path / "o4"), "--set", "extractor.type=orb", "--set", "matcher.type=nn"],
                      str(tmp_path / "empty"), "")
    truncated = tmp_path / "trunc"
    make_synthetic_bag(truncated, 6, width=160, height=120)
    mcap = next(truncated.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    cases["truncated"] = (["--output", str(tmp_path / "o5"), "--set", "extractor.type=orb", "--set",
                           "matcher.type=nn"], str(truncated), "")
    for name, (args, bag, fragment) in cases.items():
        result = cli("replay", bag, "--no-progress", *args)
        assert result.returncode != 0 or name == "empty", (name, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        if result.returncode != 0:
            assert result.stderr.strip().startswith("error:") and fragment in result.stderr, (name, result.stderr)
    # the empty-image bag is readable: its one frame is a counted skip, and the output bag is valid
    empty = cli("replay", str(tmp_path / "empty"), "--no-progress", "--output", str(tmp_path / "o6"),
                "--set", "extractor.type=orb", "--set", "matcher.type=nn")
    assert "skipped 1" in empty.stdout, empty.stdout + empty.stderr
    # the truncated bag's output was still closed properly and can be read
    if (tmp_path / "o5").exists():
        read_bag(tmp_path / "o5")


def test_make_bag_from_image_folder_with_tum_rgb_txt(tmp_path):
    seq = render_sequence(5, width=160, height=120, motion="forward")
    folder = tmp_path / "rgb"
    folder.mkdir()
    lines = []
    for i, (image, stamp) in enumerate(zip(seq.images, seq.stamps_ns)):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        lines.append(f"{stamp / 1e9:.6f} rgb/{i}.png")
    (tmp_path / "rgb.txt").write_text("# timestamp filename\n" + "\n".join(lines) + "\n")
    result = cli("make_bag", str(tmp_path / "bag"), "--images", str(folder), "--rgb-txt", str(tmp_path / "rgb.txt"),
                 "--intrinsics", "125,125,79.5,59.5", "--storage", "sqlite3")
    assert result.returncode == 0, result.stderr
    bag = read_bag(tmp_path / "bag")
    images = [m for _, m, _ in bag["/camera/image"]]
    infos = [m for _, m, _ in bag["/camera/camera_info"]]
    assert len(images) == len(infos) == 5
    assert [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images] == \
        [parse_stamp(l.split()[0]) for l in lines]  # exact decimal parsing
    assert infos[0].k[0] == 125 and infos[0].width == 160
    from glue_ros.ros.image_codec import decode_image

    np.testing.assert_array_equal(decode_image(images[2]), seq.images[2])
    bad = cli("make_bag", str(tmp_path / "bag2"), "--images", str(tmp_path / "none"), "--rate", "30")
    assert bad.returncode != 0 and "is not a directory" in bad.stderr


def test_replay_counts_corrupt_messages(tmp_path):
    """A CameraInfo or an image that does not deserialise: the CameraInfo is an unusable one (ignored,
    counted), the image a frame without output (rejected.corrupt_message); the rest is replayed."""
    from glue_ros.ros.bag_io import BagWriter
    from glue_ros.ros.camera_info import camera_info_message
    from glue_ros.ros.image_codec import encode_image

    seq = render_sequence(4, width=160, height=120, motion="sideways", seed=1)
    with BagWriter(tmp_path / "in") as writer:
        types = RosbagsTypes(writer.typestore)
        for i, (image, stamp) in enumerate(zip(seq.images, seq.stamps_ns)):
            writer.write("/camera/camera_info", "sensor_msgs/msg/CameraInfo",
                         camera_info_message(types, seq.camera, stamp, "c"), stamp)
            writer.write("/camera/image", "sensor_msgs/msg/Image",
                         encode_image(image, "rgb8", types, stamp_ns=stamp, frame_id="c"), stamp)
        junk = b"\x00\x01\x00\x00\xff"
        writer.writer.write(writer.connections["/camera/camera_info"], seq.stamps_ns[-1] + 1, junk)
        writer.writer.write(writer.connections["/camera/image"], seq.stamps_ns[-1] + 2, junk)
    summary = replay_offline(str(tmp_path / "in"), str(tmp_path / "out"), validate(CLASSICAL), progress=False)
    assert (summary.frames, summary.processed, summary.skipped) == (5, 4, 1)
    assert summary.rejected == {"corrupt_message": 1}
    assert (summary.camera_info_received, summary.camera_info_rejected) == (5, 1)
    assert len(read_bag(tmp_path / "out")["/glue_ros_matcher/matches"]) == 4


def test_frame_input_rules_and_counters():
    """The input path the node and the replay share (glue_ros.ros.frame_input), without ROS: the
    intrinsics rule, what is counted and warned about, and the frames that give no output."""
    from types import SimpleNamespace

    from glue_ros.geometry import CameraModel
    from glue_ros.ros.camera_info import camera_info_message
    from glue_ros.ros.frame_input import CAMERA_INFO_HISTORY, FrameInput
    from glue_ros.ros.image_codec import encode_image

    types = RosbagsTypes()
    cam_a = CameraModel.from_intrinsics(100, 100, 80, 60, 160, 120)
    cam_b = CameraModel.from_intrinsics(200, 200, 80, 60, 160, 120)

    def info(camera, stamp, k=None):
        msg = camera_info_message(types, camera, stamp, "c")
        if k is not None:
            msg.k = np.array(k, float)
        return msg

    warnings = []
    inputs = FrameInput(validate({}), log=lambda key, text: warnings.append((key, text)))
    assert inputs.camera_for(5) is None and inputs.intrinsics == "none"  # nothing usable, no camera.*
    assert inputs.add_camera_info(info(cam_a, 1, k=[0.0] * 9)).startswith("focal length must be positive")
    assert inputs.add_camera_info(None).startswith("unreadable")  # a message that did not deserialise
    assert inputs.add_camera_info(SimpleNamespace(header=None)).startswith("unreadable")
    assert inputs.camera_for(6) is None and inputs.figures()["no_pose"]
    assert [k for k, _ in warnings].count("no_intrinsics") == 1, "warned once"
    assert inputs.add_camera_info(info(cam_a, 10)) == "" and inputs.add_camera_info(info(cam_b, 20)) == ""
    assert inputs.camera_for(10) is not None and inputs.camera_for(10).K[0, 0] == 100  # exact stamp first
    assert inputs.camera_for(15).K[0, 0] == 200  # else the last usable
    inputs.add_camera_info(info(cam_a, 30, k=[float("nan")] * 9))
    assert inputs.camera_for(30).K[0, 0] == 200, "an unusable CameraInfo is not stored"
    for stamp in range(100, 100 + CAMERA_INFO_HISTORY):
        inputs.add_camera_info(info(cam_a, stamp))
    assert inputs.camera_for(20).K[0, 0] == 100, "the oldest left the history: the last usable now"
    figures = inputs.figures()
    assert (figures["camera_info_received"], figures["camera_info_rejected"]) == (6 + CAMERA_INFO_HISTORY, 4)
    assert figures["intrinsics"] == "camera_info" and "no_pose" not in figures
    with_fallback = FrameInput(validate({"camera.fx": 300.0, "camera.fy": 300.0, "camera.cx": 80.0,
                                         "camera.cy": 60.0}))
    with_fallback.add_camera_info(info(cam_a, 1, k=[0.0] * 9))
    assert with_fallback.camera_for(1).K[0, 0] == 300 and with_fallback.intrinsics == "parameters"

    class Stub:  # a FrontEnd that refuses, or runs out of memory
        def __init__(self, outcome):
            self.outcome = outcome

        def process(self, frame, features=None, previous_input_stamp_ns=None, extract_ms=None):
            if isinstance(self.outcome, BaseException):
                raise self.outcome
            return SimpleNamespace(status=self.outcome, frame=frame)

    image = encode_image(np.zeros((120, 160, 3), np.uint8), "rgb8", types, stamp_ns=20, frame_id="c")
    bad = encode_image(np.zeros((120, 160, 3), np.uint8), "rgb8", types, stamp_ns=21, frame_id="c", step=480)
    bad.step = 100
    for msg, frontend in ((image, Stub("repeated_stamp")), (bad, Stub("ok")), (image, Stub(MemoryError("x")))):
        inputs.receive()
        assert inputs.process(frontend, msg) is None and not inputs.busy
    inputs.receive()
    frame, result = inputs.process(Stub("ok"), image)
    assert inputs.busy and frame.stamp_ns == 20 and frame.image.shape == (120, 160, 3)
    assert frame.camera.K[0, 0] == 100  # stamp 20's CameraInfo left the history: the last usable one
    inputs.finish()
    with pytest.raises(ZeroDivisionError):  # anything but running out of memory is the adapter's to handle
        inputs.process(Stub(ZeroDivisionError()), image)
    c = inputs.counters
    assert (c.received, c.processed, dict(c.rejected)) == (4, 1, {"repeated_stamp": 1, "bad_step": 1,
                                                                  "out_of_memory": 1})
    assert c.received == c.processed + c.rejected_total
    assert any(k == "bad_step" and t.endswith("[bad_step; 1 so far]") for k, t in warnings)


# ----------------------------------------------------------------------------- two-image CLI


@pytest.fixture(scope="module")
def image_pair(tmp_path_factory):
    seq = render_sequence(6, motion="sideways", seed=2)
    folder = tmp_path_factory.mktemp("pair")
    for i in (0, 5):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(seq.images[i], cv2.COLOR_RGB2BGR))
    return folder / "0.png", folder / "5.png", seq


@pytest.mark.parametrize("matcher", ["lightglue", "superglue"])
def test_match_cli_with_learned_checkpoints(image_pair, matcher, hub_cache, tmp_path):
    a, b, _ = image_pair
    out = cli("match", str(a), str(b), "--set", f"matcher.type={matcher}", "--set", "extractor.max_keypoints=256",
              "--set", "matcher.filter_threshold=0", "--set", "matcher.match_threshold=0",
              "--set", "matcher.sinkhorn_iterations=10",
              "--json", str(tmp_path / "m.json"), "--image", str(tmp_path / "m.png"),
              env={"HF_HUB_CACHE": str(hub_cache)})
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    k0, k1 = np.array(result["keypoints0"]), np.array(result["keypoints1"])
    matches, scores = np.array(result["matches"]).reshape(-1, 2), np.array(result["scores"])
    assert k0.shape == (256, 2) and k1.shape == (256, 2)
    assert len(matches) == len(scores) > 0
    assert (matches[:, 0] < 256).all() and (matches[:, 1] < 256).all()
    assert len(np.unique(matches[:, 0])) == len(matches) and len(np.unique(matches[:, 1])) == len(matches)
    assert (k0 >= 0).all() and (k0[:, 0] < 640).all() and (k0[:, 1] < 480).all()
    assert set(result["timing_ms"]) == {"extract", "match"}
    assert (result["stop_layer"] > 0) == (matcher == "lightglue")
    picture = cv2.imread(str(tmp_path / "m.png"))
    assert picture is not None and picture.shape[1] > 1280


def test_match_cli_classical_and_errors(image_pair, tmp_path, capsys, monkeypatch):
    from glue_ros.tools.match import main as match_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a, b, _ = image_pair
    ok = cli("match", str(a), str(b), "--set", "extractor.type=sift", "--set", "matcher.type=nn",
             "--json", str(tmp_path / "s.json"))
    assert ok.returncode == 0 and len(json.loads((tmp_path / "s.json").read_text())["matches"]) > 100
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for args, fragment in [
        ((str(tmp_path / "missing.png"), str(b)), "does not exist"),
        ((str(tmp_path / "junk.png"), str(b)), "could not be decoded"),
        ((str(a), str(b), "--set", "extractor.max_keypoints=lots"), "parameter 'extractor.max_keypoints'"),
        ((str(a), str(b), "--set", "extractor.nope=1"), "unknown parameter 'extractor.nope'"),
        ((str(a), str(b), "--set", "extractor.type=sift"), "lightglue cannot match sift features"),
        ((str(a), str(b), "--set", "extractor.weights=/no/such/dir"), "do not exist"),
        ((str(a), str(b), "--set", "device=cuda"), "CUDA is not available"),
        ((str(a), str(b), "--params-file", str(tmp_path / "none.yaml")), "params file not found"),
    ]:
        if "cuda" in fragment.lower():
            import torch

            if torch.cuda.is_available():
                continue
        code = match_main(list(args))
        lines = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and fragment in lines[0], (args, lines)
    # the same one-line error from the installed command's process (no traceback, exit status 2)
    result = cli("match", str(tmp_path / "missing.png"), str(b))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: image '{tmp_path / 'missing.png'}' does not exist"]


def test_match_cli_offline_without_weights_explains(image_pair, tmp_path):
    a, b, _ = image_pair
    result = cli("match", str(a), str(b), env={"HF_HUB_CACHE": str(tmp_path / "empty_cache")})
    assert result.returncode != 0
    message = result.stderr.strip()
    for fragment in ("magic-leap-community/superpoint", str(tmp_path / "empty_cache"), "hf download",
                     "local directory"):
        assert fragment in message


# ----------------------------------------------------------------------------- evaluation


def test_eval_pairs_on_synthetic_pairs(tmp_path):
    from glue_ros.evaluation import T_0to1_from_pose

    seq = render_sequence(12, motion="mixed", seed=9)
    K = seq.camera.K
    lines = []
    for i, j in [(0, 6), (2, 8), (4, 11), (1, 10)]:
        for k in (i, j):
            cv2.imwrite(str(tmp_path / f"{k}.png"), cv2.cvtColor(seq.images[k], cv2.COLOR_RGB2BGR))
        T_rel = np.linalg.inv(seq.poses[i]) @ seq.poses[j]
        T = T_0to1_from_pose(T_rel[:3, :3], T_rel[:3, 3])
        lines.append(" ".join([f"{i}.png", f"{j}.png", "0", "0", *map(str, K.reshape(-1)), *map(str, K.reshape(-1)),
                               *map(str, T.reshape(-1))]))
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    result = cli("eval_pairs", str(tmp_path / "pairs.txt"), str(tmp_path), "--set", "extractor.type=sift",
                 "--set", "matcher.type=nn", "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    assert set(report) >= {"auc@5", "auc@10", "auc@20", "precision", "matching_score", "pairs"}
    assert report["auc@5"] > 60 and report["auc@20"] > 85 and report["precision"] > 80
    assert [p["name0"] for p in report["pairs"]] == ["0.png", "2.png", "4.png", "1.png"]
    assert all(p["rotation_error_deg"] < 1.0 and p["inliers"] > 50 for p in report["pairs"])
    assert "AUC@5" in result.stdout
    missing = cli("eval_pairs", str(tmp_path / "nope.txt"), str(tmp_path))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


# ----------------------------------------------------------------------------- demo


def test_demo_runs_real_learned_weights_offline(tmp_path):
    """Without the SuperPoint hub weights the demo says so in one note and runs XFeat + LighterGlue with
    the real packaged weights: learned matches and an accurate pose on the synthetic ground truth."""
    result = cli("demo", "--output", str(tmp_path / "demo"), "--frames", "12",
                 env={"HF_HUB_CACHE": str(tmp_path / "no_cache")}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "NOTE: weights 'magic-leap-community/superpoint' are not available" in text and "hf download" in text
    assert "profile xfeat_lighterglue" in text and "(xfeat + lightglue)" in text
    median = float(text.split("rotation error median ")[1].split(" deg")[0])
    valid, pairs = (int(x) for x in text.split(" valid poses of ")[0].split()[-1:] + [text.split(" valid poses of ")[1].split(":")[0]])
    assert median < 0.5 and valid >= pairs - 1, text  # real weights: sub-degree rotation on every pair
    for name in ("input_bag", "output_bag", "matches.png", "groundtruth.txt"):
        assert (tmp_path / "demo" / name).exists(), name
    assert "/glue_ros_matcher/matches" in read_bag(tmp_path / "demo" / "output_bag")

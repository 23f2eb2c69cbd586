"""Faults: broken weights, an unusable device, out of memory, vanishing subscribers, a paused camera.

* Start-up faults run the real node process (``python -m glue_ros.ros.node``) and expect a non-zero
  exit within seconds, one ``error:`` line that says what is wrong, and no traceback: missing /
  empty / corrupt / truncated / mismatched / header-bomb safetensors, invalid config.json or one
  with impossible sizes, a hub id that is not cached offline, ``device: cuda`` without CUDA.
* Out of memory: the node class runs in this process (its own rclpy context on the test graph's
  domain) so its extractor / matcher can be wrapped to raise ``torch.OutOfMemoryError``: the frame
  is dropped and counted (``rejected.out_of_memory``), nothing of it remains in the pipeline (no
  reset, the next frame is matched against the keyframe from before), the node keeps publishing.
* A subscriber that disappears mid-stream (a destroyed subscription; a whole participant that
  looked at ~/debug_image going away): the node keeps publishing, no error.
* The camera stops for longer than ``keyframes.reset_gap_s`` and resumes: one reset (stamp_gap),
  the resumed frame is a new keyframe with no matches, the next is matched against it; the pause
  itself is "no input", not a stalled matcher.
"""
from __future__ import annotations

import struct
import threading
import time

import numpy as np
import pytest
import torch

import rosgraph as rg  # before any rclpy.init: isolates this process' DDS graph
from glue_ros.ros.messages import decode_keyframe, decode_matches
from glue_ros.synthetic import render_sequence

ORB = {"device": "cpu", "extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 300,
       "diagnostics.period_s": 0.1}


@pytest.fixture(scope="module")
def seq():
    return render_sequence(40, 160, 120, motion="sideways", speed=1.5, seed=4)


_clock = [0]


def now_stamps(count: int, period_ns: int = 33_333_333) -> list[int]:
    start = max(time.time_ns(), _clock[0] + period_ns)
    _clock[0] = start + (count - 1) * period_ns
    return [start + i * period_ns for i in range(count)]


# =============================================================================== start-up faults


def _broken_weights(kind: str, good, tmp):
    """A local weights directory broken in the way ``kind`` says (built from the good checkpoint)."""
    directory = tmp / kind
    directory.mkdir()
    config = (good / "config.json").read_bytes()
    weights = (good / "model.safetensors").read_bytes()
    if kind == "missing_dir":
        directory.rmdir()
        return directory, "do not exist"
    if kind == "empty_dir":
        return directory, "config.json is missing"
    (directory / "config.json").write_bytes(config)
    if kind == "no_safetensors":
        (directory / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")  # never read: no pickle path
        return directory, "model.safetensors is missing"
    if kind == "corrupt":
        rng = np.random.default_rng(1)
        (directory / "model.safetensors").write_bytes(rng.integers(0, 256, len(weights), dtype=np.uint8).tobytes())
        return directory, "is not a readable safetensors file"
    if kind == "truncated":
        (directory / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        return directory, "is not a readable safetensors file"
    if kind == "header_bomb":  # declares a 1 TB JSON header in a 16-byte file
        (directory / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}" + bytes(6))
        return directory, "is not a readable safetensors file"
    if kind == "wrong_tensors":  # a valid safetensors file, but of another model
        from safetensors.torch import save_file

        save_file({"not.a.superpoint.weight": torch.zeros(3)}, str(directory / "model.safetensors"))
        return directory, "do not fit"
    if kind == "bad_sizes":  # valid JSON, but a size torch cannot build (was a RuntimeError traceback)
        import json

        cfg = json.loads(config)
        cfg["encoder_hidden_sizes"] = [64, -5, 128, 128]
        (directory / "config.json").write_text(json.dumps(cfg))
        (directory / "model.safetensors").write_bytes(weights)
        return directory, "config.json 'encoder_hidden_sizes' must be an integer in [1, 65536], got -5"
    if kind == "bad_config":
        (directory / "config.json").write_text("{not json")
        (directory / "model.safetensors").write_bytes(weights)
        return directory, "is not valid JSON"
    raise ValueError(kind)


WEIGHT_FAULTS = ["missing_dir", "empty_dir", "no_safetensors", "corrupt", "truncated", "header_bomb", "wrong_tensors",
                 "bad_config", "bad_sizes"]


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


def test_broken_weights_and_unusable_device_exit_with_one_clear_error(checkpoint_dirs, hub_cache, tmp_path):
    """Every fault at once (each a node process): exit code 2 within seconds, exactly one error line,
    naming the problem, no traceback, never 'ready'."""
    cases: dict[str, tuple[dict, str, dict]] = {}
    for kind in WEIGHT_FAULTS:
        directory, text = _broken_weights(kind, checkpoint_dirs["superpoint"], tmp_path)
        cases[f"extractor_{kind}"] = ({"extractor.type": "superpoint", "matcher.type": "nn",
                                       "extractor.weights": str(directory)}, text, {})
    (tmp_path / "lg").mkdir()
    directory, text = _broken_weights("truncated", checkpoint_dirs["lightglue"], tmp_path / "lg")
    cases["matcher_truncated"] = ({"extractor.type": "superpoint", "matcher.type": "lightglue",
                                   "matcher.weights": str(directory)}, text,
                                  {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"})
    empty_cache = tmp_path / "empty_hub"
    empty_cache.mkdir()
    cases["hub_not_cached"] = ({"extractor.type": "superpoint", "matcher.type": "nn"},
                               "weights 'magic-leap-community/superpoint' are not available",
                               {"HF_HUB_CACHE": str(empty_cache), "HF_HUB_OFFLINE": "1"})
    if not torch.cuda.is_available():
        cases["cuda_without_cuda"] = ({"device": "cuda"}, "device 'cuda' requested but CUDA is not available", {})
        cases["cuda_index"] = ({"device": "cuda:1"}, "device 'cuda:1' requested but CUDA is not available", {})
    cases["fp16_on_cpu"] = ({"device": "cpu", "precision": "fp16"}, "precision fp16 needs a CUDA device", {})

    procs = {}
    try:
        for name, (params, _, env) in cases.items():
            procs[name] = rg.start_node(namespace=f"/t_fault_{name}", params=dict(ORB, **params), log_dir=tmp_path,
                                        label=name, env=rg.child_env(**env))
        for name, proc in procs.items():
            code = proc.wait(timeout=60.0)
            out = proc.output()
            assert code == 2, (name, code, out[-2000:])
            assert "Traceback" not in out and "ready:" not in out, (name, out[-2000:])
            errors = _error_lines(out)
            assert len(errors) == 1, (name, errors)
            assert errors[0].startswith("[glue_ros_matcher] error: "), (name, errors[0])
            assert cases[name][1] in errors[0], (name, errors[0])
            if name.startswith("extractor_") and name != "extractor_missing_dir":  # names the directory
                assert str(tmp_path / name[len("extractor_"):]) in errors[0], errors[0]
    finally:
        for proc in procs.values():
            proc.close()


# =============================================================================== out of memory (in-process node)


class InProcessNode:
    """The matcher node class in this process: its own rclpy context (on the test graph's DDS
    domain), spun by a background thread; ``close`` always tears everything down."""

    def __init__(self, namespace: str, params: dict):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.signals import SignalHandlerOptions

        from glue_ros.ros.node import MatcherNode

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = None
        try:
            self.node = MatcherNode(context=self.context, namespace=namespace,
                                    parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
        except BaseException:
            self.close()
            raise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if self._stop.is_set():
                    return
                raise

    def close(self) -> None:
        import rclpy

        if hasattr(self, "_stop"):
            self._stop.set()
            self._thread.join(timeout=5.0)
            self.executor.shutdown(timeout_sec=1.0)
        if self.node is not None:
            self.node.close()
            self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture(scope="module")
def graph():
    with rg.Graph("test_faults") as g:
        yield g


INJECTED = "CUDA out of memory. Tried to allocate 3.52 GiB (injected by test_faults)"


@pytest.mark.parametrize("where", ["extractor", "matcher", "host"])
def test_out_of_memory_drops_and_counts_the_frame_and_the_node_keeps_going(graph, seq, where):
    """extractor / matcher: torch.OutOfMemoryError (a GPU running out); host: numpy's MemoryError."""
    namespace = f"/t_oom_{where}"
    node = InProcessNode(namespace, dict(ORB, **{"keyframes.max_interval_s": 0.0}))
    try:
        matcher = node.node
        extractor = matcher.frontend.extractor
        real_extract, real_match = extractor.extract, matcher.frontend.matcher.match
        armed = threading.Event()

        def extract(images):  # out of memory above 640x480, as a GPU would be on a huge frame
            if any(image.shape[0] * image.shape[1] > 640 * 480 for image in images):
                if where == "host":
                    raise MemoryError("Unable to allocate 3.52 GiB for an array with shape (960, 1280, 768)")
                raise torch.OutOfMemoryError(INJECTED)
            return real_extract(images)

        def match(feats0, feats1):
            if armed.is_set():
                armed.clear()
                raise torch.OutOfMemoryError(INJECTED)
            return real_match(feats0, feats1)

        extractor.extract = extract
        matcher.frontend.matcher.match = match

        topics = rg.MatcherTopics(graph, namespace)
        topics.wait_ready()
        stamps = now_stamps(6)
        for i in (0, 1):
            topics.publish_and_wait(seq.images[i], stamps[i], seq.camera)
        keyframes_before = {decode_keyframe(m).stamp_ns for m in topics.keyframes.messages}
        assert keyframes_before == {stamps[0]}

        if where in ("extractor", "host"):  # a huge frame (different size: it would also have reset the buffer)
            huge = np.ascontiguousarray(np.tile(seq.images[2], (8, 8, 1)))  # 1280x960
            topics.publish(huge, stamps[2], seq.camera)
        else:  # a normal frame whose matching runs out of memory
            armed.set()
            topics.publish(seq.images[2], stamps[2], seq.camera)
        topics.wait_for_diagnostics(lambda d: int(d.get("rejected.out_of_memory", 0)) == 1, 10.0, "OOM counted")
        assert matcher.counters.rejected["out_of_memory"] == 1

        # The next frames are published and matched against the keyframe from before the failure:
        # the failed frame left nothing behind (no reset, no new keyframe, no stamp).
        for i in (3, 4):
            m = decode_matches(topics.publish_and_wait(seq.images[i], stamps[i], seq.camera))
            assert len(m) >= 20 and set(m.keyframe_stamp_ns.tolist()) == {stamps[0]}, (i, len(m))
        assert topics.matches.by_stamp(stamps[2]) is None, "no output for the dropped frame"
        assert matcher.counters.resets == 0 and matcher.frontend.stats.resets == 0
        assert matcher.counters.errors == 0
        assert dict(matcher.counters.rejected) == {"out_of_memory": 1}
        d = topics.wait_for_diagnostics(lambda d: int(d["frames_processed"]) == 4)
        assert int(d["frames_received"]) == 5 and int(d["frames_rejected_total"]) == 1
        dropping = [r for r in topics.diagnostics_of_node() if int(r["frames_dropped"]) > 0]
        assert len(dropping) == 1 and dropping[0]["_level"] == 1, "the period with the drop is a warning"
    finally:
        node.close()


# =============================================================================== a running node process


@pytest.fixture(scope="module")
def running(graph, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults_node")
    proc = rg.start_node(namespace="/t_faults", params=dict(ORB, **{"keyframes.reset_gap_s": 1.0,
                                                                     "keyframes.max_interval_s": 0.0}),
                         log_dir=tmp, label="faults")
    try:
        topics = rg.MatcherTopics(graph, "/t_faults")
        topics.wait_ready(proc)
        yield proc, topics
    finally:
        proc.close()


def test_subscribers_that_disappear_mid_stream(running, seq):
    """A subscription destroyed, then a whole participant (which watched ~/debug_image, so the node
    was drawing it) gone: the node keeps publishing every frame, no error, debug drawing stops."""
    from sensor_msgs.msg import Image, PointCloud2

    proc, topics = running
    seen: list[int] = []
    extra = topics.graph.node.create_subscription(PointCloud2, f"{topics.fqn}/matches",
                                                  lambda m: seen.append(rg.stamp_of(m)), 100)
    viewer = rg.Graph("viewer")
    try:
        debug = viewer.subscribe(f"{topics.fqn}/debug_image", Image)
        viewer_matches = viewer.subscribe(f"{topics.fqn}/matches", PointCloud2)
        rg.wait_until(lambda: topics.graph.node.count_subscribers(f"{topics.fqn}/debug_image") > 0, 10.0,
                      "the viewer's debug_image subscription")
        stamps = now_stamps(40)
        k = 0
        # until the node draws for the viewer: the node process may discover the viewer's participant
        # a few seconds after this process does (Fast DDS re-announces participants every ~3 s)
        deadline = time.monotonic() + 15.0
        while not debug.by_stamp(stamps[k - 1] if k else -1):
            assert time.monotonic() < deadline and k < 25, "the node never published a debug image to the viewer"
            topics.publish_and_wait(seq.images[k], stamps[k], seq.camera)
            k += 1
            time.sleep(0.3)
        print(f"debug image after {k} frames")
        for _ in range(3):
            topics.publish_and_wait(seq.images[k], stamps[k], seq.camera)
            k += 1
        rg.wait_until(lambda: stamps[k - 1] in seen, 5.0, "the extra subscription got the frames")
        topics.graph.node.destroy_subscription(extra)  # (1) a subscription goes away mid-stream
        for _ in range(3):
            topics.publish_and_wait(seq.images[k], stamps[k], seq.camera)
            k += 1
        debug.wait_for_stamp(stamps[k - 1], 5.0)
        assert len(viewer_matches) > 0
    finally:
        viewer.close()  # (2) the whole participant goes away mid-stream
    rg.wait_until(lambda: topics.graph.node.count_subscribers(f"{topics.fqn}/debug_image") == 0, 10.0,
                  "the viewer to disappear")
    for _ in range(6):
        m = decode_matches(topics.publish_and_wait(seq.images[k], stamps[k], seq.camera))
        assert m.stamp_ns == stamps[k]
        k += 1
    assert len(m) >= 20
    d = topics.wait_for_diagnostics(lambda d: int(d["frames_pending"]) == 0 and
                                    int(d["frames_processed"]) == int(d["frames_received"]))
    assert int(d["errors"]) == 0 and int(d["frames_rejected_total"]) == 0
    assert proc.alive()
    out = proc.output()
    assert "Traceback" not in out and "error" not in out.lower(), out[-2000:]


def test_camera_pause_longer_than_reset_gap_resets_keyframes(running, seq):
    proc, topics = running
    stamps = now_stamps(5)
    for i, stamp in enumerate(stamps):
        topics.publish_and_wait(seq.images[10 + i], stamp, seq.camera)
    before = topics.wait_for_diagnostics(lambda d: int(d["frames_pending"]) == 0)
    # (the first of these frames may itself reset, if the previous test ended more than 1 s ago)
    gap_resets_logged = proc.output().count("keyframe buffer reset: stamp_gap")

    # the camera stops for 1.5 s (> keyframes.reset_gap_s 1.0): "no input", not a stalled matcher
    pause_start = time.monotonic()
    during = []
    while time.monotonic() - pause_start < 1.5 or time.time_ns() < stamps[-1] + 1_500_000_000:
        during.append(topics.wait_for_diagnostics(lambda d: True, 2.0))
    assert all(d["stalled"] == "false" and d["_level"] != 2 for d in during), during[-1]
    assert float(during[-1]["seconds_since_input"]) >= 1.0

    resumed = now_stamps(3)
    assert resumed[0] - stamps[-1] > 1.0e9
    first = decode_matches(topics.publish_and_wait(seq.images[15], resumed[0], seq.camera))
    assert len(first) == 0, "the resumed frame starts a new keyframe buffer"
    topics.graph.wait_for(lambda: topics.keyframes.by_stamp(resumed[0]) is not None, 5.0,
                          "a keyframe event for the resumed frame")
    for i in (1, 2):
        m = decode_matches(topics.publish_and_wait(seq.images[15 + i], resumed[i], seq.camera))
        assert len(m) >= 20 and set(m.keyframe_stamp_ns.tolist()) == {resumed[0]}
    after = topics.wait_for_diagnostics(lambda d: int(d["frames_processed"]) == int(before["frames_processed"]) + 3)
    assert int(after["resets"]) == int(before["resets"]) + 1
    assert int(after["errors"]) == 0 and int(after["frames_rejected_total"]) == int(before["frames_rejected_total"])
    assert proc.output().count("keyframe buffer reset: stamp_gap") == gap_resets_logged + 1

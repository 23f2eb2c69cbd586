"""glue-ros-replay: run the front-end over a rosbag2, offline (deterministic) or into a live graph.

Offline (no rclpy needed):
    glue-ros-replay INPUT_BAG --output OUTPUT_BAG [--params-file F] [--set N=V ...]
                    [--image-topic T] [--camera-info-topic T] [--no-images]
Every image is processed in stamp order, none dropped, through the node's own input path
(glue_ros.ros.frame_input: the same decoding, intrinsics rule — exact-stamp CameraInfo, else the
last usable one, else camera.* — and counters); the output mcap bag holds the node's topics
(~/matches, ~/relative_pose, ~/keyframes, [~/features], ~/match_markers, ~/match_points,
~/keyframe_path, /tf, /diagnostics — every 30 frames and once at the end) with the node's message types
and the input stamps, and (unless --no-images) the input images and CameraInfo as they came (raw or
compressed), so the bag alone shows camera + matches + path in Foxglove. SIGINT / SIGTERM stop after
the current frame: the bag is closed and readable, exit 130 / 143 (the replay is incomplete).

Timed publish into a running graph (like `ros2 bag play`):
    glue-ros-replay INPUT_BAG --publish [--rate R] [--clock] [--loop]
SIGINT / SIGTERM stop it cleanly (exit 0, one line on stderr). Without --clock, a bag whose stamps are
far from wall time gets one warning: the node then needs use_sim_time:=true and --clock here.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .common import CliError, add_param_args, params_from_args, run_cli

STAMP_SKEW_WARN_S = 10.0  # --publish without --clock: warn when the bag's stamps are further from wall time


class StopOnSignal:
    """SIGINT / SIGTERM → a stop request the loops poll (``is_set``, ``wait``); a second signal
    raises KeyboardInterrupt (an emergency exit; files are still closed by their context managers).
    The handler only records the signal: taking a lock in a signal handler (Event.set) can deadlock
    the main thread it interrupts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def is_set(self) -> bool:
        return self.signum is not None

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early (True) on a stop request."""
        deadline = time.monotonic() + max(seconds, 0.0)
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.02))
        return True

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            # once stopping, a late second signal must not turn a clean stop into a traceback or a
            # kill during interpreter finalisation: ignore it
            signal.signal(sig, signal.SIG_IGN if self.is_set() else handler)

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


@dataclass
class ReplaySummary:
    frames: int = 0  # image messages in the bag (corrupt ones included)
    processed: int = 0
    keyframes: int = 0
    resets: int = 0
    skipped: int = 0  # frames without output (sum of ``rejected``)
    rejected: dict[str, int] = field(default_factory=dict)  # reason → frames
    camera_info_received: int = 0
    camera_info_rejected: int = 0  # unusable CameraInfo (NaN / zero K, corrupt): ignored, as the node does
    matches_per_frame: float = 0.0
    inlier_ratio: float = 0.0
    valid_poses: int = 0
    mean_stop_layer: float = -1.0
    ms_per_frame: float = 0.0
    frames_per_s: float = 0.0
    stopped: str = ""  # non-empty when a stop request ended the replay early

    def lines(self) -> list[str]:
        stop = f", LightGlue mean stop layer {self.mean_stop_layer:.2f}" if self.mean_stop_layer >= 0 else ""
        why = f" ({', '.join(f'{k} {v}' for k, v in sorted(self.rejected.items()))})" if self.rejected else ""
        info = f", {self.camera_info_rejected} unusable CameraInfo ignored" if self.camera_info_rejected else ""
        return [f"frames {self.frames} (processed {self.processed}, skipped {self.skipped}{why}), keyframes "
                f"{self.keyframes}, resets {self.resets}{info}",
                f"matches/frame {self.matches_per_frame:.1f}, inlier ratio {self.inlier_ratio:.3f}, valid poses "
                f"{self.valid_poses}{stop}",
                f"{self.ms_per_frame:.1f} ms/frame ({self.frames_per_s:.1f} frames/s)"]


def replay_offline(input_bag: str, output_bag: str, params: dict, image_topic: str | None = None,
                   camera_info_topic: str | None = None, namespace: str = "", storage: str = "mcap",
                   progress: bool = True, results: list | None = None, diagnostics_every: int = 30,
                   observer=None, with_images: bool = True, stop=None) -> ReplaySummary:
    """Every image of the bag through the node's input path (``FrameInput``: decode, intrinsics,
    Frame, pipeline, counters) and output builders, in stamp order, none dropped. With
    ``pipeline.extract_ahead`` the next image is decoded and its features extracted on a second
    thread while the current one is matched (``overlap``); the outputs are the same.

    The output bag gets the node's topics (overlays and keyframe path included; /tf when
    ``output.publish_tf``), /diagnostics every ``diagnostics_every`` processed frames and once at the
    end, and with ``with_images`` the input images and CameraInfo messages as they came.
    ``observer(frontend, result)``, if given, is called after each processed frame (soak tests
    watch the pipeline's memory bounds through it). ``stop`` (anything with ``is_set()``, e.g. a
    ``StopOnSignal`` or a threading.Event): checked between messages;
    when set, the replay ends early (``summary.stopped``), the bag closed and readable."""
    from ..config import FrontEndConfig
    from ..device import describe
    from ..frontend import FrontEnd
    from ..ros.bag_io import BagFrames, BagWriter
    from ..ros.diagnostics import DIAGNOSTICS_TOPIC, build_diagnostics
    from ..ros.frame_input import FrameInput
    from ..ros.launch_args import NODE_NAME
    from ..ros.msg_types import RosbagsTypes
    from ..overlap import ExtractionThread, extracts_ahead, intra_op_threads, one_ahead, stage_threads
    from ..ros.outputs import MARKER_TOPICS, OUTPUT_TOPICS, TF_TOPIC, OutputState, check_output_params, frame_outputs

    check_output_params(params)
    prefix = "/" + "/".join(p for p in (namespace.strip("/"), NODE_NAME) if p) + "/"
    summary = ReplaySummary()
    matches_total = inliers_total = 0
    stop_layers: list[int] = []
    inputs = FrameInput(params)
    counts = inputs.counters
    state = OutputState(params)
    t_start = time.perf_counter()
    with BagFrames(input_bag, image_topic, camera_info_topic) as bag:
        if Path(output_bag).exists():  # checked before loading models: fail fast
            raise CliError(f"output bag '{output_bag}' already exists (remove it or choose another --output)")
        frontend = FrontEnd(FrontEndConfig.from_flat(params), on_reset=lambda reason: None)
        backend = f"{frontend.config.extractor.type} + {frontend.config.matcher.type}"
        with BagWriter(output_bag, storage) as writer:
            types = RosbagsTypes(writer.typestore)
            bar = _progress(bag.expected_images, progress)
            last = {"stamp": None, "matches": 0, "stop_layer": -1, "diagnostics": None}

            def write_diagnostics() -> None:
                elapsed = time.perf_counter() - t_start
                figures = {**inputs.figures(), "processed_rate_hz": counts.processed / max(elapsed, 1e-9),
                           "keyframes": frontend.stats.keyframes, "resets": frontend.stats.resets,
                           "matches": last["matches"], "lightglue_stop_layer": last["stop_layer"],
                           "keyframe_path_poses": len(state.trajectory.poses), "device": describe(frontend.device)}
                writer.write(DIAGNOSTICS_TOPIC[0], DIAGNOSTICS_TOPIC[1],
                             build_diagnostics(types, last["stamp"], figures, hardware_id=figures["device"],
                                               name=prefix.rstrip("/") + ": front-end"), last["stamp"])
                last["diagnostics"] = (counts.received, counts.processed)

            def finish(frame, extraction) -> None:
                """Match, pose and outputs of one prepared frame (its extraction ran ahead when given)."""
                nonlocal matches_total, inliers_total
                accepted = inputs.run(frontend, frame, extracted=extraction.result if extraction else None)
                if accepted is None:
                    return
                frame, result = accepted
                for key, msg in frame_outputs(result, types, params, camera=frame.camera, backend=backend,
                                              markers=MARKER_TOPICS, state=state, tf=params["output.publish_tf"]):
                    topic, msgtype = (key, TF_TOPIC[1]) if key == TF_TOPIC[0] else (prefix + key, OUTPUT_TOPICS[key])
                    writer.write(topic, msgtype, msg, result.stamp_ns)
                inputs.finish()
                if results is not None:
                    results.append(result)
                if observer is not None:
                    observer(frontend, result)
                newest = result.matches[0] if result.matches else None
                if newest is not None:
                    matches_total += len(newest)
                    inliers_total += int(newest.inliers.sum())
                    summary.valid_poses += int(newest.pose.valid)
                if result.stop_layer >= 0:
                    stop_layers.append(result.stop_layer)
                last.update(matches=len(newest) if newest else 0, stop_layer=result.stop_layer)
                bar.set_postfix_str(f"kf {frontend.stats.keyframes} matches {len(newest) if newest else 0}")
                if diagnostics_every and counts.processed % diagnostics_every == 0:
                    write_diagnostics()

            config = frontend.config
            ahead = extracts_ahead(config.pipeline, frontend.device, config.extractor.max_keypoints)
            extract_threads, match_threads = stage_threads(ahead, config.pipeline.cpu_threads)

            def prepared_frames():
                """The bag's frames, decoded with their intrinsics; inputs written, counted, rejected."""
                for item in bag:
                    if stop is not None and stop.is_set():
                        summary.stopped = "stopped"
                        return
                    if item.msg is not None and with_images:  # the input as it came (raw or compressed)
                        topic = bag.camera_info_topic if item.is_camera_info else bag.image_topic
                        writer.write(topic, item.msgtype, item.msg, item.stamp_ns)
                    if item.is_camera_info:
                        inputs.add_camera_info(item.msg)
                        continue
                    inputs.receive()
                    bar.update(1)
                    if item.msg is None:
                        inputs.reject("corrupt_message")
                        continue
                    last["stamp"] = item.stamp_ns if last["stamp"] is None else max(last["stamp"], item.stamp_ns)
                    frame = inputs.prepare(item.msg)
                    if frame is not None:
                        yield frame

            try:
                with intra_op_threads(match_threads), \
                        (ExtractionThread(frontend, extract_threads) if ahead else contextlib.nullcontext()) as worker:
                    frames = one_ahead(worker, prepared_frames()) if ahead else \
                        ((frame, None) for frame in prepared_frames())
                    for frame, extraction in frames:
                        finish(frame, extraction)
                # and once at the end, so every bag has them (a short bag has no 30th frame)
                if last["stamp"] is not None and last["diagnostics"] != (counts.received, counts.processed):
                    write_diagnostics()
            finally:
                bar.close()
    elapsed = time.perf_counter() - t_start
    summary.frames, summary.processed = counts.received, counts.processed
    summary.skipped, summary.rejected = counts.rejected_total, dict(sorted(counts.rejected.items()))
    summary.camera_info_received, summary.camera_info_rejected = counts.camera_info_received, \
        counts.camera_info_rejected
    summary.keyframes = frontend.stats.keyframes
    summary.resets = frontend.stats.resets
    summary.matches_per_frame = matches_total / max(summary.processed - 1, 1)
    summary.inlier_ratio = inliers_total / matches_total if matches_total else 0.0
    summary.mean_stop_layer = float(np.mean(stop_layers)) if stop_layers else -1.0
    summary.ms_per_frame = elapsed * 1e3 / max(summary.frames, 1)
    summary.frames_per_s = summary.frames / max(elapsed, 1e-9)
    if summary.frames == 0 and not summary.stopped:
        raise CliError(f"no image messages on '{bag.image_topic}' in '{input_bag}' (empty bag?)")
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def publish_timed(input_bag: str, rate: float = 1.0, clock: bool = False, image_topic: str | None = None,
                  camera_info_topic: str | None = None, loop: bool = False,
                  stop: StopOnSignal | None = None) -> int:
    """Publish the bag's image and camera_info topics with their recorded timing (rclpy needed).

    ``stop`` (installed signal handlers): a set stop event ends the loop between messages; the node
    and the context are then torn down in order (rclpy's own signal handlers are not installed:
    they would invalidate the context under a publish call). Returns 0 either way."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions

    from ..ros.bag_io import BagFrames
    from ..ros.msg_types import RclpyTypes, stamp_to_ns

    types = RclpyTypes()
    halt = stop if stop is not None else StopOnSignal()  # not entered: no handlers, never set
    count = 0
    with BagFrames(input_bag, image_topic, camera_info_topic) as source:
        topics = [t for t in (source.image_topic, source.camera_info_topic) if t]
        msgtypes = {c.topic: c.msgtype for c in source.reader.connections if c.topic in topics}
        connections = [c for c in source.reader.connections if c.topic in topics]

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("glue_ros_replay")
        try:
            publishers = {t: node.create_publisher(types.get(msgtypes[t]), t, qos_profile_sensor_data) for t in topics}
            clock_pub = node.create_publisher(types.get("rosgraph_msgs/msg/Clock"), "/clock", 10) if clock else None
            # Give discovery up to 2 s to match a subscriber, so the first frames are not lost.
            deadline = time.monotonic() + 2.0
            while node.count_subscribers(source.image_topic) == 0 and time.monotonic() < deadline:
                if halt.wait(0.02):
                    break
            warned = clock
            while not halt.is_set():
                first_log = None
                t0 = time.monotonic()
                for connection, log_ns, raw in source.reader.messages(connections=connections):
                    if first_log is None:
                        first_log = log_ns
                    due = t0 + (log_ns - first_log) * 1e-9 / rate
                    if halt.wait(max(due - time.monotonic(), 0.0)):
                        break
                    msg = types.deserialize(raw, msgtypes[connection.topic])
                    if not warned:
                        warned = True
                        _warn_stamp_skew(stamp_to_ns(msg.header.stamp))
                    if clock_pub is not None:
                        clock_pub.publish(types.new("rosgraph_msgs/msg/Clock", clock=types.time(log_ns)))
                    publishers[connection.topic].publish(msg)
                    count += 1
                if not loop:
                    break
            if not halt.is_set():
                halt.wait(0.2)  # flush
        finally:
            node.destroy_node()
            rclpy.try_shutdown(uninstall_handlers=False)  # none installed: keep ours
    if halt.is_set():
        why = f" ({stop.name})" if stop is not None and stop.name else ""
        print(f"stopped{why}: published {count} messages from {input_bag}", file=sys.stderr)
    else:
        print(f"published {count} messages from {input_bag}", file=sys.stderr)
    return 0


def _warn_stamp_skew(stamp_ns: int) -> None:
    skew = time.time_ns() * 1e-9 - stamp_ns * 1e-9
    if abs(skew) > STAMP_SKEW_WARN_S:
        where = "behind" if skew > 0 else "ahead of"
        print(f"warning: the bag's stamps are {abs(skew):.3g} s {where} wall time and /clock is not published: "
              "add --clock here and run the node with use_sim_time:=true", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-replay", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("input_bag")
    parser.add_argument("--output", metavar="OUTPUT_BAG", help="output rosbag2 (offline mode)")
    add_param_args(parser)
    parser.add_argument("--image-topic")
    parser.add_argument("--camera-info-topic")
    parser.add_argument("--namespace", default="", help="node namespace used in the output topic names")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    parser.add_argument("--summary-json", metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--images", action=argparse.BooleanOptionalAction, default=True,
                        help="copy the input images and CameraInfo into the output bag (default: yes)")
    parser.add_argument("--publish", action="store_true", help="publish the bag into a live graph instead")
    parser.add_argument("--rate", type=float, default=1.0, help="publish rate factor (--publish)")
    parser.add_argument("--clock", action="store_true", help="also publish /clock (--publish)")
    parser.add_argument("--loop", action="store_true", help="repeat the bag (--publish)")
    args = parser.parse_args(argv)

    def body() -> int:
        from ..ros.bag_io import BagError

        with StopOnSignal() as signals:
            try:
                if args.publish:
                    if not args.rate > 0:
                        raise CliError("--rate must be > 0")
                    return publish_timed(args.input_bag, args.rate, args.clock, args.image_topic,
                                         args.camera_info_topic, args.loop, stop=signals)
                if not args.output:
                    raise CliError("--output OUTPUT_BAG is required (or use --publish)")
                params = params_from_args(args)
                summary = replay_offline(args.input_bag, args.output, params, args.image_topic,
                                         args.camera_info_topic, args.namespace, args.storage,
                                         progress=not args.no_progress, with_images=args.images, stop=signals)
            except BagError as exc:
                raise CliError(str(exc)) from None
        for line in summary.lines():
            print(line)
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(asdict(summary), indent=2))
        if summary.stopped:
            print(f"stopped ({signals.name}) after {summary.frames} frames: {args.output} is closed and readable "
                  "but incomplete", file=sys.stderr)
            return 128 + int(signals.signum or signal.SIGINT)  # 130 (SIGINT) / 143 (SIGTERM)
        print(f"wrote {args.output}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

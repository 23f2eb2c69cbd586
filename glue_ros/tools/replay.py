"""glue-ros-replay: run the front-end over a rosbag2, offline (deterministic) or into a live graph.

Offline (no rclpy needed):
    glue-ros-replay INPUT_BAG --output OUTPUT_BAG [--params-file F] [--set N=V ...]
                    [--image-topic T] [--camera-info-topic T]
Every image is processed in stamp order, none dropped, through the node's own input path
(glue_ros.ros.frame_input: the same decoding, intrinsics rule — exact-stamp CameraInfo, else the
last usable one, else camera.* — and counters); the output mcap bag holds the node's topics
(~/matches, ~/relative_pose, ~/keyframes, [~/features], /diagnostics) with the node's message types
and the input stamps.

Timed publish into a running graph (like `ros2 bag play`):
    glue-ros-replay INPUT_BAG --publish [--rate R] [--clock]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .common import CliError, add_param_args, params_from_args, run_cli


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
                   observer=None) -> ReplaySummary:
    """Every image of the bag through the node's input path (``FrameInput``: decode, intrinsics,
    Frame, pipeline, counters) and output builders, in stamp order, none dropped.

    ``observer(frontend, result)``, if given, is called after each processed frame (soak tests
    watch the pipeline's memory bounds through it)."""
    from ..config import FrontEndConfig
    from ..device import describe
    from ..frontend import FrontEnd
    from ..ros.bag_io import BagFrames, BagWriter
    from ..ros.diagnostics import DIAGNOSTICS_TOPIC, build_diagnostics
    from ..ros.frame_input import FrameInput
    from ..ros.launch_args import NODE_NAME
    from ..ros.msg_types import RosbagsTypes
    from ..ros.outputs import OUTPUT_TOPICS, frame_outputs

    prefix = "/" + "/".join(p for p in (namespace.strip("/"), NODE_NAME) if p) + "/"
    summary = ReplaySummary()
    matches_total = inliers_total = 0
    stop_layers: list[int] = []
    inputs = FrameInput(params)
    counts = inputs.counters
    t_start = time.perf_counter()
    with BagFrames(input_bag, image_topic, camera_info_topic) as bag:
        if Path(output_bag).exists():  # checked before loading models: fail fast
            raise CliError(f"output bag '{output_bag}' already exists (remove it or choose another --output)")
        frontend = FrontEnd(FrontEndConfig.from_flat(params), on_reset=lambda reason: None)
        backend = f"{frontend.config.extractor.type} + {frontend.config.matcher.type}"
        with BagWriter(output_bag, storage) as writer:
            types = RosbagsTypes(writer.typestore)
            bar = _progress(bag.expected_images, progress)
            try:
                for item in bag:
                    if item.is_camera_info:
                        inputs.add_camera_info(item.msg)
                        continue
                    inputs.receive()
                    bar.update(1)
                    if item.msg is None:
                        inputs.reject("corrupt_message")
                        continue
                    accepted = inputs.process(frontend, item.msg)
                    if accepted is None:
                        continue
                    frame, result = accepted
                    for suffix, msg in frame_outputs(result, types, params, camera=frame.camera, backend=backend):
                        writer.write(prefix + suffix, OUTPUT_TOPICS[suffix], msg, result.stamp_ns)
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
                    bar.set_postfix_str(f"kf {frontend.stats.keyframes} matches {len(newest) if newest else 0}")
                    if diagnostics_every and counts.processed % diagnostics_every == 0:
                        elapsed = time.perf_counter() - t_start
                        figures = {**inputs.figures(), "processed_rate_hz": counts.processed / max(elapsed, 1e-9),
                                   "keyframes": frontend.stats.keyframes, "resets": frontend.stats.resets,
                                   "matches": len(newest) if newest else 0, "lightglue_stop_layer": result.stop_layer,
                                   "device": describe(frontend.device)}
                        writer.write(DIAGNOSTICS_TOPIC[0], DIAGNOSTICS_TOPIC[1],
                                     build_diagnostics(types, result.stamp_ns, figures, hardware_id=figures["device"],
                                                       name=prefix.rstrip("/") + ": front-end"), result.stamp_ns)
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
    if summary.frames == 0:
        raise CliError(f"no image messages on '{bag.image_topic}' in '{input_bag}' (empty bag?)")
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def publish_timed(input_bag: str, rate: float = 1.0, clock: bool = False, image_topic: str | None = None,
                  camera_info_topic: str | None = None, loop: bool = False) -> int:
    """Publish the bag's image and camera_info topics with their recorded timing (rclpy needed)."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    from ..ros.bag_io import BagFrames
    from ..ros.msg_types import RclpyTypes

    types = RclpyTypes()
    with BagFrames(input_bag, image_topic, camera_info_topic) as source:
        topics = [t for t in (source.image_topic, source.camera_info_topic) if t]
        msgtypes = {c.topic: c.msgtype for c in source.reader.connections if c.topic in topics}
        connections = [c for c in source.reader.connections if c.topic in topics]

        rclpy.init()
        node = rclpy.create_node("glue_ros_replay")
        try:
            publishers = {t: node.create_publisher(types.get(msgtypes[t]), t, qos_profile_sensor_data) for t in topics}
            clock_pub = node.create_publisher(types.get("rosgraph_msgs/msg/Clock"), "/clock", 10) if clock else None
            # Give discovery up to 2 s to match a subscriber, so the first frames are not lost.
            deadline = time.monotonic() + 2.0
            while node.count_subscribers(source.image_topic) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            count = 0
            while True:
                first_log = None
                t0 = time.monotonic()
                for connection, log_ns, raw in source.reader.messages(connections=connections):
                    if first_log is None:
                        first_log = log_ns
                    due = t0 + (log_ns - first_log) * 1e-9 / rate
                    while True:
                        wait = due - time.monotonic()
                        if wait <= 0:
                            break
                        time.sleep(min(wait, 0.01))
                    if clock_pub is not None:
                        clock_pub.publish(types.new("rosgraph_msgs/msg/Clock", clock=types.time(log_ns)))
                    publishers[connection.topic].publish(types.deserialize(raw, msgtypes[connection.topic]))
                    count += 1
                if not loop:
                    break
            time.sleep(0.2)  # flush
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    print(f"published {count} messages from {input_bag}", file=sys.stderr)
    return 0


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
    parser.add_argument("--publish", action="store_true", help="publish the bag into a live graph instead")
    parser.add_argument("--rate", type=float, default=1.0, help="publish rate factor (--publish)")
    parser.add_argument("--clock", action="store_true", help="also publish /clock (--publish)")
    parser.add_argument("--loop", action="store_true", help="repeat the bag (--publish)")
    args = parser.parse_args(argv)

    def body() -> int:
        from ..ros.bag_io import BagError

        try:
            if args.publish:
                if not args.rate > 0:
                    raise CliError("--rate must be > 0")
                return publish_timed(args.input_bag, args.rate, args.clock, args.image_topic,
                                     args.camera_info_topic, args.loop)
            if not args.output:
                raise CliError("--output OUTPUT_BAG is required (or use --publish)")
            params = params_from_args(args)
            summary = replay_offline(args.input_bag, args.output, params, args.image_topic,
                                     args.camera_info_topic, args.namespace, args.storage,
                                     progress=not args.no_progress)
        except BagError as exc:
            raise CliError(str(exc)) from None
        for line in summary.lines():
            print(line)
        print(f"wrote {args.output}")
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(asdict(summary), indent=2))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

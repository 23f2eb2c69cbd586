"""glue-ros-replay: run the front-end over a rosbag2, offline (deterministic) or into a live graph.

Offline (no rclpy needed):
    glue-ros-replay INPUT_BAG --output OUTPUT_BAG [--params-file F] [--set N=V ...]
                    [--image-topic T] [--camera-info-topic T]
Every image is processed in stamp order, none dropped; the output mcap bag holds the node's
topics (~/matches, ~/relative_pose, ~/keyframes, [~/features], /diagnostics) with the node's
message types and the input stamps.

Timed publish into a running graph (like `ros2 bag play`):
    glue-ros-replay INPUT_BAG --publish [--rate R] [--clock]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .common import CliError, add_param_args, params_from_args, run_cli


@dataclass
class ReplaySummary:
    frames: int = 0
    processed: int = 0
    keyframes: int = 0
    resets: int = 0
    skipped: int = 0
    matches_per_frame: float = 0.0
    inlier_ratio: float = 0.0
    valid_poses: int = 0
    mean_stop_layer: float = -1.0
    ms_per_frame: float = 0.0
    frames_per_s: float = 0.0

    def lines(self) -> list[str]:
        stop = f", LightGlue mean stop layer {self.mean_stop_layer:.2f}" if self.mean_stop_layer >= 0 else ""
        return [f"frames {self.frames} (processed {self.processed}, skipped {self.skipped}), keyframes "
                f"{self.keyframes}, resets {self.resets}",
                f"matches/frame {self.matches_per_frame:.1f}, inlier ratio {self.inlier_ratio:.3f}, valid poses "
                f"{self.valid_poses}{stop}",
                f"{self.ms_per_frame:.1f} ms/frame ({self.frames_per_s:.1f} frames/s)"]


def replay_offline(input_bag: str, output_bag: str, params: dict, image_topic: str | None = None,
                   camera_info_topic: str | None = None, namespace: str = "", storage: str = "mcap",
                   progress: bool = True, results: list | None = None, diagnostics_every: int = 30,
                   observer=None) -> ReplaySummary:
    """``observer(frontend, result)``, if given, is called after each processed frame (soak tests
    watch the pipeline's memory bounds through it)."""
    from ..config import FrontEndConfig
    from ..device import describe
    from ..frontend import Frame, FrontEnd
    from ..geometry import normalize_points
    from ..ros import image_codec
    from ..ros.bag_io import BagFrames, BagWriter
    from ..ros.camera_info import camera_from_info, camera_from_params
    from ..ros.launch_args import NODE_NAME
    from ..ros.messages import RosbagsTypes, diagnostics
    from ..ros.outputs import DIAGNOSTICS_TOPIC, OUTPUT_TOPICS, features_options, frame_outputs

    fallback_camera = camera_from_params(params)
    prefix = "/" + "/".join(p for p in (namespace.strip("/"), NODE_NAME) if p) + "/"
    summary = ReplaySummary()
    matches_total = inliers_total = 0
    stop_layers: list[int] = []
    skipped: dict[str, int] = {}
    t_start = time.perf_counter()
    with BagFrames(input_bag, image_topic, camera_info_topic) as frames:
        if Path(output_bag).exists():  # checked before loading models: fail fast
            raise CliError(f"output bag '{output_bag}' already exists (remove it or choose another --output)")
        frontend = FrontEnd(FrontEndConfig.from_flat(params), on_reset=lambda reason: None)
        with BagWriter(output_bag, storage) as writer:
            types = RosbagsTypes(writer.typestore)
            bar = _progress(frames.expected_images, progress)
            try:
                for bag_frame in frames:
                    summary.frames += 1
                    bar.update(1)
                    try:
                        if bag_frame.msgtype.endswith("CompressedImage"):
                            image = image_codec.decode_compressed(bag_frame.image_msg)
                        else:
                            image = image_codec.decode_image(bag_frame.image_msg)
                        image = image_codec.to_gray_or_rgb_uint8(image, getattr(bag_frame.image_msg, "encoding", ""),
                                                                 bit_depth=params["input.bit_depth"] or None)
                    except image_codec.ImageDecodeError as exc:
                        skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
                        continue
                    camera = camera_from_info(bag_frame.camera_info) if bag_frame.camera_info is not None \
                        else fallback_camera
                    if camera is not None and camera.problem():
                        skipped["bad_camera_info"] = skipped.get("bad_camera_info", 0) + 1
                        camera = None
                    result = frontend.process(Frame(image, bag_frame.stamp_ns, bag_frame.image_msg.header.frame_id,
                                                    camera))
                    if result.status not in ("ok", "no_features"):
                        skipped[result.status] = skipped.get(result.status, 0) + 1
                        continue
                    summary.processed += 1
                    if results is not None:
                        results.append(result)
                    if observer is not None:
                        observer(frontend, result)
                    normalizer = (lambda pts, cam=camera: normalize_points(pts, cam)) \
                        if params["output.features"] and camera is not None else None
                    for suffix, msg in frame_outputs(result, types, params["output.frame_id"] or result.frame_id,
                                                     normalizer=normalizer, features_options=features_options(params)):
                        writer.write(prefix + suffix, OUTPUT_TOPICS[suffix], msg, result.stamp_ns)
                    newest = result.matches[0] if result.matches else None
                    if newest is not None:
                        matches_total += len(newest)
                        inliers_total += int(newest.inliers.sum())
                        summary.valid_poses += int(newest.pose.valid)
                    if result.stop_layer >= 0:
                        stop_layers.append(result.stop_layer)
                    bar.set_postfix_str(f"kf {frontend.stats.keyframes} matches {len(newest) if newest else 0}")
                    if diagnostics_every and summary.processed % diagnostics_every == 0:
                        elapsed = time.perf_counter() - t_start
                        figures = {"frames_processed": summary.processed, "keyframes": frontend.stats.keyframes,
                                   "resets": frontend.stats.resets, "frames_rejected": sum(skipped.values()),
                                   **{f"rejected.{k}": v for k, v in sorted(skipped.items())},
                                   "processed_rate_hz": summary.processed / max(elapsed, 1e-9),
                                   "matches": len(newest) if newest else 0, "lightglue_stop_layer": result.stop_layer,
                                   "device": describe(frontend.device)}
                        writer.write(DIAGNOSTICS_TOPIC[0], DIAGNOSTICS_TOPIC[1],
                                     diagnostics(figures, types, result.stamp_ns,
                                                 name=prefix.rstrip("/") + ": front-end",
                                                 hardware_id=figures["device"]), result.stamp_ns)
            finally:
                bar.close()
        skipped_corrupt = frames.stats.corrupt
    elapsed = time.perf_counter() - t_start
    summary.skipped = sum(skipped.values()) + skipped_corrupt
    summary.keyframes = frontend.stats.keyframes
    summary.resets = frontend.stats.resets
    summary.matches_per_frame = matches_total / max(summary.processed - 1, 1)
    summary.inlier_ratio = inliers_total / matches_total if matches_total else 0.0
    summary.mean_stop_layer = float(np.mean(stop_layers)) if stop_layers else -1.0
    summary.ms_per_frame = elapsed * 1e3 / max(summary.frames, 1)
    summary.frames_per_s = summary.frames / max(elapsed, 1e-9)
    if summary.frames == 0:
        raise CliError(f"no image messages on '{frames.image_topic}' in '{input_bag}' (empty bag?)")
    return summary


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="frame", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def publish_timed(input_bag: str, rate: float = 1.0, clock: bool = False, image_topic: str | None = None,
                  camera_info_topic: str | None = None, loop: bool = False) -> int:
    """Publish the bag's image and camera_info topics with their recorded timing (rclpy needed)."""
    import importlib

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message

    from ..ros.bag_io import BagFrames

    with BagFrames(input_bag, image_topic, camera_info_topic) as source:
        topics = [t for t in (source.image_topic, source.camera_info_topic) if t]
        msgtypes = {c.topic: c.msgtype for c in source.reader.connections if c.topic in topics}
        connections = [c for c in source.reader.connections if c.topic in topics]

        def message_class(msgtype: str):
            package, _, name = msgtype.split("/")
            return getattr(importlib.import_module(f"{package}.msg"), name)

        rclpy.init()
        node = rclpy.create_node("glue_ros_replay")
        try:
            publishers = {t: node.create_publisher(message_class(msgtypes[t]), t, qos_profile_sensor_data)
                          for t in topics}
            classes = {t: message_class(msgtypes[t]) for t in topics}
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", 10)
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
                        from rosgraph_msgs.msg import Clock

                        stamp = Clock()
                        stamp.clock.sec, stamp.clock.nanosec = divmod(int(log_ns), 1_000_000_000)
                        clock_pub.publish(stamp)
                    publishers[connection.topic].publish(deserialize_message(raw, classes[connection.topic]))
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

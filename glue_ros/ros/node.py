"""glue_ros_matcher: the rclpy node — a thin adapter over glue_ros.frontend.FrontEnd.

Callbacks only enqueue messages (bounded queue, drop-oldest, every drop counted); one worker
thread decodes the newest frame, runs the pipeline and publishes. Outputs carry the input image's
stamp, never now(), so bag replay and use_sim_time work.

Every image the node receives is accounted for in /diagnostics: ``frames_received`` =
``frames_processed`` (one ~/matches each) + ``frames_dropped_queue_total`` + ``frames_rejected_total``
(per reason: ``rejected.<reason>``, e.g. bad_step, short_data, corrupt_compressed, repeated_stamp)
+ ``frames_pending``. Frames the middleware lost before delivery are ``frames_lost_transport_total``.
Unusable CameraInfo messages (NaN / zero K ...) are ignored and counted (``camera_info_rejected``):
frames keep the last usable intrinsics. Warnings about bad input are rate-limited per reason.
Parameters are validated before torch and the models load (a bad value exits with code 2 in about a
second, naming the parameter); SIGINT / SIGTERM exit 0.
"""
from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import PARAMS, SPECS, FrontEndConfig, ParameterError, ParamSpec, coerce, validate
from .camera_info import camera_from_info, camera_from_params, stamp_to_ns

NODE_NAME = "glue_ros_matcher"
LOG_PERIOD_S = 2.0  # warnings about bad input: at most one per reason per period
NO_INPUT_WARN_S = 5.0  # diagnostics warn when no frame arrived for this long (after a first one)


class LatencyWindow:
    """Stamp→publish latencies of the last N frames, for p50/p99."""

    def __init__(self, size: int = 300):
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self._values, q)) if self._values else 0.0


@dataclass
class Counters:
    received: int = 0
    processed: int = 0
    dropped_queue: int = 0
    lost_transport: int = 0  # reported lost by the middleware (never received)
    rejected: collections.Counter = field(default_factory=collections.Counter)  # reason → count
    resets: int = 0
    keyframes: int = 0
    camera_info_received: int = 0
    camera_info_rejected: int = 0  # unusable CameraInfo messages (NaN / zero K ...), not stored
    errors: int = 0
    valid_poses: int = 0


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing weights, unusable device)."""


def _descriptor(spec: ParamSpec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    notes = "restart required" if not spec.live else "can change at runtime"
    if spec.choices:
        notes += "; one of: " + ", ".join(map(str, spec.choices))
    descriptor = ParameterDescriptor(description=spec.description, additional_constraints=notes)
    if spec.type is float and spec.min is not None:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                              step=0.0)]
    elif spec.type is int and spec.min is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=1)]
    return descriptor


def _suggest(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(SPECS), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _make_node_class():
    """Defined lazily so `import glue_ros.ros.node` works without rclpy (e.g. for docs/tests)."""
    from rclpy.clock import Clock, ClockType
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy, qos_profile_sensor_data
    from rcl_interfaces.msg import SetParametersResult
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    class MatcherNode(Node):
        def __init__(self, **kwargs):
            super().__init__(NODE_NAME, **kwargs)
            self.counters = Counters()
            self.latency = LatencyWindow()
            self.processing = LatencyWindow()
            self._warned: set[str] = set()
            self._log_times: dict[str, float] = {}
            # Parameters first, before torch and the models are imported: a bad value fails in < 1 s.
            self._flat = self._declare_and_read_parameters()
            self._last = {"keypoints": 0, "matches": 0, "inliers": 0, "stop_layer": -1}
            self._started = time.monotonic()
            self._last_output: float | None = None
            self._last_input: float | None = None
            self._rates: dict[str, tuple[float, int]] = {}
            self._busy = False  # the worker holds a frame (taken from the queue, not yet counted)

            from ..device import DeviceError, describe
            from ..frontend import Frame, FrontEnd
            from ..models.weights import WeightsError
            from . import image_codec, messages
            from .outputs import DIAGNOSTICS_TOPIC, OUTPUT_TOPICS, features_options, frame_outputs

            self._Frame, self._image_codec, self._messages = Frame, image_codec, messages
            self._frame_outputs, self._features_options, self._describe = frame_outputs, features_options, describe
            try:
                self.frontend = FrontEnd(FrontEndConfig.from_flat(self._flat),
                                         on_reset=self._on_reset)
            except (ParameterError, WeightsError, DeviceError) as exc:
                raise StartupError(str(exc)) from None
            self._pending_config: FrontEndConfig | None = None
            self.types = messages.RclpyTypes()
            self._fallback_camera = camera_from_params(self._flat)
            self._cameras: collections.OrderedDict[int, object] = collections.OrderedDict()
            self._latest_camera = None

            out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
            suffixes = [k for k in OUTPUT_TOPICS if k != "features" or self._flat["output.features"]]
            self.publishers_by_suffix = {
                suffix: self.create_publisher(self.types.get(OUTPUT_TOPICS[suffix]), "~/" + suffix,
                                              2 if suffix == "debug_image" else out_qos)
                for suffix in suffixes}
            self.pub_features = self.publishers_by_suffix.get("features")
            self.pub_debug = self.publishers_by_suffix["debug_image"]
            self.pub_diagnostics = self.create_publisher(self.types.get(DIAGNOSTICS_TOPIC[1]), DIAGNOSTICS_TOPIC[0],
                                                         10)
            self.add_on_set_parameters_callback(self._on_set_parameters)

            self._queue: collections.deque = collections.deque(maxlen=self._flat["input.queue_size"])
            self._previous_input_stamp: int | None = None  # of the last frame that arrived (gap resets)
            self._cond = threading.Condition()
            self._stop = threading.Event()
            self._worker = threading.Thread(target=self._work, name="glue_ros_worker", daemon=True)
            self._worker.start()
            # Steady clock: diagnostics keep coming with use_sim_time while /clock is paused or absent.
            self.create_timer(self._flat["diagnostics.period_s"], self._publish_diagnostics,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))

            # Inputs last: once the node is seen subscribing, it is ready to process.
            # Reliable input keeps every sample until the callback took it (KEEP_ALL): with KEEP_LAST the
            # reader would silently overwrite unread frames in a burst. Drops then happen only in our
            # own queue, where they are counted.
            reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_ALL)
            input_qos = qos_profile_sensor_data if self._flat["input.qos"] == "sensor_data" else reliable
            # Frames the middleware saw but could not deliver (e.g. fragments of a large best-effort
            # frame lost over UDP): reported by rmw as message_lost, counted in the diagnostics.
            events = SubscriptionEventCallbacks(message_lost=self._on_message_lost)
            if self._flat["input.compressed"]:
                self.create_subscription(CompressedImage, "image/compressed",
                                         lambda m: self._enqueue(m, "compressed"), input_qos, event_callbacks=events)
            else:
                self.create_subscription(Image, "image", lambda m: self._enqueue(m, "raw"), input_qos,
                                         event_callbacks=events)
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, input_qos)
            self.get_logger().info(
                f"ready: {self.frontend.config.extractor.type} + {self.frontend.config.matcher.type} on "
                f"{describe(self.frontend.device)} ({str(self.frontend.dtype).replace('torch.', '')}), "
                f"input {'image/compressed' if self._flat['input.compressed'] else 'image'} "
                f"({self._flat['input.qos']} QoS), queue {self._flat['input.queue_size']}")

        # -------------------------------------------------------------- parameters

        def _declare_and_read_parameters(self) -> dict:
            from rclpy.exceptions import ParameterException
            from rclpy.parameter import Parameter

            values = {}
            for spec in PARAMS:
                override = self._parameter_overrides.get(spec.name)
                if override is not None and override.type_ != Parameter.Type.from_parameter_value(spec.default):
                    # YAML `parallax_px: 40` is an INTEGER, `distortion: [0, 0, 0, 0, 0]` an INTEGER_ARRAY:
                    # convert what converts exactly (config.coerce), name the parameter otherwise.
                    try:
                        value = coerce(spec, override.value)
                    except ParameterError as exc:
                        raise StartupError(str(exc)) from None
                    self._parameter_overrides[spec.name] = Parameter(spec.name, value=value)
                try:
                    param = self.declare_parameter(spec.name, spec.default, _descriptor(spec))
                    values[spec.name] = param.value
                except (ParameterException, TypeError, ValueError) as exc:
                    raise StartupError(f"parameter '{spec.name}': {str(exc).splitlines()[0]}") from None
            unknown = [name for name in self._parameter_overrides if name not in SPECS and name != "use_sim_time"]
            for name in sorted(unknown):
                self.get_logger().warning(f"ignoring unknown parameter '{name}'{_suggest(name)}")
            try:
                return validate(values)
            except ParameterError as exc:
                raise StartupError(str(exc)) from None

        def _on_set_parameters(self, params):
            changes = {}
            for param in params:
                spec = SPECS.get(param.name)
                if spec is None:
                    continue
                try:
                    value = coerce(spec, param.value)
                except ParameterError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                if value != self._flat[param.name] and not spec.live:
                    return SetParametersResult(successful=False, reason=(
                        f"parameter '{param.name}' cannot change while running (models/device/topics are set up "
                        "at start): restart the node with the new value"))
                changes[param.name] = value
            if changes:
                flat = dict(self._flat, **changes)
                try:
                    config = FrontEndConfig.from_flat(flat)
                except ParameterError as exc:
                    return SetParametersResult(successful=False, reason=str(exc))
                self._flat = flat
                self._pending_config = config  # applied by the worker between frames
                self.get_logger().info("parameters updated: " + ", ".join(f"{k}={v}" for k, v in changes.items()))
            return SetParametersResult(successful=True)

        # -------------------------------------------------------------- input

        def _enqueue(self, msg, kind: str) -> None:
            with self._cond:
                self.counters.received += 1
                self._last_input = time.monotonic()
                if len(self._queue) == self._queue.maxlen:
                    self.counters.dropped_queue += 1  # deque drops the oldest on append
                stamp_ns = _safe_stamp_ns(msg)
                self._queue.append((msg, kind, time.monotonic(), self._previous_input_stamp))
                self._previous_input_stamp = stamp_ns
                self._cond.notify()

        def _on_message_lost(self, info) -> None:
            self.counters.lost_transport += int(info.total_count_change)
            self._log_limited("lost", f"{self.counters.lost_transport} frame(s) lost by the middleware before "
                              "reaching the node (large frames over UDP? see config/fastdds_local.xml)")

        def _on_camera_info(self, msg) -> None:
            self.counters.camera_info_received += 1
            try:
                camera = camera_from_info(msg)
                problem = camera.problem()
            except Exception as exc:  # a malformed message must not take the executor down
                camera, problem = None, f"unreadable ({type(exc).__name__}: {exc})"
            if problem:
                # Not stored: frames keep using the last usable intrinsics (or camera.* / none).
                self.counters.camera_info_rejected += 1
                self._log_limited("camera_info: " + problem.split("(")[0], f"CameraInfo ignored: {problem} "
                                  f"[{self.counters.camera_info_rejected} so far]")
                return
            self._cameras[stamp_to_ns(msg.header.stamp)] = camera
            while len(self._cameras) > 64:
                self._cameras.popitem(last=False)
            self._latest_camera = camera

        def _camera_for(self, stamp_ns: int):
            camera = self._cameras.get(stamp_ns) or self._latest_camera or self._fallback_camera
            if camera is None:
                unusable = " (the CameraInfo received is unusable)" if self.counters.camera_info_rejected else ""
                self._warn_once("no_intrinsics", f"no CameraInfo received{unusable} and no camera.* parameters: "
                                "matches are published, the relative pose is not")
            return camera

        # -------------------------------------------------------------- worker

        def _work(self) -> None:
            while not self._stop.is_set():
                with self._cond:
                    while not self._queue and not self._stop.is_set():
                        self._cond.wait(0.1)
                    if self._stop.is_set():
                        return
                    msg, kind, received_at, previous_stamp = self._queue.popleft()
                    self._busy = True
                try:
                    self._process(msg, kind, received_at, previous_stamp)
                except Exception as exc:  # never let one frame kill the worker
                    self.counters.errors += 1
                    if self._busy:  # not counted yet (an error after publishing is only logged)
                        self._reject("error", f"frame failed: {type(exc).__name__}: {exc}")
                    else:
                        self._log_limited("error", f"frame failed after publishing: {type(exc).__name__}: {exc}")
                finally:
                    with self._cond:
                        self._busy = False

        def _apply_pending_config(self) -> None:
            config, self._pending_config = self._pending_config, None
            try:
                self.frontend.update_config(config)
            except Exception as exc:  # checked in _on_set_parameters already; never lose a frame to it
                self.counters.errors += 1
                self.get_logger().error(f"parameter update not applied: {exc}")

        def _process(self, msg, kind: str, received_at: float, previous_stamp: int | None = None) -> None:
            if self._pending_config is not None:
                self._apply_pending_config()
            image_codec = self._image_codec
            stamp_ns = stamp_to_ns(msg.header.stamp)
            try:
                image = image_codec.decode_compressed(msg) if kind == "compressed" else image_codec.decode_image(msg)
                image = image_codec.to_gray_or_rgb_uint8(image, getattr(msg, "encoding", ""),
                                                         bit_depth=self._flat["input.bit_depth"] or None)
            except image_codec.ImageDecodeError as exc:
                self._reject(exc.reason, f"image at {stamp_ns} ns dropped: {exc}")
                return
            camera = self._camera_for(stamp_ns)
            frame = self._Frame(image, stamp_ns, msg.header.frame_id, camera)
            try:
                # gap resets measure arrivals, so frames dropped by the queue do not look like a pause
                result = self.frontend.process(frame, previous_input_stamp_ns=previous_stamp)
            except Exception as exc:
                if _is_out_of_memory(exc):
                    _free_device_memory()
                    self._reject("out_of_memory", f"frame {image.shape[1]}x{image.shape[0]} dropped: out of memory")
                    return
                raise
            if result.status not in ("ok", "no_features"):
                self._reject(result.status, f"frame at {stamp_ns} ns dropped: {result.status}")
                return
            self._publish(result, msg.header, image, camera)
            with self._cond:  # counted and released together: diagnostics see consistent totals
                self.counters.processed += 1
                self._busy = False
            self.counters.valid_poses += int(result.pose is not None and result.pose.valid)
            self._last_output = time.monotonic()
            self.processing.add((time.monotonic() - received_at) * 1e3)
            self.latency.add((self.get_clock().now().nanoseconds - stamp_ns) * 1e-6)

        def _publish(self, result, header, image, camera) -> None:
            normalizer = None
            if self.pub_features is not None and camera is not None:
                from ..geometry import normalize_points

                normalizer = lambda pts: normalize_points(pts, camera)  # noqa: E731
            want_debug = self.pub_debug.get_subscription_count() > 0  # drawn only when someone looks
            frame_id = self._flat["output.frame_id"] or header.frame_id
            for suffix, msg in self._frame_outputs(result, self.types, frame_id, normalizer=normalizer,
                                                   image=image if want_debug else None,
                                                   features_options=self._features_options(self._flat)):
                self.publishers_by_suffix[suffix].publish(msg)
            if result.keyframe.is_keyframe:
                self.counters.keyframes += 1
            newest = result.matches[0] if result.matches else None
            self._last = {"keypoints": len(result.keypoints), "matches": len(newest) if newest else 0,
                          "inliers": int(newest.inliers.sum()) if newest else 0, "stop_layer": result.stop_layer}

        # -------------------------------------------------------------- diagnostics & logging

        def _on_reset(self, reason: str) -> None:
            self.counters.resets += 1
            self.get_logger().warning(f"keyframe buffer reset: {reason}")

        def _reject(self, reason: str, text: str) -> None:
            """Count a frame that gave no output (worker thread) and warn, rate-limited per reason."""
            with self._cond:
                self.counters.rejected[reason] += 1
                self._busy = False
            self._log_limited(reason, f"{text} [{reason}; {self.counters.rejected[reason]} so far]")

        def _log_limited(self, key: str, text: str, period_s: float = LOG_PERIOD_S) -> None:
            """Warn at most once per ``period_s`` per ``key`` (each reason has its own budget, so a
            flood of one kind of bad input cannot hide another); counts are in the diagnostics."""
            now = time.monotonic()
            last = self._log_times.get(key)
            if last is None or now - last >= period_s:
                self._log_times[key] = now
                self.get_logger().warning(text)

        def _warn_once(self, key: str, text: str) -> None:
            if key not in self._warned:
                self._warned.add(key)
                self.get_logger().warning(text)

        def _period_delta(self, key: str, count: int) -> tuple[int, float]:
            """(increase of a counter, seconds) since the previous diagnostics period."""
            t0, c0 = self._rates.get(key, (self._started, 0))
            now = time.monotonic()
            self._rates[key] = (now, count)
            return count - c0, max(now - t0, 1e-6)

        def figures(self) -> dict:
            c = self.counters
            matches = self._last["matches"]
            with self._cond:  # a consistent snapshot: received = processed + dropped + rejected + pending
                received_total, processed_total = c.received, c.processed
                rejected = dict(c.rejected)
                pending = len(self._queue) + int(self._busy)
            received, seconds = self._period_delta("received", received_total)
            processed, _ = self._period_delta("processed", processed_total)
            dropped, _ = self._period_delta("dropped", c.dropped_queue + sum(rejected.values()))
            poses, _ = self._period_delta("poses", c.valid_poses)
            now = time.monotonic()
            last_input, last_output = self._last_input, self._last_output or self._started
            # How long input has gone without output: a frame waiting → since the last output; else the
            # span of input after the last output (all rejected). A camera or bag that stopped is
            # "no input" (a warning), not a stalled matcher (an error).
            if pending:
                since_output = now - last_output
            else:
                since_output = max(last_input - last_output, 0.0) if last_input is not None else 0.0
            since_input = now - last_input if last_input is not None else 0.0
            intrinsics = ("camera_info" if self._latest_camera is not None else
                          "parameters" if self._fallback_camera is not None else "none")
            return {
                "input_rate_hz": received / seconds, "processed_rate_hz": processed / seconds,
                "frames_received": received_total, "frames_processed": processed_total,
                "frames_pending": pending,  # in the queue or being processed
                "frames_dropped": dropped,  # this period (queue overflow + rejected input)
                "frames_dropped_queue_total": c.dropped_queue,
                "frames_lost_transport_total": c.lost_transport,
                "frames_rejected_total": sum(rejected.values()),
                **{f"rejected.{k}": v for k, v in sorted(rejected.items())},
                "stalled": bool(received > 0 and processed == 0 and since_output > 5.0),
                "seconds_since_output": since_output,
                "seconds_since_input": since_input,
                **({"warning": f"no input for {since_input:.0f} s"} if since_input > NO_INPUT_WARN_S else {}),
                "pose_valid_ratio": poses / processed if processed else 1.0,
                "latency_p50_ms": self.latency.percentile(50), "latency_p99_ms": self.latency.percentile(99),
                "processing_p50_ms": self.processing.percentile(50),
                "processing_p99_ms": self.processing.percentile(99),
                "keypoints": self._last["keypoints"], "matches": matches,
                "inlier_ratio": self._last["inliers"] / matches if matches else 0.0,
                "lightglue_stop_layer": self._last["stop_layer"],
                "keyframes": c.keyframes, "resets": c.resets, "errors": c.errors,
                "camera_info_received": c.camera_info_received,
                "camera_info_rejected": c.camera_info_rejected,
                "intrinsics": intrinsics,
                **({"no_pose": "no intrinsics (no usable CameraInfo, no camera.* parameters)"}
                   if intrinsics == "none" else {}),
                "device": self._describe(self.frontend.device),
            }

        def _publish_diagnostics(self) -> None:
            figures = self.figures()
            stamp_ns = self.get_clock().now().nanoseconds
            self.pub_diagnostics.publish(self._messages.diagnostics(
                figures, self.types, stamp_ns, name=f"{self.get_fully_qualified_name()}: front-end",
                hardware_id=figures["device"]))

        def close(self) -> None:
            self._stop.set()
            with self._cond:
                self._cond.notify_all()
            self._worker.join(timeout=5.0)

    return MatcherNode


def _safe_stamp_ns(msg) -> int | None:
    try:
        return stamp_to_ns(msg.header.stamp)
    except Exception:  # malformed header: the worker rejects the frame later
        return None


def _is_out_of_memory(exc: BaseException) -> bool:
    """GPU or host allocation failures (torch, numpy MemoryError, OpenCV "Insufficient memory")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "insufficient memory", "failed to allocate"))

def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run glue_ros matcher_node` and of the venv's `matcher_node`."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        rclpy.init(args=args if args is not None else sys.argv)
    except Exception as exc:  # unreadable --params-file, malformed --ros-args: rcl says which
        detail = " ".join(str(exc).split())
        print(f"[{NODE_NAME}] error: invalid ROS arguments: {detail}", file=sys.stderr)
        return 2
    node = None
    code = 0
    try:
        node = _make_node_class()()
        rclpy.spin(node)
    except StartupError as exc:
        print(f"[{NODE_NAME}] error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Shutting down: a second Ctrl-C (a terminal's plus the one `ros2 launch` / glue-ros-launch
        # forwards) must not interrupt the cleanup with a KeyboardInterrupt traceback. Cleanup is
        # bounded (the worker is joined for at most 5 s); SIGTERM / SIGKILL still work.
        _ignore_sigint()
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        _ignore_sigint()  # rclpy restored its predecessor (KeyboardInterrupt) on shutdown
    return code


def _ignore_sigint() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())

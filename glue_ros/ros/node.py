"""glue_ros_matcher: the rclpy node — a thin adapter over glue_ros.frontend.FrontEnd.

Callbacks only enqueue messages (bounded queue, drop-oldest, every drop counted; with extraction
ahead: ``overlap.FrameQueue``); one worker thread takes the oldest waiting frame through the shared
input path (``frame_input.FrameInput``: decode, intrinsics, Frame, pipeline — the same as the replay
tool's), and publishes (``outputs.frame_outputs``).
Outputs carry the input image's stamp, never now(), so bag replay and use_sim_time work.

Every image the node receives is accounted for in /diagnostics: ``frames_received`` =
``frames_processed`` (one ~/matches each) + ``frames_dropped_queue_total`` + ``frames_rejected_total``
(per reason: ``rejected.<reason>``, e.g. bad_step, short_data, corrupt_compressed, repeated_stamp)
+ ``frames_pending``. Frames the middleware lost before delivery are ``frames_lost_transport_total``.
Unusable CameraInfo messages (NaN / zero K ...) are ignored and counted (``camera_info_rejected``):
frames keep the last usable intrinsics, else the ``camera.*`` parameters. Warnings about bad input
are rate-limited per reason.

Parameters: every override (``--params-file``, ``-p``) is declared from the overrides at start
(``automatically_declare_parameters_from_overrides``), converted to its parameter's type where that
is exact (YAML ``parallax_px: 40`` is an INTEGER for a float parameter) and re-declared with its
descriptor (type, range, description); unknown names are warned about and dropped. At runtime a
pre-set callback makes the same conversion. Parameters are validated before torch and the models
load (a bad value exits with code 2 in about a second, naming the parameter).

Stopping: SIGINT (Ctrl-C) and SIGTERM (``timeout``, docker, systemd, ``ros2 launch`` escalation) are a
stop request, not an error: the node stops taking input, lets the worker finish the frame it is on
(publishing while the context is still valid), shuts down and exits **0**, logging one line. During
start-up (models loading) the first signal interrupts the start at once (also exit 0). rclpy's own
signal handlers are not installed (they would invalidate the context under the worker's feet).

Visual outputs (``visual.py``): ``~/match_markers`` / ``~/match_points`` are built only while they have
subscribers; ``~/keyframe_path`` (transient local: a late subscriber gets the latest) at keyframe
events while subscribed; ``/tf`` when ``output.publish_tf`` and tf2_msgs is installed. /diagnostics
warns when input stamps are more than ``STAMP_SKEW_WARN_S`` from the node's clock (a bag replayed
without ``use_sim_time``); such frames stay out of ``latency_p50_ms``/``p99`` (nan when no frame is
left), which would otherwise report the bag's age.
"""
from __future__ import annotations

import collections
import importlib.util
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..config import PARAMS, SPECS, FrontEndConfig, ParameterError, ParamSpec, coerce, suggest, validate
from .diagnostics import DIAGNOSTICS_TOPIC, build_diagnostics
from .frame_input import FrameInput, InputCounters
from .image_codec import ImageDecodeError
from .launch_args import NODE_NAME
from .msg_types import RclpyTypes, stamp_to_ns
from .outputs import MARKER_TOPICS, OUTPUT_TOPICS, TF_TOPIC, OutputState, check_output_params, frame_outputs

if TYPE_CHECKING:
    from ..frontend import Frame
    from ..overlap import Extracted

LOG_PERIOD_S = 2.0  # warnings about bad input: at most one per reason per period
NO_INPUT_WARN_S = 5.0  # diagnostics warn when no frame arrived for this long (after a first one)
ROS_PARAMETERS = ("use_sim_time", "start_type_description_service")  # declared by rclpy itself
STAMP_SKEW_WARN_S = 10.0  # diagnostics warn when input stamps are further than this from the node's clock


class LatencyWindow:
    """Stamp→publish latencies of the last N frames, for p50/p99."""

    def __init__(self, size: int = 300):
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def percentile(self, q: float, empty: float = 0.0) -> float:
        return float(np.percentile(self._values, q)) if self._values else empty


@dataclass
class Counters(InputCounters):
    """The input counters (received, processed, rejected, CameraInfo) plus the node's own."""

    dropped_queue: int = 0
    lost_transport: int = 0  # reported lost by the middleware (never received)
    resets: int = 0
    keyframes: int = 0
    errors: int = 0
    valid_poses: int = 0


@dataclass
class _Arrival:
    """A frame as it arrived, waiting in the node's queue."""

    msg: object
    received_at: float  # time.monotonic()
    previous_stamp: int | None  # stamp of the frame that arrived before it (gap resets)


class StartupError(RuntimeError):
    """The node cannot start (bad parameter, missing weights, unusable device)."""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
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


class MatcherNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **kwargs)
        self.counters = Counters()
        self.latency = LatencyWindow()
        self.processing = LatencyWindow()
        self._log_times: dict[str, float] = {}
        # Parameters first, before torch and the models are imported: a bad value fails in < 1 s.
        self._flat = self._declare_parameters()
        self._last = {"keypoints": 0, "matches": 0, "inliers": 0, "stop_layer": -1}
        self._started = time.monotonic()
        self._last_output: float | None = None
        self._last_input: float | None = None
        self._rates: dict[str, tuple[float, int]] = {}

        from ..device import DeviceError, describe
        from ..frontend import FrontEnd
        from ..overlap import ExtractionThread, FrameQueue, extracts_ahead, stage_threads
        from ..models.weights import WeightsError

        try:
            self.frontend = FrontEnd(FrontEndConfig.from_flat(self._flat), on_reset=self._on_reset)
        except (ParameterError, WeightsError, DeviceError) as exc:
            raise StartupError(str(exc)) from None
        config = self.frontend.config
        self.device_name = describe(self.frontend.device)
        self._backend = f"{config.extractor.type} + {config.matcher.type}"
        self._pending_config: FrontEndConfig | None = None
        self.types = RclpyTypes()
        self.output_state = OutputState(self._flat)
        self._stamp_skew_s: float | None = None  # node clock - stamp of the newest processed frame
        self._cond = threading.Condition()  # guards the queue and (as the input's lock) the counters
        self.inputs = FrameInput(self._flat, counters=self.counters, lock=self._cond, log=self._log_limited)

        out_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latest = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        qos = {"debug_image": 2, "match_markers": 2, "match_points": 2, "keyframe_path": latest}
        suffixes = [k for k in OUTPUT_TOPICS if k != "features" or self._flat["output.features"]]
        self.publishers_by_suffix = {
            suffix: self.create_publisher(self.types.get(OUTPUT_TOPICS[suffix]), "~/" + suffix,
                                          qos.get(suffix, out_qos))
            for suffix in suffixes}
        self.pub_debug = self.publishers_by_suffix["debug_image"]
        # /tf needs tf2_msgs: part of every ROS install, not published as a PyPI wheel (pip venv).
        self.tf_available = importlib.util.find_spec("tf2_msgs") is not None
        if self._flat["output.publish_tf"] and self.tf_available:
            self.publishers_by_suffix[TF_TOPIC[0]] = self.create_publisher(
                self.types.get(TF_TOPIC[1]), TF_TOPIC[0], QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        elif self._flat["output.publish_tf"]:
            self.get_logger().info("output.publish_tf: tf2_msgs is not installed (pip venv), so /tf is not "
                                   "published; ~/keyframe_path is")
        self.pub_diagnostics = self.create_publisher(self.types.get(DIAGNOSTICS_TOPIC[1]), DIAGNOSTICS_TOPIC[0], 10)
        self.add_pre_set_parameters_callback(self._convert_parameters)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # Extraction ahead (overlap.py): the decoding + extraction of the frame next in line runs on
        # the extraction thread while the worker matches the frame before it.
        ahead = extracts_ahead(config.pipeline, self.frontend.device, config.extractor.max_keypoints)
        extract_threads, self._match_threads = stage_threads(ahead, config.pipeline.cpu_threads)
        self._extraction = ExtractionThread(self.frontend, extract_threads) if ahead else None
        extract = ((lambda entry: self._extraction.submit(self._decode_and_extract, entry.msg))
                   if self._extraction else None)
        self._queue: FrameQueue[_Arrival] = FrameQueue(self._flat["input.queue_size"], self._cond, extract)
        self._previous_input_stamp: int | None = None  # of the last frame that arrived (gap resets)
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
        compressed = self._flat["input.compressed"]
        self.create_subscription(CompressedImage if compressed else Image,
                                 "image/compressed" if compressed else "image", self._enqueue, input_qos,
                                 event_callbacks=events)
        self.create_subscription(CameraInfo, "camera_info", self.inputs.add_camera_info, input_qos)
        self.get_logger().info(
            f"ready: {self._backend} on {self.device_name} ({str(self.frontend.dtype).replace('torch.', '')}), "
            f"input {'image/compressed' if compressed else 'image'} ({self._flat['input.qos']} QoS), "
            f"queue {self._flat['input.queue_size']}, "
            + (f"extraction ahead ({extract_threads} + {self._match_threads} threads)" if ahead
               else f"serial ({self._match_threads} threads)"))

    # ------------------------------------------------------------------ parameters

    def _declare_parameters(self) -> dict:
        """Re-declare every glue_ros parameter with its descriptor: the override (declared from the
        overrides by rclpy, as given) converted to the parameter's type, else the default."""
        given = {name: self.get_parameter(name).value for name in self.list_parameters([], 0).names}
        values = {}
        for spec in PARAMS:
            value = spec.default
            if spec.name in given:
                try:
                    value = coerce(spec, given[spec.name])
                except ParameterError as exc:
                    raise StartupError(str(exc)) from None
                self.undeclare_parameter(spec.name)
            try:
                values[spec.name] = self.declare_parameter(spec.name, value, _descriptor(spec),
                                                           ignore_override=True).value
            except (ParameterException, TypeError, ValueError) as exc:
                raise StartupError(f"parameter '{spec.name}': {str(exc).splitlines()[0]}") from None
        unknown = [name for name in given if name not in SPECS and name not in ROS_PARAMETERS
                   and not name.startswith("qos_overrides.")]
        for name in sorted(unknown):
            self.get_logger().warning(f"ignoring unknown parameter '{name}'{suggest(name)}")
            self.undeclare_parameter(name)
        try:
            flat = validate(values)
            check_output_params(flat)
            return flat
        except ParameterError as exc:
            raise StartupError(str(exc)) from None

    @staticmethod
    def _convert_parameters(params: list[Parameter]) -> list[Parameter]:
        """Pre-set: a value that converts exactly to its parameter's type is set as that type
        (``ros2 param set ... keyframes.parallax_px 50`` stores 50.0); others pass unchanged, to be
        refused with a reason."""
        out = []
        for param in params:
            spec = SPECS.get(param.name)
            if spec is not None and param.type_ != Parameter.Type.NOT_SET:
                try:
                    param = Parameter(param.name, value=coerce(spec, param.value))
                except ParameterError:
                    pass
            out.append(param)
        return out

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
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

    # ------------------------------------------------------------------ input

    def _enqueue(self, msg) -> None:
        with self._cond:
            self.inputs.receive()
            self._last_input = time.monotonic()
            entry = _Arrival(msg, time.monotonic(), self._previous_input_stamp)
            self._previous_input_stamp = _safe_stamp_ns(msg)
            if self._queue.put(entry) is not None:
                self.counters.dropped_queue += 1
            self._cond.notify()

    def _on_message_lost(self, info) -> None:
        self.counters.lost_transport += int(info.total_count_change)
        self._log_limited("lost", f"{self.counters.lost_transport} frame(s) lost by the middleware before "
                          "reaching the node (large frames over UDP? see config/fastdds_local.xml)")

    # ------------------------------------------------------------------ worker

    def _decode_and_extract(self, msg) -> tuple[Frame, Callable[[], Extracted]]:
        """On the extraction thread: the frame and a callable giving its features. A decoding error
        raises (counted by the worker); an extraction error (e.g. out of memory) is raised again when
        the worker asks for the features, where a serial extraction would have raised it."""
        frame = self.inputs.decode_frame(msg)
        try:
            extracted = self._extraction.extract_now(frame)
        except Exception as exc:
            def fail(exc: Exception = exc) -> Extracted:
                raise exc
            return frame, fail
        return frame, lambda: extracted

    def _work(self) -> None:
        import torch

        torch.set_num_threads(self._match_threads)  # this thread's own intra-op threads (overlap.stage_threads)
        while not self._stop.is_set():
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
                taken = self._queue.take()
                self.inputs.busy = True  # taken: pending stays consistent (queue - 1, busy + 1)
            try:
                arrival = taken.item
                self._process(arrival.msg, arrival.received_at, arrival.previous_stamp, taken.extraction)
            except Exception as exc:  # never let one frame kill the worker
                self.counters.errors += 1
                if self.inputs.busy:  # not counted yet (an error after publishing is only logged)
                    self.inputs.reject("error", f"frame failed: {type(exc).__name__}: {exc}")
                else:
                    self._log_limited("error", f"frame failed after publishing: {type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self.inputs.busy = False

    def _apply_pending_config(self) -> None:
        config, self._pending_config = self._pending_config, None
        try:
            self.frontend.update_config(config)
        except Exception as exc:  # checked in _on_set_parameters already; never lose a frame to it
            self.counters.errors += 1
            self.get_logger().error(f"parameter update not applied: {exc}")

    def _process(self, msg, received_at: float, previous_stamp: int | None = None, ahead=None) -> None:
        if self._pending_config is not None:
            self._apply_pending_config()
        if ahead is None:
            accepted = self.inputs.process(self.frontend, msg, previous_input_stamp_ns=previous_stamp)
        else:
            try:
                frame, extracted = ahead.result()
            except ImageDecodeError as exc:
                self.inputs.reject_undecodable(_safe_stamp_ns(msg), exc)
                return
            frame.camera = self.inputs.camera_for(frame.stamp_ns)  # now: its CameraInfo has had time to arrive
            accepted = self.inputs.run(self.frontend, frame, previous_input_stamp_ns=previous_stamp,
                                       extracted=extracted)
        if accepted is None:
            return
        frame, result = accepted
        # drawn / built only when someone looks
        watched = {suffix for suffix in ("debug_image", "keyframe_path", *MARKER_TOPICS)
                   if self.publishers_by_suffix[suffix].get_subscription_count() > 0}
        for suffix, out in frame_outputs(result, self.types, self._flat, camera=frame.camera,
                                         debug_image=frame.image if "debug_image" in watched else None,
                                         backend=self._backend, markers=watched & set(MARKER_TOPICS),
                                         state=self.output_state, path="keyframe_path" in watched,
                                         tf=TF_TOPIC[0] in self.publishers_by_suffix):
            self.publishers_by_suffix[suffix].publish(out)
        self.inputs.finish()  # counted and released together: diagnostics see consistent totals
        self.counters.keyframes += int(result.keyframe.is_keyframe)
        newest = result.matches[0] if result.matches else None
        self._last = {"keypoints": len(result.keypoints), "matches": len(newest) if newest else 0,
                      "inliers": int(newest.inliers.sum()) if newest else 0, "stop_layer": result.stop_layer}
        self.counters.valid_poses += int(result.pose is not None and result.pose.valid)
        self._last_output = time.monotonic()
        self.processing.add((time.monotonic() - received_at) * 1e3)
        skew_ns = self.get_clock().now().nanoseconds - frame.stamp_ns
        self._stamp_skew_s = skew_ns * 1e-9
        if abs(self._stamp_skew_s) <= STAMP_SKEW_WARN_S:  # else it is the bag's age, not a latency
            self.latency.add(skew_ns * 1e-6)

    # ------------------------------------------------------------------ diagnostics & logging

    def _on_reset(self, reason: str) -> None:
        self.counters.resets += 1
        self.get_logger().warning(f"keyframe buffer reset: {reason}")

    def _log_limited(self, key: str, text: str, period_s: float = LOG_PERIOD_S) -> None:
        """Warn at most once per ``period_s`` per ``key`` (each reason has its own budget, so a
        flood of one kind of bad input cannot hide another); counts are in the diagnostics."""
        now = time.monotonic()
        last = self._log_times.get(key)
        if last is None or now - last >= period_s:
            self._log_times[key] = now
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
            inputs = self.inputs.figures()
            pending = len(self._queue) + int(self.inputs.busy)
        received, seconds = self._period_delta("received", inputs["frames_received"])
        processed, _ = self._period_delta("processed", inputs["frames_processed"])
        dropped, _ = self._period_delta("dropped", c.dropped_queue + inputs["frames_rejected_total"])
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
        return {
            "input_rate_hz": received / seconds, "processed_rate_hz": processed / seconds,
            **inputs,  # frames_received / _processed / _rejected_total, rejected.*, camera_info_*, intrinsics
            "frames_pending": pending,  # in the queue or being processed
            "frames_dropped": dropped,  # this period (queue overflow + rejected input)
            "frames_dropped_queue_total": c.dropped_queue,
            "frames_lost_transport_total": c.lost_transport,
            "stalled": bool(received > 0 and processed == 0 and since_output > 5.0),
            "seconds_since_output": since_output,
            "seconds_since_input": since_input,
            **({"warning": f"no input for {since_input:.0f} s"} if since_input > NO_INPUT_WARN_S else {}),
            "pose_valid_ratio": poses / processed if processed else 1.0,
            "stamp_skew_s": self._stamp_skew_s if self._stamp_skew_s is not None else 0.0,
            **({"clock_warning": self._clock_warning()} if self._clock_warning() else {}),
            "latency_p50_ms": self.latency.percentile(50, math.nan),
            "latency_p99_ms": self.latency.percentile(99, math.nan),
            "processing_p50_ms": self.processing.percentile(50),
            "processing_p99_ms": self.processing.percentile(99),
            "keypoints": self._last["keypoints"], "matches": matches,
            "inlier_ratio": self._last["inliers"] / matches if matches else 0.0,
            "lightglue_stop_layer": self._last["stop_layer"],
            "keyframes": c.keyframes, "resets": c.resets, "errors": c.errors,
            "device": self.device_name,
        }

    def _clock_warning(self) -> str:
        """Why the newest frame's stamp is far from this node's clock, with the fix; "" when it is not."""
        skew = self._stamp_skew_s
        if skew is None or abs(skew) <= STAMP_SKEW_WARN_S:
            return ""
        text = f"input stamps are {abs(skew):.3g} s {'behind' if skew > 0 else 'ahead of'} the node's clock"
        if self.get_parameter("use_sim_time").value:
            return text + " (use_sim_time is on: is /clock published? ros2 bag play --clock, glue-ros-replay --clock)"
        return text + " (a recorded bag? run the node with use_sim_time:=true and play it with --clock)"

    def _publish_diagnostics(self) -> None:
        figures = self.figures()
        self.pub_diagnostics.publish(build_diagnostics(
            self.types, self.get_clock().now().nanoseconds, figures, hardware_id=figures["device"],
            name=f"{self.get_fully_qualified_name()}: front-end"))

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._queue.close()
            self._cond.notify_all()
        self._worker.join(timeout=5.0)
        if self._extraction is not None:
            self._extraction.close()


def _safe_stamp_ns(msg) -> int | None:
    try:
        return stamp_to_ns(msg.header.stamp)
    except Exception:  # malformed header: the worker rejects the frame later
        return None


class StopRequest:
    """SIGINT / SIGTERM → a stop request. While ``starting``, a signal raises KeyboardInterrupt (the
    start is abandoned at once); afterwards it only sets ``requested`` (the spin loop ends)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.starting = True
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if self.starting and first:
            raise KeyboardInterrupt

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run glue_ros matcher_node` and of the venv's `matcher_node`."""
    stop = StopRequest()  # before rclpy.init: a signal during start-up must not kill the process unclean
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except KeyboardInterrupt:
        rclpy.try_shutdown(uninstall_handlers=False)  # none installed: keep ours
        return 0
    except Exception as exc:  # unreadable --params-file, malformed --ros-args: rcl says which
        detail = " ".join(str(exc).split())
        print(f"[{NODE_NAME}] error: invalid ROS arguments: {detail}", file=sys.stderr)
        return 2
    node = executor = None
    code = 0
    try:
        node = MatcherNode()
        stop.starting = False
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.requested:
            executor.spin_once(timeout_sec=0.1)
    except StartupError as exc:
        print(f"[{NODE_NAME}] error: {exc}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Further signals (a terminal's Ctrl-C plus the one a launcher forwards) only record; cleanup
        # is bounded (the worker finishes its frame, joined for at most 5 s); SIGKILL still works.
        stop.starting = False
        if node is not None:
            if stop.requested:
                node.get_logger().info(f"stopping ({stop.name})")
            node.close()
            if executor is not None:
                executor.remove_node(node)
                executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
        rclpy.try_shutdown(uninstall_handlers=False)  # none installed: keep ours
        # Interpreter finalisation resets Python-level handlers to the default action: a late signal
        # (a launcher forwarding one more) must not kill the finished process with "-2".
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())

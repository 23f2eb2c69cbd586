"""Helpers for tests (and bench/bench_node.py) that run the matcher node on a real DDS graph.

* Importing this module isolates the DDS graph of this process and of the nodes it spawns: a
  ROS_DOMAIN_ID derived from the pid (1..100; ``GLUE_ROS_TEST_DOMAIN_ID`` overrides it),
  ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, and the repo's Fast DDS profile
  (config/fastdds_local.xml: 64 MB shared memory, so 640x480 frames are not fragmented over UDP and
  lost under best-effort QoS). It must be imported before any ``rclpy.init`` of this process.
* :class:`NodeProcess` runs ``python -m glue_ros.ros.node`` (or any command) in its own process
  (``subprocess``: fork after ``rclpy.init`` is not safe; the venv's python: the ROS wheels re-exec
  it to set LD_LIBRARY_PATH), logs to files, and is always stopped by ``close``.
* :class:`Graph` is this process' side of the graph: a node in its own rclpy context, spun by a
  background thread, that publishes frames and records what it receives; tests wait on conditions
  (``wait_for``) with timeouts, never on sleeps.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO / "config" / "fastdds_local.xml"
NODE_NAME = "glue_ros_matcher"


def _domain_id() -> int:
    explicit = os.environ.get("GLUE_ROS_TEST_DOMAIN_ID")
    return int(explicit) if explicit else 1 + os.getpid() % 100


DOMAIN_ID = _domain_id()
GRAPH_ENV = {
    "ROS_DOMAIN_ID": str(DOMAIN_ID),
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "FASTDDS_DEFAULT_PROFILES_FILE": str(FASTDDS_PROFILE),
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
}
os.environ.update(GRAPH_ENV)
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)  # ament_index_python needs it


def child_env(*, single_threaded: bool = True, **extra: str) -> dict[str, str]:
    """Environment of spawned nodes: same graph as this process, this checkout importable,
    unbuffered logs without colour codes; ``single_threaded``: one torch/OpenMP thread unless
    OMP_NUM_THREADS is set (tests run several processes on a small machine)."""
    env = dict(os.environ)
    env.update(GRAPH_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update({"PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0", "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
                "PYTHONFAULTHANDLER": "1"})  # a hung child can be asked for its stacks (dump_stacks)
    if single_threaded:
        env.setdefault("OMP_NUM_THREADS", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def node_command(*ros_args: str, name: str = NODE_NAME, namespace: str = "") -> list[str]:
    """``python -m glue_ros.ros.node --ros-args ...`` (what ``ros2 run glue_ros matcher_node`` runs)."""
    args = ["--ros-args", "-r", f"__node:={name}"]
    if namespace:
        args += ["-r", f"__ns:={namespace}"]
    return [sys.executable, "-m", "glue_ros.ros.node", *args, *ros_args]


def write_params(path: Path, params: dict[str, Any], node: str = "/**") -> Path:
    """A ROS 2 params file (``node: ros__parameters:``) with dotted names nested as YAML mappings."""
    import yaml

    tree: dict[str, Any] = {}
    for name, value in params.items():
        *heads, leaf = name.split(".")
        branch = tree
        for head in heads:
            branch = branch.setdefault(head, {})
        branch[leaf] = value
    Path(path).write_text(yaml.safe_dump({node: {"ros__parameters": tree}}, sort_keys=False))
    return Path(path)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


# --------------------------------------------------------------------------- processes


class NodeProcess:
    """A child process (a matcher node, or glue-ros-launch) with its output in log files."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None, *, label: str = "node",
                 log_dir: str | Path | None = None):
        self.command = list(command)
        self.label = label
        self._tmp = None
        if log_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"glue_ros_{label}_")
            log_dir = self._tmp.name
        self.log_path = Path(log_dir) / f"{label}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                     env=env if env is not None else child_env(), start_new_session=True)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:  # also readable after close()
            self._log.flush()
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        def seen():
            if text in self.output():
                return True
            if not self.alive():
                raise AssertionError(f"{self.label} exited with {self.proc.returncode} before printing {text!r}:\n"
                                     + self.output()[-4000:])
            return False

        wait_until(seen, timeout, f"{text!r} in the output of {self.label}", poll=0.05)

    def wait(self, timeout: float) -> int:
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.label} did not exit within {timeout} s:\n" + self.dump_stacks()) from None
        return self.returncode

    def dump_stacks(self) -> str:
        """The output of a hung process, with the Python stacks of all its threads (SIGABRT makes
        faulthandler, enabled by PYTHONFAULTHANDLER in child_env, print them; the process dies)."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGABRT)
                self.proc.wait(5.0)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        return self.output()[-6000:]

    def interrupt(self, timeout: float = 10.0) -> int:
        """SIGINT (Ctrl-C) to the process only, then wait for it to exit; returns its exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def close(self) -> None:
        """Stop the process and everything it started (its own process group), whatever state it is in."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(5.0)
            except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
                pass
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait(5.0)
        if self.returncode is None:
            self.returncode = self.proc.returncode
        try:  # children of a launcher that outlived it (same process group)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self._log.closed:
            self._log.close()

    def __enter__(self) -> "NodeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_node(*ros_args: str, namespace: str = "", params: dict[str, Any] | None = None,
               log_dir: str | Path | None = None, label: str = "node", env: dict[str, str] | None = None
               ) -> NodeProcess:
    """Spawn the matcher node; ``params`` become ``-p name:=value`` overrides."""
    extra = []
    for name, value in (params or {}).items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        extra += ["-p", f"{name}:={text}"]
    return NodeProcess(node_command(*ros_args, *extra, namespace=namespace), env=env, label=label, log_dir=log_dir)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (psutil if available, else /proc)."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- messages


def camera_info_msg(camera, stamp_ns: int, frame_id: str = "camera", *, k: Iterable[float] | None = None):
    """sensor_msgs/CameraInfo of a glue_ros CameraModel (``k`` overrides K, e.g. NaN or zeros)."""
    from sensor_msgs.msg import CameraInfo

    from glue_ros.ros.msg_types import RclpyTypes

    msg = CameraInfo()
    msg.header = RclpyTypes().header(stamp_ns, frame_id)
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    K = np.asarray(camera.K, float).reshape(9) if k is None else np.asarray(list(k), float)
    msg.k = [float(v) for v in K]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:3, :3] = K.reshape(3, 3)
    msg.p = [float(v) for v in P.reshape(12)]
    return msg


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str = "camera", encoding: str = "rgb8"):
    from sensor_msgs.msg import Image

    from glue_ros.ros.image_codec import encode_image

    return encode_image(image, encoding, Image, stamp_ns=stamp_ns, frame_id=frame_id)


def compressed_msg(image: np.ndarray, stamp_ns: int, frame_id: str = "camera", quality: int = 95):
    from sensor_msgs.msg import CompressedImage

    from glue_ros.ros.image_codec import encode_compressed

    return encode_compressed(image, "jpeg", CompressedImage, stamp_ns=stamp_ns, frame_id=frame_id, quality=quality)


def stamp_of(msg) -> int:
    from glue_ros.ros.msg_types import header_stamp_ns

    return header_stamp_ns(msg)


# --------------------------------------------------------------------------- this process' graph


@dataclass
class Received:
    msg: Any
    time_ns: int  # time.time_ns() at reception (same clock as the node's ROS time)


class Inbox:
    """Messages received on one topic, in order."""

    def __init__(self, topic: str, graph: "Graph"):
        self.topic = topic
        self._graph = graph
        self.items: list[Received] = []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def messages(self) -> list:
        with self._graph.lock:
            return [r.msg for r in self.items]

    def stamps(self) -> list[int]:
        return [stamp_of(m) for m in self.messages]

    def by_stamp(self, stamp_ns: int):
        for msg in reversed(self.messages):
            if stamp_of(msg) == stamp_ns:
                return msg
        return None

    def wait_for_stamp(self, stamp_ns: int, timeout: float = 10.0):
        return self._graph.wait_for(lambda: self.by_stamp(stamp_ns), timeout, f"{self.topic} with stamp {stamp_ns}")

    def wait_for_count(self, count: int, timeout: float = 10.0) -> list:
        self._graph.wait_for(lambda: len(self.items) >= count, timeout, f"{count} messages on {self.topic}")
        return self.messages

    def clear(self) -> None:
        with self._graph.lock:
            self.items.clear()


class Graph:
    """This test process' node: publishers of camera topics, recorders of output topics."""

    def __init__(self, name: str = "glue_ros_test"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="glue_ros_test_graph", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._closed.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                if self._closed.is_set():
                    return
                raise

    # ------------------------------------------------------------------ endpoints

    def subscribe(self, topic: str, msg_type, depth: int = 1000, reliable: bool = True) -> Inbox:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        inbox = Inbox(topic, self)

        def record(msg):
            with self.lock:
                inbox.items.append(Received(msg, time.time_ns()))
                self.lock.notify_all()

        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        self.node.create_subscription(msg_type, topic, record, qos)
        return inbox

    def publisher(self, topic: str, msg_type, sensor_data: bool = True, depth: int = 5):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

        qos = qos_profile_sensor_data if sensor_data else QoSProfile(depth=depth,
                                                                    reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
                self.lock.wait(min(left, 0.1))

    def wait_for_subscribers(self, publisher, timeout: float = 60.0, process: NodeProcess | None = None) -> None:
        def matched():
            if process is not None and not process.alive():
                raise AssertionError(f"{process.label} exited with {process.proc.returncode}:\n"
                                     + process.output()[-4000:])
            return publisher.get_subscription_count() > 0

        try:
            wait_until(matched, timeout, f"a subscriber on {publisher.topic_name}", poll=0.05)
        except AssertionError as exc:
            if process is None or not process.alive():
                raise
            raise AssertionError(f"{exc}; {process.label} is still starting:\n{process.dump_stacks()}") from None

    def wait_for_publishers(self, topic: str, timeout: float = 30.0) -> None:
        wait_until(lambda: self.node.count_publishers(topic) > 0, timeout, f"a publisher on {topic}", poll=0.05)

    # ------------------------------------------------------------------ parameters

    def call(self, srv_type, service: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, service)
        try:
            wait_until(client.service_is_ready, timeout, f"service {service}", poll=0.05)
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout):
                raise AssertionError(f"no reply from {service} within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameters(self, node_fqn: str, values: dict[str, Any], timeout: float = 10.0) -> list:
        """rcl_interfaces/SetParameters on ``<node>/set_parameters``: one SetParametersResult per value."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return list(self.call(SetParameters, f"{node_fqn}/set_parameters", request, timeout).results)

    def get_parameters(self, node_fqn: str, names: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        reply = self.call(GetParameters, f"{node_fqn}/get_parameters", GetParameters.Request(names=list(names)),
                          timeout)
        return {name: parameter_value_to_python(value) for name, value in zip(names, reply.values)}

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        import rclpy

        if self._closed.is_set():
            return
        self._closed.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> "Graph":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- one matcher node's topics


class MatcherTopics:
    """The test side of one matcher node: camera publishers and output recorders.

    ``namespace`` is the node's namespace; ``image_topic`` / ``info_topic`` are where the node
    listens (after remapping); outputs are recorded under ``/<ns>/glue_ros_matcher/``.
    """

    def __init__(self, graph: Graph, namespace: str = "", *, image_topic: str | None = None,
                 info_topic: str | None = None, compressed: bool = False, name: str = NODE_NAME):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        self.graph = graph
        ns = namespace.rstrip("/")
        self.fqn = f"{ns}/{name}" if ns else f"/{name}"
        image_topic = image_topic or f"{ns}/image"
        if compressed and not image_topic.endswith("/compressed"):
            image_topic += "/compressed"
        self.image_pub = graph.publisher(image_topic, CompressedImage if compressed else Image)
        self.info_pub = graph.publisher(info_topic or f"{ns}/camera_info", CameraInfo)
        self.matches = graph.subscribe(f"{self.fqn}/matches", PointCloud2)
        self.poses = graph.subscribe(f"{self.fqn}/relative_pose", PoseWithCovarianceStamped)
        self.keyframes = graph.subscribe(f"{self.fqn}/keyframes", PointCloud2)
        self.diagnostics = graph.subscribe("/diagnostics", DiagnosticArray)
        self.compressed = compressed
        self._primed = False  # the node has received a frame of ours (see publish_and_wait)

    def wait_ready(self, process: NodeProcess | None = None, timeout: float = 90.0) -> None:
        """The node subscribes to its input (it does so only once its models are loaded) and its
        outputs are matched with our recorders."""
        self.graph.wait_for_subscribers(self.image_pub, timeout, process)
        self.graph.wait_for_subscribers(self.info_pub, timeout, process)
        wait_until(lambda: self.matches_publisher_matched(), timeout, f"{self.fqn}/matches publisher", poll=0.05)

    def matches_publisher_matched(self) -> bool:
        return self.graph.node.count_publishers(f"{self.fqn}/matches") > 0 and \
            self.graph.node.count_publishers("/diagnostics") > 0

    def publish(self, image_msg_or_array, stamp_ns: int | None = None, camera=None, *, camera_info=None,
                frame_id: str = "camera") -> int:
        """Publish CameraInfo (if ``camera`` / ``camera_info``) then the image; returns the stamp."""
        if isinstance(image_msg_or_array, np.ndarray):
            msg = (compressed_msg if self.compressed else image_msg)(image_msg_or_array, stamp_ns, frame_id)
        else:
            msg = image_msg_or_array
        stamp = stamp_of(msg)
        if camera_info is not None:
            self.info_pub.publish(camera_info)
        elif camera is not None:
            self.info_pub.publish(camera_info_msg(camera, stamp, frame_id))
        self.image_pub.publish(msg)
        return stamp

    def publish_and_wait(self, image, stamp_ns: int | None = None, camera=None, timeout: float = 20.0, **kw):
        """Publish one frame and wait for its ~/matches message (frames are paced: none dropped).

        The first frame sent to a node may race discovery: our writer already sees the node's reader,
        but the reader does not know our writer yet and discards a best-effort sample. So the first
        frame is re-sent while the node's diagnostics say it has received no frame at all (no
        duplicate can reach it that way)."""
        stamp = self.publish(image, stamp_ns, camera, **kw)
        deadline = time.monotonic() + timeout
        while not self._primed:
            try:
                msg = self.matches.wait_for_stamp(stamp, 1.0)
                self._primed = True
                return msg
            except AssertionError:
                report = self.wait_for_diagnostics(lambda d: True, max(deadline - time.monotonic(), 0.1))
                if int(report["frames_received"]) > 0:
                    self._primed = True
                elif time.monotonic() < deadline:
                    self.publish(image, stamp_ns, camera, **kw)
        return self.matches.wait_for_stamp(stamp, max(deadline - time.monotonic(), 0.1))

    def diagnostics_of_node(self) -> list[dict]:
        """Decoded /diagnostics values of this node (oldest first)."""
        from glue_ros.ros.diagnostics import decode_diagnostics

        out = []
        for msg in self.diagnostics.messages:
            for report in decode_diagnostics(msg):
                if report.name.startswith(self.fqn + ":"):
                    out.append(dict(report.values, _level=report.level, _message=report.message,
                                    _hardware_id=report.hardware_id, _stamp_ns=report.stamp_ns))
        return out

    def wait_for_diagnostics(self, predicate: Callable[[dict], bool], timeout: float = 10.0, what: str = "") -> dict:
        """The first diagnostics report received from now on that satisfies ``predicate``."""
        start = len(self.diagnostics)

        def found():
            with self.graph.lock:
                fresh = self.diagnostics.items[start:]
            for item in fresh:
                from glue_ros.ros.diagnostics import decode_diagnostics

                for report in decode_diagnostics(item.msg):
                    if report.name.startswith(self.fqn + ":"):
                        values = dict(report.values, _level=report.level, _message=report.message,
                                      _hardware_id=report.hardware_id)
                        if predicate(values):
                            return values
            return None

        return self.graph.wait_for(found, timeout, what or f"diagnostics of {self.fqn}")

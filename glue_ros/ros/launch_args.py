"""What ``launch/matcher.launch.py`` starts, as plain data (no launch / launch_ros import).

The launch file and ``glue-ros-launch`` (the pip-venv stand-in for ``ros2 launch``) both turn the
same launch arguments into the same node invocations through :func:`invocations`, so the two
paths cannot drift apart.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

PACKAGE = "glue_ros"
EXECUTABLE = "matcher_node"
NODE_NAME = "glue_ros_matcher"

# name → (default, description)
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "params_file": ("", "ROS 2 params file; empty = the installed config/matcher.yaml"),
    "namespace": ("", "namespace of the matcher node (single camera)"),
    "cameras": ("", "comma-separated camera namespaces: one matcher per camera, each subscribing to "
                    "<camera>/image and <camera>/camera_info under its own namespace (overrides namespace)"),
    "image": ("image", "image topic to subscribe to (remap)"),
    "camera_info": ("camera_info", "camera_info topic to subscribe to (remap)"),
    "compressed": ("false", "subscribe to <image>/compressed (sensor_msgs/CompressedImage)"),
    "device": ("", "override the device parameter (auto, cpu, cuda, cuda:N); empty = from params_file"),
    "use_sim_time": ("false", "use /clock (bag replay)"),
    "log_level": ("info", "logging level: debug, info, warn, error"),
}


@dataclass
class NodeInvocation:
    namespace: str
    params_file: str
    parameters: dict[str, object] = field(default_factory=dict)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    log_level: str = "info"
    name: str = NODE_NAME

    def ros_args(self) -> list[str]:
        """The node's command-line arguments, as `ros2 run` / launch_ros would pass them."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        if self.params_file:
            args += ["--params-file", self.params_file]
        for key, value in self.parameters.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            args += ["-p", f"{key}:={text}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        args += ["--log-level", self.log_level]
        return args

    def command(self, python: str | None = None) -> list[str]:
        """Full command for the pip venv (the venv's python: the ROS wheels re-exec it)."""
        return [python or sys.executable, "-m", "glue_ros.ros.node", *self.ros_args()]


def _truthy(text: str) -> bool:
    value = str(text).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"launch argument expects true/false, got {text!r}")
    return value in ("true", "1", "yes", "on")


def default_params_file() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory(PACKAGE), "config", "matcher.yaml")
        if os.path.isfile(path):
            return path
    except Exception:  # not installed in an ament prefix: fall back to the source tree
        pass
    source = os.path.join(os.path.dirname(__file__), "..", "..", "config", "matcher.yaml")
    return os.path.abspath(source) if os.path.isfile(source) else ""


def invocations(args: dict[str, str]) -> list[NodeInvocation]:
    unknown = set(args) - set(LAUNCH_ARGUMENTS)
    if unknown:
        raise ValueError(f"unknown launch argument(s): {', '.join(sorted(unknown))}")
    values = {name: str(args.get(name, default)) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    compressed = _truthy(values["compressed"])
    parameters: dict[str, object] = {"use_sim_time": _truthy(values["use_sim_time"])}
    if compressed:
        parameters["input.compressed"] = True
    if values["device"]:
        parameters["device"] = values["device"]
    params_file = values["params_file"] or default_params_file()
    image, info = values["image"], values["camera_info"]
    remappings = [("image", image), ("camera_info", info)]
    if compressed:
        remappings.append(("image/compressed", image + "/compressed"))
    cameras = [c.strip().strip("/") for c in values["cameras"].split(",") if c.strip().strip("/")]
    single = values["namespace"].strip().strip("/")
    # rcl only accepts a fully qualified __ns (launch_ros makes namespaces absolute too).
    namespaces = ["/" + c for c in cameras] if cameras else ["/" + single if single else ""]
    return [NodeInvocation(ns, params_file, dict(parameters), list(remappings), values["log_level"])
            for ns in namespaces]

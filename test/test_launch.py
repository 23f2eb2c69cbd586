"""launch/matcher.launch.py and glue-ros-launch (its pip-venv stand-in) start the same nodes.

``launch`` / ``launch_ros`` are not installed in the pip venv. When ``launch_ros`` is absent, this
test installs minimal STAND-INS for ``launch``, ``launch.actions``, ``launch.substitutions`` and
``launch_ros.actions`` in ``sys.modules`` (only for this module, removed afterwards) that record
what the launch file builds; with the real packages installed, the real ones are used. The launch
file is imported by path, ``generate_launch_description()`` is called, its OpaqueFunction is
evaluated with a context holding the launch arguments (defaults from its DeclareLaunchArgument
actions), and every Node action is turned into the command it describes, as launch_ros does
(``ros2 run glue_ros matcher_node`` = the ``matcher_node`` console script = ``python -m
glue_ros.ros.node``; ``arguments``, then ``--ros-args -r __node:= -r __ns:=``, ``--params-file``
per parameters entry — dicts written to a temporary params file — and ``-r`` per remapping).
That command must describe the same node (name, namespace, remappings, log level, effective
parameters) as the one ``glue-ros-launch --print`` prints; then it is run and checked on the graph:
a profile, a params file and per-argument / ``params:=`` overrides reach the node's declared
parameters (read back over its get_parameters service) and its pipeline (diagnostics). Unknown
names fail with the closest match; glue-ros-launch stops its nodes on SIGTERM with exit 0.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

import rosgraph as rg
from glue_ros.config import load_params_file, profile_path
from glue_ros.ros.messages import decode_matches
from glue_ros.synthetic import render_sequence

LAUNCH_FILE = rg.REPO / "launch" / "matcher.launch.py"
REAL_LAUNCH_ROS = importlib.util.find_spec("launch_ros") is not None
CLASSICAL = {"device": "auto", "extractor.type": "orb", "matcher.type": "nn", "extractor.max_keypoints": 600,
             "diagnostics.period_s": 0.2}
# a params file without a backend: the profile chooses it
TUNING = {"extractor.max_keypoints": 600, "keyframes.buffer_size": 3, "diagnostics.period_s": 0.2,
          "keyframes.max_interval_s": 0.5}


# --------------------------------------------------------------------------- launch stand-ins


def _stand_in_modules() -> dict[str, types.ModuleType]:
    launch = types.ModuleType("launch")
    actions = types.ModuleType("launch.actions")
    substitutions = types.ModuleType("launch.substitutions")
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")

    class LaunchDescription:
        def __init__(self, entities=()):
            self.entities = list(entities)

    class DeclareLaunchArgument:
        def __init__(self, name, default_value=None, description="", **kwargs):
            self.name, self.default_value, self.description = name, default_value, description

    class OpaqueFunction:
        def __init__(self, function, args=None, kwargs=None):
            self.function, self.args, self.kwargs = function, list(args or []), dict(kwargs or {})

    class LaunchConfiguration:
        def __init__(self, variable_name, default=None):
            self.variable_name, self.default = variable_name, default

        def perform(self, context):
            value = context.launch_configurations.get(self.variable_name, self.default)
            if value is None:
                raise KeyError(f"launch configuration '{self.variable_name}' does not exist")
            return str(value)

    class Node:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    launch.LaunchDescription = LaunchDescription
    launch.actions, launch.substitutions = actions, substitutions
    actions.DeclareLaunchArgument, actions.OpaqueFunction = DeclareLaunchArgument, OpaqueFunction
    substitutions.LaunchConfiguration = LaunchConfiguration
    ros_actions.Node = Node
    launch_ros.actions = ros_actions
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": substitutions,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


@pytest.fixture(scope="module")
def launch_file():
    """The imported launch file module (stand-ins installed only while the real packages are absent)."""
    with pytest.MonkeyPatch.context() as mp:
        if not REAL_LAUNCH_ROS:
            for name, module in _stand_in_modules().items():
                mp.setitem(sys.modules, name, module)
        spec = importlib.util.spec_from_file_location("glue_ros_matcher_launch", LAUNCH_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


class FakeContext:
    """What the launch file's OpaqueFunction needs from a LaunchContext."""

    def __init__(self, arguments: dict[str, str]):
        self.launch_configurations = dict(arguments)


def launch_file_commands(launch_file, arguments: dict[str, str], tmp_path: Path) -> list[list[str]]:
    """generate_launch_description() → evaluated Node actions → the commands launch_ros would run."""
    if REAL_LAUNCH_ROS:  # pragma: no cover - the pip venv has no launch_ros
        pytest.skip("real launch_ros installed: run `ros2 launch glue_ros matcher.launch.py --print` instead")
    description = launch_file.generate_launch_description()
    context = FakeContext(arguments)
    nodes = []
    declared = set()
    for entity in description.entities:
        if type(entity).__name__ == "DeclareLaunchArgument":
            declared.add(entity.name)
            if entity.default_value is not None:
                context.launch_configurations.setdefault(entity.name, entity.default_value)
        elif type(entity).__name__ == "OpaqueFunction":
            nodes += entity.function(context, *entity.args, **entity.kwargs)
    assert set(arguments) <= declared, f"undeclared launch arguments: {set(arguments) - declared}"
    return [_node_command(node.kwargs, tmp_path / f"launch_params_{i}.yaml") for i, node in enumerate(nodes)]


def _console_script(executable: str) -> str:
    """setup.py's console_scripts target of ``executable`` (what `ros2 run glue_ros <executable>` runs)."""
    text = (rg.REPO / "setup.py").read_text()
    match = re.search(rf'"{re.escape(executable)}\s*=\s*([\w.]+):(\w+)"', text)
    assert match, f"no console script {executable} in setup.py"
    return f"{match.group(1)}:{match.group(2)}"


def _node_command(kw: dict, params_path: Path) -> list[str]:
    """A launch_ros Node action → command (launch_ros' order and its dict → params file rule)."""
    assert kw["package"] == "glue_ros"
    module, function = _console_script(kw["executable"]).split(":")
    assert function == "main"
    cmd = [sys.executable, "-m", module, *kw.get("arguments", []), "--ros-args"]
    name = kw.get("name")
    if name:
        cmd += ["-r", f"__node:={name}"]
    namespace = kw.get("namespace") or ""
    if namespace:
        namespace = "/" + namespace.lstrip("/")
        cmd += ["-r", f"__ns:={namespace}"]
    for i, entry in enumerate(kw.get("parameters", [])):
        if isinstance(entry, dict):  # launch_ros writes dicts to a temporary params file
            key = f"{namespace}/{name}" if namespace and name else "/**"
            path = params_path.with_name(f"{params_path.stem}_{i}.yaml")
            path.write_text(yaml.safe_dump({key: {"ros__parameters": entry}}))
            cmd += ["--params-file", str(path)]
        else:
            cmd += ["--params-file", str(entry)]
    for src, dst in kw.get("remappings", []):
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def describe(cmd: list[str]) -> dict:
    """What a node command means: name, namespace, remappings, log level, effective parameters
    (params files in order — sections for /**, the node name or its full name — then -p)."""
    assert cmd[:3] == [sys.executable, "-m", "glue_ros.ros.node"], cmd[:3]
    name, namespace, level = None, "", None
    remaps, files, sets = [], [], []
    args = iter(cmd[3:])
    for arg in args:
        if arg == "--ros-args":
            continue
        value = next(args)
        if arg == "-r":
            src, dst = value.split(":=", 1)
            if src == "__node":
                name = dst
            elif src == "__ns":
                namespace = dst
            else:
                remaps.append((src, dst))
        elif arg == "--params-file":
            files.append(value)
        elif arg == "-p":
            sets.append(value.split(":=", 1))
        elif arg == "--log-level":
            level = value
        else:
            raise AssertionError(f"unexpected argument {arg}")
    params = {}
    for path in files:
        params.update(load_params_file(path, node_name=name))
    for key, value in sets:
        params[key] = yaml.safe_load(value)
    return {"name": name, "namespace": namespace, "remaps": remaps, "log_level": level, "params": params}


def printed_commands(arguments: dict[str, str]) -> list[list[str]]:
    out = subprocess.run([sys.executable, "-m", "glue_ros.tools.launch", "--print",
                          *[f"{k}:={v}" for k, v in arguments.items()]],
                         env=rg.child_env(), cwd=rg.REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    return rg.write_params(tmp_path_factory.mktemp("launch") / "classical.yaml", CLASSICAL)


# --------------------------------------------------------------------------- equivalence


@pytest.fixture(scope="module")
def tuning_file(tmp_path_factory):
    return rg.write_params(tmp_path_factory.mktemp("launch") / "tuning.yaml", TUNING)


PROFILE_OVERRIDES = {"profile": "orb_nn", "max_keypoints": "300", "match_against": "2", "precision": "fp32",
                     "device": "cpu", "params": "keyframes.buffer_size=4 pose.method=ransac extractor.revision=1234 "
                                                "'output.tf_child_frame=glue_ros_camera'"}


@pytest.mark.parametrize("case", ["defaults", "namespace_remap_sim_time", "two_cameras_compressed", "spaces",
                                  "profile_overrides"])
def test_launch_file_and_glue_ros_launch_describe_the_same_nodes(case, launch_file, params_file, tuning_file,
                                                                 tmp_path):
    arguments = {
        "profile_overrides": dict(PROFILE_OVERRIDES, params_file=str(tuning_file)),
        "defaults": {},
        "namespace_remap_sim_time": {"namespace": "robot1", "image": "/camera/image_raw",
                                     "camera_info": "/camera/camera_info", "device": "cpu", "use_sim_time": "true",
                                     "params_file": str(params_file), "log_level": "debug"},
        "two_cameras_compressed": {"cameras": "cam0,cam1", "device": "cpu", "compressed": "true",
                                   "params_file": str(params_file), "image": "image_rect"},
        "spaces": {"cameras": " /cam0/ , cam1 ,", "use_sim_time": "True"},
    }[case]
    from_launch = launch_file_commands(launch_file, arguments, tmp_path)
    printed = printed_commands(arguments)
    assert len(from_launch) == len(printed) == (2 if "cameras" in arguments else 1)
    for a, b in zip(from_launch, printed):
        assert describe(a) == describe(b), (a, b)
    described = [describe(c) for c in printed]
    if case == "namespace_remap_sim_time":
        (d,) = described
        assert d["namespace"] == "/robot1" and d["name"] == "glue_ros_matcher" and d["log_level"] == "debug"
        assert ("image", "/camera/image_raw") in d["remaps"] and ("camera_info", "/camera/camera_info") in d["remaps"]
        assert d["params"]["use_sim_time"] is True and d["params"]["device"] == "cpu"
        assert d["params"]["extractor.type"] == "orb"  # from the params file
    if case == "two_cameras_compressed":
        assert [d["namespace"] for d in described] == ["/cam0", "/cam1"]
        for d in described:
            assert ("image/compressed", "image_rect/compressed") in d["remaps"]
            assert d["params"]["input.compressed"] is True
    if case == "spaces":
        assert [d["namespace"] for d in described] == ["/cam0", "/cam1"]
    if case == "defaults":
        (d,) = described
        assert d["namespace"] == "" and d["params"]["use_sim_time"] is False
        assert d["params"] == {"use_sim_time": False, "extractor.type": "superpoint", "matcher.type": "lightglue"}
        shipped = profile_path("superpoint_lightglue")
        assert any(arg.endswith("/glue_ros/profiles/superpoint_lightglue.yaml") for arg in printed[0]), printed
        assert shipped.name == "superpoint_lightglue.yaml"  # the default profile's shipped file
    if case == "profile_overrides":  # profile < params_file < per-argument overrides and params:=
        (d,) = described
        assert d["params"] == {
            "use_sim_time": False, "extractor.type": "orb", "matcher.type": "nn",  # profile
            "keyframes.max_interval_s": 0.5, "diagnostics.period_s": 0.2,  # params_file
            "extractor.max_keypoints": 300,  # max_keypoints:= over the file's 600
            "keyframes.buffer_size": 4,  # params:= over the file's 3
            "keyframes.match_against": 2, "precision": "fp32", "device": "cpu", "pose.method": "ransac",
            "extractor.revision": "1234",  # a string that looks like a number stays a string
            "output.tf_child_frame": "glue_ros_camera"}


# --------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def graph():
    with rg.Graph("test_launch") as g:
        yield g


def test_launch_file_invocation_runs_with_profile_overrides_and_remapped_topics(launch_file, tuning_file, graph,
                                                                              tmp_path):
    """The launch file's node, run: profile orb_nn + params file + overrides are the node's declared
    parameters (its get_parameters service) and drive its pipeline (≤ 300 keypoints, ORB + nn)."""
    arguments = dict(PROFILE_OVERRIDES, namespace="t_launch", image="/t_launch_cam/image_raw",
                     camera_info="/t_launch_cam/info", use_sim_time="true", params_file=str(tuning_file),
                     log_level="warn")
    (cmd,) = launch_file_commands(launch_file, arguments, tmp_path)
    seq = render_sequence(3, 320, 240, motion="sideways", speed=1.5, seed=2)
    with rg.NodeProcess(cmd, label="launch_node", log_dir=tmp_path) as proc:
        topics = rg.MatcherTopics(graph, "/t_launch", image_topic="/t_launch_cam/image_raw",
                                  info_topic="/t_launch_cam/info")
        topics.wait_ready(proc)
        assert graph.node.count_subscribers("/t_launch/image") == 0, "the image topic is remapped"
        base = time.time_ns()
        stamps = [base + i * 33_333_333 for i in range(len(seq))]
        for image, stamp in zip(seq.images, stamps):
            m = decode_matches(topics.publish_and_wait(image, stamp, seq.camera))
            assert m.stamp_ns == stamp
        assert len(decode_matches(topics.matches.by_stamp(stamps[-1]))) > 0
        graph.wait_for(lambda: len(topics.poses) >= 1, 5.0, "a relative pose")
        # use_sim_time with no /clock: diagnostics still come (steady-clock timer), and say /clock is missing
        d = topics.wait_for_diagnostics(lambda d: int(d["frames_processed"]) == len(seq), 10.0)
        assert d["device"] == "cpu" and 0 < int(d["keypoints"]) <= 300
        assert "use_sim_time is on: is /clock published?" in d.get("clock_warning", ""), d
        expected = describe(printed_commands(arguments)[0])["params"]
        actual = graph.get_parameters(topics.fqn, list(expected))
        assert actual == expected
        assert actual["extractor.type"] == "orb" and actual["extractor.max_keypoints"] == 300
        assert actual["keyframes.buffer_size"] == 4 and actual["extractor.revision"] == "1234"
        assert "ready:" not in proc.output(), "--log-level warn is applied"
        assert proc.interrupt() == 0 and "Traceback" not in proc.output()


def test_unknown_names_fail_with_the_closest_match(launch_file, tmp_path):
    from glue_ros.ros.launch_args import invocations

    cases = {
        (("max_keypoint", "5"),): "unknown launch argument 'max_keypoint' (did you mean 'max_keypoints'?)",
        (("profile", "orb_n"),): "unknown profile 'orb_n' (did you mean 'orb_nn'?)",
        (("params", "extractor.max_keypoint=5"),): "unknown parameter 'extractor.max_keypoint' (did you mean "
                                                   "'extractor.max_keypoints'?)",
        (("extractor.type", "sift"),): "parameters go in params:='extractor.type=sift'",
        (("max_keypoints", "many"),): "launch argument max_keypoints: parameter 'extractor.max_keypoints': "
                                      "expected int",
        (("params", "matcher.type=magic"),): "'magic' is not one of lightglue, superglue, nn",
        (("max_keypoints", "5"), ("params", "extractor.max_keypoints=6")): "set twice",
        (("params_file", str(tmp_path / "missing.yaml")),): "is not a file",
    }
    for arguments, message in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            invocations(dict(arguments))
    with pytest.raises(ValueError, match=re.escape("did you mean 'orb_nn'?")):  # the launch file says the same
        launch_file_commands(launch_file, {"profile": "orb_n"}, tmp_path)
    out = subprocess.run([sys.executable, "-m", "glue_ros.tools.launch", "--print", "extractor.type:=sift"],
                         env=rg.child_env(), cwd=rg.REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: unknown launch argument 'extractor.type': parameters go in params:='extractor.type=sift'"]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_two_cameras_via_glue_ros_launch_never_mix_and_stop_together_on_sigterm(params_file, graph, tmp_path):
    launcher = rg.NodeProcess([sys.executable, "-m", "glue_ros.tools.launch", "cameras:=t_cam0,t_cam1",
                               f"params_file:={params_file}", "device:=cpu"], label="launcher", log_dir=tmp_path)
    with launcher:
        cams = {ns: rg.MatcherTopics(graph, f"/{ns}") for ns in ("t_cam0", "t_cam1")}
        for topics in cams.values():
            topics.wait_ready(launcher)
        children = _children(launcher.pid)
        assert len(children) == 2, children
        seqs = {"t_cam0": render_sequence(6, 320, 240, motion="sideways", speed=1.5, seed=5),
                "t_cam1": render_sequence(6, 320, 240, motion="forward", seed=6)}
        base = time.time_ns()
        stamps = {"t_cam0": [base + i * 33_333_333 for i in range(6)],
                  "t_cam1": [base + 5_000_000 + i * 33_333_333 for i in range(6)]}  # disjoint
        for ns, topics in cams.items():  # first frames one by one (publish_and_wait handles discovery)
            topics.publish_and_wait(seqs[ns].images[0], stamps[ns][0], seqs[ns].camera)
        for i in range(1, 6):  # then both cameras at once, and wait for both outputs
            for ns, topics in cams.items():
                topics.publish(seqs[ns].images[i], stamps[ns][i], seqs[ns].camera)
            for ns, topics in cams.items():
                topics.matches.wait_for_stamp(stamps[ns][i], 20.0)
        for ns, topics in cams.items():
            own = set(stamps[ns])
            assert set(topics.matches.stamps()) == own, ns
            for msg in topics.matches.messages:
                m = decode_matches(msg)
                assert set(m.keyframe_stamp_ns.tolist()) <= own, f"{ns} matched another camera's keyframe"
            assert {rg.stamp_of(p) for p in topics.poses.messages} <= own
            assert {rg.stamp_of(k) for k in topics.keyframes.messages} <= own
            assert len(decode_matches(topics.matches.by_stamp(stamps[ns][-1]))) > 0

        # SIGTERM (docker stop, systemd, timeout) to glue-ros-launch only: it forwards it to its nodes
        launcher.proc.send_signal(signal.SIGTERM)
        code = launcher.wait(30.0)
        assert code == 0, launcher.output()[-3000:]
        for pid in children:
            assert not Path(f"/proc/{pid}").exists(), f"node {pid} outlived the launcher"
        log = launcher.output()
        assert "Traceback" not in log and "RCLError" not in log
        assert log.count("ready: orb + nn on cpu") == 2 and log.count("stopping (SIGTERM)") == 2

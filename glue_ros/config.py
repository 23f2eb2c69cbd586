"""One typed definition of every glue_ros parameter.

The node declares these as ROS parameters, ``config/matcher.yaml`` lists them, and the CLIs accept
them through ``--params-file`` / ``--set NAME=VALUE``. Names are dotted (``extractor.max_keypoints``).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml


class ParameterError(ValueError):
    """A parameter name or value is invalid. The message names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    live: bool = False  # may change while the node runs (thresholds); others need a restart

    @property
    def type(self) -> type:
        return type(self.default)


def _p(name, default, description, choices=None, min=None, max=None, live=False) -> ParamSpec:
    return ParamSpec(name, default, description, tuple(choices) if choices else None, min, max, live)


EXTRACTOR_TYPES = ("superpoint", "aliked", "disk", "xfeat", "sift", "orb")
LEARNED_EXTRACTORS = ("superpoint", "aliked", "disk", "xfeat")

# Defaults suit 30 Hz monocular VO at 640x480.
PARAMS: tuple[ParamSpec, ...] = (
    _p("device", "auto", "Compute device: auto (cuda if available, else cpu), cpu, cuda, cuda:N."),
    _p("precision", "auto", "Numeric precision: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (CUDA only), bf16.",
       choices=("auto", "fp32", "fp16", "bf16")),
    # --- extractor
    _p("extractor.type", "superpoint", "Feature extractor: superpoint, aliked, disk, xfeat (learned) or sift, orb "
       "(OpenCV).", choices=EXTRACTOR_TYPES),
    _p("extractor.weights", "", "Extractor weights: a packaged name (aliked-n16, aliked-n16rot, aliked-n32, "
       "aliked-t16, disk-depth, xfeat), a Hugging Face hub repo id, a local directory (config.json + "
       "model.safetensors), a .safetensors file or an original .pth/.pt release checkpoint; empty = the default "
       "for extractor.type (superpoint: magic-leap-community/superpoint, aliked: aliked-n16, disk: disk-depth, "
       "xfeat: xfeat)."),
    _p("extractor.revision", "", "Hub revision (commit hash, branch or tag) to pin; empty = main."),
    _p("extractor.max_keypoints", 1024, "Keep at most this many keypoints (highest score); -1 = no limit.",
       min=-1, max=100000),
    _p("extractor.keypoint_threshold", -1.0, "Detection score threshold of learned extractors; -1 = the model's "
       "own default (superpoint 0.005, aliked 0.2 (ignored in top-k mode, as the original), disk 0.0, xfeat 0.05).",
       min=-1.0, max=1.0),
    _p("extractor.nms_radius", -1, "Non-maximum suppression radius in pixels (of the resized image) of learned "
       "extractors; -1 = the model's own default (superpoint 4, aliked 2, disk 2, xfeat 2).", min=-1, max=64),
    _p("extractor.border_removal", 4, "Drop keypoints closer than this many pixels to any image border.",
       min=0, max=256),
    _p("extractor.resize_max", 0, "Resize so the long side is at most this many pixels (0 = native). "
       "Keypoints are always returned in the input image's pixels.", min=0, max=8192),
    # --- matcher
    _p("matcher.type", "lightglue", "Matcher: lightglue, superglue (learned) or nn (mutual nearest neighbour).",
       choices=("lightglue", "superglue", "nn")),
    _p("matcher.weights", "", "Matcher weights (same forms as extractor.weights; packaged: aliked-lightglue, "
       "disk-lightglue, xfeat-lighterglue); empty = the default for matcher.type and extractor.type (lightglue: "
       "superpoint ETH-CVG/lightglue_superpoint, aliked aliked-lightglue, disk disk-lightglue, xfeat "
       "xfeat-lighterglue; superglue: magic-leap-community/superglue_indoor)."),
    _p("matcher.revision", "", "Hub revision to pin; empty = main."),
    _p("matcher.depth_confidence", 0.95, "LightGlue early exit confidence; -1 disables early exit.",
       min=-1.0, max=1.0),
    _p("matcher.width_confidence", 0.99, "LightGlue point pruning confidence; -1 disables pruning.",
       min=-1.0, max=1.0),
    _p("matcher.filter_threshold", 0.1, "LightGlue match score threshold.", min=0.0, max=1.0, live=True),
    _p("matcher.sinkhorn_iterations", 100, "SuperGlue Sinkhorn iterations.", min=1, max=1000),
    _p("matcher.match_threshold", 0.2, "SuperGlue match score threshold.", min=0.0, max=1.0, live=True),
    _p("matcher.ratio_test", 0.8, "nn matcher: Lowe ratio (best/second best distance); 0 disables.",
       min=0.0, max=1.0, live=True),
    # --- keyframes
    _p("keyframes.buffer_size", 5, "Keyframes kept (features cached on the compute device).", min=1, max=100,
       live=True),
    _p("keyframes.match_against", 1, "Match each frame against the newest N keyframes (one batched call).",
       min=1, max=100, live=True),
    _p("keyframes.min_matches", 80, "New keyframe when matches to the newest keyframe drop below this.",
       min=0, max=100000, live=True),
    _p("keyframes.min_inlier_ratio", 0.5, "New keyframe when the pose inlier ratio drops below this.",
       min=0.0, max=1.0, live=True),
    _p("keyframes.parallax_px", 40.0, "New keyframe when the median inlier displacement exceeds this (pixels).",
       min=0.0, max=10000.0, live=True),
    _p("keyframes.max_interval_s", 1.0, "New keyframe at least this often (seconds); 0 disables.",
       min=0.0, max=3600.0, live=True),
    _p("keyframes.reset_gap_s", 2.0, "Reset the keyframe buffer when stamps jump forward by more than this "
       "(seconds; camera paused or bag skipped).", min=0.0, max=3600.0, live=True),
    # --- pose
    _p("pose.method", "magsac", "Essential matrix estimator.", choices=("magsac", "ransac"), live=True),
    _p("pose.threshold_px", 1.0, "Inlier threshold in pixels (converted for normalised coordinates).",
       min=0.01, max=100.0, live=True),
    _p("pose.confidence", 0.999, "RANSAC confidence.", min=0.5, max=0.999999, live=True),
    _p("pose.min_inliers", 15, "Fewer inliers → pose invalid.", min=5, max=100000, live=True),
    _p("pose.rotation_only_ratio", 0.9, "Homography/essential inlier ratio above which (with low parallax) "
       "motion is flagged as near-pure rotation.", min=0.0, max=10.0, live=True),
    _p("pose.min_parallax_px", 2.0, "Median inlier displacement below which motion may be pure rotation.",
       min=0.0, max=1000.0, live=True),
    _p("pose.min_translation_parallax_px", 1.0, "Rotation-compensated median inlier parallax (pixels) below which "
       "the translation direction is unobservable: pose invalid (reason low_parallax), rotation still valid. "
       "0 disables.", min=0.0, max=1000.0, live=True),
    # --- pipeline (how the work is spread over threads; results are the same either way)
    _p("pipeline.extract_ahead", "auto", "Extract the next frame's features on a second thread while the current "
       "frame is matched (a one-frame pipeline; identical results). Replay: one frame ahead; node: the oldest "
       "waiting frame is extracted as soon as the extraction thread is free. auto = on with CUDA, with 4+ CPU "
       "cores, or at up to 512 keypoints; off on a 2-3 core CPU at more keypoints, where matching needs every "
       "core (measured: README Benchmarks).",
       choices=("auto", "on", "off")),
    _p("pipeline.cpu_threads", 0, "CPU threads of the models (torch intra-op) per stage; 0 = automatic: all "
       "cores, split between extraction and matching when pipeline.extract_ahead is on.", min=0, max=256),
    # --- camera fallback intrinsics (used when no CameraInfo arrives)
    _p("camera.fx", 0.0, "Fallback focal length x (pixels); 0 = none.", min=0.0, max=1e6),
    _p("camera.fy", 0.0, "Fallback focal length y (pixels); 0 = none.", min=0.0, max=1e6),
    _p("camera.cx", 0.0, "Fallback principal point x (pixels).", min=-1e6, max=1e6),
    _p("camera.cy", 0.0, "Fallback principal point y (pixels).", min=-1e6, max=1e6),
    _p("camera.distortion_model", "none", "Fallback distortion model.",
       choices=("none", "plumb_bob", "rational_polynomial")),
    _p("camera.distortion", [0.0], "Fallback distortion coefficients (OpenCV order)."),
    # --- node (ROS adapter only)
    _p("input.compressed", False, "Subscribe to image/compressed (sensor_msgs/CompressedImage) instead of image."),
    _p("input.qos", "sensor_data", "Input QoS: sensor_data (best effort) or reliable.",
       choices=("sensor_data", "reliable")),
    _p("input.queue_size", 1, "Frames waiting for the worker; when full the oldest is dropped (and counted). With "
       "pipeline.extract_ahead the frame being extracted does not count, and a frame whose extraction has "
       "started is never dropped: the oldest not yet extracted goes, else the newcomer.",
       min=1, max=100),
    _p("input.bit_depth", 0, "Significant bits of mono16/16-bit images (e.g. 10 or 12); 0 = 16.",
       choices=(0, 8, 9, 10, 11, 12, 13, 14, 15, 16)),
    _p("output.features", False, "Publish ~/features (sensor_msgs/PointCloud for the VINS estimators)."),
    _p("output.features_layout", "vins_mono", "~/features channel layout: vins_mono (VINS-Mono feature_tracker) or "
       "vins_fusion (VINS-Fusion feature_callback).", choices=("vins_mono", "vins_fusion")),
    _p("output.features_num_cameras", 1, "~/features: NUM_OF_CAM of the estimator (ids are id*N + camera_id).",
       min=1, max=16),
    _p("output.features_camera_id", 0, "~/features: this camera's index among the estimator's cameras.",
       min=0, max=15),
    _p("output.frame_id", "", "Override the header frame_id of outputs (empty = the image's frame_id)."),
    _p("output.publish_tf", True, "Publish the camera's pose in the keyframe chain on /tf (tf2_msgs/TFMessage, "
       "output.tf_parent_frame -> output.tf_child_frame, at each image stamp with a usable pose; up to scale). "
       "Needs the tf2_msgs package (a ROS install; the pip venv has none: then only the replay bag carries /tf)."),
    _p("output.tf_parent_frame", "glue_ros_keyframe", "Frame of ~/keyframe_path and parent of the /tf transform: "
       "the camera (optical) frame of the first keyframe since the last reset, where the keyframe chain starts."),
    _p("output.tf_child_frame", "", "Child frame of the /tf transform (the current camera); empty = the outputs' "
       "frame_id (output.frame_id or the image's). Set another name when the camera frame already has a parent "
       "in your TF tree (a frame has one parent)."),
    _p("output.path_max_poses", 1000, "Keyframe poses kept in ~/keyframe_path (the oldest are dropped).",
       min=1, max=100000),
    _p("diagnostics.period_s", 1.0, "Diagnostics publishing period (seconds).", min=0.1, max=60.0),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMS}

#: Default weights of each feature extractor type (the one place).
DEFAULT_EXTRACTOR_WEIGHTS: dict[str, str] = {
    "superpoint": "magic-leap-community/superpoint",
    "aliked": "aliked-n16",
    "disk": "disk-depth",
    "xfeat": "xfeat",
}

#: Default weights of each learned matcher type for each feature family (the one place).
DEFAULT_MATCHER_WEIGHTS: dict[str, dict[str, str]] = {
    "lightglue": {
        "superpoint": "ETH-CVG/lightglue_superpoint",
        "aliked": "aliked-lightglue",
        "disk": "disk-lightglue",
        "xfeat": "xfeat-lighterglue",
    },
    "superglue": {"superpoint": "magic-leap-community/superglue_indoor"},
}


def default(name: str) -> Any:
    """The default of parameter ``name`` (the typed sections below take their defaults from here)."""
    return SPECS[name].default


def coerce(spec: ParamSpec, value: Any) -> Any:
    """Convert a value to the parameter's type and check its range; raise ParameterError naming it."""
    kind = spec.type
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(value)
                value = low in ("true", "1", "yes", "on")
            elif not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
                raise ValueError(value)
            value = bool(value)
        elif kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            value = int(value) if not isinstance(value, str) else int(value.strip(), 0)
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(value)
        elif kind is list:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, (list, tuple)):
                raise ValueError(value)
            value = [float(v) for v in value]
            if not all(math.isfinite(v) for v in value):
                raise ValueError(value)
        elif kind is str:
            if isinstance(value, bool) and spec.choices is not None and {"on", "off"} <= set(spec.choices):
                # YAML 1.1 (ROS params files, -p name:=off) reads an unquoted on/off as a boolean
                value = "on" if value else "off"
            if not isinstance(value, str):
                raise ValueError(value)
    except (TypeError, ValueError):
        raise ParameterError(f"parameter '{spec.name}': expected {kind.__name__}, got {value!r}") from None
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(f"parameter '{spec.name}': {value!r} is not one of {', '.join(map(str, spec.choices))}")
    if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
        raise ParameterError(f"parameter '{spec.name}': {value!r} is outside [{spec.min}, {spec.max}]")
    if spec.name == "device" and not _valid_device(value):
        raise ParameterError(f"parameter 'device': {value!r} is not auto, cpu, cuda or cuda:N")
    return value


def _valid_device(value: str) -> bool:
    if value in ("auto", "cpu", "cuda"):
        return True
    return value.startswith("cuda:") and value[5:].isdigit()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping → dotted names. Lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_params_file(path: str | Path, node_name: str = "glue_ros_matcher") -> dict[str, Any]:
    """Read a ROS 2 params file (``node: ros__parameters: ...``, ``/**`` wildcard too) or a plain
    nested mapping, and return dotted name → value (unvalidated)."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParameterError(f"params file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"params file {path} could not be read: {exc}".splitlines()[0]) from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise ParameterError(f"params file {path}: expected a mapping at the top level")
    sections = [v["ros__parameters"] for k, v in tree.items()
                if isinstance(v, Mapping) and "ros__parameters" in v
                and (str(k).lstrip("/") in ("**", node_name) or str(k).endswith("/" + node_name))]
    if not sections and any(isinstance(v, Mapping) and "ros__parameters" in v for v in tree.values()):
        return {}  # a ROS file for other nodes only
    flat: dict[str, Any] = {}
    for section in sections or [tree]:
        flat.update(flatten(section or {}))
    return flat


def parse_set(assignments: Iterable[str]) -> dict[str, Any]:
    """``NAME=VALUE`` strings → dict; VALUE is parsed as YAML scalar (so 0.5, true, [1, 2] work)."""
    out: dict[str, Any] = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ParameterError(f"--set expects NAME=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        spec = SPECS.get(name.strip())
        if spec is not None and spec.type is str:
            value = raw  # strings stay verbatim (repo ids, paths)
        out[name.strip()] = value
    return out


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Check names and values; return the complete flat parameter dict (defaults filled in)."""
    unknown = sorted(set(values) - set(SPECS))
    if unknown:
        raise ParameterError(f"unknown parameter '{unknown[0]}'" + _suggest(unknown[0]))
    flat = {p.name: p.default for p in PARAMS}
    for name, value in values.items():
        flat[name] = coerce(SPECS[name], value)
    if flat["output.features_camera_id"] >= flat["output.features_num_cameras"]:
        raise ParameterError("parameter 'output.features_camera_id': must be < output.features_num_cameras")
    return flat


def suggest(name: str, candidates: Iterable[str] | None = None) -> str:
    """`` (did you mean 'X'?)`` with the closest of ``candidates`` (default: the parameter names), or ""."""
    import difflib

    close = difflib.get_close_matches(name, list(SPECS if candidates is None else candidates), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_suggest = suggest  # the former private name


# --------------------------------------------------------------------------- typed views


# Field defaults come from PARAMS (one truth); test_config checks every field has a spec and back.


@dataclass(frozen=True)
class ExtractorConfig:
    type: str = default("extractor.type")
    weights: str = default("extractor.weights")
    revision: str = default("extractor.revision")
    max_keypoints: int = default("extractor.max_keypoints")
    keypoint_threshold: float = default("extractor.keypoint_threshold")
    nms_radius: int = default("extractor.nms_radius")
    border_removal: int = default("extractor.border_removal")
    resize_max: int = default("extractor.resize_max")

    @property
    def resolved_weights(self) -> str:
        """The weights to load: ``weights`` or the default for ``type`` ("" for sift/orb)."""
        return self.weights or DEFAULT_EXTRACTOR_WEIGHTS.get(self.type, "")


@dataclass(frozen=True)
class MatcherConfig:
    type: str = default("matcher.type")
    weights: str = default("matcher.weights")
    revision: str = default("matcher.revision")
    depth_confidence: float = default("matcher.depth_confidence")
    width_confidence: float = default("matcher.width_confidence")
    filter_threshold: float = default("matcher.filter_threshold")
    sinkhorn_iterations: int = default("matcher.sinkhorn_iterations")
    match_threshold: float = default("matcher.match_threshold")
    ratio_test: float = default("matcher.ratio_test")

    def resolved_weights(self, features: str) -> str:
        """The weights to load for an extractor of family ``features``: ``weights`` or the default
        for (type, features); "" when there is none (nn, or no trained matcher for that family)."""
        return self.weights or DEFAULT_MATCHER_WEIGHTS.get(self.type, {}).get(features, "")


@dataclass(frozen=True)
class KeyframeConfig:
    buffer_size: int = default("keyframes.buffer_size")
    match_against: int = default("keyframes.match_against")
    min_matches: int = default("keyframes.min_matches")
    min_inlier_ratio: float = default("keyframes.min_inlier_ratio")
    parallax_px: float = default("keyframes.parallax_px")
    max_interval_s: float = default("keyframes.max_interval_s")
    reset_gap_s: float = default("keyframes.reset_gap_s")


@dataclass(frozen=True)
class PoseConfig:
    method: str = default("pose.method")
    threshold_px: float = default("pose.threshold_px")
    confidence: float = default("pose.confidence")
    min_inliers: int = default("pose.min_inliers")
    rotation_only_ratio: float = default("pose.rotation_only_ratio")
    min_parallax_px: float = default("pose.min_parallax_px")
    min_translation_parallax_px: float = default("pose.min_translation_parallax_px")


@dataclass(frozen=True)
class PipelineConfig:
    extract_ahead: str = default("pipeline.extract_ahead")
    cpu_threads: int = default("pipeline.cpu_threads")


@dataclass(frozen=True)
class FrontEndConfig:
    device: str = default("device")
    precision: str = default("precision")
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> "FrontEndConfig":
        """Build from dotted names (validated; unknown names rejected; non-core names ignored)."""
        flat = validate(values)

        def section(kind, prefix):
            return kind(**{f.name: flat[f"{prefix}.{f.name}"] for f in dataclasses.fields(kind)})

        return cls(
            device=flat["device"], precision=flat["precision"],
            extractor=section(ExtractorConfig, "extractor"), matcher=section(MatcherConfig, "matcher"),
            keyframes=section(KeyframeConfig, "keyframes"), pose=section(PoseConfig, "pose"),
            pipeline=section(PipelineConfig, "pipeline"),
        )

    def to_flat(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"device": self.device, "precision": self.precision}
        for prefix in ("extractor", "matcher", "keyframes", "pose", "pipeline"):
            for key, value in dataclasses.asdict(getattr(self, prefix)).items():
                flat[f"{prefix}.{key}"] = value
        return flat

    def replace(self, **dotted: Any) -> "FrontEndConfig":
        """Copy with some dotted parameters changed (validated)."""
        flat = self.to_flat()
        flat.update(dotted)
        return FrontEndConfig.from_flat(flat)


#: Shipped parameter files (glue_ros/profiles/NAME.yaml), one per backend; the first is the default.
PROFILES = ("superpoint_lightglue", "superpoint_superglue", "aliked_lightglue", "disk_lightglue",
            "xfeat_lighterglue", "sift_nn", "orb_nn")
#: Profiles whose weights ship with the Python packages (no download ever needed).
OFFLINE_PROFILES = ("aliked_lightglue", "disk_lightglue", "xfeat_lighterglue", "sift_nn", "orb_nn")


def profile_path(name: str) -> Path:
    """The shipped parameter file of profile ``name``; ParameterError with the closest name otherwise."""
    import difflib
    from importlib.resources import files

    if name not in PROFILES:
        close = difflib.get_close_matches(name, PROFILES, n=1)
        raise ParameterError(f"unknown profile '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                             + f"; profiles: {', '.join(PROFILES)}")
    return Path(str(files("glue_ros") / "profiles" / f"{name}.yaml"))


def load_config(params_file: str | Path | None = None, sets: Iterable[str] = (),
                profile: str | None = None) -> dict[str, Any]:
    """CLI helper: profile, then params file, then --set overrides → full validated flat dict."""
    values: dict[str, Any] = {}
    if profile:
        values.update(load_params_file(profile_path(profile)))
    if params_file:
        values.update(load_params_file(params_file))
    values.update(parse_set(sets))
    return validate(values)


def render_params_yaml(node_name: str = "/**") -> str:
    """The documented ROS 2 params file with every parameter at its default (config/matcher.yaml)."""
    lines = ["# glue_ros matcher parameters (all of them, at their defaults).",
             "# Generated from glue_ros/config.py: `python -m glue_ros.config > config/matcher.yaml`.",
             "# The same dotted names work with the CLIs: --set extractor.max_keypoints=512",
             f"{node_name}:", "  ros__parameters:"]
    section = None
    for spec in PARAMS:
        head, _, leaf = spec.name.rpartition(".")
        if head != section:
            if head:
                lines.append(f"    {head}:")
            section = head
        indent = "      " if head else "    "
        notes = []
        if spec.choices:
            notes.append("one of " + " | ".join(map(str, spec.choices)))
        elif spec.min is not None:
            notes.append(f"range [{spec.min}, {spec.max}]")
        notes.append("live" if spec.live else "restart")
        lines.append(f"{indent}# {spec.description} ({'; '.join(notes)})")
        lines.append(f"{indent}{leaf or spec.name}: {yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix('...').strip()}")
    return "\n".join(lines) + "\n"


def render_params_markdown() -> str:
    """The README's parameter table."""
    rows = ["| name | default | allowed | runtime change | description |", "|---|---|---|---|---|"]
    for spec in PARAMS:
        allowed = " \\| ".join(map(str, spec.choices)) if spec.choices else (
            f"[{spec.min}, {spec.max}]" if spec.min is not None else spec.type.__name__)
        default = json.dumps(spec.default) if not isinstance(spec.default, str) else f"`{spec.default}`"
        rows.append(f"| `{spec.name}` | {default} | {allowed} | {'live' if spec.live else 'restart'} | "
                    f"{spec.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    print(render_params_markdown() if "--markdown" in sys.argv else render_params_yaml(), end="")

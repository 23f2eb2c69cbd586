"""Parameters: one typed definition shared by node, YAML file and CLIs."""
from pathlib import Path

import pytest

from glue_ros.config import (PARAMS, SPECS, FrontEndConfig, ParameterError, load_config, load_params_file,
                             render_params_yaml, validate)

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_lists_every_parameter_at_its_default():
    shipped = (ROOT / "config" / "matcher.yaml").read_text()
    assert shipped == render_params_yaml(), "config/matcher.yaml is stale: python -m glue_ros.config > config/matcher.yaml"
    flat = load_params_file(ROOT / "config" / "matcher.yaml")
    assert set(flat) == set(SPECS)
    assert validate(flat) == {p.name: p.default for p in PARAMS}


def test_every_parameter_is_documented_and_its_default_valid():
    for spec in PARAMS:
        assert spec.description.strip(), spec.name
        validate({spec.name: spec.default})


def test_ros_params_file_for_named_node_and_wildcard(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("other_node:\n  ros__parameters:\n    device: cuda\n"
                    "/**:\n  ros__parameters:\n    extractor:\n      max_keypoints: 256\n"
                    "/cam0/glue_ros_matcher:\n  ros__parameters:\n    matcher:\n      type: superglue\n")
    flat = load_params_file(path)
    assert flat == {"extractor.max_keypoints": 256, "matcher.type": "superglue"}


def test_set_overrides_file_and_types_are_coerced(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("extractor:\n  max_keypoints: 256\n")
    flat = load_config(path, ["extractor.max_keypoints=512", "matcher.filter_threshold=0.3",
                              "extractor.weights=/some/dir", "input.compressed=true"])
    assert flat["extractor.max_keypoints"] == 512
    assert flat["matcher.filter_threshold"] == 0.3
    assert flat["extractor.weights"] == "/some/dir"
    assert flat["input.compressed"] is True


def test_unquoted_on_off_in_yaml_is_the_choice_not_a_boolean(tmp_path):
    # YAML 1.1 (ROS params files, `-p pipeline.extract_ahead:=off`) reads unquoted on/off as booleans
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    pipeline:\n      extract_ahead: off\n")
    assert FrontEndConfig.from_flat(load_config(path)).pipeline.extract_ahead == "off"
    assert load_config(None, ["pipeline.extract_ahead=on"])["pipeline.extract_ahead"] == "on"
    path.write_text("/**:\n  ros__parameters:\n    matcher:\n      type: off\n")
    with pytest.raises(ParameterError, match="expected str, got False"):
        FrontEndConfig.from_flat(load_config(path))  # no on/off choice there: still refused


@pytest.mark.parametrize("assignment, fragment", [
    ("extractor.max_keypoint=5", "unknown parameter 'extractor.max_keypoint' (did you mean 'extractor.max_keypoints'?)"),
    ("extractor.max_keypoints=abc", "parameter 'extractor.max_keypoints'"),
    ("extractor.max_keypoints=1.5", "parameter 'extractor.max_keypoints'"),
    ("matcher.filter_threshold=2", "outside"),
    ("matcher.filter_threshold=nan", "parameter 'matcher.filter_threshold'"),
    ("matcher.type=magic", "not one of"),
    ("device=gpu", "parameter 'device'"),
    ("precision=fp8", "parameter 'precision'"),
    ("novalue", "NAME=VALUE"),
])
def test_bad_names_and_values_are_named(assignment, fragment):
    with pytest.raises(ParameterError) as info:
        load_config(None, [assignment])
    assert fragment in str(info.value)


def test_bad_params_file(tmp_path):
    with pytest.raises(ParameterError, match="not found"):
        load_params_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ParameterError, match="could not be read"):
        load_params_file(bad)


def test_typed_view_round_trip():
    config = FrontEndConfig.from_flat({"keyframes.buffer_size": 3, "matcher.type": "superglue"})
    assert config.keyframes.buffer_size == 3
    assert config.matcher.resolved_weights("superpoint") == "magic-leap-community/superglue_indoor"
    assert config.extractor.resolved_weights == "magic-leap-community/superpoint"
    changed = config.replace(**{"pose.threshold_px": 2.0})
    assert changed.pose.threshold_px == 2.0 and config.pose.threshold_px == 1.0
    assert FrontEndConfig.from_flat(config.to_flat()) == config


def test_readme_parameter_table_is_current():
    from glue_ros.config import render_params_markdown

    assert render_params_markdown() in (ROOT / "README.md").read_text(), \
        "README parameter table is stale: python -m glue_ros.config --markdown"


def test_every_profile_ships_loads_and_names_its_backend():
    from glue_ros.config import PROFILES, profile_path

    for name in PROFILES:
        flat = load_config(profile=name)
        extractor, matcher = name.split("_", 1)
        assert flat["extractor.type"] == extractor
        assert flat["matcher.type"] == {"lighterglue": "lightglue"}.get(matcher, matcher)
        assert profile_path(name).is_file()
    # order: profile, then params file, then --set
    assert load_config(profile="orb_nn", sets=["extractor.type=sift"])["extractor.type"] == "sift"


def test_unknown_profile_names_the_closest():
    with pytest.raises(ParameterError, match=r"unknown profile 'xfeat_lightglue' \(did you mean 'xfeat_lighterglue'\?\)"):
        load_config(profile="xfeat_lightglue")


def test_weight_descriptions_name_the_defaults_of_the_one_table():
    from glue_ros.config import DEFAULT_EXTRACTOR_WEIGHTS, DEFAULT_MATCHER_WEIGHTS
    from glue_ros.models.weights import PACKAGED

    for family, default in DEFAULT_EXTRACTOR_WEIGHTS.items():
        assert f"{family}: {default}" in SPECS["extractor.weights"].description
        assert family in SPECS["extractor.type"].choices
    for matcher, table in DEFAULT_MATCHER_WEIGHTS.items():
        for family, default in table.items():
            assert default in SPECS["matcher.weights"].description, (matcher, family)
    for name, entry in PACKAGED.items():
        key = "extractor.weights" if entry.role == "extractor" else "matcher.weights"
        assert name in SPECS[key].description, name

"""The core's rules, one table row each: track ids (TrackTable), keyframe triggers and their order,
buffer resets, the keyframe buffer, and the parameter table as the one truth of defaults/liveness.

Each rule has a row that fails when the rule is broken (mutations checked by hand: newest keyframe
no longer wins a track conflict, duplicates kept, keyframe checks reordered, velocity from the first
observation instead of the latest, ids reused after a reset, reset checks reordered)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from glue_ros.config import (PARAMS, SPECS, ExtractorConfig, FrontEndConfig, KeyframeConfig, MatcherConfig,
                             ParameterError, PipelineConfig, PoseConfig)
from glue_ros.keyframes import Keyframe, KeyframeBuffer, KeyframeSignals, keyframe_reason, reset_reason
from glue_ros.tracks import TrackTable

I = np.array  # noqa: E741  (short for the tables)


# ----------------------------------------------------------------------------- TrackTable.assign


def inherit(*pairs):
    """(frame indices, keyframe track ids) per keyframe, newest first."""
    return [(I(f, np.int64), I(t, np.int64)) for f, t in pairs]


ASSIGN_CASES = {
    # name: (num keypoints, inherited newest first, expected ids; "new" = a fresh id)
    "nothing inherited → all new": (3, [], ["new", "new", "new"]),
    "one keyframe": (3, inherit(([0, 2], [7, 9])), [7, "new", 9]),
    "newest keyframe wins a conflict": (2, inherit(([0], [10]), ([0], [20])), [10, "new"]),
    "older keyframe fills the gaps": (3, inherit(([0], [10]), ([0, 2], [20, 21])), [10, "new", 21]),
    "same track via two keyframes: the newest keyframe's keypoint keeps it": (
        2, inherit(([1], [5]), ([0], [5])), ["new", 5]),
    "same track twice in one keyframe: the first match keeps it": (3, inherit(([2, 0], [4, 4])), ["new", "new", 4]),
}


@pytest.mark.parametrize("name", ASSIGN_CASES)
def test_assign(name):
    count, inherited, expected = ASSIGN_CASES[name]
    table = TrackTable()
    table.new_ids(100)  # ids 0..99 are taken: fresh ids are >= 100
    ids = table.assign(count, inherited)
    assert len(np.unique(ids)) == len(ids), "track ids within a frame are unique"
    for got, want in zip(ids.tolist(), expected):
        if want == "new":
            assert got >= 100, (name, ids)
        else:
            assert got == want, (name, ids)
    assert table.next_id == 100 + expected.count("new")


def test_ids_are_never_reused_after_clear():
    table = TrackTable()
    first = table.assign(5, [])
    table.clear()
    second = table.assign(5, [])
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert second.min() > first.max()


# ----------------------------------------------------------------------------- velocities / retain

SECOND = 1_000_000_000

VELOCITY_CASES = {
    # name: [(stamp_ns, position of track 3)], expected velocity at the last observation
    "first observation: zero": ([(0, (5.0, 5.0))], (0.0, 0.0)),
    "pixels per second": ([(0, (0.0, 0.0)), (SECOND // 2, (10.0, -4.0))], (20.0, -8.0)),
    "from the latest previous observation, not the first": (
        [(0, (0.0, 0.0)), (SECOND, (10.0, 0.0)), (2 * SECOND, (30.0, 0.0))], (20.0, 0.0)),
    "same stamp again: zero, no division by zero": ([(SECOND, (0.0, 0.0)), (SECOND, (9.0, 9.0))], (0.0, 0.0)),
    "older stamp: zero": ([(2 * SECOND, (0.0, 0.0)), (SECOND, (9.0, 9.0))], (0.0, 0.0)),
}


@pytest.mark.parametrize("name", VELOCITY_CASES)
def test_velocities(name):
    observations, expected = VELOCITY_CASES[name]
    table = TrackTable()
    for stamp, position in observations:
        velocity = table.velocities(stamp, I([position], np.float32), I([3]))
    np.testing.assert_allclose(velocity[0], expected, atol=1e-4)


def test_velocity_of_each_track_uses_its_own_history():
    table = TrackTable()
    table.velocities(0, I([[0, 0], [100, 100]], np.float32), I([1, 2]))
    v = table.velocities(SECOND, I([[100, 100], [1, 1]], np.float32), I([2, 1]))  # order swapped
    np.testing.assert_allclose(v, [[0, 0], [1, 1]], atol=1e-5)


def test_retain_forgets_dead_tracks_only():
    table = TrackTable()
    table.velocities(0, I([[0, 0], [5, 5], [9, 9]], np.float32), I([1, 2, 3]))
    table.retain(I([1, 3]))
    assert len(table) == 2
    v = table.velocities(SECOND, I([[1, 0], [6, 5], [9, 10]], np.float32), I([1, 2, 3]))
    np.testing.assert_allclose(v, [[1, 0], [0, 0], [0, 1]], atol=1e-5)  # track 2 was forgotten: restarts at 0


# ----------------------------------------------------------------------------- keyframe policy

POLICY = KeyframeConfig(min_matches=50, min_inlier_ratio=0.5, parallax_px=30, max_interval_s=1.0)
GOOD = dict(num_matches=200, inlier_ratio=0.9, parallax_px=5.0, seconds_since_keyframe=0.1)

KEYFRAME_CASES = [
    # (signals changed from GOOD, config changes, expected reason) — several triggers at once pin the order:
    # few_matches > low_inlier_ratio > parallax > interval
    ({}, {}, ""),
    ({"num_matches": 49}, {}, "few_matches"),
    ({"num_matches": 50}, {}, ""),  # threshold is strict
    ({"inlier_ratio": 0.49}, {}, "low_inlier_ratio"),
    ({"inlier_ratio": None}, {}, ""),  # no pose: the ratio is unknown, not low
    ({"parallax_px": 30.5}, {}, "parallax"),
    ({"parallax_px": 30.0}, {}, ""),
    ({"seconds_since_keyframe": 1.0}, {}, "interval"),
    ({"seconds_since_keyframe": 9.0}, {"max_interval_s": 0.0}, ""),  # 0 disables the interval
    ({"num_matches": 10, "inlier_ratio": 0.1, "parallax_px": 99.0, "seconds_since_keyframe": 9.0}, {}, "few_matches"),
    ({"inlier_ratio": 0.1, "parallax_px": 99.0, "seconds_since_keyframe": 9.0}, {}, "low_inlier_ratio"),
    ({"parallax_px": 99.0, "seconds_since_keyframe": 9.0}, {}, "parallax"),
]


@pytest.mark.parametrize("changes, config_changes, expected", KEYFRAME_CASES)
def test_keyframe_reason(changes, config_changes, expected):
    signals = KeyframeSignals(**{**GOOD, **changes})
    assert keyframe_reason(signals, dataclasses.replace(POLICY, **config_changes)) == expected


RESET_CASES = [
    # (stamp, size, last stamp, keyframe size, reset_gap_s, expected) — size change wins over stamps
    (10, (640, 480), None, None, 2.0, ""),
    (10, (640, 480), 5, (640, 480), 2.0, ""),
    (10, (320, 240), 5, (640, 480), 2.0, "image_size_changed"),
    (4, (320, 240), 5, (640, 480), 2.0, "image_size_changed"),
    (4, (640, 480), 5, (640, 480), 2.0, "stamp_backwards"),
    (5 + 2 * SECOND, (640, 480), 5, (640, 480), 2.0, ""),  # exactly the gap: no reset
    (6 + 2 * SECOND, (640, 480), 5, (640, 480), 2.0, "stamp_gap"),
    (5 + 99 * SECOND, (640, 480), 5, (640, 480), 0.0, ""),  # 0 disables the gap reset
    (4, (640, 480), 5, None, 2.0, "stamp_backwards"),  # no keyframe yet: stamps still checked
]


@pytest.mark.parametrize("stamp, size, last, keyframe_size, gap, expected", RESET_CASES)
def test_reset_reason(stamp, size, last, keyframe_size, gap, expected):
    assert reset_reason(stamp, size, last, keyframe_size, KeyframeConfig(reset_gap_s=gap)) == expected


def test_keyframe_buffer_is_bounded_newest_first():
    buffer = KeyframeBuffer(3)
    for i in range(5):
        buffer.add(Keyframe(i, i, "cam", None, np.zeros((0, 2)), np.zeros(0, np.int64), None, (8, 8)))
    assert [k.id for k in buffer.newest(10)] == [4, 3, 2]
    assert [k.id for k in buffer.newest(2)] == [4, 3]
    buffer.resize(2)
    assert [k.id for k in buffer.newest(10)] == [4, 3]  # shrinking keeps the newest
    buffer.resize(4)
    buffer.add(Keyframe(5, 5, "cam", None, np.zeros((0, 2)), np.zeros(0, np.int64), None, (8, 8)))
    assert [k.id for k in buffer.newest(10)] == [5, 4, 3]


# ----------------------------------------------------------------------------- one truth per fact


def test_typed_sections_are_the_parameter_table():
    assert FrontEndConfig() == FrontEndConfig.from_flat({})
    core = {f"{prefix}.{f.name}" for prefix, kind in (("extractor", ExtractorConfig), ("matcher", MatcherConfig),
                                                    ("keyframes", KeyframeConfig), ("pose", PoseConfig),
                                                    ("pipeline", PipelineConfig))
            for f in dataclasses.fields(kind)} | {"device", "precision"}
    assert core <= set(SPECS), "every typed field has a parameter spec"
    assert {p.name for p in PARAMS
            if p.name.split(".")[0] in ("extractor", "matcher", "keyframes", "pose", "pipeline")} \
        | {"device", "precision"} == core, "every core parameter has a typed field"
    assert FrontEndConfig().to_flat() == {name: SPECS[name].default for name in core}


def test_live_parameters_come_from_the_spec_only():
    """FrontEnd.update_config accepts exactly the parameters the spec marks live."""
    from glue_ros.frontend import FrontEnd

    base = FrontEndConfig.from_flat({"extractor.type": "orb", "matcher.type": "nn", "device": "cpu"})
    changed = {"extractor.max_keypoints": 10, "extractor.border_removal": 9, "matcher.ratio_test": 0.5,
               "keyframes.buffer_size": 2, "keyframes.match_against": 2, "keyframes.min_matches": 3,
               "pose.threshold_px": 2.0, "pose.method": "ransac", "device": "auto", "precision": "fp32",
               "matcher.depth_confidence": 0.5, "matcher.filter_threshold": 0.5}
    for name, value in changed.items():
        frontend = FrontEnd(base)
        new = base.replace(**{name: value})
        if SPECS[name].live:
            frontend.update_config(new)
            assert frontend.config.to_flat()[name] == value
        else:
            with pytest.raises(ParameterError, match=f"'{name}' cannot change while running"):
                frontend.update_config(new)
    frontend = FrontEnd(base)
    frontend.update_config(base.replace(**{"matcher.ratio_test": 0.3, "keyframes.buffer_size": 2}))
    assert frontend.matcher.ratio_test == 0.3 and frontend.buffer.capacity == 2

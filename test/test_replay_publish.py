"""Timed replay into a live DDS graph: `glue-ros-replay BAG --publish --clock` in its own process,
received by this process at the recorded rate, with /clock carrying the recorded times."""
from __future__ import annotations

import sys

import numpy as np

from rosgraph import Graph, NodeProcess, child_env  # noqa: I001  (sets the isolated DDS environment)

from glue_ros.tools.make_bag import make_synthetic_bag


def test_timed_publish_keeps_the_recorded_rate_and_publishes_clock(tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image

    seq = make_synthetic_bag(tmp_path / "bag", 60, motion="forward", width=160, height=120, fps=30.0)
    graph = Graph("replay_probe")
    try:
        images = graph.subscribe("/camera/image", Image, reliable=False)
        infos = graph.subscribe("/camera/camera_info", CameraInfo, reliable=False)
        clock = graph.subscribe("/clock", Clock)
        player = NodeProcess([sys.executable, "-m", "glue_ros.tools.replay", str(tmp_path / "bag"), "--publish",
                              "--clock"], env=child_env(), label="replay")
        with player:
            images.wait_for_count(len(seq), timeout=60)
            assert player.wait(30) == 0, player.output()
        received = images.items
        stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in images.messages]
        assert stamps == seq.stamps_ns, "every frame, in order, with its recorded stamp"
        assert len(infos) == len(seq)
        arrival = np.array([r.time_ns for r in received], dtype=np.float64) * 1e-9
        rate = (len(arrival) - 1) / (arrival[-1] - arrival[0])
        assert abs(rate - 30.0) <= 3.0, f"published at {rate:.1f} Hz, recorded at 30 Hz"
        clock_ns = [m.clock.sec * 10**9 + m.clock.nanosec for m in clock.messages]
        assert clock_ns == sorted(clock_ns) and clock_ns[0] == seq.stamps_ns[0] and clock_ns[-1] == seq.stamps_ns[-1]
    finally:
        graph.close()

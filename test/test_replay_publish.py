"""Timed replay into a live DDS graph: `glue-ros-replay BAG --publish --clock --loop` in its own
process, received by this process: every frame in order with its recorded stamp, camera_info
alongside, /clock carrying the recorded times. Nothing here asserts a rate or a duration: those
depend on the machine and its load, and belong in benchmarks."""
from __future__ import annotations

import sys

from rosgraph import Graph, NodeProcess, child_env, wait_until  # noqa: I001  (sets the isolated DDS environment)

from glue_ros.tools.make_bag import make_synthetic_bag

TOPICS = ("/camera/camera_info", "/clock", "/camera/image")


def full_pass(received: list[int], recorded: list[int]) -> bool:
    """``received`` holds one complete pass of ``recorded``, in order, without gaps."""
    n = len(recorded)
    return any(received[i:i + n] == recorded for i in range(len(received) - n + 1))


def assert_cyclic_order(received: list[int], recorded: list[int], what: str, repeats: bool = False) -> None:
    """Each item follows the previous one in the recorded order (the loop wraps around): nothing lost,
    reordered or invented after the first item received. ``repeats``: an item may also repeat."""
    following = {a: b for a, b in zip(recorded, recorded[1:] + recorded[:1])}
    for n, (a, b) in enumerate(zip(received, received[1:])):
        assert b == following.get(a) or (repeats and b == a), f"{what}: {b} after {a} (item {n + 1} received)"


def test_timed_publish_sends_every_frame_in_order_and_publishes_clock(tmp_path):
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CameraInfo, Image

    seq = make_synthetic_bag(tmp_path / "bag", 60, motion="forward", width=160, height=120, fps=30.0)
    graph = Graph("replay_probe")
    try:
        player = NodeProcess([sys.executable, "-m", "glue_ros.tools.replay", str(tmp_path / "bag"), "--publish",
                              "--clock", "--loop"], env=child_env(), label="replay")
        with player:
            # Discovery may take seconds on a loaded machine and is not symmetric: the player may
            # start before this process knows its writers, and a reader drops samples from writers
            # it does not know yet. So the bag loops, this process subscribes once it knows the
            # player's writers (a new reader pairs with known writers at once), and one complete
            # pass is awaited, wherever in the bag reception starts.
            wait_until(lambda: all(graph.node.count_publishers(t) for t in TOPICS) or not player.alive(), 60,
                       "the player's publishers")
            assert player.alive(), player.output()
            infos = graph.subscribe("/camera/camera_info", CameraInfo, reliable=False)
            clock = graph.subscribe("/clock", Clock)
            images = graph.subscribe("/camera/image", Image, reliable=False)
            graph.wait_for(lambda: full_pass(images.stamps(), seq.stamps_ns) and full_pass(infos.stamps(), seq.stamps_ns),
                           60, "a complete pass of the bag")
            code = player.interrupt(timeout=20)
            assert code in (0, 130) and "Traceback" not in player.output(), (code, player.output()[-3000:])
        assert_cyclic_order(images.stamps(), seq.stamps_ns, "images")
        assert {(m.width, m.height, m.encoding) for m in images.messages} == {(160, 120, "rgb8")}
        assert_cyclic_order(infos.stamps(), seq.stamps_ns, "camera_info")
        # a /clock before every published message (image and camera_info share a stamp): the recorded
        # times in order, back to the first at each new pass
        ticks = [m.clock.sec * 10**9 + m.clock.nanosec for m in clock.messages]
        assert full_pass(sorted(set(ticks)), seq.stamps_ns)
        assert_cyclic_order(ticks, seq.stamps_ns, "/clock", repeats=True)
    finally:
        graph.close()


def test_sigterm_and_sigint_stop_a_looping_player_cleanly(tmp_path):
    """SIGTERM (timeout, docker, systemd) or SIGINT while publishing: exit 0, no RCLError traceback,
    one line saying so; the bag (recorded in 2023, played without --clock) got the use_sim_time hint
    once. (With --clock, above, there is no such warning.)"""
    import signal

    from sensor_msgs.msg import Image

    make_synthetic_bag(tmp_path / "bag", 10, motion="forward", width=160, height=120, fps=30.0)
    graph = Graph("replay_probe_stop")
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            player = NodeProcess([sys.executable, "-m", "glue_ros.tools.replay", str(tmp_path / "bag"), "--publish",
                                  "--loop", "--rate", "4"], env=child_env(), label=f"replay_{sig.name}",
                                 log_dir=tmp_path)
            with player:
                wait_until(lambda: graph.node.count_publishers("/camera/image") or not player.alive(), 60,
                           "the player's publisher")
                images = graph.subscribe("/camera/image", Image, reliable=False)
                images.wait_for_count(25, timeout=60)  # more than the bag holds: it is looping
                player.proc.send_signal(sig)
                assert player.wait(20) == 0, player.output()
            log = player.output()
            lines = log.strip().splitlines()
            assert "Traceback" not in log and "RCLError" not in log, log
            assert lines[-1].startswith(f"stopped ({sig.name}): published ")
            assert lines[-1].endswith(str(tmp_path / "bag"))
            warnings = [line for line in lines if line.startswith("warning:")]
            assert len(warnings) == 1 and "use_sim_time:=true" in warnings[0] and "--clock" in warnings[0], lines
            assert len(lines) == 2, lines
    finally:
        graph.close()

#!/usr/bin/env python
"""Offline replay vs the node over DDS on the same bag (issue "rosbag2 replay").

1. builds a synthetic 640x480 bag (--frames, default 300),
2. `glue-ros-replay BAG --output OUT` offline: frames/s over every frame,
3. the node in its own process fed by `glue-ros-replay BAG --publish --rate 100` (flooded, queue
   of 100: it works flat out and drops the rest): processed frames/s from the first to the last
   ~/matches received here.
Prints both and the ratio; the offline path must not be slower than the node.

    python bench/bench_replay.py                 # ORB + nn
    python bench/bench_replay.py --learned       # SuperPoint + LightGlue (random weights), 1024 keypoints
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "test")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import rosgraph as rg  # noqa: E402  (isolated DDS environment before rclpy starts)

from glue_ros.config import validate  # noqa: E402
from glue_ros.tools.make_bag import make_synthetic_bag  # noqa: E402
from glue_ros.tools.replay import replay_offline  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--learned", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, both paths")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_replay_"))
    params = {"extractor.max_keypoints": args.keypoints, "device": "cpu"}
    if args.learned:
        from bench_node import make_weights  # random-weight checkpoints, nothing downloaded

        weights = make_weights(work / "weights")
        params.update({"extractor.weights": str(weights["superpoint"]), "matcher.weights": str(weights["lightglue"])})
    else:
        params.update({"extractor.type": "orb", "matcher.type": "nn"})
    print(f"building a {args.frames}-frame 640x480 bag in {work}", file=sys.stderr)
    make_synthetic_bag(work / "in", args.frames, motion="mixed")

    import glue_ros.frontend  # noqa: F401  (torch import and model code load outside the timing, as in the node)
    import glue_ros.ros.messages  # noqa: F401

    t0 = time.perf_counter()
    summary = replay_offline(str(work / "in"), str(work / "out"), validate(params), progress=False)
    offline_fps = summary.frames / (time.perf_counter() - t0)

    from sensor_msgs.msg import PointCloud2

    graph = rg.Graph("bench_replay")
    try:
        matches = graph.subscribe("/glue_ros_matcher/matches", PointCloud2)
        node_params = dict(params, **{"input.queue_size": 100, "diagnostics.period_s": 1.0})
        node = rg.start_node("-r", "image:=/camera/image", "-r", "camera_info:=/camera/camera_info",
                             params=node_params, env=rg.child_env(OMP_NUM_THREADS=str(args.threads)), label="node")
        with node:
            node.wait_for_output("ready", timeout=120)
            # flood: the node's queue stays full, so its output rate is its processing rate
            player = rg.NodeProcess([sys.executable, "-m", "glue_ros.tools.replay", str(work / "in"), "--publish",
                                     "--rate", "100"], env=rg.child_env(), label="player")
            with player:
                player.wait(600)
            quiet = 3.0 / offline_fps + 2.0
            last = -1
            while len(matches) != last:  # until no output for `quiet` seconds
                last = len(matches)
                time.sleep(quiet)
        times = [r.time_ns * 1e-9 for r in matches.items]
        node_fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
        received = len(times)
    finally:
        graph.close()
    backend = "SuperPoint+LightGlue (random weights)" if args.learned else "ORB+nn"
    print(f"| path | frames | frames/s |\n|---|---|---|\n| offline replay ({backend}) | {summary.frames} | "
          f"{offline_fps:.2f} |\n| node over DDS ({backend}) | {received} | {node_fps:.2f} |")
    print(f"offline / node = {offline_fps / node_fps:.2f} (torch threads {args.threads} in both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

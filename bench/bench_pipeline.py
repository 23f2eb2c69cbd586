#!/usr/bin/env python
"""Full offline replay per backend, serial vs extraction ahead, side by side (issue #11, target 1).

One synthetic 640×480 bag (30 Hz, mixed motion, exact ground truth) goes through
``glue_ros.tools.replay.replay_offline`` — the whole product path: bag reading, decoding, extraction,
matching against the newest keyframe (LightGlue adaptive depth/width on), pose, tracks, keyframe
policy, every output message built and the output bag written (input images copied in too) — for
each profile and keypoint count, with ``pipeline.extract_ahead`` off (serial) and on (the one-frame
pipeline of glue_ros/overlap.py). Runs are interleaved (profile × keypoints × mode, repeated
``--repeats`` times in rotating order) so load from other jobs hits all alike; frames/s is the median
over repeats, measured from the first to the last frame (models are loaded before the clock starts by
a warm-up replay of the same bag). Printed: frames/s, ratio to ORB + nn at the same keypoints and
mode, ahead / serial ratio, pose error against the ground truth, LightGlue's mean stop layer.

    python bench/bench_pipeline.py                                   # xfeat_lighterglue + orb_nn, 512/1024/2048
    python bench/bench_pipeline.py --profiles aliked_lightglue orb_nn --keypoints 1024 --frames 60
    python bench/bench_pipeline.py --keypoints 512 --set extractor.resize_max=480   # smaller network input
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path, offline environment)

from glue_ros.config import load_config
from glue_ros.evaluation import evaluate_sequence
from glue_ros.tools.make_bag import make_synthetic_bag
from glue_ros.tools.replay import replay_offline


def replay(bag: Path, out: Path, profile: str, keypoints: int, ahead: bool, threads: int,
           sets: list[str]) -> tuple[float, list]:
    params = load_config(profile=profile, sets=[f"extractor.max_keypoints={keypoints}", "device=cpu",
                                                 f"pipeline.extract_ahead={'on' if ahead else 'off'}",
                                                 f"pipeline.cpu_threads={threads}", *sets])
    results: list = []
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = replay_offline(str(bag), str(out), params, progress=False, results=results)
    elapsed = time.perf_counter() - start
    return summary.frames / elapsed, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["xfeat_lighterglue", "orb_nn"])
    parser.add_argument("--keypoints", nargs="+", type=int, default=[512, 1024, 2048])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="pipeline.cpu_threads (0 = automatic)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter for every profile, e.g. extractor.resize_max=480 (repeatable)")
    args = parser.parse_args()
    common.start_report("cpu")
    work = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        seq = make_synthetic_bag(work / "in", args.frames, motion="mixed", seed=11)
        cases = [(p, k, a) for k in args.keypoints for p in args.profiles for a in (False, True)]
        fps: dict[tuple, list[float]] = {c: [] for c in cases}
        outcome: dict[tuple, list] = {}
        # Warm-up outside the timing, on the same bag: oneDNN builds kernels per new tensor shape (LightGlue's
        # keypoint counts and pruned widths vary per frame), which made the first pass up to 7x slower.
        for profile in args.profiles:
            for keypoints in args.keypoints:
                replay(work / "in", work / "warm_out", profile, keypoints, True, args.threads, args.sets)
        for r in range(args.repeats):
            shift = r % len(cases)
            for case in cases[shift:] + cases[:shift]:
                rate, results = replay(work / "in", work / "out", *case, args.threads, args.sets)
                fps[case].append(rate)
                outcome[case] = results
                print(f"  {case}: {rate:.2f} frames/s", flush=True)
        rows = []
        for profile, keypoints, ahead in cases:
            rate = statistics.median(fps[(profile, keypoints, ahead)])
            orb = fps.get(("orb_nn", keypoints, ahead))
            serial = statistics.median(fps[(profile, keypoints, False)])
            results = outcome[(profile, keypoints, ahead)]
            report = evaluate_sequence(results, seq.stamps_ns, seq.poses).summary()
            stops = [r.stop_layer for r in results if r.stop_layer >= 0]
            rows.append([profile, keypoints, "ahead" if ahead else "serial", f"{rate:.1f}",
                         f"{rate / statistics.median(orb):.2f}" if orb else "-", f"{rate / serial:.2f}",
                         f"{report['valid']}/{report['pairs']}", f"{report['rotation_median_deg']:.3f}",
                         f"{report['translation_median_deg']:.2f}",
                         f"{statistics.mean(stops):.2f}" if stops else "-"])
        settings = f"; {', '.join(args.sets)}" if args.sets else ""
        print(f"\n## Offline replay, {args.frames} frames 640x480{settings}, output bag written, "
              f"median of {args.repeats}\n")
        print(common.markdown_table(["profile", "keypoints", "mode", "frames/s", "vs orb_nn (same mode)",
                                     "vs serial", "valid poses", "rot err deg", "transl dir err deg",
                                     "mean stop layer"], rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

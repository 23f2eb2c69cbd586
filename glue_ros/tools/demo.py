"""glue-ros-demo: the whole system on a synthetic camera with exact ground truth.

Builds a rosbag2 of a synthetic 640x480 sequence, replays it through the front-end with the default
parameters (SuperPoint + LightGlue from the Hugging Face hub), writes the output bag and a picture of
matches, and prints the summary and the pose error against ground truth. Without the weights (no
internet and nothing cached) it says how to get them and runs the classical SIFT backend instead.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path

from .common import add_param_args, params_from_args, run_cli

CLASSICAL_FALLBACK = {"extractor.type": "sift", "matcher.type": "nn"}


def missing_weights(params: dict) -> str:
    """'' if the learned weights resolve (cache or hub), else the reason."""
    from ..config import FrontEndConfig
    from ..models.weights import WeightsError, resolve

    config = FrontEndConfig.from_flat(params)
    sources = []
    if config.extractor.type == "superpoint":
        sources.append((config.extractor.weights, config.extractor.revision))
    if config.matcher.type in ("lightglue", "superglue"):
        sources.append((config.matcher.resolved_weights, config.matcher.revision))
    for source, revision in sources:
        try:
            resolve(source, revision)
        except WeightsError as exc:
            return str(exc)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="out/demo", help="folder for the bags and the picture")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--motion", default="mixed")
    add_param_args(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        import cv2
        import numpy as np

        from ..evaluation import evaluate_sequence
        from ..viz import draw_matches
        from .make_bag import make_synthetic_bag
        from .replay import replay_offline

        out = Path(args.output)
        for stale in ("input_bag", "output_bag"):
            shutil.rmtree(out / stale, ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        params = params_from_args(args)
        print(f"[1/4] rendering {args.frames} synthetic frames ({args.motion} motion) into {out / 'input_bag'}")
        seq = make_synthetic_bag(out / "input_bag", args.frames, motion=args.motion,
                                 groundtruth=out / "groundtruth.txt")
        problem = missing_weights(params)
        if problem:
            print("\n" + textwrap.fill(
                "NOTE: the learned models cannot run here because their weights are not available. " + problem +
                " The demo continues with the classical backend (SIFT + mutual nearest neighbour), which needs "
                "no weights, so you still see the whole system work.", width=100) + "\n")
            params = dict(params, **CLASSICAL_FALLBACK)
        backend = f"{params['extractor.type']} + {params['matcher.type']}"
        print(f"[2/4] replaying through the front-end ({backend}) into {out / 'output_bag'}")
        results: list = []
        summary = replay_offline(str(out / "input_bag"), str(out / "output_bag"), params, results=results,
                                 progress=sys.stderr.isatty())
        for line in summary.lines():
            print("      " + line)
        print("[3/4] pose error against ground truth (keyframe-relative)")
        report = evaluate_sequence(results, seq.stamps_ns, seq.poses).summary()
        print(f"      {report['valid']} valid poses of {report['pairs']}: rotation error median "
              f"{report['rotation_median_deg']:.3f} deg, translation direction median "
              f"{report['translation_median_deg']:.2f} deg (monocular: direction only, scale unknown)")
        frame = next((r for r in results[10:] if r.matches), None) or next(r for r in results if r.matches)
        m = frame.matches[0]
        index = {s: i for i, s in enumerate(seq.stamps_ns)}
        picture = draw_matches(seq.images[index[m.keyframe_stamp_ns]], seq.images[index[frame.stamp_ns]],
                               m.points_keyframe, m.points_frame, m.scores, inliers=m.inliers, title=backend,
                               timings_ms=frame.timings_ms,
                               notes=[f"keyframe {m.keyframe_id} (left) -> frame {index[frame.stamp_ns]} (right)"])
        cv2.imwrite(str(out / "matches.png"), picture)
        print(f"[4/4] wrote {out / 'matches.png'}, {out / 'output_bag'} (open it in Foxglove), "
              f"{out / 'groundtruth.txt'}")
        ok = report["valid"] > 0 and np.isfinite(report["rotation_median_deg"])
        return 0 if ok else 1

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

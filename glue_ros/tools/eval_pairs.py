"""glue-ros-eval-pairs: pose accuracy on image pairs with ground truth (SuperGlue's protocol).

    glue-ros-eval-pairs PAIRS.txt IMAGE_DIR [--params-file F] [--set N=V ...] [--json OUT.json]
                        [--ground-truth TUM.txt --results ...]

PAIRS.txt: `name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)` per line (SuperGluePretrainedNetwork's
format; EXIF rotations may be 0). Prints pose AUC@5/10/20 (percent; error = max of rotation and
translation-direction angle), precision and matching score (epipolar error < 5e-4).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .common import (CliError, add_param_args, check_input_file, check_output_file, params_from_args, preflight,
                     run_cli, write_text_atomic)


def evaluate_pairs(pairs_file: str, image_dir: str, params: dict, progress: bool = False) -> dict:
    import torch

    from ..backends import build_pair
    from ..evaluation import (load_pair, match_precision, matching_score, pose_auc, pose_error,
                              pose_from_T_0to1, read_pairs_file)
    from ..geometry import CameraModel, estimate_relative_pose

    check_input_file(pairs_file, "pairs file")
    try:
        specs = read_pairs_file(pairs_file)
    except FileNotFoundError:
        raise CliError(f"pairs file '{pairs_file}' does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"pairs file '{pairs_file}': {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if not specs:
        raise CliError(f"pairs file '{pairs_file}' lists no pairs")
    if not Path(image_dir).is_dir():
        what = "is not a directory" if Path(image_dir).exists() else "does not exist"
        raise CliError(f"image directory '{image_dir}' {what}")
    preflight(params)  # device, then hub weights missing and offline: one error, at once
    config, extractor, matcher = build_pair(params)
    rows, errors, precisions, scores = [], [], [], []
    t0 = time.perf_counter()
    for spec in specs:
        try:
            image0, image1, K0, K1, T_0to1 = load_pair(spec, image_dir)
        except FileNotFoundError as exc:
            raise CliError(str(exc)) from None
        if K0 is None or T_0to1 is None:
            raise CliError(f"pair {spec.name0} {spec.name1} has no intrinsics/ground truth in '{pairs_file}'")
        with torch.inference_mode():
            f0, f1 = extractor.extract([image0, image1])
            pair = matcher.match([f0], [f1])[0]
        k0, k1 = f0.keypoints_numpy(), f1.keypoints_numpy()
        m0, m1 = k0[pair.matches[:, 0]], k1[pair.matches[:, 1]]
        cam0 = CameraModel(np.asarray(K0, float))
        cam1 = CameraModel(np.asarray(K1, float))
        pose = estimate_relative_pose(m0, m1, cam0, cam1, config.pose)
        R_gt, t_gt = pose_from_T_0to1(T_0to1)
        err_R, err_t = pose_error(pose.rotation, pose.translation, R_gt, t_gt) if pose.valid else (math.inf, math.inf)
        precision, correct, _ = match_precision(m0, m1, T_0to1, K0, K1)
        errors.append(max(err_R, err_t))
        precisions.append(precision)
        scores.append(matching_score(correct, len(k0)))
        rows.append({"name0": spec.name0, "name1": spec.name1, "rotation_error_deg": err_R,
                     "translation_error_deg": err_t, "inliers": int(pose.num_inliers), "matches": len(pair),
                     "keypoints0": len(k0), "keypoints1": len(k1), "precision": precision,
                     "pose_valid": bool(pose.valid), "reason": pose.reason})
        if progress:
            print(f"{spec.name0} {spec.name1}: R {err_R:.2f} deg, t {err_t:.2f} deg, {pose.num_inliers} inliers",
                  file=sys.stderr)
    aucs = pose_auc(errors, (5, 10, 20))
    return {"auc@5": 100 * aucs[0], "auc@10": 100 * aucs[1], "auc@20": 100 * aucs[2],
            "precision": 100 * float(np.mean(precisions)), "matching_score": 100 * float(np.mean(scores)),
            "seconds": time.perf_counter() - t0, "pairs": rows}


def _finite(value):
    return value if isinstance(value, (int, str, bool)) or math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glue-ros-eval-pairs", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("pairs_file")
    parser.add_argument("image_dir")
    add_param_args(parser)
    parser.add_argument("--json", metavar="OUT.json", help="write metrics and per-pair errors")
    parser.add_argument("--verbose", action="store_true", help="print each pair's errors")
    args = parser.parse_args(argv)

    def body() -> int:
        params = params_from_args(args)
        if args.json:
            check_output_file(args.json, "--json")
        report = evaluate_pairs(args.pairs_file, args.image_dir, params, progress=args.verbose)
        print(f"pairs {len(report['pairs'])}: AUC@5 {report['auc@5']:.2f}  AUC@10 {report['auc@10']:.2f}  "
              f"AUC@20 {report['auc@20']:.2f}  precision {report['precision']:.2f}  "
              f"matching score {report['matching_score']:.2f}")
        if args.json:
            clean = dict(report, pairs=[{k: _finite(v) for k, v in row.items()} for row in report["pairs"]])
            write_text_atomic(args.json, json.dumps(clean, indent=1), "--json")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())

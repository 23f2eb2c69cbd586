"""Every backend side by side, same frames, same run: speed and accuracy (the README's backend table).

    python bench/bench_backends.py [--profiles xfeat_lighterglue orb_nn ...] [--max-keypoints 1024]
                                   [--frames 40] [--threads 2] [--quick]

1. Synthetic 640×480 video with exact ground truth (30 Hz, mixed motion): the full front-end per
   profile (extract + match against the newest keyframe + pose + tracks + keyframe policy): ms per
   stage, frames/s, matches, pose inliers, keyframe-relative pose error (median rotation error,
   median translation-direction error over valid poses), LightGlue's mean stop layer.
2. Real frames (../shared/data/tum_fr3_sequence, 1 s apart, 2–20° rotations): per consecutive pair,
   matches, inliers and the relative rotation's difference to SIFT's estimate (no ground truth here).
3. LightGlue adaptivity with trained weights: mean stop layer and time on consecutive video-like
   frames (ICL-NUIM snippet) vs wide-baseline pairs (frame i vs i+12), adaptive on vs off.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import common
import numpy as np
import torch

from backends import ALL, build, profile_config
from glue_ros.evaluation import evaluate_sequence
from glue_ros.frontend import Frame, FrontEnd
from glue_ros.geometry import CameraModel, estimate_relative_pose, rotation_angle_deg
from glue_ros.synthetic import render_sequence

DATA = common.ROOT.parent / "shared" / "data"
TUM = CameraModel.from_intrinsics(535.4, 539.2, 320.1, 247.6, 640, 480)
ICL = CameraModel.from_intrinsics(481.2, 480.0, 319.5, 239.5, 640, 480)


def read_frames(folder: Path) -> list[np.ndarray]:
    import cv2

    files = sorted(folder.glob("*.png"), key=lambda p: float(p.stem))
    return [cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for f in files]


def run_sequence(backend, seq) -> dict:
    frontend = FrontEnd(backend.config, extractor=backend.extractor, matcher=backend.matcher)
    results = [frontend.process(Frame(im, st, "cam", seq.camera)) for im, st in zip(seq.images, seq.stamps_ns)]
    timed = results[2:]  # first frames warm up caches / allocators
    stage = {k: float(np.mean([r.timings_ms.get(k, 0.0) for r in timed])) for k in
             ("extract_ms", "match_ms", "pose_ms", "total_ms")}
    matched = [r.matches[0] for r in results if r.matches]
    report = evaluate_sequence(results, seq.stamps_ns, seq.poses).summary()
    stops = [r.stop_layer for r in results if r.stop_layer >= 0]
    return dict(stage, fps=1e3 / stage["total_ms"], matches=np.mean([len(m) for m in matched]),
                inliers=np.mean([m.pose.num_inliers for m in matched]), valid=f"{report['valid']}/{report['pairs']}",
                rot=report["rotation_median_deg"], trans=report["translation_median_deg"],
                stop=np.mean(stops) if stops else float("nan"))


def pair_rotations(backend, frames, camera, pairs) -> list[tuple[int, int, float | None]]:
    """(matches, inliers, rotation angle deg or None) per pair, through extractor → matcher → pose."""
    out = []
    with torch.inference_mode():
        features = backend.extractor.extract(frames)
        for i, j in pairs:
            pair = backend.matcher.match([features[i]], [features[j]])[0]
            k0, k1 = features[i].keypoints_numpy(), features[j].keypoints_numpy()
            pose = estimate_relative_pose(k0[pair.matches[:, 0]], k1[pair.matches[:, 1]], camera, camera,
                                          backend.config.pose)
            out.append((len(pair), pose.num_inliers, pose.rotation if pose.valid or pose.rotation_valid else None))
    return out


def stop_layers(backend, frames, pairs, adaptive: bool) -> tuple[float, float]:
    """Mean stop layer and mean ms of LightGlue over ``pairs`` (features extracted beforehand)."""
    matcher = backend.matcher
    options = dict(depth_confidence=backend.config.matcher.depth_confidence,
                   width_confidence=backend.config.matcher.width_confidence) if adaptive else \
        dict(depth_confidence=-1, width_confidence=-1)
    matcher.with_options(**options)
    with torch.inference_mode():
        features = backend.extractor.extract(frames)
        for i, j in pairs:  # warm-up: pruning makes new tensor shapes, whose oneDNN kernels are built once
            matcher.match([features[i]], [features[j]])
        stops, times = [], []
        for i, j in pairs:
            t = time.perf_counter()
            pair = matcher.match([features[i]], [features[j]])[0]
            times.append(time.perf_counter() - t)
            stops.append(pair.stop_layer)
    matcher.with_options(depth_confidence=backend.config.matcher.depth_confidence,
                         width_confidence=backend.config.matcher.width_confidence)
    return float(np.mean(stops)), 1e3 * float(np.median(times))


def fmt(x, digits=1) -> str:
    if isinstance(x, str):
        return x
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=list(ALL))
    parser.add_argument("--max-keypoints", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="few frames, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = 8 if args.quick else args.frames
    _, progress, _ = common.start_report("cpu")
    print(f"max_keypoints {args.max_keypoints}, fp32, {args.threads} threads, 640x480\n")

    device, dtype = torch.device("cpu"), torch.float32
    built = {}
    for profile in args.profiles:
        progress(f"building {profile}")
        built[profile] = build(profile, device, dtype, profile_config(
            profile, **{"extractor.max_keypoints": args.max_keypoints}))

    seq = render_sequence(frames, 640, 480, motion="mixed", seed=11)
    rows = []
    for profile, backend in built.items():
        progress(f"synthetic sequence: {profile}")
        r = run_sequence(backend, seq)
        rows.append([profile, backend.weights, fmt(r["extract_ms"]), fmt(r["match_ms"]), fmt(r["pose_ms"]),
                     fmt(r["total_ms"]), fmt(r["fps"]), fmt(r["matches"], 0), fmt(r["inliers"], 0), r["valid"],
                     fmt(r["rot"], 3), fmt(r["trans"], 2), fmt(r["stop"])])
    print(f"## Synthetic 640x480 video, {frames} frames, ground truth (front-end end to end)\n")
    print(common.markdown_table(["profile", "weights", "extract ms", "match ms", "pose ms", "total ms", "frames/s",
                                 "matches", "inliers", "valid poses", "rot err deg", "transl dir err deg",
                                 "mean stop layer"], rows), "\n", flush=True)

    tum_dir = DATA / "tum_fr3_sequence"
    if tum_dir.is_dir():
        tum = read_frames(tum_dir)[: 6 if args.quick else None]
        pairs = [(i, i + 1) for i in range(len(tum) - 1)]
        progress("TUM frames: sift reference")
        sift = built.get("sift_nn") or build("sift_nn", device, dtype, profile_config("sift_nn"))
        reference = pair_rotations(sift, tum, TUM, pairs)
        rows = []
        for profile, backend in built.items():
            progress(f"TUM frames: {profile}")
            got = pair_rotations(backend, tum, TUM, pairs)
            diffs = [rotation_angle_deg(a[2], b[2]) for a, b in zip(got, reference)
                     if a[2] is not None and b[2] is not None]
            rows.append([profile, backend.weights, fmt(np.mean([g[0] for g in got]), 0),
                         fmt(np.mean([g[1] for g in got]), 0), f"{sum(g[2] is not None for g in got)}/{len(got)}",
                         fmt(float(np.median(diffs)) if diffs else float("nan"), 2)])
        print(f"## TUM fr3 frames (real, 1 s apart), {len(pairs)} consecutive pairs\n")
        print(common.markdown_table(["profile", "weights", "matches", "inliers", "poses",
                                     "median rotation diff to SIFT deg"], rows), "\n", flush=True)

    icl_dir = DATA / "icl_nuim_snippet"
    lightglue = {p: b for p, b in built.items() if b.config.matcher.type == "lightglue"}
    if icl_dir.is_dir() and lightglue:
        icl = read_frames(icl_dir)[: 14 if args.quick else None]
        easy = [(i, i + 1) for i in range(len(icl) - 1)]
        hard = [(i, i + 12) for i in range(len(icl) - 12)]
        rows = []
        for profile, backend in lightglue.items():
            progress(f"LightGlue adaptivity: {profile}")
            on_easy, t_on_easy = stop_layers(backend, icl, easy, adaptive=True)
            _, t_off_easy = stop_layers(backend, icl, easy, adaptive=False)
            on_hard, t_on_hard = stop_layers(backend, icl, hard, adaptive=True)
            _, t_off_hard = stop_layers(backend, icl, hard, adaptive=False)
            rows.append([profile, backend.weights, fmt(on_easy, 2), fmt(t_on_easy), fmt(t_off_easy),
                         fmt(t_off_easy / t_on_easy, 2), fmt(on_hard, 2), fmt(t_on_hard), fmt(t_off_hard),
                         fmt(t_off_hard / t_on_hard, 2)])
        print("## LightGlue adaptive depth/width with trained weights (ICL-NUIM: consecutive vs i→i+12)\n")
        print(common.markdown_table(["profile", "weights", "stop layer easy", "ms on", "ms off", "speed-up",
                                     "stop layer wide", "ms on", "ms off", "speed-up"], rows), "\n", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Front-end stream benchmark (issue "front-end"): our pipeline vs the naive transformers way.

A synthetic 640x480 sequence (glue_ros.synthetic.render_sequence, rendered frame by frame, untimed)
goes through

* ours: ``FrontEnd`` (SuperPoint + LightGlue, identical random weights, 1024 keypoints) in each
  precision asked for (default fp32 and, on CPUs with bf16 units, bf16): one extraction per frame,
  features cached with the keyframe, LightGlue on cached features, relative pose;
* naive: transformers ``LightGlueForKeypointMatching.forward`` on each consecutive pair
  (frame i-1, frame i) as processor-free pixel input (gray float, 3 equal channels), which
  re-extracts both images for every pair; no pose.

The pipelines are interleaved frame by frame (rotating order) in one process, so load from other
jobs hits all of them alike. Reported: frames/s (frames / summed wall time of the per-frame calls),
per-stage ms from ``FrameResult.timings_ms`` (naive: detection time from hooks on its embedded
SuperPoint), and ours / naive ratios. Random weights make LightGlue return ~no matches, so every
frame becomes a keyframe (so ours also matches consecutive frames, like naive) and the pose stage
only sees "too few matches"; a separate probe times the pose stage on realistic correspondences.

    python bench/bench_stream.py                  # 300 frames (long: see --naive-every)
    python bench/bench_stream.py --frames 100 --naive-every 2
    python bench/bench_stream.py --quick          # 8 frames, < 2 min
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402  (sets sys.path, offline env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

WARMUP_FRAMES = 2  # frames 0 and 1 (ours) / pair (0, 1) (naive) are run but not counted


def stats(values: list[float]) -> tuple[float, float]:
    return (float(np.mean(values)), float(np.median(values))) if values else (float("nan"), float("nan"))


def pose_probe(sequence_frames: int, keypoints: np.ndarray, repeats: int, gap: int = 3,
               outlier_share: float = 0.2, noise_px: float = 0.5) -> dict:
    """Time ``estimate_relative_pose`` on correspondences a trained matcher would give: the given
    frame-0 keypoints moved to frame ``gap`` with the rendered depth and true poses, 0.5 px noise,
    20 % replaced by random outliers."""
    from glue_ros.config import PoseConfig
    from glue_ros.geometry import estimate_relative_pose
    from glue_ros.synthetic import render_sequence

    seq = render_sequence(max(sequence_frames, gap + 1), frames=(0, gap), with_depth=True)
    cam = seq.camera
    K = np.asarray(cam.K, float)
    u, v = keypoints[:, 0], keypoints[:, 1]
    z = seq.depths[0][np.clip(np.rint(v).astype(int), 0, cam.height - 1), np.clip(np.rint(u).astype(int), 0,
                                                                                     cam.width - 1)]
    ok = np.isfinite(z) & (z > 0)
    rays = np.linalg.inv(K) @ np.stack([u[ok], v[ok], np.ones(ok.sum())])
    X0 = rays * z[ok]
    T = np.linalg.inv(seq.poses[1]) @ seq.poses[0]  # cam0 -> cam1
    X1 = T[:3, :3] @ X0 + T[:3, 3:4]
    front = X1[2] > 0.05
    p1 = (K @ (X1[:, front] / X1[2, front]))[:2].T
    p0 = np.stack([u[ok], v[ok]], 1)[front]
    inside = (p1[:, 0] >= 0) & (p1[:, 0] < cam.width) & (p1[:, 1] >= 0) & (p1[:, 1] < cam.height)
    p0, p1 = p0[inside], p1[inside]
    rng = np.random.default_rng(0)
    p1 = p1 + rng.normal(0, noise_px, p1.shape)
    bad = rng.random(len(p1)) < outlier_share
    p1[bad] = rng.random((bad.sum(), 2)) * [cam.width - 1, cam.height - 1]
    times, pose = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        pose = estimate_relative_pose(p0, p1, cam, cam, PoseConfig())
        times.append(time.perf_counter() - t)
    R_true = T[:3, :3].T  # pose of cam1 in cam0 = inverse of cam0 -> cam1
    angle = float(np.degrees(np.arccos(np.clip((np.trace(pose.rotation.T @ R_true) - 1) / 2, -1, 1))))
    return {"matches": len(p0), "outliers": int(bad.sum()), "ms_median": 1e3 * float(np.median(times)),
            "valid": bool(pose.valid), "reason": pose.reason, "inliers": int(pose.num_inliers),
            "rotation_error_deg": angle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames of the sequence (default 300)")
    parser.add_argument("--keypoints", type=int, default=1024, help="max keypoints per frame (default 1024)")
    parser.add_argument("--motion", default="forward", help="synthetic motion (forward, sideways, orbit, rotation, mixed)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--precisions", default="",
                        help="ours, comma separated (default: fp32 + bf16 on CPUs with bf16 units; fp32 + fp16 on CUDA)")
    parser.add_argument("--naive-every", type=int, default=1,
                        help="run the naive pair (i-1, i) only for every N-th frame i (its cost does not depend "
                             "on history, so this samples it; default 1 = every frame)")
    parser.add_argument("--filter-threshold", type=float, default=0.1,
                        help="LightGlue filter_threshold of both pipelines (default 0.1, the config default)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")
    parser.add_argument("--quick", action="store_true", help="8 frames (smoke run, < 2 min on an idle 2-core CPU)")
    parser.add_argument("--json", help="also write per-frame numbers to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.frames = min(args.frames, 8)
    if args.frames < WARMUP_FRAMES + 1:
        parser.error(f"--frames must be at least {WARMUP_FRAMES + 1}")

    from glue_ros.config import FrontEndConfig
    from glue_ros.device import cpu_has_bf16, resolve_device
    from glue_ros.frontend import Frame, FrontEnd
    from glue_ros.synthetic import render_sequence

    device = resolve_device(args.device)
    precisions = [p for p in args.precisions.split(",") if p] or (
        ["fp32", "fp16"] if device.type == "cuda" else ["fp32"] + (["bf16"] if cpu_has_bf16() else []))
    info, progress, t_start = C.start_report(str(device))

    workdir = Path(tempfile.mkdtemp(prefix="glue_ros_stream_"))
    refs, dirs = C.build_checkpoints(workdir / "weights", kinds=("lightglue",))
    naive = refs["lightglue"].to(device).eval()
    C.set_reference_detector(naive.keypoint_detector, args.keypoints)
    naive.filter_threshold = args.filter_threshold

    pipelines: dict[str, FrontEnd] = {}
    for p in precisions:
        config = FrontEndConfig.from_flat({
            "device": str(device), "precision": p,
            "extractor.weights": str(dirs["superpoint"]), "extractor.max_keypoints": args.keypoints,
            "extractor.keypoint_threshold": 0.0,  # random weights: near-uniform scores, top-k picks the count
            "matcher.weights": str(dirs["lightglue"]), "matcher.filter_threshold": args.filter_threshold})
        pipelines[f"ours {p}"] = FrontEnd(config, on_reset=lambda reason: None)
    progress(f"pipelines {list(pipelines)} + naive; LightGlue adaptive defaults "
             f"(depth {naive.depth_confidence}, width {naive.width_confidence})")

    detect_t: list[float] = []
    naive.keypoint_detector.register_forward_pre_hook(lambda *_: detect_t.append(time.perf_counter()))
    naive.keypoint_detector.register_forward_hook(lambda *_: detect_t.append(time.perf_counter()))

    def run_naive(previous: np.ndarray, current: np.ndarray) -> dict:
        detect_t.clear()
        t = time.perf_counter()
        gray = torch.from_numpy(np.stack([C.gray_float(previous), C.gray_float(current)])).to(device)
        with torch.inference_mode():
            out = naive(gray[None, :, None].expand(1, 2, 3, *gray.shape[-2:]))
        matches = int((out.matches[0, 0] >= 0).sum())  # reads the result back (syncs on CUDA)
        total = time.perf_counter() - t
        return {"total_ms": 1e3 * total, "extract_ms": 1e3 * (detect_t[1] - detect_t[0]),
                "match_ms": 1e3 * (total - (detect_t[1] - detect_t[0])), "matches": matches}

    per_frame: dict[str, list[dict]] = {name: [] for name in [*pipelines, "naive"]}
    previous = None
    for i in range(args.frames):
        one = render_sequence(args.frames, motion=args.motion, frames=(i,))  # untimed
        image = one.images[0]
        frame = Frame(image, one.stamps_ns[0], camera=one.camera)
        jobs = [(name, fe) for name, fe in pipelines.items()]
        if previous is not None and (i < WARMUP_FRAMES or i % args.naive_every == 0):
            jobs.append(("naive", None))
        shift = i % len(jobs)
        for name, fe in jobs[shift:] + jobs[:shift]:
            if fe is None:
                record = run_naive(previous, image)
            else:
                t = time.perf_counter()
                result = fe.process(frame)
                wall = 1e3 * (time.perf_counter() - t)
                record = {"total_ms": wall, **{k: v for k, v in result.timings_ms.items() if k != "total_ms"},
                          "matches": len(result.matches[0]) if result.matches else 0,
                          "keyframe": result.keyframe.is_keyframe, "stop_layer": result.stop_layer,
                          "pose": result.pose.reason if result.pose else ""}
            record["frame"] = i
            if i >= WARMUP_FRAMES:
                per_frame[name].append(record)
        previous = image
        if i % 10 == 0 or i == args.frames - 1:
            last = {n: f"{r[-1]['total_ms']:.0f}" for n, r in per_frame.items() if r}
            progress(f"frame {i + 1}/{args.frames} ms {last}")

    # ---- pose stage on realistic correspondences
    kp = pipelines[next(iter(pipelines))].extract([render_sequence(args.frames, frames=(0,)).images[0]])[0]
    probe = pose_probe(args.frames, kp.keypoints_numpy(), repeats=5)

    # ---- report
    naive_frames = per_frame["naive"]
    naive_mean = stats([r["total_ms"] for r in naive_frames])[0]
    naive_fps = 1e3 / naive_mean
    naive_by_frame = {r["frame"]: r["total_ms"] for r in naive_frames}
    rows = []
    for name, records in per_frame.items():
        total_mean, total_median = stats([r["total_ms"] for r in records])
        stage = {s: stats([r.get(s, 0.0) for r in records]) for s in ("extract_ms", "match_ms", "pose_ms")}
        other = total_mean - sum(v[0] for v in stage.values())
        fps = 1e3 / total_mean
        paired = [naive_by_frame[r["frame"]] / r["total_ms"] for r in records if r["frame"] in naive_by_frame]
        rows.append([name, len(records), f"{fps:.2f}", f"{total_mean:.0f}", f"{total_median:.0f}",
                     *(f"{stage[s][0]:.0f}" for s in ("extract_ms", "match_ms")),
                     f"{stage['pose_ms'][0]:.1f}" if name != "naive" else "-", f"{max(other, 0.0):.1f}",
                     f"{fps / naive_fps:.2f}" if name != "naive" else "1.00",
                     f"{np.median(paired):.2f}" if paired and name != "naive" else "-"])
    counted = args.frames - WARMUP_FRAMES
    print(f"## Stream: {args.frames} frames {args.motion} 640x480, {args.keypoints} keypoints, device {device}, "
          f"{torch.get_num_threads()} torch threads; first {WARMUP_FRAMES} frames not counted; naive measured on "
          f"{len(naive_frames)} of the {counted} counted frames (every {args.naive_every})\n")
    print(C.markdown_table(["pipeline", "frames", "frames/s", "ms/frame mean", "ms/frame median", "extract ms",
                            "match ms", "pose ms", "other ms", "speed-up vs naive (fps ratio)",
                            "speed-up, median per-frame paired"], rows))
    for name in pipelines:
        records = per_frame[name]
        keyframes = sum(r["keyframe"] for r in records)
        stops = sorted({r["stop_layer"] for r in records})
        poses = sorted({r["pose"] for r in records})
        print(f"\n{name}: keyframes {keyframes}/{len(records)}, mean matches "
              f"{np.mean([r['matches'] for r in records]):.1f}, LightGlue stop layers {stops}, pose outcomes {poses}")
    print(f"naive: mean matches {np.mean([r['matches'] for r in naive_frames]):.1f}")
    print(f"\nPose stage on realistic correspondences (frame 0 -> 3, {probe['matches']} matches, "
          f"{probe['outliers']} outliers, 0.5 px noise): {probe['ms_median']:.1f} ms median, valid {probe['valid']} "
          f"({probe['reason']}, {probe['inliers']} inliers, rotation error {probe['rotation_error_deg']:.3f} deg)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "per_frame": per_frame,
                                               "pose_probe": probe}, indent=1, default=str))


if __name__ == "__main__":
    main()

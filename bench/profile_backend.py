"""Where the time goes: torch.profiler over one backend's model path (extract + match vs the previous frame).

    python bench/profile_backend.py --profile xfeat_lighterglue --max-keypoints 512 [--device cuda]
                                    [--precision fp16] [--threads 2] [--frames 12] [--rows 25]

Prints the operators sorted by self time (CPU; and by self CUDA time on a GPU), the share of the wall
time spent inside profiled operators vs in Python between them, and extraction / matching wall ms.
Profile before optimising (issue #11): run it before and after a change, on the same machine.
"""
from __future__ import annotations

import argparse
import time

import common
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from backends import build, profile_config
from glue_ros.device import DeviceError, resolve_device, resolve_dtype
from glue_ros.synthetic import render_sequence


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="xfeat_lighterglue")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.precision, device)
    except DeviceError as exc:
        print(f"error: {exc}")
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    common.start_report(str(device))
    backend = build(args.profile, device, dtype, profile_config(
        args.profile, str(device), args.precision, **{"extractor.max_keypoints": args.max_keypoints}))
    frames = render_sequence(args.frames + 3, 640, 480, motion="forward", seed=5).images

    def step(previous, image):
        with record_function("extract"):
            current = backend.extractor.extract([image])[0]
        with record_function("match"):
            pair = backend.matcher.match([previous], [current])[0]
        return current, pair

    with torch.inference_mode():
        previous = backend.extractor.extract([frames[0]])[0]
        for image in frames[1:3]:  # warm-up: allocator, oneDNN / cuDNN kernel choice
            previous, _ = step(previous, image)
        common.sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        extract_ms, match_ms, stops = [], [], []
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for image in frames[3:]:
                t = time.perf_counter()
                current = backend.extractor.extract([image])[0]
                common.sync(device)
                t_mid = time.perf_counter()
                pair = backend.matcher.match([previous], [current])[0]
                common.sync(device)
                extract_ms.append(1e3 * (t_mid - t))
                match_ms.append(1e3 * (time.perf_counter() - t_mid))
                stops.append(pair.stop_layer)
                previous = current
            wall = time.perf_counter() - t0
    events = prof.key_averages()
    top_level_cpu = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"## {args.profile} on {device} {args.precision}, {args.max_keypoints} keypoints, "
          f"{args.frames} frames 640x480\n")
    print(f"extract {np.median(extract_ms):.1f} ms, match {np.median(match_ms):.1f} ms (medians, profiler on); "
          f"mean stop layer {np.mean(stops):.2f}; operators' self CPU time {top_level_cpu:.2f} s of "
          f"{wall:.2f} s wall ({100 * top_level_cpu / wall:.0f} %; the rest is Python and the profiler)\n")
    print("### by self CPU time\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=48))
    if device.type == "cuda":
        print("### by self CUDA time\n")
        print(events.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=48))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Memory per backend: resident set (RSS) of a process running the front-end, for every profile.

Each (profile, keypoints) cell runs in a fresh subprocess (a process' peak is for its lifetime, and
one backend's freed memory would hide the next one's), on the CPU in fp32:

1. import torch and glue_ros, render --frames synthetic frames (WxH, sideways motion): *after import*
   (the baseline: interpreter, torch, glue_ros, the frames);
2. build the profile's extractor and matcher (real packaged weights; SuperPoint profiles from the hub
   cache, else random weights, as bench/backends.py does, with keypoint_threshold 0 so they keep
   exactly K keypoints): *after model load*, and *peak while loading* (VmHWM so far: weight files,
   state-dict copies);
3. the kernel's high-water mark is reset to the current RSS (common.cpu_peak_delta; where
   /proc/self/clear_refs is not writable the column is the lifetime peak, ``peak_method`` says which)
   and the frames go through ``glue_ros.frontend.FrontEnd`` (extract, match against the newest
   keyframe, pose, tracks, keyframe policy): *peak over frames* (VmHWM) and *after frames* (VmRSS).

The subprocess runs with the environment of this one (glibc's default malloc tuning, torch's default
threads unless --threads), i.e. as the node would run. MiB = 2^20 bytes.

    python bench/bench_memory.py                          # every profile, 1024 keypoints, 20 frames 640x480
    python bench/bench_memory.py --keypoints 512,1024 --json out/memory.json
    python bench/bench_memory.py --quick                  # orb_nn + xfeat_lighterglue, 160x120, 5 frames
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sys.path and offline hub environment first)
from soak import proc_status

QUICK_PROFILES = ("orb_nn", "xfeat_lighterglue")


def _mib(kib: int) -> float:
    return kib / 1024


# =============================================================================== worker (fresh process)


def worker(profile: str, keypoints: int, width: int, height: int, frames: int, threads: int, out: str) -> int:
    import gc

    import numpy as np
    import torch

    from backends import build, profile_config
    from glue_ros.frontend import Frame, FrontEnd
    from glue_ros.synthetic import render_sequence

    if threads > 0:
        torch.set_num_threads(threads)
    seq = render_sequence(frames, width, height, motion="sideways", speed=1.0, seed=5)
    gc.collect()
    baseline = proc_status()

    overrides = {"extractor.max_keypoints": keypoints}
    if random_superpoint(profile):
        overrides["extractor.keypoint_threshold"] = 0.0  # near-uniform random scores: exactly K keypoints
    backend = build(profile, torch.device("cpu"), torch.float32, profile_config(profile, "cpu", "fp32", **overrides))
    frontend = FrontEnd(backend.config, extractor=backend.extractor, matcher=backend.matcher)
    gc.collect()
    loaded = proc_status()

    results = []

    def run() -> None:
        for image, stamp in zip(seq.images, seq.stamps_ns):
            results.append(frontend.process(Frame(image, stamp, "camera", seq.camera)))

    # resets VmHWM to the current RSS first (where the kernel allows; else it stays the lifetime peak)
    _, method = common.cpu_peak_delta(run)
    end = proc_status()
    keypoints_mean = float(np.mean([len(r.keypoints) for r in results])) if results else 0.0
    # median: the first frames carry one-off costs (allocator, OpenMP pool, lazy init)
    ms_per_frame = float(np.median([r.timings_ms.get("total_ms", np.nan) for r in results])) if results else np.nan
    classical = backend.config.extractor.type in ("orb", "sift")
    Path(out).write_text(json.dumps({
        "profile": profile, "keypoints": keypoints,
        "weights": "none (OpenCV)" if classical else "random (hub weights not cached)"
        if backend.weights.startswith("random") else backend.weights,
        "size": [width, height], "frames": len(results), "keypoints_mean": keypoints_mean, "ms_per_frame": ms_per_frame,
        "threads": torch.get_num_threads(),
        "rss_import_mib": _mib(baseline["VmRSS"]), "rss_loaded_mib": _mib(loaded["VmRSS"]),
        "peak_loading_mib": _mib(loaded["VmHWM"]),
        "peak_frames_mib": _mib(end["VmHWM"]),
        "rss_end_mib": _mib(end["VmRSS"]), "peak_method": method,
    }))
    return 0


def random_superpoint(profile: str) -> bool:
    """A SuperPoint profile whose hub weights are not cached (bench/backends.py then uses random weights)."""
    from glue_ros.config import load_config
    from glue_ros.models.weights import WeightsError, check_available

    flat = load_config(profile=profile)
    if flat["extractor.type"] != "superpoint":
        return False
    try:
        check_available(flat)
        return False
    except WeightsError:
        return True


# =============================================================================== driver


def measure(profile: str, keypoints: int, args) -> dict:
    """One cell in a fresh subprocess; a failed cell is a row with its error (first line)."""
    with tempfile.TemporaryDirectory(prefix="glue_ros_memory_") as tmp:
        out = Path(tmp) / "cell.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", profile, str(keypoints),
                   str(args.width), str(args.height), str(args.frames), str(args.threads), str(out)]
        start = time.monotonic()
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=common.ROOT)
        except subprocess.TimeoutExpired:
            return {"profile": profile, "keypoints": keypoints, "error": f"timed out after {args.timeout:.0f} s"}
        if run.returncode != 0 or not out.exists():
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            return {"profile": profile, "keypoints": keypoints,
                    "error": f"exit code {run.returncode}: {lines[-1] if lines else 'no output'}"}
        cell = json.loads(out.read_text())
        cell["wall_s"] = time.monotonic() - start
        return cell


def table(cells: list[dict]) -> str:
    headers = ["profile", "weights", "K", "keypoints/frame", "ms/frame (median)", "RSS after import",
               "after model load", "peak while loading", "peak over frames", "after frames", "peak (VmHWM)",
               "model (load - import)"]
    rows = []
    for c in cells:
        if "error" in c:
            rows.append([c["profile"], "-", c["keypoints"], f"error: {c['error']}"] + ["-"] * (len(headers) - 4))
            continue
        rows.append([c["profile"], c["weights"], c["keypoints"], f"{c['keypoints_mean']:.0f}",
                     f"{c['ms_per_frame']:.0f}", f"{c['rss_import_mib']:.0f}", f"{c['rss_loaded_mib']:.0f}",
                     f"{c['peak_loading_mib']:.0f}",
                     f"{c['peak_frames_mib']:.0f}", f"{c['rss_end_mib']:.0f}",
                     f"{max(c['peak_loading_mib'], c['peak_frames_mib']):.0f}",
                     f"{c['rss_loaded_mib'] - c['rss_import_mib']:+.0f}"])
    return common.markdown_table(headers, rows)


def parse_keypoints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"keypoint counts must be >= 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        profile, keypoints, width, height, frames, threads, out = argv[1:8]
        return worker(profile, int(keypoints), int(width), int(height), int(frames), int(threads), out)
    from glue_ros.config import PROFILES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=None, help=f"comma-separated subset of {', '.join(PROFILES)}")
    parser.add_argument("--keypoints", type=parse_keypoints, default=None,
                        help="comma-separated extractor.max_keypoints values (default 1024; --quick 256)")
    parser.add_argument("--frames", type=int, default=None, help="frames per cell (default 20; --quick 5)")
    parser.add_argument("--width", type=int, default=None, help="frame width (default 640; --quick 160)")
    parser.add_argument("--height", type=int, default=None, help="frame height (default 480; --quick 120)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the cells (default: torch's; --quick 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per cell")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: orb_nn + xfeat_lighterglue, small")
    parser.add_argument("--json", help="also write the cells (and the machine) here")
    args = parser.parse_args(argv)
    quick = args.quick
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()] if args.profiles else \
        list(QUICK_PROFILES if quick else PROFILES)
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or not profiles:
        parser.error(f"unknown profile(s): {', '.join(unknown) or '(none given)'}; profiles: {', '.join(PROFILES)}")
    keypoints = args.keypoints or [256 if quick else 1024]
    args.frames = args.frames if args.frames is not None else (5 if quick else 20)
    args.width = args.width if args.width is not None else (160 if quick else 640)
    args.height = args.height if args.height is not None else (120 if quick else 480)
    for name in ("frames", "width", "height"):
        if getattr(args, name) < 2:
            parser.error(f"--{name} must be >= 2, got {getattr(args, name)}")
    # --quick: one thread, as 2-thread OpenMP stalls on a loaded 2-core machine (bench/README.md)
    args.threads = args.threads if args.threads is not None else (1 if quick else 0)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")

    info, progress, _ = common.start_report("cpu")
    print(f"RSS in MiB, fp32 on the CPU, {args.frames} frames {args.width}x{args.height} per cell through "
          f"FrontEnd, a fresh process per cell, torch threads {args.threads or 'default'}\n", flush=True)
    cells = []
    for profile in profiles:
        for k in keypoints:
            progress(f"{profile}, {k} keypoints")
            cells.append(measure(profile, k, args))
            if "error" in cells[-1]:
                progress(f"  {cells[-1]['error']}")
    print(table(cells), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "size": [args.width, args.height],
                                               "frames": args.frames, "cells": cells}, indent=1))
    return 1 if any("error" in c for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())

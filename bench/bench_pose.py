#!/usr/bin/env python
"""Pose-step benchmark (issue 11, target 3): ``estimate_relative_pose`` old vs new, speed and accuracy.

Inputs: exact synthetic correspondences from :mod:`glue_ros.synthetic` (rendered depth + true poses
of 640x480 frames, motions forward / sideways / mixed / orbit), ``--noise`` px Gaussian noise on
both images and a ``--outliers`` share replaced by random pixels, at ``--sizes`` correspondences.
Each size draws its points from the same pairs, so rows differ only in N.

Two implementations run side by side in one process: *new* = the working tree's
``glue_ros/geometry.py``, *old* = ``glue_ros/geometry.py`` at ``--old`` (a git revision, default
HEAD, loaded from ``git show`` into a private module) or ``--old-file``. Every repeat calls each
implementation once per pair in a rotating order (shared-machine load hits both alike); ratios
are medians of the per-call paired ratios new/old (< 1 = new faster). Both wall time
(``perf_counter``) and CPU time of the process (``process_time``: all threads, not inflated by
other jobs preempting us) are reported.

Stages: a separate instrumented pass wraps the stage functions of each module (undistort =
``normalize_points``; essential = ``_essential``: hypothesis search, local optimisation (new),
decomposition + cheirality / ``recoverPose`` (old); rotation test = ``_fit_rotation``; refine =
``_refine``/``_classify`` (old), ``_refine_and_classify`` (new); covariance =
``_pose_covariance``/``_rotation_covariance``; nested calls count once, for the outermost stage);
"other" = total - stages (bookkeeping in ``_estimate``). CPU ms, medians over calls.

Accuracy (deterministic, one call per pair): rotation error, translation-direction error (deg),
inliers, recall of the true inliers, share of the outliers accepted, reasons, and the predicted
rotation standard deviation from the covariance. Extra cases: pure rotation (must say
``pure_rotation``), low parallax (1-frame gaps) and ``--orb-repro`` (ORB 600 keypoints on
``render_sequence(12, 320, 240, motion="sideways", speed=1.5, seed=4)``, the translation flips).

    python bench/bench_pose.py                   # sizes 250,500,1000,2000, 8 pairs, 7 repeats
    python bench/bench_pose.py --quick           # smoke run
    python bench/bench_pose.py --profile 1000    # + cProfile of the new implementation at N=1000
    python bench/bench_pose.py --old-file /tmp/geometry_v1.py --orb-repro
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402  (sets sys.path, offline env)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from glue_ros import geometry as NEW  # noqa: E402
from glue_ros.config import PoseConfig  # noqa: E402

#: (motion, frame i, frame j, speed) of the timed pairs: median true displacement ~8-40 px.
PAIRS = [("forward", 0, 8, 1.0), ("sideways", 0, 6, 1.0), ("mixed", 3, 11, 1.0), ("orbit", 0, 16, 1.0),
         ("forward", 20, 32, 1.0), ("sideways", 10, 20, 1.0), ("mixed", 30, 36, 1.0), ("orbit", 20, 32, 1.0)]
#: Extra accuracy-only cases: pure rotation (expected ``pure_rotation``) and 1-frame gaps (2-6 px).
ROTATION_PAIRS = [("rotation", 0, 4, 1.0), ("rotation", 10, 16, 1.0)]
LOW_PARALLAX_PAIRS = [("sideways", 0, 1, 1.0), ("forward", 0, 1, 1.0), ("mixed", 5, 6, 1.0), ("sideways", 4, 5, 1.5)]

STAGES = {
    "undistort": ("normalize_points",),
    "essential": ("_essential",),
    "rotation test": ("_fit_rotation",),
    "refine": ("_refine", "_classify", "_refine_and_classify"),
    "covariance": ("_pose_covariance", "_rotation_covariance"),
}


# --------------------------------------------------------------------------- implementations


def load_old(revision: str | None, path: str | None):
    """geometry.py of a git revision (or a file) as module ``glue_ros._geometry_old``."""
    if path:
        source, origin = Path(path).read_text(), path
    else:
        source = subprocess.run(["git", "show", f"{revision}:glue_ros/geometry.py"], cwd=C.ROOT, check=True,
                                capture_output=True, text=True).stdout
        origin = f"{revision}:glue_ros/geometry.py"
    tmp = Path(tempfile.mkdtemp(prefix="bench_pose_")) / "geometry_old.py"
    tmp.write_text(source)
    spec = importlib.util.spec_from_file_location("glue_ros._geometry_old", tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module, origin


class StageTimer:
    """Wraps a module's stage functions (by name) to accumulate CPU time per stage; only the
    outermost instrumented call is timed."""

    def __init__(self, module):
        self.module = module
        self.depth = 0
        self.acc: Counter = Counter()
        self.originals = {}

    def _wrap(self, stage, fn):
        def wrapper(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.acc[stage] += time.process_time() - t
                self.depth -= 1
        return wrapper

    def __enter__(self):
        for stage, names in STAGES.items():
            for name in names:
                fn = getattr(self.module, name, None)
                if callable(fn):
                    self.originals[name] = fn
                    setattr(self.module, name, self._wrap(stage, fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self.originals.items():
            setattr(self.module, name, fn)

    def take(self) -> dict[str, float]:
        out, self.acc = dict(self.acc), Counter()
        return out


# --------------------------------------------------------------------------- inputs


class PairSource:
    """Rendered depth + true relative pose of one frame pair; draws correspondences of any size."""

    def __init__(self, motion: str, i: int, j: int, speed: float):
        from glue_ros.synthetic import render_sequence

        seq = render_sequence(j + 1, motion=motion, speed=speed, frames=(i, j), with_depth=True, noise_std=0)
        self.name = f"{motion}{'' if speed == 1 else f'x{speed:g}'} {i}-{j}"
        self.camera = seq.camera
        self.depth = seq.depths[0]
        self.T_1_0 = np.linalg.inv(seq.poses[1]) @ seq.poses[0]  # keyframe camera -> current camera
        self.R, self.t = seq.relative_pose(0, 1)  # glue_ros convention (X_kf = R X_cur + t), unit t

    def draw(self, n: int, outlier_share: float, noise_px: float, seed: int):
        """(p0, p1, is_outlier) with n rows; inliers are true projections + noise."""
        cam, K = self.camera, self.camera.K
        rng = np.random.default_rng(seed)
        keep0, keep1 = [], []
        n_in = n - int(round(outlier_share * n))
        while sum(len(k) for k in keep0) < n_in:
            u = rng.uniform(0, cam.width - 1, 4 * n)
            v = rng.uniform(0, cam.height - 1, 4 * n)
            z = self.depth[np.rint(v).astype(int), np.rint(u).astype(int)]
            ok = np.isfinite(z) & (z > 0.1)
            X0 = (np.linalg.inv(K) @ np.stack([u[ok], v[ok], np.ones(ok.sum())])) * z[ok]
            X1 = self.T_1_0[:3, :3] @ X0 + self.T_1_0[:3, 3:4]
            front = X1[2] > 0.1
            p1 = (K @ (X1[:, front] / X1[2, front]))[:2].T
            p0 = np.stack([u[ok], v[ok]], 1)[front]
            inside = (p1[:, 0] >= 0) & (p1[:, 0] <= cam.width - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= cam.height - 1)
            keep0.append(p0[inside])
            keep1.append(p1[inside])
        p0 = np.concatenate(keep0)[:n_in]
        p1 = np.concatenate(keep1)[:n_in]
        p0 = p0 + rng.normal(0, noise_px, p0.shape)
        p1 = p1 + rng.normal(0, noise_px, p1.shape)
        n_out = n - n_in
        o0 = rng.uniform((0, 0), (cam.width - 1, cam.height - 1), (n_out, 2))
        o1 = rng.uniform((0, 0), (cam.width - 1, cam.height - 1), (n_out, 2))
        bad = np.r_[np.zeros(n_in, bool), np.ones(n_out, bool)]
        order = rng.permutation(n)
        return np.r_[p0, o0][order], np.r_[p1, o1][order], bad[order]


def accuracy(pose, src: PairSource, bad: np.ndarray) -> dict:
    rot_sd = float(np.degrees(np.sqrt(max(np.trace(pose.covariance[3:, 3:]), 0.0))))
    good = ~bad
    return {
        "valid": bool(pose.valid), "reason": pose.reason, "rotation_valid": bool(pose.rotation_valid),
        "rot_err": NEW.rotation_angle_deg(pose.rotation, src.R),
        "trans_err": NEW.translation_angle_deg(pose.translation, src.t) if pose.valid else float("nan"),
        "inliers": int(pose.num_inliers),
        "recall": float(pose.inliers[good].mean()) if good.any() and len(pose.inliers) else float("nan"),
        "outliers_accepted": float(pose.inliers[bad].mean()) if bad.any() and len(pose.inliers) else float("nan"),
        "rot_sd": rot_sd, "parallax_px": float(pose.parallax_px),
    }


# --------------------------------------------------------------------------- runs


def time_pairs(impls: dict, inputs: list, config: PoseConfig, repeats: int, warmup: int = 1):
    """{impl: {"wall": [...], "cpu": [...]}} per call (pairs x repeats), interleaved."""
    names = list(impls)
    out = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(warmup + repeats):
        for k, (src, p0, p1, _) in enumerate(inputs):
            shift = (r + k) % len(names)
            for name in names[shift:] + names[:shift]:
                fn = impls[name].estimate_relative_pose
                w, c = time.perf_counter(), time.process_time()
                fn(p0, p1, src.camera, src.camera, config)
                c, w = time.process_time() - c, time.perf_counter() - w
                if r >= warmup:
                    out[name]["wall"].append(w)
                    out[name]["cpu"].append(c)
    return out


def stage_pass(module, inputs: list, config: PoseConfig, repeats: int) -> dict[str, float]:
    """Median CPU ms per stage (and total) over pairs x repeats."""
    per_call: list[dict[str, float]] = []
    with StageTimer(module) as timer:
        for _ in range(repeats):
            for src, p0, p1, _ in inputs:
                c = time.process_time()
                module.estimate_relative_pose(p0, p1, src.camera, src.camera, config)
                total = time.process_time() - c
                stages = timer.take()
                stages["total"] = total
                stages["other"] = total - sum(v for k, v in stages.items() if k != "total")
                per_call.append(stages)
    keys = [*STAGES, "other", "total"]
    return {k: 1e3 * float(np.median([d.get(k, 0.0) for d in per_call])) for k in keys}


def fmt(x: float, digits: int = 2) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def summarize_accuracy(rows: list[dict]) -> list[str]:
    valid = [r for r in rows if r["valid"]]
    rot = [r["rot_err"] for r in valid]
    trans = [r["trans_err"] for r in valid]
    return [f"{len(valid)}/{len(rows)}", fmt(np.median(rot) if rot else np.nan, 3), fmt(max(rot) if rot else np.nan, 3),
            fmt(np.median(trans) if trans else np.nan, 2), fmt(max(trans) if trans else np.nan, 2),
            fmt(np.median([r["inliers"] for r in rows]), 0), fmt(np.mean([r["recall"] for r in rows]), 3),
            fmt(np.mean([r["outliers_accepted"] for r in rows]), 4),
            fmt(np.median([r["rot_sd"] for r in valid]) if valid else np.nan, 3)]


ACC_HEADERS = ["valid", "rot err med", "rot err max", "trans err med", "trans err max", "inliers med",
               "inlier recall", "outliers accepted", "pred. rot sd med"]


def orb_repro(impls: dict, config: PoseConfig) -> list[list[str]]:
    from glue_ros.classical import ClassicalExtractor, NearestNeighborMatcher
    from glue_ros.synthetic import render_sequence

    seq = render_sequence(12, 320, 240, motion="sideways", speed=1.5, seed=4)
    feats = ClassicalExtractor("orb", 600).extract(seq.images)
    matcher = NearestNeighborMatcher(0.8)  # matcher.ratio_test default
    rows = []
    for i in range(len(seq) - 1):
        for j in range(i + 1, min(i + 4, len(seq))):
            m = matcher.match([feats[i]], [feats[j]])[0]
            k0 = feats[i].keypoints_numpy()[m.matches[:, 0]]
            k1 = feats[j].keypoints_numpy()[m.matches[:, 1]]
            R, t = seq.relative_pose(i, j)
            row = [f"({i},{j})", len(k0)]
            for name, impl in impls.items():
                pose = impl.estimate_relative_pose(k0, k1, seq.camera, seq.camera, config)
                terr = NEW.translation_angle_deg(pose.translation, t) if pose.valid else float("nan")
                row.append(f"{pose.reason} {pose.num_inliers} R {NEW.rotation_angle_deg(pose.rotation, R):.2f} "
                           f"t {fmt(terr, 1)}")
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250,500,1000,2000")
    parser.add_argument("--pairs", type=int, default=len(PAIRS), help=f"timed pairs (1-{len(PAIRS)})")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per pair and implementation")
    parser.add_argument("--stage-repeats", type=int, default=3, help="instrumented calls per pair (stage table)")
    parser.add_argument("--outliers", type=float, default=0.25)
    parser.add_argument("--noise", type=float, default=0.5, help="pixel noise std on both images")
    parser.add_argument("--method", default="magsac", choices=("magsac", "ransac", "both"))
    parser.add_argument("--old", default="HEAD", help="git revision of the old geometry.py (default HEAD)")
    parser.add_argument("--old-file", help="old geometry.py from a file instead of git")
    parser.add_argument("--no-old", action="store_true", help="only the working tree")
    parser.add_argument("--cv-threads", type=int, default=-1, help="cv2.setNumThreads (default: leave OpenCV's)")
    parser.add_argument("--profile", type=int, default=0, help="cProfile the new implementation at this N")
    parser.add_argument("--orb-repro", action="store_true", help="ORB low-parallax translation flips, old vs new")
    parser.add_argument("--special-seeds", type=int, default=6, help="draws per special case (pure rotation, "
                        "low parallax)")
    parser.add_argument("--quick", action="store_true", help="sizes 250,1000, 3 pairs, 3 repeats")
    parser.add_argument("--json", help="also write raw numbers to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.pairs, args.repeats, args.stage_repeats, args.special_seeds = "250,1000", 3, 3, 1, 2
    if args.cv_threads >= 0:
        cv2.setNumThreads(args.cv_threads)
    sizes = [int(s) for s in args.sizes.split(",") if s]

    info, progress, t_start = C.start_report("cpu")
    impls = {}
    if not args.no_old:
        old, origin = load_old(args.old, args.old_file)
        impls["old"] = old
    else:
        origin = "-"
    impls["new"] = NEW
    print(C.markdown_kv({"opencv": f"{cv2.__version__} ({cv2.getNumThreads()} threads)", "numpy": np.__version__,
                         "old": origin, "new": "working tree glue_ros/geometry.py",
                         "inputs": f"{args.outliers:.0%} outliers, {args.noise} px noise, 640x480 f=500"}), "\n")

    progress("rendering pairs")
    sources = [PairSource(*p) for p in PAIRS[:max(1, min(args.pairs, len(PAIRS)))]]
    methods = ["magsac", "ransac"] if args.method == "both" else [args.method]
    report: dict = {"machine": info, "args": vars(args), "old": origin, "results": []}
    for method in methods:
        config = PoseConfig(method=method)
        time_rows, stage_rows, acc_rows = [], [], []
        for n in sizes:
            inputs = [(src, *src.draw(n, args.outliers, args.noise, seed=1000 * k + n))
                      for k, src in enumerate(sources)]
            progress(f"{method} N={n}: timing {len(inputs)} pairs x {args.repeats}")
            times = time_pairs(impls, inputs, config, args.repeats)
            stages = {name: stage_pass(mod, inputs, config, args.stage_repeats) for name, mod in impls.items()}
            acc = {name: [accuracy(mod.estimate_relative_pose(p0, p1, src.camera, src.camera, config), src, bad)
                          for src, p0, p1, bad in inputs] for name, mod in impls.items()}
            row = [n]
            for name in impls:
                row += [C.ms(C.median(times[name]["wall"])), C.ms(C.median(times[name]["cpu"]))]
            if "old" in impls:
                row += [C.ratio(C.paired_ratio(times["new"]["wall"], times["old"]["wall"])),
                        C.ratio(C.paired_ratio(times["new"]["cpu"], times["old"]["cpu"]))]
            time_rows.append(row)
            for name in impls:
                stage_rows.append([n, name, *(fmt(stages[name][k]) for k in [*STAGES, "other", "total"])])
                acc_rows.append([n, name, *summarize_accuracy(acc[name])])
            report["results"].append({"method": method, "n": n, "times": times, "stages": stages, "accuracy": acc,
                                      "pairs": [s.name for s in sources]})
            if args.profile == n:
                pr = cProfile.Profile()
                pr.enable()
                for _ in range(5):
                    for src, p0, p1, _ in inputs:
                        NEW.estimate_relative_pose(p0, p1, src.camera, src.camera, config)
                pr.disable()
                buf = io.StringIO()
                pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(20)
                profile_text = buf.getvalue()
        headers = ["N"]
        for name in impls:
            headers += [f"{name} wall ms", f"{name} CPU ms"]
        if "old" in impls:
            headers += ["new/old wall", "new/old CPU"]
        print(f"## Time per call, method {method} ({len(sources)} pairs x {args.repeats} repeats, medians; "
              f"ratios = median of paired new/old)\n")
        print(C.markdown_table(headers, time_rows), "\n")
        print(f"## Stages, method {method} (CPU ms, median per call, instrumented pass)\n")
        print(C.markdown_table(["N", "impl", *STAGES, "other", "total"], stage_rows), "\n")
        print(f"## Accuracy, method {method} (deg; errors over valid poses; one call per pair)\n")
        print(C.markdown_table(["N", "impl", *ACC_HEADERS], acc_rows), "\n")
        if args.profile in sizes:
            print(f"## cProfile, new, N={args.profile}, method {method} (tottime)\n\n```\n{profile_text}```\n")

    # ---- special cases (accuracy / outcome only), default method
    config = PoseConfig(method=methods[0])
    progress("special cases")
    rows = []
    for kind, pairs in (("pure rotation", ROTATION_PAIRS), ("low parallax", LOW_PARALLAX_PAIRS)):
        for spec in pairs:
            src = PairSource(*spec)
            draws = [src.draw(1000, args.outliers, args.noise, seed=7 + k) for k in range(args.special_seeds)]
            true_disp = np.median([np.median(np.linalg.norm((p1 - p0)[~bad], axis=1)) for p0, p1, bad in draws])
            row = [kind, src.name, fmt(true_disp, 1)]
            for name, mod in impls.items():
                acc = [accuracy(mod.estimate_relative_pose(p0, p1, src.camera, src.camera, config), src, bad)
                       for p0, p1, bad in draws]
                reasons = Counter(a["reason"] for a in acc)
                trans = [a["trans_err"] for a in acc if a["valid"]]
                rot = [a["rot_err"] for a in acc if a["rotation_valid"]]
                row.append(", ".join(f"{r} {c}" for r, c in reasons.most_common())
                           + f" / R {fmt(np.median(rot) if rot else np.nan, 3)}"
                           + (f" / t {fmt(np.median(trans), 1)} ({fmt(max(trans), 1)})" if trans else ""))
            rows.append(row)
    print(f"## Special cases (1000 correspondences, {args.special_seeds} draws each: reasons / median rotation "
          f"error / median (max) translation error of the valid poses, deg)\n")
    print(C.markdown_table(["case", "pair", "true median disp px", *impls], rows), "\n")
    if args.orb_repro:
        progress("ORB repro")
        print("## ORB 600, 320x240 sideways x1.5 seed 4, ratio 0.8 (reason inliers, R / t error deg)\n")
        print(C.markdown_table(["pair", "matches", *impls], orb_repro(impls, config)), "\n")

    print(f"total {time.perf_counter() - t_start:.0f} s; load average at end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

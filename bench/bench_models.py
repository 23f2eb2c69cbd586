#!/usr/bin/env python
"""Model benchmark (issue "models"): our SuperPoint / LightGlue / SuperGlue vs transformers.

On one 640x480 synthetic pair (glue_ros.synthetic.render_sequence) and identical random weights
(test/checkpoints.py; no weights can be downloaded), for each keypoint budget K (top-k with
keypoint_threshold 0, because random-weight SuperPoint scores are nearly uniform):

* SuperPoint ms/frame: ours ``extract`` vs ``SuperPointForKeypointDetection`` on the same float gray
  image (no processor, no resizing).
* LightGlue ms/pair, adaptive depth+width off and on: ours ``match`` (cached features in, PairMatches
  out) vs transformers' internal ``_match_image_pair`` on the same precomputed keypoints/descriptors.
* SuperGlue ms/pair (Sinkhorn iterations --sinkhorn): ours ``match`` vs ``_match_image_pair``.
* End-to-end for context: transformers ``forward(pixel_values)`` (re-extracts both images) vs ours
  ``extract([img0, img1])`` + ``match``.
* Peak memory per call (fresh subprocess per measurement, see common.cpu_peak_delta).
* Agreement of each lower precision (bf16 on CPU with bf16 units; fp16/bf16 on CUDA) with our fp32:
  identical keypoints (SuperPoint) and identical matches (matchers, on the same fp32 features);
  plus ours-fp32 vs transformers as a sanity check that both sides do the same work.

Ours and the reference are timed interleaved (rotating order each round) in one process; ratios are
ours / transformers (< 1 = ours faster), medians of per-round ratios.

    python bench/bench_models.py            # full: K = 512, 1024, 2048
    python bench/bench_models.py --quick    # smoke run, < 2 min on an idle 2-core CPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402  (sets sys.path, offline env)

import numpy as np  # noqa: E402
import torch  # noqa: E402

H, W = 480, 640
OFF = {"depth_confidence": -1.0, "width_confidence": -1.0}
ON = {"depth_confidence": 0.95, "width_confidence": 0.99}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def low_precisions(device: torch.device) -> list[torch.dtype]:
    from glue_ros.device import cpu_has_bf16

    if device.type == "cuda":
        return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    return [torch.bfloat16] if cpu_has_bf16() else []


# --------------------------------------------------------------------------- inputs


def render_pair() -> tuple[np.ndarray, np.ndarray]:
    from glue_ros.synthetic import render_sequence

    seq = render_sequence(6, W, H, motion="forward", frames=(0, 5))
    return seq.images[0], seq.images[1]


def reference_inputs(f0, f1, device, with_scores: bool):
    """(1, 2, N, ...) stacked keypoints / descriptors (/ scores) and a mask (None if counts agree)."""
    n = max(len(f0), len(f1))
    kpts = torch.zeros(1, 2, n, 2, device=device)
    desc = torch.zeros(1, 2, n, f0.descriptors.shape[1], device=device)
    scores = torch.zeros(1, 2, n, device=device)
    mask = torch.zeros(1, 2, n, dtype=torch.int, device=device)
    for side, f in enumerate((f0, f1)):
        kpts[0, side, : len(f)] = f.keypoints.to(device)
        desc[0, side, : len(f)] = f.descriptors.to(device)
        scores[0, side, : len(f)] = f.scores.to(device)
        mask[0, side, : len(f)] = 1
    return kpts, desc, (scores if with_scores else None), (None if len(f0) == len(f1) and not with_scores else mask)


def reference_crash_check(lg_ref, f0, f1, device) -> dict[str, str]:
    """Does transformers' LightGlue run with only one adaptive mechanism on? (small input)"""
    from glue_ros.features import Features

    small = [Features(f.keypoints[:64], f.scores[:64], f.descriptors[:64], f.image_size) for f in (f0, f1)]
    kpts, desc, _, mask = reference_inputs(*small, device, with_scores=False)
    mask = torch.ones(1, 2, kpts.shape[2], dtype=torch.int, device=device)
    out = {}
    saved = lg_ref.depth_confidence, lg_ref.width_confidence
    for name, (depth, width) in {"early exit only": (0.95, -1.0), "pruning only": (-1.0, 0.99)}.items():
        lg_ref.depth_confidence, lg_ref.width_confidence = depth, width
        try:
            with torch.inference_mode():
                lg_ref._match_image_pair(kpts, desc, H, W, mask=mask)
            out[name] = "runs"
        except Exception as exc:  # noqa: BLE001 - we report whatever it raises
            out[name] = f"crashes: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    lg_ref.depth_confidence, lg_ref.width_confidence = saved
    return out


# --------------------------------------------------------------------------- memory worker


def memory_worker(spec: dict) -> dict:
    """Runs in a fresh subprocess: load one model, warm it up, measure one call's peak."""
    C.quiet_transformers()
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    k, kind, impl = spec["k"], spec["model"], spec["impl"]
    data = torch.load(spec["inputs"], weights_only=False)
    gray = torch.from_numpy(data["gray0"]).to(device)
    f0, f1 = (f.to(device) for f in data["features"][str(k)])
    if kind == "superpoint":
        if impl == "ours":
            from glue_ros.models.superpoint import SuperPoint

            model = SuperPoint.from_pretrained(spec["dirs"]["superpoint"], device=device, dtype=dtype,
                                               max_keypoints=k, keypoint_threshold=0.0)
            fn = lambda: model.extract(gray)  # noqa: E731
        else:
            from transformers import SuperPointForKeypointDetection

            model = SuperPointForKeypointDetection.from_pretrained(spec["dirs"]["superpoint"]).to(device).eval()
            C.set_reference_detector(model, k)
            pixels = gray[None, None].expand(1, 3, H, W)
            fn = lambda: model(pixels)  # noqa: E731
    elif kind == "lightglue":
        if impl == "ours":
            from glue_ros.models.lightglue import LightGlue

            model = LightGlue.from_pretrained(spec["dirs"]["lightglue"], device=device, dtype=dtype,
                                              filter_threshold=0.0, **OFF)
            fn = lambda: model.match([f0], [f1])  # noqa: E731
        else:
            from transformers import LightGlueForKeypointMatching

            model = LightGlueForKeypointMatching.from_pretrained(spec["dirs"]["lightglue"]).to(device).eval()
            model.depth_confidence, model.width_confidence, model.filter_threshold = -1.0, -1.0, 0.0
            kpts, desc, _, _ = reference_inputs(f0, f1, device, with_scores=False)
            mask = torch.ones(1, 2, kpts.shape[2], dtype=torch.int, device=device)
            fn = lambda: model._match_image_pair(kpts, desc, H, W, mask=mask)  # noqa: E731
    else:
        if impl == "ours":
            from glue_ros.models.superglue import SuperGlue

            model = SuperGlue.from_pretrained(spec["dirs"]["superglue_indoor"], device=device, dtype=dtype,
                                              sinkhorn_iterations=spec["sinkhorn"], match_threshold=0.0)
            fn = lambda: model.match([f0], [f1])  # noqa: E731
        else:
            from transformers import SuperGlueForKeypointMatching

            model = SuperGlueForKeypointMatching.from_pretrained(spec["dirs"]["superglue_indoor"]).to(device).eval()
            model.config.sinkhorn_iterations, model.config.matching_threshold = spec["sinkhorn"], 0.0
            kpts, desc, scores, mask = reference_inputs(f0, f1, device, with_scores=True)
            mask = None if len(f0) == len(f1) else mask
            fn = lambda: model._match_image_pair(kpts, desc, scores, H, W, mask=mask)  # noqa: E731

    def call():
        with torch.inference_mode():
            fn()

    call()  # warm-up: lazy initialisation, oneDNN primitive caches
    if device.type == "cuda":
        peak, how = C.cuda_peak_delta(call, device)
    else:
        peak, how = C.cpu_peak_delta(call)
    return {"peak_mib": peak, "method": how}


def run_memory(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--threads", str(spec["threads"]),
           "--mem-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=C.memory_env(), cwd=str(C.ROOT), check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"peak_mib": float("nan"), "method": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- agreement helpers


def ours_lightglue(model, f0, f1):
    out = model.forward_features([f0], [f1])
    return C.match_set(out.pair(0, len(f0)).matches), out.log_assignment[0], int(out.stop_layer[0])


def ours_superglue(model, f0, f1):
    with torch.inference_mode():
        out = model(*model.pad([f0], [f1]))
    m0 = out.matches0[0, : len(f0)]
    idx0 = torch.nonzero(m0 >= 0).squeeze(1)
    pairs = torch.stack([idx0, m0[idx0]], 1).cpu().numpy()
    return C.match_set(pairs), out.pair_log_assignment(0), -1


def reference_lightglue(ref, f0, f1, device):
    kpts, desc, _, _ = reference_inputs(f0, f1, device, with_scores=False)
    mask = torch.zeros(1, 2, kpts.shape[2], dtype=torch.int, device=device)
    mask[0, 0, : len(f0)], mask[0, 1, : len(f1)] = 1, 1
    with torch.inference_mode():
        return C.match_set(C.reference_pair_matches(ref._match_image_pair(kpts, desc, H, W, mask=mask)[0]))


def reference_superglue(ref, f0, f1, device):
    kpts, desc, scores, mask = reference_inputs(f0, f1, device, with_scores=True)
    with torch.inference_mode():
        out = ref._match_image_pair(kpts, desc, scores, H, W, mask=None if len(f0) == len(f1) else mask)
    return C.match_set(C.reference_pair_matches(out[0]))


# --------------------------------------------------------------------------- main benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--sizes", default="512,1024,2048", help="keypoint budgets K, comma separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per case (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--sinkhorn", type=int, default=100, help="SuperGlue Sinkhorn iterations (default 100)")
    parser.add_argument("--mem-sinkhorn", type=int, default=10,
                        help="Sinkhorn iterations in the memory runs (the peak does not depend on it; default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="K=512 only, 2 rounds, no SuperGlue end-to-end, fp32-only memory cells "
                             "(smoke run, < 2 min on an idle 2-core CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end (pixels -> matches) timings")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch default)")
    parser.add_argument("--json", help="also write all numbers to this JSON file")
    parser.add_argument("--mem-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mem_worker:
        print(json.dumps(memory_worker(json.loads(args.mem_worker))))
        return
    if args.quick:
        args.sizes, args.repeats = "512", 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    from glue_ros.device import resolve_device

    device = resolve_device(args.device)
    info, progress, t_start = C.start_report(str(device))

    from glue_ros.models.lightglue import LightGlue
    from glue_ros.models.superglue import SuperGlue
    from glue_ros.interfaces import DetectionOptions
    from glue_ros.models.superpoint import SuperPoint

    workdir = Path(tempfile.mkdtemp(prefix="glue_ros_bench_"))
    refs, dirs = C.build_checkpoints(workdir / "weights")
    sp_ref, lg_ref, sg_ref = (refs[k].to(device).eval() for k in ("superpoint", "lightglue", "superglue_indoor"))
    lg_ref.filter_threshold = 0.0  # random weights give no score above 0.1: compare all mutual matches
    sg_ref.config.sinkhorn_iterations, sg_ref.config.matching_threshold = args.sinkhorn, 0.0

    lows = low_precisions(device)
    low_names = [DTYPE_NAMES[dt] for dt in lows]
    dtypes = [torch.float32, *lows]
    sp = {dt: SuperPoint.from_pretrained(str(dirs["superpoint"]), device=device, dtype=dt, keypoint_threshold=0.0)
          for dt in dtypes}
    lg = {dt: LightGlue.from_pretrained(str(dirs["lightglue"]), device=device, dtype=dt, filter_threshold=0.0)
          for dt in dtypes}
    sg = {dt: SuperGlue.from_pretrained(str(dirs["superglue_indoor"]), device=device, dtype=dt,
                                        sinkhorn_iterations=args.sinkhorn, match_threshold=0.0) for dt in dtypes}

    img0, img1 = render_pair()
    gray0, gray1 = C.gray_float(img0), C.gray_float(img1)
    g0, g1 = torch.from_numpy(gray0).to(device), torch.from_numpy(gray1).to(device)
    pix0 = g0[None, None].expand(1, 3, H, W)
    pair_pixels = torch.stack([g0, g1])[None, :, None].expand(1, 2, 3, H, W)

    speed_rows, agree_rows, mem_rows, e2e_rows = [], [], [], []
    results: dict = {"machine": info, "sizes": sizes, "repeats": args.repeats, "warmup": args.warmup,
                     "device": str(device), "sinkhorn": args.sinkhorn, "timings_s": {}, "agreement": {},
                     "memory_mib": {}}
    features_by_k: dict[str, list] = {}

    def timed(name: str, label: str, k: int, cases: dict) -> dict[str, list[float]]:
        progress(f"K={k}: {name}")
        times = C.interleaved(cases, args.repeats, args.warmup, device)
        results["timings_s"][f"{name} K={k}"] = times
        ref = times["transformers"]
        speed_rows.append([label, k, C.ms(C.median(times["ours fp32"])),
                           *(C.ms(C.median(times[f"ours {n}"])) for n in low_names),
                           C.ms(C.median(ref)), C.spread(ref), C.ratio(C.paired_ratio(times["ours fp32"], ref)),
                           *(C.ratio(C.paired_ratio(times[f"ours {n}"], ref)) for n in low_names)])
        return times

    def ref_sp():
        with torch.inference_mode():
            return sp_ref(pix0)

    for k in sizes:
        # ---- SuperPoint
        for model in sp.values():
            model.options = DetectionOptions(keypoint_threshold=0.0, max_keypoints=k)
        C.set_reference_detector(sp_ref, k)
        cases = {f"ours {DTYPE_NAMES[dt]}": (lambda m=sp[dt]: m.extract(g0)) for dt in dtypes}
        cases["transformers"] = ref_sp
        timed("superpoint", "SuperPoint (ms/frame)", k, cases)

        f0, f1 = sp[torch.float32].extract([g0, g1])  # the matchers' inputs: our fp32 features
        features_by_k[str(k)] = [f0.to("cpu"), f1.to("cpu")]

        # ---- LightGlue on precomputed features
        kpts, desc, _, _ = reference_inputs(f0, f1, device, with_scores=False)
        mask = torch.zeros(1, 2, kpts.shape[2], dtype=torch.int, device=device)
        mask[0, 0, : len(f0)], mask[0, 1, : len(f1)] = 1, 1
        for mode_name, mode in (("off", OFF), ("on", ON)):
            for model in lg.values():
                model.with_options(**mode)
            lg_ref.depth_confidence, lg_ref.width_confidence = mode["depth_confidence"], mode["width_confidence"]

            def ref_lg(kpts=kpts, desc=desc, mask=mask):
                with torch.inference_mode():
                    return lg_ref._match_image_pair(kpts, desc, H, W, mask=mask)

            cases = {f"ours {DTYPE_NAMES[dt]}": (lambda m=lg[dt], a=f0, b=f1: m.match([a], [b])) for dt in dtypes}
            cases["transformers"] = ref_lg
            timed(f"lightglue {mode_name}", f"LightGlue adaptive {mode_name} (ms/pair)", k, cases)

        # ---- SuperGlue on precomputed features
        skpts, sdesc, sscores, smask = reference_inputs(f0, f1, device, with_scores=True)
        smask = None if len(f0) == len(f1) else smask

        def ref_sg(skpts=skpts, sdesc=sdesc, sscores=sscores, smask=smask):
            with torch.inference_mode():
                return sg_ref._match_image_pair(skpts, sdesc, sscores, H, W, mask=smask)

        cases = {f"ours {DTYPE_NAMES[dt]}": (lambda m=sg[dt], a=f0, b=f1: m.match([a], [b])) for dt in dtypes}
        cases["transformers"] = ref_sg
        timed("superglue", f"SuperGlue sinkhorn {args.sinkhorn} (ms/pair)", k, cases)

        # ---- end to end (pixels -> matches), for context
        if not args.no_e2e:
            e2e = [("LightGlue adaptive on", lg, lg_ref, ON)]
            if not args.quick:
                e2e.append((f"SuperGlue sinkhorn {args.sinkhorn}", sg, sg_ref, None))
            for label, ours_models, ref_model, mode in e2e:
                C.set_reference_detector(ref_model.keypoint_detector, k)
                if mode is not None:
                    ours_models[torch.float32].with_options(**mode)
                    ref_model.depth_confidence = mode["depth_confidence"]
                    ref_model.width_confidence = mode["width_confidence"]

                def ours_e2e(m=ours_models[torch.float32]):
                    a, b = sp[torch.float32].extract([g0, g1])  # one batched CNN pass
                    return m.match([a], [b])

                def ref_e2e(m=ref_model):
                    with torch.inference_mode():
                        return m(pair_pixels)

                progress(f"K={k}: end-to-end {label}")
                times = C.interleaved({"ours fp32": ours_e2e, "transformers": ref_e2e}, args.repeats,
                                      args.warmup, device)
                results["timings_s"][f"end-to-end {label} K={k}"] = times
                e2e_rows.append([f"{label}: 2 images -> matches (ms/pair)", k,
                                 C.ms(C.median(times["ours fp32"])), C.ms(C.median(times["transformers"])),
                                 C.spread(times["transformers"]),
                                 C.ratio(C.paired_ratio(times["ours fp32"], times["transformers"]))])

        # ---- agreement (untimed)
        progress(f"K={k}: agreement")
        fp32_kp = {tuple(p) for p in f0.keypoints_numpy().round().astype(int).tolist()}
        out = ref_sp()
        n_ref = int(out.mask[0].sum())
        ref_kp = {tuple(p) for p in (out.keypoints[0, :n_ref].cpu() * torch.tensor([W, H])).round().int().tolist()}
        agree = {"count": len(fp32_kp), "ours fp32 vs transformers": len(fp32_kp & ref_kp) / max(len(fp32_kp), 1)}
        for dt in lows:
            kp = {tuple(p) for p in sp[dt].extract(g0)[0].keypoints_numpy().round().astype(int).tolist()}
            agree[f"{DTYPE_NAMES[dt]} vs fp32"] = len(kp & fp32_kp) / max(len(fp32_kp), 1)
        results["agreement"][f"superpoint K={k}"] = agree
        agree_rows.append(["SuperPoint keypoints", "image", k, agree["count"],
                           *(f"{100 * agree[f'{n} vs fp32']:.1f}" for n in low_names), *("-" for _ in low_names),
                           f"{100 * agree['ours fp32 vs transformers']:.1f}", "-"])
        synth = C.synthetic_pair(k, k, seed=k)
        for inputs_name, (a, b) in (("image (SuperPoint)", (f0, f1)), ("synthetic", synth)):
            matchers = [(f"LightGlue adaptive {n}", lg, ours_lightglue, mode,
                         lambda x, y: reference_lightglue(lg_ref, x, y, device)) for n, mode in (("off", OFF), ("on", ON))]
            matchers.append((f"SuperGlue sinkhorn {args.sinkhorn}", sg, ours_superglue, None,
                             lambda x, y: reference_superglue(sg_ref, x, y, device)))
            for label, models, run_ours, mode, run_ref in matchers:
                if mode is not None:
                    for model in models.values():
                        model.with_options(**mode)
                    lg_ref.depth_confidence = mode["depth_confidence"]
                    lg_ref.width_confidence = mode["width_confidence"]
                base, base_la, stop = run_ours(models[torch.float32], a, b)
                agree = {"count": len(base), "stop_layer fp32": stop, "ours fp32 vs transformers": C.iou(base, run_ref(a, b))}
                for dt in lows:
                    got, la, stop_low = run_ours(models[dt], a, b)
                    agree[f"{DTYPE_NAMES[dt]} vs fp32"] = C.iou(got, base)
                    agree[f"{DTYPE_NAMES[dt]} median |dlog|"] = C.log_assignment_delta(la, base_la)
                    agree[f"stop_layer {DTYPE_NAMES[dt]}"] = stop_low
                results["agreement"][f"{label} {inputs_name} K={k}"] = agree
                stops = "-" if stop < 0 else "/".join(str(agree[s]) for s in ["stop_layer fp32"] +
                                                       [f"stop_layer {n}" for n in low_names])
                agree_rows.append([f"{label} matches", inputs_name, k, agree["count"],
                                   *(f"{100 * agree[f'{n} vs fp32']:.1f}" for n in low_names),
                                   *(f"{agree[f'{n} median |dlog|']:.2g}" for n in low_names),
                                   f"{100 * agree['ours fp32 vs transformers']:.1f}", stops])

    # ---- peak memory, one fresh subprocess per measurement (after all timings: no interference)
    method = ""
    if not args.no_memory:
        inputs = workdir / "inputs.pt"
        torch.save({"gray0": gray0, "features": features_by_k}, inputs)
        for k in sizes:
            for kind, label in (("superpoint", "SuperPoint extract"), ("lightglue", "LightGlue match (adaptive off)"),
                                ("superglue", "SuperGlue match")):
                progress(f"memory K={k}: {label}")
                got = {}
                mem_dtypes = [torch.float32] if args.quick else dtypes  # quick: fp32 cells only
                for impl, dt in [("ours", d) for d in mem_dtypes] + [("transformers", torch.float32)]:
                    spec = {"model": kind, "impl": "ours" if impl == "ours" else "ref", "k": k,
                            "dtype": str(dt).split(".")[-1], "device": str(device), "inputs": str(inputs),
                            "dirs": {n: str(p) for n, p in dirs.items()}, "sinkhorn": args.mem_sinkhorn,
                            "threads": torch.get_num_threads()}
                    got[f"ours {DTYPE_NAMES[dt]}" if impl == "ours" else impl] = run_memory(spec)
                results["memory_mib"][f"{kind} K={k}"] = got
                ours32, ref = got["ours fp32"]["peak_mib"], got["transformers"]["peak_mib"]
                mem_rows.append([label, k, f"{ours32:.0f}",
                                 *(f"{got[f'ours {n}']['peak_mib']:.0f}" if f"ours {n}" in got else "-" for n in low_names),
                                 f"{ref:.0f}", C.ratio(ours32 / ref if ref > 0 else float("nan"))])
                method = got["ours fp32"]["method"]

    # ---- report
    print(f"## Speed, device {device}, {torch.get_num_threads()} torch threads "
          f"(median ms over {args.repeats} interleaved rounds after {args.warmup} warm-up; "
          "ratio = ours / transformers fp32, median of per-round ratios, < 1 = ours faster)\n")
    print(C.markdown_table(["case", "K", "ours fp32", *(f"ours {n}" for n in low_names), "transformers fp32",
                            "transformers min-max", "ratio fp32", *(f"ratio {n}" for n in low_names)], speed_rows))
    if e2e_rows:
        print("\n## End-to-end, for context (transformers forward(pixel_values) detects on both images per pair; "
              "ours = extract both (one batch) + match)\n")
        print(C.markdown_table(["case", "K", "ours fp32", "transformers fp32", "transformers min-max", "ratio"],
                               e2e_rows))
    if mem_rows:
        print(f"\n## Peak memory per call (MiB above the resident set just before the call; {method}; "
              "after one warm-up call; fresh process per cell)\n")
        print(C.markdown_table(["case", "K", "ours fp32", *(f"ours {n}" for n in low_names), "transformers fp32",
                                "ratio fp32"], mem_rows))
    print("\n## Agreement (keypoints: % of fp32 keypoints also found; matches: % identical = |A∩B|/|A∪B|; "
          "|dlog| = median abs. difference of the log-assignment)\n")
    print(C.markdown_table(["what", "inputs", "K", "fp32 count", *(f"{n}: % identical" for n in low_names),
                            *(f"{n}: median abs dlog" for n in low_names), "ours fp32 vs transformers: % identical",
                            "LightGlue stop layer fp32/" + "/".join(low_names)], agree_rows))
    crash = reference_crash_check(lg_ref, *features_by_k[str(sizes[0])], device)
    results["transformers_single_mechanism"] = crash
    print("\ntransformers LightGlue with only one adaptive mechanism on:",
          "; ".join(f"{k}: {v}" for k, v in crash.items()))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s; load average at end "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Shared helpers of the glue_ros benchmarks (bench_models.py, bench_stream.py).

* Identical random weights for our models and the transformers reference: ``build_checkpoints``
  builds the transformers models with test/checkpoints.py's non-degenerate random weights, gives the
  matchers' embedded ``keypoint_detector`` the stand-alone SuperPoint's weights (so end-to-end
  reference runs detect exactly what our extractor detects), and saves HF-layout directories our
  ``from_pretrained`` loads. No weights are ever downloaded.
* Interleaved timing: every repeat runs each case once, in a rotating order, so slow phases of a
  shared machine hit all cases alike; ratios are medians of per-repeat (paired) ratios.
* Peak memory: on CPU, resident-set peaks (VmHWM) of a measured call relative to the resident set
  just before it, in a fresh subprocess (see ``cpu_peak_delta``); on CUDA,
  ``torch.cuda.max_memory_allocated`` above the allocation before the call.
"""
from __future__ import annotations

import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "test")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Offline and quiet before transformers / huggingface_hub are imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402  (after the environment set-up above)
import torch  # noqa: E402

SEEDS = {"superpoint": 0, "lightglue": 1, "superglue_indoor": 2}


# --------------------------------------------------------------------------- machine


def machine_info(device: str = "cpu") -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu"] = fields.get("Model name", platform.processor() or "?")
        info["cpus (lscpu)"] = fields.get("CPU(s)", "?")
        info["threads/core"] = fields.get("Thread(s) per core", "?")
    except OSError:
        info["cpu"] = platform.processor() or "?"
    info["usable cores"] = str(len(os.sched_getaffinity(0)))
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        info["bf16 units"] = ",".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"
    except OSError:
        pass
    info["torch"] = torch.__version__
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = "not installed"
    info["python"] = platform.python_version()
    info["torch threads (intra/inter)"] = f"{torch.get_num_threads()}/{torch.get_num_interop_threads()}"
    info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def markdown_kv(info: Mapping[str, str]) -> str:
    return markdown_table(["", ""], [[k, v] for k, v in info.items()])


# --------------------------------------------------------------------------- weights


def quiet_transformers() -> None:
    try:
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    except ImportError:
        pass


def build_checkpoints(directory: Path, kinds: Iterable[str] = ("superpoint", "lightglue", "superglue_indoor")):
    """transformers reference models (random non-degenerate weights, eval mode) and the HF-layout
    directories our models load. Returns ({kind: reference model}, {kind: directory})."""
    quiet_transformers()
    from checkpoints import make_reference, save_checkpoint  # test/checkpoints.py

    kinds = list(kinds)
    refs = {kind: make_reference(kind, seed=SEEDS[kind]) for kind in ("superpoint", *kinds) if kind in SEEDS}
    detector_state = refs["superpoint"].state_dict()
    for kind, model in refs.items():
        if kind != "superpoint":  # the matchers' embedded detector = the stand-alone SuperPoint
            model.keypoint_detector.load_state_dict(detector_state)
    dirs = {kind: save_checkpoint(model, Path(directory) / kind) for kind, model in refs.items()}
    return refs, dirs


def set_reference_detector(detector, max_keypoints: int, threshold: float = 0.0) -> None:
    """Detection options of a transformers SuperPointForKeypointDetection (stand-alone or embedded)."""
    detector.keypoint_decoder.max_keypoints = max_keypoints
    detector.keypoint_decoder.keypoint_threshold = threshold


# --------------------------------------------------------------------------- timing


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Run every case ``warmup`` + ``repeats`` times, one of each per round in a rotating order;
    returns seconds per case (warmup rounds dropped)."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            t = time.perf_counter()
            cases[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(ours: Sequence[float], ref: Sequence[float]) -> float:
    """Median over repeats of ours[i] / ref[i] (both measured in the same round)."""
    return median([a / b for a, b in zip(ours, ref) if b > 0])


def spread(values: Sequence[float]) -> str:
    """min-max of a list of seconds, in ms."""
    return f"{1e3 * min(values):.0f}-{1e3 * max(values):.0f}" if values else "-"


def ms(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{1e3 * seconds:.1f}" if seconds < 0.1 else f"{1e3 * seconds:.0f}"


def ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_delta(fn: Callable[[], object]) -> tuple[float, str]:
    """Peak resident memory a call adds (MiB) and how it was measured.

    Preferred: reset the kernel's high-water mark to the current RSS (``echo 5 > /proc/self/clear_refs``,
    Linux >= 4.0), run, and read VmHWM - VmRSS(before). Fallback: ``resource.getrusage`` maxrss
    delta, which is only meaningful on a process whose earlier peak is lower (a fresh subprocess).
    Run inside a subprocess started with ``MALLOC_MMAP_THRESHOLD_`` fixed (see ``memory_env``) so
    freed tensors go back to the OS and warm-up garbage does not hide the call's own peak."""
    gc.collect()
    if can_reset_hwm():
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024, "VmHWM-VmRSS"
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "maxrss"


def cuda_peak_delta(fn: Callable[[], object], device: torch.device) -> tuple[float, str]:
    torch.cuda.synchronize(device)
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda max_memory_allocated"


def memory_env() -> dict[str, str]:
    """Environment of memory subprocesses: a fixed glibc mmap threshold (disables the dynamic
    threshold that would otherwise keep freed multi-MB tensors on the heap) and eager trimming."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(1024 * 1024))
    return env


# --------------------------------------------------------------------------- inputs


def gray_float(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 in [0, 1] from an RGB uint8 image, with the BT.601 weights our extractor uses."""
    if image.ndim == 2:
        return image.astype(np.float32) / 255
    rgb = image.astype(np.float32) / 255
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def match_set(matches: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in np.asarray(matches).reshape(-1, 2)}


def iou(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (1.0 when both are empty)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def reference_pair_matches(matches: torch.Tensor) -> np.ndarray:
    """(M, 2) [i0, i1] from transformers matches of one pair, (1, 2, N) or (2, N) (image0 row first,
    -1 = none)."""
    m0 = matches.reshape(-1, 2, matches.shape[-1])[0, 0]
    idx0 = torch.nonzero(m0 >= 0).squeeze(1)
    return torch.stack([idx0, m0[idx0].long()], 1).cpu().numpy()


def synthetic_pair(n0: int, n1: int, seed: int, size=(640, 480)):
    """Well-conditioned synthetic features (as test/test_lightglue.py's synth_pair): random keypoints
    and random unit descriptors; 60 % of image1's points are jittered, rescaled copies of image0's
    with noisy descriptors, so real mutual matches exist. Random-weight SuperPoint descriptors are
    nearly parallel (mean cosine ~0.998), which leaves the matchers almost nothing to match."""
    import torch.nn.functional as F

    from glue_ros.features import Features

    g = torch.Generator().manual_seed(seed)
    lim = torch.tensor(size, dtype=torch.float32) - 1
    k0 = torch.rand(n0, 2, generator=g) * lim
    d0 = F.normalize(torch.randn(n0, 256, generator=g), dim=-1)
    shared = min(int(0.6 * n1), n0)
    src = torch.randperm(n0, generator=g)[:shared]
    k1 = torch.cat([k0[src] + 3 * torch.randn(shared, 2, generator=g), torch.rand(n1 - shared, 2, generator=g) * lim])
    k1 = torch.minimum(k1.clamp(min=0), lim)
    d1 = F.normalize(torch.cat([d0[src] + 0.3 * torch.randn(shared, 256, generator=g),
                                torch.randn(n1 - shared, 256, generator=g)]), dim=-1)
    perm = torch.randperm(n1, generator=g)
    return (Features(k0, torch.rand(n0, generator=g), d0, tuple(size)),
            Features(k1[perm], torch.rand(n1, generator=g), d1[perm], tuple(size)))


def log_assignment_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median |a - b| over entries finite in both (log-probabilities)."""
    a, b = a.float().cpu(), b.float().cpu()
    ok = torch.isfinite(a) & torch.isfinite(b)
    return float((a[ok] - b[ok]).abs().median()) if ok.any() else float("nan")


def start_report(device: str):
    """Print the machine table; return (machine info, ``progress(what)`` logger to stderr, start time)."""
    t_start = time.perf_counter()
    info = machine_info(device)

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f}s] {what}", file=sys.stderr, flush=True)

    print("## Machine\n")
    print(markdown_kv(info), "\n", flush=True)
    return info, progress, t_start

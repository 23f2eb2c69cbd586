"""Every backend profile built offline for the benchmarks (bench_backends.py, gpu_check.py).

Real packaged weights where they exist (ALIKED, DISK, XFeat and their LightGlue); SuperPoint /
LightGlue-for-SuperPoint / SuperGlue from the hub cache when cached, else the same architectures with
random weights — their *speed* is representative, their accuracy is not (the tables say which).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import common  # noqa: F401  (sys.path and offline environment first)
from glue_ros import backends
from glue_ros.config import PROFILES, FrontEndConfig, load_config
from glue_ros.interfaces import Extractor, Matcher
from glue_ros.models.weights import WeightsError


@dataclass
class Backend:
    profile: str
    config: FrontEndConfig
    extractor: Extractor
    matcher: Matcher
    weights: str  # "real" or "random (…)"


def profile_config(profile: str, device: str = "cpu", precision: str = "fp32", **overrides) -> FrontEndConfig:
    sets = [f"device={device}", f"precision={precision}"] + [f"{k}={v}" for k, v in overrides.items()]
    return FrontEndConfig.from_flat(load_config(profile=profile, sets=sets))


def build(profile: str, device: torch.device, dtype: torch.dtype, config: FrontEndConfig) -> Backend:
    try:
        extractor, matcher = backends.build(config, device, dtype)
        return Backend(profile, config, extractor, matcher, "real")
    except WeightsError as exc:
        if config.extractor.type != "superpoint":
            raise
        reason = str(exc).split(":")[0]
    from glue_ros.interfaces import DetectionOptions
    from glue_ros.models.lightglue import LightGlue
    from glue_ros.models.superglue import SuperGlue
    from glue_ros.models.superpoint import SuperPoint

    torch.manual_seed(0)
    extractor = SuperPoint(DetectionOptions.from_config(config.extractor), dtype=dtype).to(device)
    matcher = (LightGlue(compute_dtype=dtype) if config.matcher.type == "lightglue" else SuperGlue(dtype=dtype))
    matcher = matcher.to(device).eval()
    matcher.set_thresholds(config.matcher)
    return Backend(profile, config, extractor, matcher, f"random ({reason.strip()})")


ALL = PROFILES

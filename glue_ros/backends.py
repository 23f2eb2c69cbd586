"""Build the extractor and matcher named by the parameters.

Every extractor has ``extract(images) -> list[Features]``; every matcher has
``match(feats0, feats1) -> list[PairMatches]`` over a batch of pairs. Imports are lazy so the
classical backend works without loading any model code.
"""
from __future__ import annotations

import dataclasses

import torch

from .config import ExtractorConfig, MatcherConfig, ParameterError

LEARNED_MATCHERS = ("lightglue", "superglue")


def check_compatible(extractor: ExtractorConfig, matcher: MatcherConfig) -> None:
    if matcher.type in LEARNED_MATCHERS and extractor.type != "superpoint":
        raise ParameterError(f"parameter 'matcher.type': {matcher.type} needs extractor.type superpoint "
                             f"(got {extractor.type}); use matcher.type nn with sift/orb")


def build_extractor(config: ExtractorConfig, device: torch.device, dtype: torch.dtype):
    if config.type == "superpoint":
        from .models.superpoint import SuperPoint

        return SuperPoint.from_config(config, device, dtype)
    from .classical import ClassicalExtractor

    return ClassicalExtractor(config.type, config.max_keypoints)


def build_matcher(config: MatcherConfig, device: torch.device, dtype: torch.dtype):
    if config.type == "lightglue":
        from .models.lightglue import LightGlue

        return LightGlue.from_config(config, device, dtype)
    if config.type == "superglue":
        from .models.superglue import SuperGlue

        return SuperGlue.from_config(config, device, dtype)
    from .classical import NearestNeighborMatcher

    return NearestNeighborMatcher(config.ratio_test)


def apply_live_thresholds(matcher, config: MatcherConfig) -> None:
    """Update match thresholds in place (they are read at every call; no reload needed)."""
    if hasattr(matcher, "ratio_test"):
        matcher.ratio_test = config.ratio_test
        return
    current = getattr(matcher, "config", None)
    if current is None or not dataclasses.is_dataclass(current):
        return
    changes = {name: getattr(config, name) for name in ("filter_threshold", "match_threshold")
               if hasattr(current, name)}
    matcher.config = dataclasses.replace(current, **changes)


def build_pair(params: dict):
    """(config, extractor, matcher) from flat parameters: what the two-image tools need."""
    from .config import FrontEndConfig
    from .device import resolve_device, resolve_dtype

    config = FrontEndConfig.from_flat(params)
    check_compatible(config.extractor, config.matcher)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    return config, build_extractor(config.extractor, device, dtype), build_matcher(config.matcher, device, dtype)

"""Build the extractor and matcher named by the parameters (the one place adapters get models from).

Every extractor and matcher implements :mod:`glue_ros.interfaces`. Model modules are imported lazily
so the classical backend works without loading any model code. A learned matcher is checked against
the extractor's feature family and descriptor size before the first frame: trained weights fed the
wrong descriptors would match garbage without any error.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

from .config import LEARNED_EXTRACTORS, ExtractorConfig, FrontEndConfig, MatcherConfig, ParameterError
from .interfaces import Extractor, Matcher

#: extractor.type → "module:Class" (each class has ``from_config(config, device, dtype)``).
EXTRACTORS = {
    "superpoint": "glue_ros.models.superpoint:SuperPoint",
    "aliked": "glue_ros.models.aliked:ALIKED",
    "disk": "glue_ros.models.disk:DISK",
    "xfeat": "glue_ros.models.xfeat:XFeat",
    "sift": "glue_ros.classical:ClassicalExtractor",
    "orb": "glue_ros.classical:ClassicalExtractor",
}

#: matcher.type → ("module:Class", extractor families it can match).
MATCHERS = {
    "lightglue": ("glue_ros.models.lightglue:LightGlue", LEARNED_EXTRACTORS),
    "superglue": ("glue_ros.models.superglue:SuperGlue", ("superpoint",)),
    "nn": ("glue_ros.classical:NearestNeighborMatcher", None),  # any descriptors
}


class Backend(NamedTuple):
    extractor: Extractor
    matcher: Matcher


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def check_types(extractor: ExtractorConfig, matcher: MatcherConfig) -> None:
    """Refuse a matcher type that cannot match the extractor type (before loading anything)."""
    families = MATCHERS[matcher.type][1]
    if families is not None and extractor.type not in families:
        raise ParameterError(f"parameter 'matcher.type': {matcher.type} cannot match {extractor.type} features "
                             f"(it takes {', '.join(families)}); use matcher.type nn with {extractor.type}")


def check_pair(extractor: Extractor, matcher: Matcher) -> None:
    """Refuse learned matcher weights trained for another feature family or descriptor size."""
    expected = getattr(matcher, "expected_features", None)
    if expected is not None and expected != extractor.features:
        raise ParameterError(f"parameter 'matcher.weights': these weights were trained for {expected} features, "
                             f"but extractor.type gives {extractor.features} features; use the {extractor.features} "
                             "weights (leave matcher.weights empty for the default)")
    input_dim = getattr(matcher, "input_dim", None)
    if input_dim is not None and input_dim != extractor.descriptor_dim:
        raise ParameterError(f"parameter 'matcher.weights': the matcher takes {input_dim}-d descriptors, the "
                             f"{extractor.features} extractor gives {extractor.descriptor_dim}-d")


def build_extractor(config: ExtractorConfig, device: torch.device, dtype: torch.dtype) -> Extractor:
    return _load(EXTRACTORS[config.type]).from_config(config, device, dtype)


def build_matcher(config: MatcherConfig, features: str, device: torch.device, dtype: torch.dtype) -> Matcher:
    """``features``: the extractor's family (it picks the default weights of a learned matcher)."""
    return _load(MATCHERS[config.type][0]).from_config(config, device, dtype, features=features)


def build(config: FrontEndConfig, device: torch.device, dtype: torch.dtype, *, extractor: Extractor | None = None,
          matcher: Matcher | None = None) -> Backend:
    """Extractor and matcher for ``config`` (either may be given ready-made), checked to fit together."""
    check_types(config.extractor, config.matcher)
    if extractor is None or matcher is None:
        from .models.weights import check_available

        check_available(config)  # every missing hub repo in one fast error, before loading anything
    extractor = extractor or build_extractor(config.extractor, device, dtype)
    matcher = matcher or build_matcher(config.matcher, extractor.features, device, dtype)
    check_pair(extractor, matcher)
    return Backend(extractor, matcher)


def build_pair(params: dict):
    """(config, extractor, matcher) from flat parameters: what the two-image tools need."""
    from .device import resolve_device, resolve_dtype

    config = FrontEndConfig.from_flat(params)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.precision, device)
    extractor, matcher = build(config, device, dtype)
    return config, extractor, matcher

"""The one interface every extractor and every matcher implements.

    frame ─► Extractor.extract(images) -> list[Features]
             Matcher.match(feats0, feats1) -> list[PairMatches]   (pairs: keyframe, current frame)

Learned models (SuperPoint, ALIKED, DISK, XFeat, LightGlue, SuperGlue) and the classical backend
(SIFT/ORB + nearest neighbour) all satisfy these Protocols; the front-end, the node and the tools see
nothing else. Runtime thresholds change through ``Matcher.set_thresholds`` only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

import torch

from .features import Features, Images, PairMatches

if TYPE_CHECKING:  # pragma: no cover
    from .config import ExtractorConfig, MatcherConfig


@runtime_checkable
class Extractor(Protocol):
    #: Feature family the descriptors belong to ("superpoint", "aliked", "disk", "xfeat", "sift", "orb"):
    #: a learned matcher trained on one family refuses the others.
    features: str
    descriptor_dim: int
    device: torch.device

    def extract(self, images: Images) -> list[Features]:
        """One Features per image; keypoints in that image's own pixels (pixel centres at integers)."""
        ...


@runtime_checkable
class Matcher(Protocol):
    #: Feature family the matcher was trained for; None = any descriptors (nearest neighbour).
    expected_features: str | None
    device: torch.device

    def match(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> list[PairMatches]:
        """Match pairs (feats0[k], feats1[k]) in one call; equals matching each pair alone."""
        ...

    def set_thresholds(self, config: "MatcherConfig") -> None:
        """Apply the live-changeable thresholds of ``config`` (read at every call; no reload)."""
        ...


@dataclass(frozen=True)
class DetectionOptions:
    """Detection options every learned extractor takes (``extractor.*`` parameters).

    ``keypoint_threshold`` / ``nms_radius`` < 0 mean "the model's own default" (each model file states
    it); the other fields mean the same for every model."""

    max_keypoints: int = -1  # keep the highest-scoring; -1 = no limit
    keypoint_threshold: float = -1.0  # detection score threshold; < 0 = model default
    nms_radius: int = -1  # pixels of the (resized) image; < 0 = model default
    border_removal: int = 4  # pixels of the (resized) image, on all four sides
    resize_max: int = 0  # long side in pixels; 0 = native, never upscales

    def __post_init__(self) -> None:
        if not math.isfinite(self.keypoint_threshold):
            raise ValueError(f"keypoint_threshold must be finite, got {self.keypoint_threshold}")
        for name, low in (("max_keypoints", -1), ("nms_radius", -1), ("border_removal", 0), ("resize_max", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")

    @classmethod
    def from_config(cls, config: "ExtractorConfig") -> "DetectionOptions":
        return cls(max_keypoints=config.max_keypoints, keypoint_threshold=config.keypoint_threshold,
                   nms_radius=config.nms_radius, border_removal=config.border_removal,
                   resize_max=config.resize_max)

    def threshold(self, model_default: float) -> float:
        return self.keypoint_threshold if self.keypoint_threshold >= 0 else model_default

    def radius(self, model_default: int) -> int:
        return self.nms_radius if self.nms_radius >= 0 else model_default

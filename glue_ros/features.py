"""Typed containers shared by extractors, matchers and the front-end.

Convention everywhere: a *pair* is (image0, image1) = (keyframe, current frame); matches are
index pairs ``[i0, i1]`` into image0's and image1's keypoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Features:
    """Keypoints of one image, in that image's (original, un-resized) pixel coordinates."""

    keypoints: torch.Tensor  # (N, 2) float32, (x, y) pixels; pixel centres at integers
    scores: torch.Tensor  # (N,) float32 detection scores
    descriptors: torch.Tensor  # (N, D) (float for learned/SIFT, uint8 for ORB)
    image_size: tuple[int, int]  # (width, height) of the image the keypoints live in

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def to(self, device: torch.device | str) -> "Features":
        return Features(self.keypoints.to(device), self.scores.to(device), self.descriptors.to(device),
                        self.image_size)

    def keypoints_numpy(self) -> np.ndarray:
        return self.keypoints.detach().float().cpu().numpy().reshape(-1, 2)

    @staticmethod
    def empty(image_size: tuple[int, int], descriptor_dim: int = 256,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "Features":
        return Features(torch.zeros(0, 2, device=device), torch.zeros(0, device=device),
                        torch.zeros(0, descriptor_dim, device=device, dtype=dtype), image_size)


@dataclass
class PairMatches:
    """Matches of one pair (image0, image1)."""

    matches: np.ndarray  # (M, 2) int64 [index in image0, index in image1]
    scores: np.ndarray  # (M,) float32 match confidence in [0, 1]
    stop_layer: int = -1  # LightGlue: number of layers run before exit (-1 for other matchers)
    pruned0: int = 0  # LightGlue: points of image0 pruned before the end
    pruned1: int = 0  # LightGlue: points of image1 pruned before the end
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.matches.shape[0])

    @staticmethod
    def empty() -> "PairMatches":
        return PairMatches(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))

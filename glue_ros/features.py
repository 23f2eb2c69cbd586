"""Typed containers shared by extractors, matchers and the front-end.

Convention everywhere: a *pair* is (image0, image1) = (keyframe, current frame); matches are
index pairs ``[i0, i1]`` into image0's and image1's keypoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import numpy as np
import torch

ImageLike = Union[np.ndarray, torch.Tensor]
Images = Union[ImageLike, Sequence[ImageLike]]


def split_images(images: Images) -> list[ImageLike]:
    """The extractors' accepted input forms → a list of single images (H×W or H×W×C):
    one image, a list of images (sizes may differ), or an N×H×W(×C) batch."""
    if isinstance(images, (list, tuple)):
        out = list(images)
        for image in out:
            if not isinstance(image, (np.ndarray, torch.Tensor)) or image.ndim not in (2, 3):
                raise ValueError("a list of images must hold H×W or H×W×C numpy arrays / tensors")
        return out
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(f"expected a numpy array, a torch tensor or a list of them, got {type(images).__name__}")
    if images.ndim == 2 or images.ndim == 3 and images.shape[-1] in (1, 3):
        return [images]
    if images.ndim in (3, 4):  # N×H×W or N×H×W×C
        return list(images)
    raise ValueError(f"cannot interpret an image array of shape {tuple(images.shape)}")


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

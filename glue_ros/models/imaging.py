"""Image preparation shared by every learned extractor: dtype → float [0, 1], gray or RGB, optional
resize (long side ``resize_max``), same-size batching, and mapping keypoints back to the input pixels.

Accepted images: numpy arrays or torch tensors, channels last: H×W (gray), H×W×1, H×W×3 (RGB);
uint8 (0..255), uint16 (0..65535) or float in [0, 1].
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch

from ..features import Features, ImageLike, Images, split_images

RGB_TO_GRAY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as the reference preprocessing


def to_float(image: ImageLike, device: torch.device, rgb: bool) -> torch.Tensor:
    """(C, H, W) float32 in [0, 1] with C = 3 (``rgb``) or 1. Gray input into an RGB model is
    replicated; RGB into a gray model is converted with BT.601 weights. Integer → float happens on
    the device, after the (smaller) copy."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch's uint16 support is thin; convert here
            image = image.astype(np.float32) / 65535
        image = np.ascontiguousarray(image)
        if not image.flags.writeable:  # e.g. decoded from a message buffer; torch wants writable memory
            image = image.copy()
        image = torch.from_numpy(image)
    t = image.to(device)
    if t.dtype == torch.uint8:
        t = t.float() / 255
    elif t.is_floating_point():
        t = t.float()
    else:
        raise TypeError(f"images must be uint8, uint16 or float in [0, 1], got {t.dtype}")
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 2:
        t = t[None]
        return t.expand(3, -1, -1).contiguous() if rgb else t
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"images must be H×W, H×W×1 or H×W×3 (RGB), got {tuple(t.shape)}")
    if rgb:
        return t.permute(2, 0, 1).contiguous()
    r, g, b = t.unbind(-1)
    return (RGB_TO_GRAY[0] * r + RGB_TO_GRAY[1] * g + RGB_TO_GRAY[2] * b)[None]


def resized_size(width: int, height: int, resize_max: int) -> tuple[int, int] | None:
    """(width, height) to shrink to so the long side is ``resize_max``; None = keep as is."""
    if resize_max <= 0 or max(width, height) <= resize_max:
        return None
    scale = resize_max / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare(image: ImageLike, device: torch.device, rgb: bool, resize_max: int = 0
            ) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image → ((C, H', W') float32 on ``device``, original (width, height)). Shrinking uses
    cv2.INTER_AREA on float32 (on the CPU)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    target = resized_size(width, height, resize_max)
    if target is None:
        return to_float(image, device, rgb), (width, height)
    import cv2  # only needed when resizing

    chw = to_float(image, torch.device("cpu"), rgb).numpy()
    small = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), target, interpolation=cv2.INTER_AREA)
    small = small.reshape(target[1], target[0], -1).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(small)).to(device), (width, height)


def to_original(features: Features, original_size: tuple[int, int]) -> Features:
    """Map keypoints from the (possibly resized) network input back to the original image:
    ``x_orig = (x + 0.5) * W_orig / W_resized - 0.5`` (pixel centres at integers in both)."""
    (width, height), (orig_w, orig_h) = features.image_size, original_size
    if (width, height) == (orig_w, orig_h):
        return features
    scale = features.keypoints.new_tensor([orig_w / width, orig_h / height])
    keypoints = (features.keypoints + 0.5) * scale - 0.5
    return Features(keypoints, features.scores, features.descriptors, original_size)


def extract_batched(images: Images, device: torch.device, rgb: bool, resize_max: int,
                    forward: Callable[[torch.Tensor], Sequence[Features]]) -> list[Features]:
    """Prepare every image, run ``forward`` once per group of same-size images on a (B, C, H, W)
    batch, and return one Features per input image (in input order, original pixels)."""
    prepared = [prepare(image, device, rgb, resize_max) for image in split_images(images)]
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, (tensor, _) in enumerate(prepared):
        groups[tuple(tensor.shape)].append(index)
    results: list[Features | None] = [None] * len(prepared)
    for indices in groups.values():
        batch = torch.stack([prepared[i][0] for i in indices])
        for i, features in zip(indices, forward(batch)):
            results[i] = to_original(features, prepared[i][1])
    return results  # type: ignore[return-value]

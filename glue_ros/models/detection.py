"""Keypoint detection steps shared by the learned extractors: an exact, fast max filter and the
iterative non-maximum suppression of SuperPoint / ALIKED."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the (2r+1)^2 window around each pixel of (..., H, W), borders padded with -inf: the
    values of a stride-1 ``F.max_pool2d`` with padding r (max is exact). Separable, and per direction
    log2(2r+1) + 1 elementwise maxima of shifted views (window doubling): on a CPU ~30-50x faster than
    the max-pool kernel on a one-channel full-resolution map."""
    size = 2 * radius + 1
    for dim in (-1, -2):
        length = x.shape[dim]
        running = F.pad(x, (radius, radius) if dim == -1 else (0, 0, radius, radius), value=float("-inf"))
        span = 1  # running[i] = max of the padded line over [i, i + span)
        while 2 * span <= size:
            kept = running.shape[dim] - span
            running = torch.maximum(running.narrow(dim, 0, kept), running.narrow(dim, span, kept))
            span *= 2
        # two windows of `span` >= size / 2 cover [i, i + size)
        x = torch.maximum(running.narrow(dim, 0, length), running.narrow(dim, size - span, length))
    return x


def nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """The original SuperPoint / ALIKED NMS of (B, H, W) scores: keep local maxima of the (2r+1)^2
    window, then twice re-admit maxima that appear once everything near a kept point is suppressed."""
    keep = scores == max_filter(scores, radius)
    for _ in range(2):
        near = max_filter(keep.float(), radius) > 0
        rest = scores.masked_fill(near, 0)
        keep |= (rest == max_filter(rest, radius)) & ~near
    return scores.masked_fill(~keep, 0)

"""Native DISK (Tyszkiewicz et al., NeurIPS 2020) keypoint detector and descriptor.

The network is the published thin U-Net: RGB in, 129 channels out at full resolution (128 descriptor
channels, then one detection heatmap of raw logits). Five down levels (16, 32, 64, 64, 64 channels;
2x2 average pooling between levels), four up levels (bilinear x2 upsampling, concatenation with the
skip, 64, 64, 64, 129 channels); every 5x5 "same" convolution but the first is preceded by an
instance norm (no affine, eps 1e-5) and a per-channel PReLU. Sizes must be multiples of 16, so the
image is zero-padded at the bottom and right and the maps are cropped back before detection (as
kornia's ``pad_if_not_divisible=True``, the cvg LightGlue default); no keypoint lies in the padding.

Detection follows kornia's ``DISK`` (the reference the tests compare against):

* a keypoint is a *strict* maximum of the heatmap over its full ``(2r+1)^2`` window; tied maxima and
  the pixels within ``r`` of the image edge (whose window runs off the image) are never keypoints;
* its score is strictly above the threshold;
* of more than ``max_keypoints`` candidates the highest-scoring are kept, ties at the cut filled in
  raster order; keypoints are returned in raster order (row by row), not by score;
* the descriptor is the dense descriptor at the keypoint's pixel, L2-normalised; the score is the raw
  heatmap logit there. Keypoints are integer pixel positions (pixel centres at integers).

Model defaults (used where :class:`~glue_ros.interfaces.DetectionOptions` says "< 0 = model default"):
detection threshold ``DEFAULT_THRESHOLD`` = 0.0, NMS radius ``DEFAULT_NMS_RADIUS`` = 2 (kornia's
5x5 window). ``max_keypoints`` -1 keeps every maximum above the threshold.

Deviations from kornia / cvg (on purpose):

* ``border_removal`` (default 4 px) drops keypoints near all four edges before the top-k, as for every
  extractor here; kornia has no such option (``border_removal=0`` reproduces it).
* The last convolution (80 -> 129 channels at full resolution, ~80 % of the network's arithmetic) is
  evaluated densely only for the heatmap channel; the 128 descriptor channels are computed at the
  kept keypoints only (the same 5x5 patch times the same weights, as one matrix product), and the
  heatmap channel is a (25, 80) x (80, H*W) product plus 25 shifted additions. Same values up to
  float summation order (vs kornia at 640x480: identical keypoints, descriptors within 1e-6, scores
  within 4e-6 relative); about 2x faster end to end on a 2-core CPU.
* Images too small to hold a keypoint (no pixel farther than ``max(r, border_removal)`` from every
  edge) give empty Features without running the network. Images of at most 16x16 pixels, whose
  bottom U-Net level is 1x1 (torch's instance norm refuses it; kornia raises), get that level's
  exact normalised value, 0.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..features import Features
from ..interfaces import DetectionOptions
from .extractor import LOW_PRECISION, LearnedExtractor
from .weights import Checkpoint, load_into

DEFAULT_THRESHOLD = 0.0  # on the raw heatmap logit
DEFAULT_NMS_RADIUS = 2  # 5x5 window
DESCRIPTOR_DIM = 128
KERNEL = 5
DOWN_CHANNELS = (16, 32, 64, 64, 64)
UP_CHANNELS = (64, 64, 64, DESCRIPTOR_DIM + 1)
SIZE_MULTIPLE = 2 ** len(UP_CHANNELS)  # 16: one 2x pooling per level below the top
_INSTANCE_NORM_EPS = 1e-5


class _Block(nn.Module):
    """[instance norm -> PReLU ->] 5x5 convolution with zero "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, gated: bool = True) -> None:
        super().__init__()
        self.gate = nn.PReLU(in_channels) if gated else None
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL, padding=KERNEL // 2)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return x
        if x.shape[-2] * x.shape[-1] == 1:  # torch refuses a 1x1 instance norm; its value is 0
            return torch.zeros_like(x)
        return F.prelu(F.instance_norm(x, eps=_INSTANCE_NORM_EPS), self.gate.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.prepare(x))


# ------------------------------------------------------------------ checkpoint names

# Original cvlab-epfl / kornia layout (under "extractor." in the released .pth files):
#   unet.path_down.{i}.1.3.{weight,bias}   conv of down level i   (.1.1.weight: its PReLU, i > 0)
#   unet.path_up.{i}.conv.3.{weight,bias}  conv of up level i     (.conv.1.weight: its PReLU)
_REFERENCE_NAMES = (
    (re.compile(r"^path_down\.(\d+)\.1\.3\.(weight|bias)$"), r"down.\1.conv.\2"),
    (re.compile(r"^path_down\.(\d+)\.1\.1\.weight$"), r"down.\1.gate.weight"),
    (re.compile(r"^path_up\.(\d+)\.conv\.3\.(weight|bias)$"), r"up.\1.conv.\2"),
    (re.compile(r"^path_up\.(\d+)\.conv\.1\.weight$"), r"up.\1.gate.weight"),
)
_WRAPPER_PREFIXES = ("extractor.", "module.", "model.", "unet.")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Native parameter names for a DISK checkpoint: nested dicts are flattened, wrapper prefixes
    ("extractor.", "unet.", ...) stripped, the original U-Net names renamed. Native names pass
    through; other tensors keep their name for the strict check to report; non-tensor entries
    (training metadata) are dropped."""
    converted: dict[str, Any] = {}
    for name, value in _flatten(state_dict).items():
        if not isinstance(value, torch.Tensor):
            continue
        stripped = name
        while stripped.startswith(_WRAPPER_PREFIXES):
            stripped = stripped.split(".", 1)[1]
        for pattern, replacement in _REFERENCE_NAMES:
            if pattern.match(stripped):
                stripped = pattern.sub(replacement, stripped)
                break
        else:
            if not stripped.startswith(("down.", "up.")):
                stripped = name
        converted[stripped] = value
    return converted


# ------------------------------------------------------------------ detection


def strict_maxima(heatmap: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool: pixels strictly greater than every other pixel of their (2r+1)^2 window.
    Pixels within ``radius`` of an edge (window not inside the image) are never maxima."""
    batch, height, width = heatmap.shape
    keep = torch.zeros_like(heatmap, dtype=torch.bool)
    if radius == 0:
        return keep.fill_(True)
    if height <= 2 * radius or width <= 2 * radius:
        return keep
    # The window minus its centre = the r rows above and the r rows below (full window width) plus
    # the r pixels left and the r right of the centre in its own row. Each part is a max-pool of
    # length r (the rows: of the full-width row maxima), read at the right offset.
    x = heatmap[:, None]
    r = radius
    row_max = F.max_pool2d(x, (1, 2 * r + 1), stride=1)  # (B,1,H,W-2r): row max centred at column j+r
    side_rows = F.max_pool2d(row_max, (r, 1), stride=1)  # [i] = max over rows i..i+r-1
    side_cols = F.max_pool2d(x, (1, r), stride=1)  # [j] = max over columns j..j+r-1
    # Centres are rows r..H-1-r, columns r..W-1-r: above = rows i-r..i-1, below = rows i+1..i+r, etc.
    above = side_rows[..., : height - 2 * r, :]
    below = side_rows[..., r + 1:, :]
    left = side_cols[..., r: height - r, : width - 2 * r]
    right = side_cols[..., r: height - r, r + 1:]
    neighbours = torch.maximum(torch.maximum(above, below), torch.maximum(left, right))
    keep[:, r: height - r, r: width - r] = x[..., r: height - r, r: width - r][:, 0] > neighbours[:, 0]
    return keep


def select_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest of 1-D ``scores`` (ties at the cut: lowest index first), in
    ascending index order. All indices when ``k`` < 0 or there are at most ``k``."""
    if k < 0 or len(scores) <= k:
        return torch.arange(len(scores), device=scores.device)
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return order.sort().values


def _single_channel_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, weight[None], bias, padding="same")`` for one output channel: (B, C, H, W) ->
    (B, 1, H, W). One (k*k, C) x (C, H*W) product gives every tap's channel sum, then the k*k
    shifted tap maps are added: 2-3x faster on a CPU than oneDNN's one-channel convolution.
    Returns float32."""
    batch, channels, height, width = x.shape
    size = weight.shape[-1]
    pad = size // 2
    tap_weights = weight.permute(1, 2, 0).reshape(size * size, channels).to(x.dtype)
    if x.is_contiguous():
        taps = torch.matmul(tap_weights, x.reshape(batch, channels, height * width))
    else:  # channels_last (low precision): multiply in that layout, no NCHW copy of the big map
        taps = torch.matmul(x.permute(0, 2, 3, 1).reshape(batch, height * width, channels), tap_weights.t())
        taps = taps.transpose(1, 2)
    # The tap sums are added in float32 (under autocast the product is bf16/fp16; 25 additions in
    # that precision would lose more than the convolution's single rounding).
    taps = F.pad(taps.float().reshape(batch, size * size, height, width), (pad, pad, pad, pad))
    out = bias.float().expand(batch, 1, height, width).clone()
    for k in range(size * size):
        dy, dx = divmod(k, size)
        out += taps[:, k: k + 1, dy: dy + height, dx: dx + width]
    return out


class DISK(LearnedExtractor):
    """DISK network plus kornia's detection (see the module docstring), behind the Extractor protocol.

    Keypoints are (x, y) pixel coordinates with pixel centres at integers, in the input image's own
    pixels (resizing is undone with ``x_orig = (x + 0.5) * W_orig / W_resized - 0.5``).
    """

    features = "disk"
    rgb = True  # the network takes RGB (gray input is replicated)
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, options: DetectionOptions | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.options = options or DetectionOptions()
        self.compute_dtype = dtype
        channels = (3, *DOWN_CHANNELS)
        self.down = nn.ModuleList(_Block(channels[i], channels[i + 1], gated=i > 0) for i in range(len(DOWN_CHANNELS)))
        bottom = (DOWN_CHANNELS[-1], *UP_CHANNELS[:-1])
        skips = DOWN_CHANNELS[-2::-1]
        self.up = nn.ModuleList(_Block(b + s, out) for b, s, out in zip(bottom, skips, UP_CHANNELS))
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], options: DetectionOptions = DetectionOptions(),
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                        source: str = "state_dict") -> "DISK":
        """Build from tensors in the original layout (``{"extractor": {"unet.path_down...": ...}}``,
        flat or nested) or the native one; strict: any missing, unexpected or mis-shaped tensor is a
        WeightsError."""
        model = cls(options, dtype)
        checkpoint = Checkpoint(source=source, directory=Path("."), config={},
                                state_dict=convert_state_dict(state_dict))
        load_into(model, checkpoint)
        return model.placed(device, dtype)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[Features]:
        """Detect and describe on a (B, 3, H, W) float RGB batch in [0, 1], without resizing."""
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"forward expects a (B, 3, H, W) float tensor, got {tuple(images.shape)} {images.dtype}")
        batch, _, height, width = images.shape
        opts = self.options
        radius = opts.radius(DEFAULT_NMS_RADIUS)
        margin = max(radius, opts.border_removal)
        if height <= 2 * margin or width <= 2 * margin:  # no pixel can hold a keypoint
            return [Features.empty((width, height), DESCRIPTOR_DIM, self.device) for _ in range(batch)]
        heatmap, last_input = self._dense(images.to(self.device))
        heatmap = heatmap[:, 0, :height, :width]  # crop the padding away before detection
        keep = strict_maxima(heatmap, radius) & (heatmap > opts.threshold(DEFAULT_THRESHOLD))
        border = opts.border_removal
        if border:
            keep[:, :border] = False
            keep[:, height - border:] = False
            keep[:, :, :border] = False
            keep[:, :, width - border:] = False
        results = []
        for b in range(batch):
            yx = torch.nonzero(keep[b])  # raster order
            scores = heatmap[b, yx[:, 0], yx[:, 1]]
            chosen = select_top(scores, opts.max_keypoints)
            yx, scores = yx[chosen], scores[chosen]
            if len(yx) == 0:
                results.append(Features.empty((width, height), DESCRIPTOR_DIM, self.device))
                continue
            descriptors = F.normalize(self._describe(last_input[b], yx), dim=-1)
            results.append(Features(yx.flip(1).float(), scores, descriptors, (width, height)))
        return results

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.compute_dtype in LOW_PRECISION:
            return torch.autocast(device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U-Net on the padded batch: (heatmap (B, 1, H16, W16) float32, normalised and gated input
        of the last convolution (B, 80, H16, W16), for :meth:`_describe`)."""
        height, width = images.shape[-2:]
        x = F.pad(images, (0, -width % SIZE_MULTIPLE, 0, -height % SIZE_MULTIPLE))
        x = x.to(self.down[0].conv.weight.dtype)
        if self.compute_dtype in LOW_PRECISION:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(x.device):
            skips = []
            for level, block in enumerate(self.down):
                if level:
                    x = F.avg_pool2d(x, 2)
                x = block(x)
                skips.append(x)
            skips.pop()  # the bottom level is x itself
            for block in self.up[:-1]:
                x = block(torch.cat([F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
                                     skips.pop()], 1))
            last = self.up[-1]
            x = last.prepare(torch.cat([F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
                                        skips.pop()], 1))
            heatmap = _single_channel_conv(x, last.conv.weight[DESCRIPTOR_DIM], last.conv.bias[DESCRIPTOR_DIM])
        return heatmap.float(), x

    def _describe(self, last_input: torch.Tensor, yx: torch.Tensor) -> torch.Tensor:
        """(N, 128) float32 raw descriptors: the last convolution's descriptor channels at (N, 2)
        integer (y, x) pixels of one (C, H, W) map, as one (N, C*25) x (C*25, 128) product."""
        _, height, width = last_input.shape
        offsets = torch.arange(KERNEL, device=yx.device) - KERNEL // 2
        rows = (yx[:, 0, None] + offsets)[:, :, None]  # (N, 5, 1): row of window row dy
        cols = (yx[:, 1, None] + offsets)[:, None, :]  # (N, 1, 5)
        # Outside the map the convolution's zero padding applies (no padded copy of the whole map).
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)  # (N, 5, 5)
        patches = last_input[:, rows.clamp(0, height - 1), cols.clamp(0, width - 1)] * inside  # (C, N, 5, 5)
        patches = patches.permute(1, 0, 2, 3).reshape(len(yx), -1)
        conv = self.up[-1].conv
        weight = conv.weight[:DESCRIPTOR_DIM].reshape(DESCRIPTOR_DIM, -1)
        with self._autocast(patches.device):
            descriptors = F.linear(patches, weight, conv.bias[:DESCRIPTOR_DIM])
        return descriptors.float()

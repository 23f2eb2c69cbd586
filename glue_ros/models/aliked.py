"""Native ALIKED (Zhao et al., IEEE TIM 2023) keypoint detector and descriptor, with our own
deformable convolution (no torchvision).

Network (the released ``aliked-{t16,n16,n16rot,n32}`` weights; parameter names are the original's, so
the ``.pth`` files load strictly without renaming):

* RGB in, padded with edge replication to a multiple of 32 (split evenly, the extra pixel at the
  bottom/right, as the original's ``InputPadder``); the maps are cropped back before detection.
* Encoder: a conv block (two 3x3 conv + BN + SELU) at full resolution, then residual blocks at 1/2
  (plain 3x3 convs), 1/8 and 1/32 (modulation-free deformable 3x3 convs, offsets clamped to
  +-max(H, W)/4 of the layer input), 2x2 / 4x4 / 4x4 average pooling in between.
* Aggregation: a 1x1 conv + SELU per level to ``dim/4`` channels, bilinear upsampling
  (``align_corners=True``) to full resolution, concatenation to a ``dim``-channel map.
* Score head: 1x1 conv to 8, then three 3x3 convs (8 -> 4 -> 4 -> 1) with SELUs, sigmoid.
* SDDH descriptor head: per keypoint, a KxK patch of the L2-normalised feature map gives M sample
  offsets (KxK conv + SELU + 1x1 conv, clamped to +-max(H, W)/4); the map is sampled bilinearly there
  (zero outside the image), each sample goes through a 1x1 conv + SELU, and the M samples are
  aggregated by per-position weights (M, dim, dim); L2 normalisation.

The architecture (channels c1..c4, ``dim``, K, M) is read from the tensors' shapes, so the weights
alone pick the variant (t16: 64-d descriptors, n16/n16rot/n32: 128-d).

Detection is the original's DKD:

* NMS (max-pool, radius ``r``: the original's "keep local maxima, then twice re-admit maxima once
  everything near a kept point is suppressed"), then the border band is zeroed;
* **top-k mode** (``max_keypoints > 0``): the ``max_keypoints`` highest NMS scores; the score
  threshold is ignored, exactly as the original DKD with ``top_k > 0``; order: by score, descending;
* **threshold mode** (``max_keypoints == -1``): NMS survivors with score > threshold, in raster order;
  if no pixel passes, the threshold falls back to the image's mean score; a threshold of exactly 0
  means "the mean score" from the start (both as the original). More than ``N_LIMIT`` (20000, the
  original's ``n_limit_max``) candidates are cut to the highest-scoring, then ordered by score;
* sub-pixel refinement: soft-argmax (temperature 0.1) of the score map over the (2r+1)^2 window around
  each maximum; the score is the score map bilinearly sampled at the refined position; keypoints are
  pixels with centres at integers.

Model defaults (where :class:`~glue_ros.interfaces.DetectionOptions` says "< 0 = model default"):
``DEFAULT_NMS_RADIUS`` = 2, ``DEFAULT_THRESHOLD`` = 0.2.

Deviations from the original (on purpose):

* Border: the original zeroes an ``r``-pixel band (r = NMS radius, 2 by default), which keeps the
  soft-argmax window inside the image. We zero ``max(border_removal, r)`` pixels on all four sides
  (``border_removal`` default 4); ``border_removal <= r`` reproduces the original exactly.
* Top-k mode keeps NMS survivors only: when the image has fewer than ``max_keypoints`` maxima, the
  original's ``torch.topk`` over the whole map pads the result with suppressed (score-0) pixels; we
  return fewer keypoints instead. With enough maxima the two are identical.
* The threshold-mode fallback to the mean score is decided per image (the original decides it once
  for the whole batch), so a batch gives the same keypoints as each image alone.
* Threshold mode keeps at most ``N_LIMIT`` points, as the original ALIKED; cvg's wrapper would cap it at
  ``max_num_keypoints`` instead, a combination that does not exist here (``max_keypoints > 0`` always
  means top-k mode).

Computed differently from the original, with the same values up to float rounding (measured against
the reference with the released weights: keypoints within 3e-5 px, scores within 2e-5, descriptors
within 5e-6; see test/test_aliked.py):

* The dense, normalised ``dim``-channel full-resolution map is never built. The score head's first
  1x1 conv is linear, so it is applied to each level before upsampling (8 channels upsampled instead
  of ``dim``); the full-resolution level's own 1x1 conv runs chunk by chunk and is not kept. The
  descriptor head evaluates the normalised map only at the pixels it reads (its KxK patches and the
  4 neighbours of each bilinear sample), level by level.
* Batch norms are folded into the preceding convolutions (inference statistics); the CNN runs
  channels-last; the NMS window maximum is computed by shifted maxima (exact) instead of max-pooling.
* The deformable convolution is ours (:func:`deform_conv2d`, torchvision's semantics).

Together about 2x faster than a straight dense port on a CPU (measured at 640x480, one thread).

Other behaviour:

* Images too small to hold a keypoint (no pixel farther than ``max(r, border_removal)`` from every
  edge, or a side shorter than K + 1) give empty Features without running the network.
* Under fp16/bf16 only the CNN (encoder, aggregation convs, score head) runs in autocast; sampling
  positions of the deformable convolutions, detection and the descriptor head stay float32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..features import Features
from ..interfaces import DetectionOptions
from .detection import nms
from .extractor import LOW_PRECISION, LearnedExtractor
from .weights import Checkpoint, load_into

DEFAULT_THRESHOLD = 0.2  # on the sigmoid score map
DEFAULT_NMS_RADIUS = 2  # 5x5 window
N_LIMIT = 20000  # threshold mode: keep at most this many (the original's n_limit_max)
SOFT_ARGMAX_TEMPERATURE = 0.1
SIZE_MULTIPLE = 32  # the encoder pools by 2 * 4 * 4
_WRAPPER_PREFIXES = ("module.", "model.", "extractor.")
_CHUNK_PIXELS = 1 << 16  # full-resolution 1x1 convs run on this many pixels at a time
_NORM_EPS = 1e-12  # F.normalize's default, as the original's normalisation of the feature map


@dataclass(frozen=True)
class ALIKEDArch:
    """Sizes of one ALIKED variant (the original's ``cfgs`` rows: c1, c2, c3, c4, dim, K, M)."""

    c1: int = 16
    c2: int = 32
    c3: int = 64
    c4: int = 128
    dim: int = 128  # descriptor dimension; the aggregated map has dim channels (dim/4 per level)
    kernel: int = 3  # K: SDDH patch size
    positions: int = 16  # M: SDDH sample positions

    @property
    def name(self) -> str:
        known = {ALIKEDArch(8, 16, 32, 64, 64, 3, 16): "aliked-t16", ALIKEDArch(): "aliked-n16",
                 ALIKEDArch(16, 32, 64, 128, 128, 3, 32): "aliked-n32"}
        return known.get(self, "aliked-custom")

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "ALIKEDArch":
        """Sizes read from the tensors' shapes; KeyError/ValueError when they are missing or
        inconsistent (the caller then reports the mismatches against the default layout)."""
        def out(name: str) -> int:
            return int(state_dict[name].shape[0])

        offset = state_dict["desc_head.offset_conv.0.weight"]
        arch = cls(c1=out("block1.conv1.weight"), c2=out("block2.conv1.weight"),
                   c3=out("block3.conv1.regular_conv.weight"), c4=out("block4.conv1.regular_conv.weight"),
                   dim=out("desc_head.sf_conv.weight"), kernel=int(offset.shape[-1]),
                   positions=out("desc_head.agg_weights"))
        if arch.c4 != arch.dim or arch.dim % 4 or min(arch.c1, arch.c2, arch.c3, arch.dim, arch.kernel,
                                                       arch.positions) < 1:
            raise ValueError(f"inconsistent ALIKED sizes {arch}")
        return arch


# ---------------------------------------------------------------------- SELU

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_CHUNK = 1 << 20  # elements per pass: 4 MiB of float32, cache-resident between the passes


def _selu_(x: torch.Tensor) -> torch.Tensor:
    """In-place SELU, ``scale * (max(x, 0) + alpha * (exp(min(x, 0)) - 1))``, returning x.

    Same values as ``F.selu`` up to float rounding (|difference| < 1e-6 for |x| < 10), about a third
    faster on a CPU: torch's ELU kernel evaluates ``expm1`` on every element, which costs 2-3x ``exp``;
    this runs ``exp`` plus four cheap passes on cache-sized chunks. SELU is ~30 % of the CNN's time."""
    if x.is_contiguous():
        flat = x.view(-1)
    elif x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        flat = x.permute(0, 2, 3, 1).view(-1)
    else:
        return F.selu(x, inplace=True)
    scratch = torch.empty(min(_SELU_CHUNK, flat.numel()), dtype=x.dtype, device=x.device)
    for chunk in flat.split(_SELU_CHUNK):
        negative = torch.clamp(chunk, max=0, out=scratch[:chunk.numel()]).exp_().sub_(1)
        chunk.clamp_min_(0).mul_(_SELU_SCALE).add_(negative, alpha=_SELU_ALPHA * _SELU_SCALE)
    return x


# ---------------------------------------------------------------------- deformable convolution


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, padding: int | tuple[int, int] = 0,
                  stride: int | tuple[int, int] = 1, dilation: int | tuple[int, int] = 1) -> torch.Tensor:
    """Deformable convolution v2, the semantics of ``torchvision.ops.deform_conv2d`` (one weight
    group, one offset group).

    x (B, C, H, W); weight (O, C, kh, kw); offset (B, 2*kh*kw, Ho, Wo) holding (dy, dx) per kernel
    point k = i*kw + j (row-major); mask (B, kh*kw, Ho, Wo) or None. Kernel point k of output pixel
    (y, x) reads the input at (y*sh - ph + i*dh + dy, x*sw - pw + j*dw + dx), bilinearly, each of the
    four neighbours outside the image counting as zero; it is multiplied by the mask, then the
    weights. One ``grid_sample`` gathers every kernel point (im2col), one matrix product applies the
    weights. The sampling runs in float32 whatever the input dtype; the product follows autocast."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    batch, channels, height, width = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    if in_channels != channels:
        raise ValueError(f"weight takes {in_channels} input channels, x has {channels}")
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    points = kh * kw
    if offset.shape != (batch, 2 * points, out_h, out_w):
        raise ValueError(f"offset must be {(batch, 2 * points, out_h, out_w)}, got {tuple(offset.shape)}")
    if mask is not None and mask.shape != (batch, points, out_h, out_w):
        raise ValueError(f"mask must be {(batch, points, out_h, out_w)}, got {tuple(mask.shape)}")
    device = x.device
    offset = offset.float().view(batch, points, 2, out_h, out_w)
    rows = torch.arange(kh, device=device).repeat_interleave(kw) * dh  # kernel row of each point
    cols = torch.arange(kw, device=device).repeat(kh) * dw
    base_y = (torch.arange(out_h, device=device) * sh - ph)[None, :, None] + rows[:, None, None]  # (P, Ho, 1)
    base_x = (torch.arange(out_w, device=device) * sw - pw)[None, None, :] + cols[:, None, None]  # (P, 1, Wo)
    y = base_y + offset[:, :, 0]  # (B, P, Ho, Wo) input rows
    x_pos = base_x + offset[:, :, 1]
    # grid_sample's align_corners=False convention: pixel i spans [i - 0.5, i + 0.5] -> exact for size 1
    grid = torch.stack(((2 * x_pos + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)
    sampled = F.grid_sample(x.float(), grid.view(batch, points * out_h, out_w, 2), mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (B, C, P*Ho, Wo)
    sampled = sampled.view(batch, channels, points, out_h * out_w)
    if mask is not None:
        sampled = sampled * mask.float().view(batch, 1, points, out_h * out_w)
    # (B, Ho*Wo, O): the result comes out channels-last, as the convolutions around it prefer
    out = torch.matmul(sampled.view(batch, channels * points, out_h * out_w).transpose(1, 2),
                       weight.reshape(out_channels, channels * points).t())
    if bias is not None:
        out = out + bias
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)


class _DeformConv(nn.Module):
    """3x3 deformable conv without modulation; offsets from a 3x3 conv, clamped to +-max(H, W)/4."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.padding = kernel // 2
        self.offset_conv = nn.Conv2d(in_channels, 2 * kernel * kernel, kernel, padding=self.padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel, padding=self.padding, bias=False)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """``weight``/``bias``: replace regular_conv's (a folded batch norm)."""
        limit = max(x.shape[-2:]) / 4.0
        offset = self.offset_conv(x).clamp(-limit, limit)
        weight = self.regular_conv.weight if weight is None else weight
        return deform_conv2d(x, offset, weight, bias, padding=self.padding)


def _conv3x3(in_channels: int, out_channels: int, deformable: bool) -> nn.Module:
    if deformable:
        return _DeformConv(in_channels, out_channels)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def _conv_bn(conv: nn.Module, norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` with the (inference) batch norm folded into the convolution's weights:
    one pass over the output instead of two. Same values up to float rounding."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if isinstance(conv, _DeformConv):
        return conv(x, conv.regular_conv.weight * scale.view(-1, 1, 1, 1), bias)
    return F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), bias, padding=conv.padding)


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, False)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _selu_(_conv_bn(self.conv1, self.bn1, x))
        return _selu_(_conv_bn(self.conv2, self.bn2, x))


class _ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, deformable: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, deformable)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, deformable)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _selu_(_conv_bn(self.conv1, self.bn1, x))
        out = _conv_bn(self.conv2, self.bn2, out)
        return _selu_(out.add_(self.downsample(x)))


class _SDDH(nn.Module):
    """Sparse deformable descriptor head (parameters only; the computation is ALIKED._describe)."""

    def __init__(self, dim: int, kernel: int, positions: int) -> None:
        super().__init__()
        self.kernel, self.positions = kernel, positions
        self.offset_conv = nn.Sequential(nn.Conv2d(dim, 2 * positions, kernel, bias=True), nn.SELU(),
                                         nn.Conv2d(2 * positions, 2 * positions, 1, bias=True))
        self.sf_conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.agg_weights = nn.Parameter(torch.zeros(positions, dim, dim))


@dataclass
class _Dense:
    """CNN output for a batch: the score map cropped to the image, and what the descriptor head
    needs to evaluate the aggregated feature map at any pixel."""

    scores: torch.Tensor  # (B, H, W) float32
    rows: torch.Tensor  # (B, Hp*Wp, c1): block1's output, one row per padded pixel (channels-last view)
    levels: list[torch.Tensor]  # [(B, dim/4, Hp/2, Wp/2), (.., Hp/8, ..), (.., Hp/32, ..)] float32:
    # levels 2-4 after their 1x1 conv + SELU, before upsampling; channels-last (grid_sample then
    # gathers all channels of a texel at once: ~3x faster on a CPU)
    size: tuple[int, int]  # padded (Hp, Wp)
    pad_top: int
    pad_left: int


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes ("module.", "model.", "extractor.") from the names; everything else
    passes through for the strict check."""
    converted: dict[str, Any] = {}
    for name, value in state_dict.items():
        stripped = name
        while stripped.startswith(_WRAPPER_PREFIXES):
            stripped = stripped.split(".", 1)[1]
        converted[stripped] = value
    return converted


class ALIKED(LearnedExtractor):
    """ALIKED network plus the original DKD detection (see the module docstring), behind the
    Extractor protocol. Keypoints are (x, y) pixel coordinates with pixel centres at integers, in the
    input image's own pixels (resizing is undone with ``x_orig = (x + 0.5) * W_orig / W_resized - 0.5``).
    """

    features = "aliked"
    rgb = True  # the network takes RGB (gray input is replicated)

    def __init__(self, arch: ALIKEDArch = ALIKEDArch(), options: DetectionOptions | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.arch = arch
        self.options = options or DetectionOptions()
        self.compute_dtype = dtype
        self.descriptor_dim = arch.dim
        quarter = arch.dim // 4
        self.block1 = _ConvBlock(3, arch.c1)
        self.block2 = _ResBlock(arch.c1, arch.c2, deformable=False)
        self.block3 = _ResBlock(arch.c2, arch.c3, deformable=True)
        self.block4 = _ResBlock(arch.c3, arch.c4, deformable=True)
        self.conv1 = nn.Conv2d(arch.c1, quarter, 1, bias=False)
        self.conv2 = nn.Conv2d(arch.c2, quarter, 1, bias=False)
        self.conv3 = nn.Conv2d(arch.c3, quarter, 1, bias=False)
        self.conv4 = nn.Conv2d(arch.dim, quarter, 1, bias=False)
        self.score_head = nn.Sequential(
            nn.Conv2d(arch.dim, 8, 1, bias=False), nn.SELU(),
            nn.Conv2d(8, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.SELU(),
            nn.Conv2d(4, 1, 3, padding=1, bias=False))
        self.desc_head = _SDDH(arch.dim, arch.kernel, arch.positions)
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any], options: DetectionOptions = DetectionOptions(),
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                        source: str = "state_dict") -> "ALIKED":
        """Build the variant the tensors' shapes describe (original parameter names; wrapper
        prefixes stripped) and load strictly: a missing, unexpected or mis-shaped tensor is a
        WeightsError naming it."""
        tensors = convert_state_dict(state_dict)
        try:
            arch = ALIKEDArch.from_state_dict(tensors)
        except (KeyError, ValueError, IndexError, AttributeError):
            arch = ALIKEDArch()  # the strict check below names what is missing or mis-shaped
        model = cls(arch, options, dtype)
        load_into(model, Checkpoint(source=source, directory=Path("."), config={}, state_dict=tensors))
        # channels-last: oneDNN's convolutions, pooling and grid_sample are faster in NHWC (~25 % for
        # the whole CNN on a CPU, float32 too); cuDNN's low-precision convolutions prefer it as well
        return model.to(device=device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> list[Features]:
        """Detect and describe on a (B, 3, H, W) float RGB batch in [0, 1], without resizing."""
        if images.ndim != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
            raise ValueError(f"forward expects a (B, 3, H, W) float tensor, got {tuple(images.shape)} {images.dtype}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        batch, _, height, width = images.shape
        opts = self.options
        radius = opts.radius(DEFAULT_NMS_RADIUS)
        border = max(radius, opts.border_removal)
        if min(height, width) <= 2 * border or min(height, width) < self.arch.kernel + 1:
            return [self._empty((width, height)) for _ in range(batch)]
        dense = self._dense(images.to(self.device))
        candidates = self._detect(dense.scores, radius, border)
        results = []
        for b, indices in enumerate(candidates):
            if len(indices) == 0:
                results.append(self._empty((width, height)))
                continue
            keypoints, normalised, scores = self._refine(dense.scores[b], indices, radius)
            descriptors = self._describe(dense, b, normalised, (height, width))
            results.append(Features(keypoints, scores, descriptors, (width, height)))
        return results

    def _empty(self, image_size: tuple[int, int]) -> Features:
        return Features.empty(image_size, self.descriptor_dim, self.device)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.compute_dtype in LOW_PRECISION:
            return torch.autocast(device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _dense(self, images: torch.Tensor) -> _Dense:
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(images, (left, pad_w - left, top, pad_h - top), mode="replicate") if pad_h or pad_w else images
        x = x.to(self.block1.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
        batch, _, full_h, full_w = x.shape
        head = self.score_head
        quarter = self.arch.dim // 4
        weight = head[0].weight.view(8, 4, quarter)  # score_head[0] per level
        with self._autocast(x.device):
            x1 = self.block1(x)
            x2 = self.block2(F.avg_pool2d(x1, 2))
            x3 = self.block3(F.avg_pool2d(x2, 4))
            x4 = self.block4(F.avg_pool2d(x3, 4))
            rows = x1.permute(0, 2, 3, 1).reshape(-1, x1.shape[1])  # a view when x1 is channels-last
            # score_head[0] is a 1x1 conv (linear, per pixel) and bilinear upsampling is linear per
            # channel: apply it to each level before upsampling (8 channels upsampled instead of
            # dim). The full-resolution level (dim/4 channels) is never stored: its 1x1 conv, SELU and
            # score_head[0] part run on chunks of pixels (the descriptor head recomputes it where needed).
            conv1, head1 = self.conv1.weight.view(quarter, -1).t(), weight[:, 0].t()
            s = torch.cat([_selu_(chunk @ conv1) @ head1 for chunk in rows.split(_CHUNK_PIXELS)])
            s = s.view(batch, full_h, full_w, 8).permute(0, 3, 1, 2)
            levels = []
            for i, (conv, level) in enumerate(zip((self.conv2, self.conv3, self.conv4), (x2, x3, x4)), start=1):
                level = _selu_(conv(level))
                levels.append(level)
                s = s.add_(F.interpolate(F.conv2d(level, weight[:, i, :, None, None]), size=(full_h, full_w),
                                         mode="bilinear", align_corners=True))
            s = head[6](_selu_(head[4](_selu_(head[2](_selu_(s))))))  # head[1, 3, 5] are SELUs
        scores = torch.sigmoid(s.float())[:, 0, top:top + height, left:left + width]
        lows = [level.float().contiguous(memory_format=torch.channels_last) for level in levels]
        return _Dense(scores.contiguous(), rows.view(batch, full_h * full_w, -1), lows, (full_h, full_w), top, left)

    def _detect(self, scores: torch.Tensor, radius: int, border: int) -> list[torch.Tensor]:
        """Per image: flat indices into the (H, W) score map of the kept maxima, in output order."""
        batch, height, width = scores.shape
        suppressed = nms(scores, radius)
        suppressed[:, :border] = 0
        suppressed[:, height - border:] = 0
        suppressed[:, :, :border] = 0
        suppressed[:, :, width - border:] = 0
        flat = suppressed.view(batch, -1)
        opts = self.options
        out = []
        if opts.max_keypoints > 0:  # top-k mode: the threshold is ignored, as the original
            values, indices = torch.topk(flat, min(opts.max_keypoints, flat.shape[1]), dim=1)
            for b in range(batch):
                keep = values[b] > 0  # only NMS survivors (the original would pad with suppressed pixels)
                out.append(indices[b][keep])
            return out
        threshold = opts.threshold(DEFAULT_THRESHOLD)
        for b in range(batch):
            limit = threshold if threshold > 0 else scores[b].mean()
            indices = torch.nonzero(flat[b] > limit)[:, 0]  # raster order
            if len(indices) == 0 and threshold > 0:  # nothing above the threshold: above the mean
                indices = torch.nonzero(flat[b] > scores[b].mean())[:, 0]
            if len(indices) > N_LIMIT:
                order = torch.sort(scores[b].view(-1)[indices], descending=True).indices[:N_LIMIT]
                indices = indices[order]
            out.append(indices)
        return out

    def _refine(self, scores: torch.Tensor, indices: torch.Tensor, radius: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Soft-argmax refinement of one image's maxima: (keypoints (N, 2) pixels, the same in the
        original's normalised [-1, 1] coordinates, scores sampled at the keypoints)."""
        height, width = scores.shape
        size = 2 * radius + 1
        y, x = indices // width, indices % width
        padded = F.pad(scores, (radius, radius, radius, radius))
        window = torch.arange(size, device=scores.device)
        patches = padded[(y[:, None] + window)[:, :, None], (x[:, None] + window)[:, None, :]]
        patches = patches.reshape(len(indices), size * size)  # row-major (dy, dx), as nn.Unfold
        offsets = window.to(scores.dtype) - radius
        grid = torch.stack((offsets.repeat(size), offsets.repeat_interleave(size)), dim=1)  # (dx, dy)
        weights = ((patches - patches.max(dim=1, keepdim=True).values) / SOFT_ARGMAX_TEMPERATURE).exp()
        residual = weights @ grid / weights.sum(dim=1, keepdim=True)
        wh = scores.new_tensor([width - 1, height - 1])
        # Through the original's normalised coordinates and back, so the rounding (and the integer
        # patch corners derived from it in _describe) match the original's.
        normalised = (torch.stack((x, y), dim=1).to(scores.dtype) + residual) / wh * 2 - 1
        sampled = F.grid_sample(scores[None, None], normalised.view(1, 1, -1, 2), mode="bilinear",
                                align_corners=True)[0, 0, 0]
        return wh * (normalised + 1) / 2, normalised, sampled

    def _pixel_features(self, dense: _Dense, b: int, y: torch.Tensor, x: torch.Tensor
                        ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """The aggregated feature map of image b (the original builds it densely) at integer image
        pixels (y, x) (any shape, flattened to P), in parts: the full-resolution level (P, dim/4),
        the three upsampled levels [(dim/4, P)] * 3, and the map's L2 norm at each pixel (P,).
        Float32. (Kept apart: one (dim, P) block would be a large temporary.)"""
        y = y.reshape(-1) + dense.pad_top
        x = x.reshape(-1) + dense.pad_left
        height, width = dense.size
        quarter = self.arch.dim // 4
        pixels = dense.rows[b].index_select(0, y * width + x).float()
        first = _selu_(pixels @ self.conv1.weight.float().view(quarter, -1).t())
        # upsampling with align_corners=True maps full-resolution pixel p to p * (n - 1) / (N - 1)
        grid = torch.stack((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), dim=1).float().view(1, 1, -1, 2)
        parts = [F.grid_sample(level[b:b + 1], grid, mode="bilinear", align_corners=True)[0, :, 0]
                 for level in dense.levels]
        squares = first.square().sum(1)
        for part in parts:
            squares += part.square().sum(0)
        return first, parts, squares.sqrt_().clamp_min_(_NORM_EPS)

    def _sample_features(self, dense: _Dense, b: int, gx: torch.Tensor, gy: torch.Tensor,
                         size: tuple[int, int]) -> torch.Tensor:
        """Bilinear samples (dim, S) of the L2-normalised map at (gx, gy) (S,) in the original's
        normalised coordinates (``align_corners=True``), zero outside the (unpadded) image: what
        ``grid_sample`` on the dense normalised map gives, evaluated at the four neighbours only
        (each neighbour's normalisation folded into its bilinear weight)."""
        height, width = size
        ix = (gx + 1) / 2 * (width - 1)  # grid_sample's unnormalisation
        iy = (gy + 1) / 2 * (height - 1)
        x0, y0 = ix.floor(), iy.floor()
        fx, fy = ix - x0, iy - y0
        corner_x = torch.stack((x0, x0 + 1, x0, x0 + 1)).long()  # (4, S): nw, ne, sw, se
        corner_y = torch.stack((y0, y0, y0 + 1, y0 + 1)).long()
        weights = torch.stack(((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy))
        inside = (corner_x >= 0) & (corner_x < width) & (corner_y >= 0) & (corner_y < height)
        first, parts, norms = self._pixel_features(dense, b, corner_y.clamp(0, height - 1),
                                                   corner_x.clamp(0, width - 1))
        weights = weights * inside / norms.view(4, -1)
        count = len(gx)
        first = first.view(4, count, -1)
        blended = [first[0] * weights[0, :, None]]
        for corner in range(1, 4):
            blended[0].addcmul_(first[corner], weights[corner, :, None])
        blended[0] = blended[0].t()
        for part in parts:
            part = part.view(-1, 4, count)
            out = part[:, 0] * weights[0]
            for corner in range(1, 4):
                out.addcmul_(part[:, corner], weights[corner])
            blended.append(out)
        return torch.cat(blended)

    def _describe(self, dense: _Dense, b: int, normalised: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """SDDH descriptors (N, dim) of image b at keypoints given in normalised coordinates.
        Everything runs in (channels, points) layout, so each step is one matrix product."""
        height, width = size
        head = self.desc_head
        k, m = head.kernel, head.positions
        count = len(normalised)
        wh = normalised.new_tensor([width - 1, height - 1])
        pixels = (normalised / 2 + 0.5) * wh
        # KxK patch whose corner is (long(p) + 1 - K/2) truncated, clamped into the image, as the original
        corner = torch.floor(pixels.long() + 1 - k / 2).long()
        corner_x = corner[:, 0].clamp(0, width - 1 - k)
        corner_y = corner[:, 1].clamp(0, height - 1 - k)
        window = torch.arange(k, device=normalised.device)
        patch_y = (corner_y + window[:, None])[:, None, :].expand(k, k, count)  # (ky, kx, N)
        patch_x = (corner_x + window[:, None])[None, :, :].expand(k, k, count)
        first, parts, norms = self._pixel_features(dense, b, patch_y, patch_x)
        patches = torch.cat([first.t(), *parts]) / norms  # (dim, K*K*N), L2-normalised columns
        conv0, conv1 = head.offset_conv[0], head.offset_conv[2]
        dim = patches.shape[0]
        hidden = torch.addmm(conv0.bias.float()[:, None], conv0.weight.float().reshape(2 * m, dim * k * k),
                             patches.view(dim * k * k, count))  # (c, ky, kx) rows, as the weight
        offsets = torch.addmm(conv1.bias.float()[:, None], conv1.weight.float().view(2 * m, 2 * m), F.selu(hidden))
        limit = max(height, width) / 4.0
        offsets = offsets.clamp(-limit, limit)  # (2M, N): M x offsets, then M y offsets
        px = pixels[:, 0] + offsets[:m]  # (M, N): samples ordered (position, keypoint)
        py = pixels[:, 1] + offsets[m:]
        samples = self._sample_features(dense, b, (2.0 * px / wh[0] - 1).view(-1), (2.0 * py / wh[1] - 1).view(-1),
                                        size)  # (dim, M*N)
        samples = _selu_(head.sf_conv.weight.float().view(dim, dim) @ samples)
        # descriptor[d] = sum over (c, p) of samples[c, p] * agg[p, c, d]: one product with (c, p) rows
        aggregate = head.agg_weights.float().permute(2, 1, 0).reshape(dim, dim * m)
        descriptors = aggregate @ samples.view(dim * m, count)  # (D, N)
        return F.normalize(descriptors, p=2, dim=0).t().contiguous()



"""Native XFeat (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024)
sparse keypoint detector and 64-d descriptor, reproducing verlab's ``XFeat.detectAndCompute``.

Pipeline, as the reference:

1. the (B, 1, H, W) gray batch in [0, 1] is resized (bilinear, no antialias) down to H and W floored to
   multiples of 32, then instance-normalised per image (eps 1e-5);
2. the CNN gives, at 1/8 resolution, 65 keypoint logits per 8x8 cell (64 pixels + dustbin, from the
   normalised pixels of the cell), a sigmoid reliability map and a 64-d dense descriptor map;
3. heatmap = softmax over the 65 logits, dustbin dropped, cells unfolded to full resolution;
4. candidates = local maxima of a (2r+1)x(2r+1) max-pool (default r = 2, the reference's kernel 5)
   with heatmap > threshold (strict; default 0.05);
5. score = heatmap at the pixel x reliability sampled bilinearly there; candidates sorted by score
   (descending: the returned order), the best ``max_keypoints`` kept;
6. descriptors = the L2-normalised dense map sampled bicubically at the keypoints, L2-normalised again.

Defaults (used when the :class:`DetectionOptions` field is < 0): ``keypoint_threshold`` =
:data:`DETECTION_THRESHOLD` (0.05), ``nms_radius`` = :data:`NMS_RADIUS` (2).
``max_keypoints = -1`` means no limit, as for every extractor here; the reference's own default is
``top_k = 4096`` (:data:`REFERENCE_TOP_K`): set ``max_keypoints: 4096`` to get its behaviour.

Deviations from the reference (each bounded or outside its scope):

* Keypoints are mapped back from the 32-multiple grid with the pixel-centre convention of the rest of
  the package, ``x_in = (x + 0.5) * W / W32 - 0.5`` (which is what the bilinear resize does); the
  reference multiplies, ``x * W / W32``. The two differ by ``0.5 * (W / W32 - 1)`` pixels at most
  (0.016 px for 330 px wide; 0 when H and W are multiples of 32).
* ``border_removal`` (the reference has none) drops keypoints closer than that many pixels of the
  forward input (after ``resize_max``) to any border. Use 0 to get the reference's set.
* Images smaller than 32 pixels in either direction return empty Features (the reference fails).
* RGB input is converted with the package's BT.601 weights (``imaging``); the reference averages the
  channels. Gray input is identical.
* The BatchNorm layers (eval statistics) are folded into the preceding convolutions at load time:
  a few ulp of difference in the CNN outputs, which can only flip candidates whose heatmap value
  sits within ~1e-6 of the threshold or of a neighbour, or swap near-ties at the top-k cut.

Kept from the reference on purpose (they only matter with ``border_removal = 0``): its score
sampling puts the last row and the last column of the 32-multiple grid outside the image (score 0,
dropped), and it treats a keypoint at (0, 0) as padding (dropped).

Weights: verlab's ``xfeat.pt`` (packaged as ``"xfeat"``), or the ``extractor.``-prefixed copy inside
``xfeat-lighterglue.pt``. Note that copy holds other BatchNorm statistics than ``xfeat.pt``; the
reference LighterGlue pipeline extracts with ``xfeat.pt``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..features import Features
from ..interfaces import DetectionOptions
from .detection import max_filter
from .extractor import LOW_PRECISION, LearnedExtractor
from .weights import Checkpoint, WeightsError, load_into

DETECTION_THRESHOLD = 0.05  # heatmap threshold (strict >), the reference's detection_threshold
NMS_RADIUS = 2  # max-pool NMS window 2r+1 = 5, the reference's kernel_size
REFERENCE_TOP_K = 4096  # the reference's default top_k (ours: options.max_keypoints, -1 = no limit)
DESCRIPTOR_DIM = 64
CELL = 8  # keypoint logits: one 8x8 pixel cell per position of the 1/8 map
SIZE_MULTIPLE = 32  # the network input is resized down to multiples of this (the coarsest stride)

_BN_EPS = 1e-5

# (in, out, kernel, stride) of each conv -> BatchNorm (no affine) -> ReLU layer, per block.
_LAYERS: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "block1": ((1, 4, 3, 1), (4, 8, 3, 2), (8, 8, 3, 1), (8, 24, 3, 2)),  # 1/4
    "block2": ((24, 24, 3, 1), (24, 24, 3, 1)),  # 1/4
    "block3": ((24, 64, 3, 2), (64, 64, 3, 1), (64, 64, 1, 1)),  # 1/8
    "block4": ((64, 64, 3, 2), (64, 64, 3, 1), (64, 64, 3, 1)),  # 1/16
    "block5": ((64, 128, 3, 2), (128, 128, 3, 1), (128, 128, 3, 1), (128, 64, 1, 1)),  # 1/32
    "block_fusion": ((64, 64, 3, 1), (64, 64, 3, 1)),  # + 1x1 conv 64 -> 64 (descriptors)
    "heatmap_head": ((64, 64, 1, 1), (64, 64, 1, 1)),  # + 1x1 conv 64 -> 1, sigmoid (reliability)
    "keypoint_head": ((64, 64, 1, 1), (64, 64, 1, 1), (64, 64, 1, 1)),  # + 1x1 conv 64 -> 65 (logits)
}
_HEAD_OUT = {"block_fusion": DESCRIPTOR_DIM, "heatmap_head": 1, "keypoint_head": CELL * CELL + 1}


class _ConvBNReLU(nn.Module):
    """conv (no bias) -> BatchNorm with frozen statistics and no affine -> ReLU. ``fold`` merges the
    normalisation into the conv (weight / std, bias -mean / std)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
        self.register_buffer("running_mean", torch.zeros(out_channels))
        self.register_buffer("running_var", torch.ones(out_channels))
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if not self.folded:
            x = F.batch_norm(x, self.running_mean, self.running_var, training=False, eps=_BN_EPS)
        return F.relu(x, inplace=True)

    @torch.no_grad()
    def fold(self) -> None:
        if self.folded:
            return
        inv_std = (self.running_var.double() + _BN_EPS).rsqrt()
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          bias=True, device=conv.weight.device)
        fused.weight.copy_(conv.weight.double() * inv_std[:, None, None, None])
        fused.bias.copy_(-self.running_mean.double() * inv_std)
        self.conv = fused
        self.folded = True


def _block(name: str) -> nn.Sequential:
    layers: list[nn.Module] = [_ConvBNReLU(*spec) for spec in _LAYERS[name]]
    if name in _HEAD_OUT:
        layers.append(nn.Conv2d(_LAYERS[name][-1][1], _HEAD_OUT[name], 1))
    return nn.Sequential(*layers)


def _cells_to_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 64, H/8, W/8): each 8x8 cell's pixels as channels (row-major within the cell),
    i.e. ``F.pixel_unshuffle(x, 8)``, produced directly in channels-last memory (one copy, no
    conversion before the 1x1 convs)."""
    b, _, h, w = x.shape
    return (x.reshape(b, h // CELL, CELL, w // CELL, CELL).permute(0, 1, 3, 2, 4)
            .reshape(b, h // CELL, w // CELL, CELL * CELL).permute(0, 3, 1, 2))


def _heatmap(logits: torch.Tensor) -> torch.Tensor:
    """(B, 65, h, w) cell logits -> (B, 8h, 8w) keypoint heatmap: softmax over the 65 classes, dustbin
    dropped, each cell's 64 probabilities laid out as its 8x8 pixels (``F.pixel_shuffle``'s values;
    read from channels-last logits in one copy)."""
    b, _, h, w = logits.shape
    probs = logits.softmax(1).permute(0, 2, 3, 1)[..., :CELL * CELL]
    return probs.reshape(b, h, w, CELL, CELL).permute(0, 1, 3, 2, 4).reshape(b, h * CELL, w * CELL)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original XFeat checkpoint keys -> this module's keys.

    Accepts verlab's ``xfeat.pt`` layout (``block1.0.layer.0.weight``, ``...layer.1.running_mean``)
    and the copy inside ``xfeat-lighterglue.pt`` (``extractor.model.net.`` prefix; its ``matcher.``
    tensors are left out). Dropped on purpose: ``fine_matcher.*`` (the XFeat* semi-dense refinement
    MLP, unused by sparse extraction) and BatchNorm ``num_batches_tracked`` counters (training only).
    Everything else must match exactly (checked by the caller)."""
    items = dict(state_dict)
    if any(key.startswith("extractor.") for key in items):
        items = {key[len("extractor."):]: v for key, v in items.items() if key.startswith("extractor.")}
    for prefix in ("model.net.", "net."):
        if items and all(key.startswith(prefix) for key in items):
            items = {key[len(prefix):]: v for key, v in items.items()}
    converted = {}
    for key, value in items.items():
        if key.startswith("fine_matcher.") or key.endswith(".num_batches_tracked"):
            continue
        converted[key.replace(".layer.0.", ".conv.").replace(".layer.1.", ".")] = value
    return converted


class XFeat(LearnedExtractor):
    """XFeat network plus the reference's sparse post-processing (see the module docstring).

    Build with :meth:`from_state_dict`, :meth:`from_pretrained` or :meth:`from_config`: they load the
    weights strictly and fold the BatchNorms. Keypoints come back in the input image's own pixels
    (pixel centres at integers), sorted by descending score."""

    features = "xfeat"
    rgb = False  # the network takes gray (RGB input is converted, BT.601)
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, options: DetectionOptions | None = None, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.options = options or DetectionOptions()
        self.compute_dtype = dtype
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1))
        for name in _LAYERS:
            self.add_module(name, _block(name))
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], options: DetectionOptions | None = None,
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                        source: str = "state dict") -> "XFeat":
        """Model from an original XFeat state dict (see :func:`convert_state_dict`). Missing,
        unexpected or mis-shaped tensors raise :class:`WeightsError` naming them."""
        bad = sorted(key for key, value in state_dict.items() if not isinstance(value, torch.Tensor))
        if bad:
            raise WeightsError(f"weights '{source}' are not an XFeat state dict (non-tensor entries: "
                               f"{', '.join(map(str, bad[:4]))})")
        model = cls(options, dtype=dtype)
        load_into(model, Checkpoint(source=source, directory=Path("."), config={},
                                    state_dict=convert_state_dict(state_dict)))
        for module in model.modules():
            if isinstance(module, _ConvBNReLU):
                module.fold()
        # NHWC: oneDNN / cuDNN convs are faster on it (CPU fp32: ~10 % on the CNN), and the per-pixel
        # channel reductions (softmax, descriptor norms) read contiguous memory.
        return model.to(device, memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, gray: torch.Tensor) -> list[Features]:
        """Detect and describe on a (B, 1, H, W) float batch in [0, 1] (no ``resize_max`` here);
        keypoints in the batch's (H, W) pixels."""
        if gray.ndim != 4 or gray.shape[1] != 1 or not gray.is_floating_point():
            raise ValueError(f"forward expects a (B, 1, H, W) float tensor, got {tuple(gray.shape)} {gray.dtype}")
        batch, _, height, width = gray.shape
        device = self.device
        grid_h, grid_w = height // SIZE_MULTIPLE * SIZE_MULTIPLE, width // SIZE_MULTIPLE * SIZE_MULTIPLE
        if grid_h == 0 or grid_w == 0 or batch == 0:
            return [Features.empty((width, height), DESCRIPTOR_DIM, device) for _ in range(batch)]
        x = gray.to(device, torch.float32)
        if (grid_h, grid_w) != (height, width):
            x = F.interpolate(x, (grid_h, grid_w), mode="bilinear", align_corners=False)
        logits, reliability, dense = self._dense(x)
        heatmap = _heatmap(logits)  # (B, H32, W32)
        threshold = self.options.threshold(DETECTION_THRESHOLD)
        peaks = (heatmap > threshold) & (heatmap == max_filter(heatmap, self.options.radius(NMS_RADIUS)))
        dense = F.normalize(dense, dim=1)
        return [self._select(heatmap[b], peaks[b], reliability[b], dense[b], (width, height))
                for b in range(batch)]

    def _dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CNN on the (B, 1, H32, W32) batch: (keypoint logits (B, 65, h, w), reliability (B, 1, h, w),
        descriptor map (B, 64, h, w)) at 1/8 resolution, float32."""
        x = F.instance_norm(x, eps=1e-5)
        autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.compute_dtype in LOW_PRECISION:
            autocast = torch.autocast(x.device.type, dtype=self.compute_dtype)
        with autocast:
            x2 = self.block2(self.block1(x) + self.skip1(x))
            x3 = self.block3(x2)
            x4 = self.block4(x3)
            x5 = self.block5(x4)
            size = x3.shape[-2:]
            fused = (x3 + F.interpolate(x4, size, mode="bilinear", align_corners=False)
                     + F.interpolate(x5, size, mode="bilinear", align_corners=False))
            dense = self.block_fusion(fused)
            reliability = self.heatmap_head(dense).sigmoid()
            logits = self.keypoint_head(_cells_to_channels(x))
        return logits.float(), reliability.float(), dense.float()

    def _select(self, heatmap: torch.Tensor, peaks: torch.Tensor, reliability: torch.Tensor,
                dense: torch.Tensor, image_size: tuple[int, int]) -> Features:
        """Score, border removal, top-k and descriptors for one image's (H32, W32) maps."""
        grid_h, grid_w = heatmap.shape
        yx = torch.nonzero(peaks)  # row-major, as the reference
        y, x = yx.unbind(1)
        # The reference's score sampling lands the last row / column outside the map (score 0), and
        # it takes (0, 0) for padding: neither is ever returned.
        keep = (y < grid_h - 1) & (x < grid_w - 1) & ((y > 0) | (x > 0))
        xy = yx.flip(1)
        width, height = image_size
        scale = heatmap.new_tensor([width / grid_w, height / grid_h])
        keypoints = (xy.float() + 0.5) * scale - 0.5  # back to the input pixels (pixel centres)
        border = self.options.border_removal
        if border > 0:
            keep &= ((keypoints >= border) & (keypoints <= keypoints.new_tensor([width, height]) - 1 - border)).all(1)
        xy, keypoints = xy[keep], keypoints[keep]
        # Sampling positions in [-1, 1] as the reference normalises them (align_corners=False grid on
        # the full-resolution pixel indices): reliability bilinear, descriptors bicubic.
        grid = (2 * (xy.float() / heatmap.new_tensor([grid_w - 1, grid_h - 1])) - 1).view(1, -1, 1, 2)
        scores = heatmap[xy[:, 1], xy[:, 0]] * F.grid_sample(
            reliability[None], grid, mode="bilinear", align_corners=False).view(-1)
        count = int((scores > 0).sum())  # a reliability that underflowed to 0 drops the point
        if 0 <= self.options.max_keypoints < count:
            count = self.options.max_keypoints
        if count == 0:
            return Features.empty(image_size, DESCRIPTOR_DIM, heatmap.device)
        scores, order = torch.topk(scores, count)  # sorted, descending; cheaper than a full sort
        descriptors = F.grid_sample(dense[None], grid[:, order], mode="bicubic", align_corners=False)
        descriptors = F.normalize(descriptors.view(DESCRIPTOR_DIM, count).t(), dim=1)
        return Features(keypoints[order].contiguous(), scores.contiguous(), descriptors.contiguous(), image_size)

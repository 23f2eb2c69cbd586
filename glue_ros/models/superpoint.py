"""Native SuperPoint (DeTone et al., CVPRW 2018) keypoint detector and descriptor.

Parameter names follow transformers' ``SuperPointForKeypointDetection`` so hub checkpoints in the
``magic-leap-community/superpoint`` layout load strictly; transformers itself is not needed.

Detection follows the original Magic Leap / cvg LightGlue code, step for step:
softmax over the 65 cell classes, drop the dustbin, pixel-shuffle to full resolution, max-pool NMS,
strict threshold, border removal on all four sides, top-k by score (``torch.topk`` on the
row-major candidate list, so ties break exactly as in the reference), bilinear descriptor sampling
with the original coordinate normalisation, L2 normalisation.

Deviations from transformers 5.23 (which otherwise matches the original):

* transformers passes ``8 * height`` / ``8 * width`` of the already full-resolution score map to its
  border filter, so it only removes points near the top and left borders. We remove all four
  borders like the original.
* Images smaller than one 8x8 cell make transformers' max-pool raise; we return empty Features.

Image sizes that are not multiples of 8 behave as in the original (neither pads): the encoder's
pooling floors, so only the top-left ``8*(H//8) x 8*(W//8)`` region can hold keypoints and the border
band is measured from that region's edges.
"""
from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ExtractorConfig
from ..features import Features, ImageLike, Images, split_images
from .weights import WeightsError, config_value, load_checkpoint, load_into


_RGB_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as the original preprocessing
_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SuperPointConfig:
    """Runtime detection options (the architecture comes from the checkpoint's config.json)."""

    keypoint_threshold: float = 0.005
    max_keypoints: int = -1  # -1 = keep all
    nms_radius: int = 4  # pixels of the (resized) image
    border_removal: int = 4  # pixels of the (resized) image, on all four sides
    resize_max: int = 0  # long side in pixels; 0 = native, never upscales

    def __post_init__(self) -> None:
        if not math.isfinite(self.keypoint_threshold) or self.keypoint_threshold < 0:
            raise ValueError(f"keypoint_threshold must be a finite number >= 0, got {self.keypoint_threshold}")
        for name, low in (("max_keypoints", -1), ("nms_radius", 0), ("border_removal", 0), ("resize_max", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv_b = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in-place ReLUs: each out-of-place one allocates another full-resolution feature map
        x = F.relu(self.conv_b(F.relu(self.conv_a(x), inplace=True)), inplace=True)
        return F.max_pool2d(x, 2) if self.pool else x


class _Encoder(nn.Module):
    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        channels = (1, *sizes)
        self.conv_blocks = nn.ModuleList(
            _ConvBlock(channels[i], channels[i + 1], pool=i < len(sizes) - 1) for i in range(len(sizes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.conv_blocks:
            x = block(x)
        return x


class _KeypointHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv_score_a = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv_score_b = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_score_b(F.relu(self.conv_score_a(x), inplace=True))


class _DescriptorHead(nn.Module):
    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.conv_descriptor_a = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv_descriptor_b = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_descriptor_b(F.relu(self.conv_descriptor_a(x), inplace=True))


def nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Max-pool non-maximum suppression of (B, H, W) scores, as in the original: keep local maxima,
    then twice re-admit maxima that appear once everything near a kept point is suppressed."""
    size = 2 * radius + 1

    def pool(x: torch.Tensor) -> torch.Tensor:
        # A square max-pool split into a row and a column pass: the same values (max is exact and
        # associative), ~3x faster than the reference's 9x9 window on CPU.
        x = F.max_pool2d(x, (1, size), stride=1, padding=(0, radius))
        return F.max_pool2d(x, (size, 1), stride=1, padding=(radius, 0))

    keep = scores == pool(scores)
    for _ in range(2):
        near = pool(keep.float()) > 0
        rest = scores.masked_fill(near, 0)
        keep |= (rest == pool(rest)) & ~near
    return scores.masked_fill(~keep, 0)


def sample_descriptors(keypoints: torch.Tensor, dense: torch.Tensor, cell: int) -> torch.Tensor:
    """Bilinearly sample L2-normalised descriptors (N, D) from a (D, h, w) map at (N, 2) full-res
    pixel positions. The normalisation (x - cell/2 + 0.5) / (w*cell - cell/2 - 0.5) is the
    original's; the exact cell-centre mapping would divide by (w - 1) * cell. Kept for parity."""
    dim, h, w = dense.shape
    extent = keypoints.new_tensor([w * cell - cell / 2 - 0.5, h * cell - cell / 2 - 0.5])
    grid = (keypoints - cell / 2 + 0.5) / extent * 2 - 1
    sampled = F.grid_sample(dense[None], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(dim, -1), p=2, dim=0).t().contiguous()


class SuperPoint(nn.Module):
    """SuperPoint network plus the original post-processing.

    Keypoints are (x, y) pixel coordinates with pixel centres at integers, in the input image's own
    pixels (resizing is undone with ``x_orig = (x + 0.5) * W_orig / W_resized - 0.5``).
    """

    def __init__(self, options: SuperPointConfig | None = None, *,
                 encoder_hidden_sizes: Sequence[int] = (64, 64, 128, 128), decoder_hidden_size: int = 256,
                 keypoint_decoder_dim: int = 65, descriptor_decoder_dim: int = 256,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if len(encoder_hidden_sizes) < 2:
            raise ValueError(f"encoder_hidden_sizes needs at least 2 entries, got {list(encoder_hidden_sizes)}")
        self.cell = 2 ** (len(encoder_hidden_sizes) - 1)  # one pooling per block but the last
        if keypoint_decoder_dim != self.cell ** 2 + 1:
            raise ValueError(f"keypoint_decoder_dim must be {self.cell}*{self.cell}+1 (one class per pixel of a "
                             f"{self.cell}x{self.cell} cell plus a dustbin), got {keypoint_decoder_dim}")
        if dtype not in (torch.float32, *_LOW_PRECISION):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.options = options or SuperPointConfig()
        self.compute_dtype = dtype
        self.descriptor_dim = descriptor_decoder_dim
        self.encoder = _Encoder(encoder_hidden_sizes)
        self.keypoint_decoder = _KeypointHead(encoder_hidden_sizes[-1], decoder_hidden_size, keypoint_decoder_dim)
        self.descriptor_decoder = _DescriptorHead(encoder_hidden_sizes[-1], decoder_hidden_size,
                                                  descriptor_decoder_dim)
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, weights: str, revision: str = "", *, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, **runtime_options) -> "SuperPoint":
        """Load a hub repo id or local directory (config.json + model.safetensors). Architecture
        sizes come from config.json; detection options from ``runtime_options``
        (see :class:`SuperPointConfig`), never from config.json."""
        options = SuperPointConfig(**runtime_options)
        checkpoint = load_checkpoint(weights, revision)
        config = checkpoint.config
        if config.get("model_type", "superpoint") != "superpoint":
            raise WeightsError(f"weights '{weights}' are a '{config['model_type']}' checkpoint, not superpoint "
                               "(check extractor.weights)")
        try:
            model = cls(options, dtype=dtype,
                        encoder_hidden_sizes=tuple(int(c) for c in
                                                   config_value(config, "encoder_hidden_sizes", (64, 64, 128, 128))),
                        decoder_hidden_size=int(config_value(config, "decoder_hidden_size", 256)),
                        keypoint_decoder_dim=int(config_value(config, "keypoint_decoder_dim", 65)),
                        descriptor_decoder_dim=int(config_value(config, "descriptor_decoder_dim", 256)))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"weights '{weights}': unusable config.json: {exc}") from None
        load_into(model, checkpoint)
        model.to(device)
        if dtype in _LOW_PRECISION:
            model.to(memory_format=torch.channels_last)  # oneDNN/cuDNN low-precision convs prefer NHWC
        return model

    @classmethod
    def from_config(cls, config: ExtractorConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> "SuperPoint":
        return cls.from_pretrained(config.weights, config.revision, device=device, dtype=dtype,
                                   keypoint_threshold=config.keypoint_threshold, max_keypoints=config.max_keypoints,
                                   nms_radius=config.nms_radius, border_removal=config.border_removal,
                                   resize_max=config.resize_max)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ inference

    @torch.inference_mode()
    def forward(self, gray: torch.Tensor) -> list[Features]:
        """Detect and describe on a (B, 1, H, W) float batch in [0, 1], without resizing."""
        if gray.ndim != 4 or gray.shape[1] != 1 or not gray.is_floating_point():
            raise ValueError(f"forward expects a (B, 1, H, W) float tensor, got {tuple(gray.shape)} {gray.dtype}")
        batch, _, height, width = gray.shape
        device = self.device
        if height < self.cell or width < self.cell:  # the encoder's pooling would leave nothing
            return [Features.empty((width, height), self.descriptor_dim, device) for _ in range(batch)]
        logits, dense = self._dense(gray.to(device))
        scores = nms(F.pixel_shuffle(logits.softmax(1)[:, :-1], self.cell)[:, 0], self.options.nms_radius)
        dense = F.normalize(dense, p=2, dim=1)
        return [self._select(scores[i], dense[i], (width, height)) for i in range(batch)]

    def _dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN part: (cell-class logits, raw descriptor map), both float32."""
        weight = self.keypoint_decoder.conv_score_b.weight
        x = x.to(weight.dtype)
        autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.compute_dtype in _LOW_PRECISION:
            x = x.contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(x.device.type, dtype=self.compute_dtype)
        with autocast:
            encoded = self.encoder(x)
            logits, dense = self.keypoint_decoder(encoded), self.descriptor_decoder(encoded)
        return logits.float(), dense.float()

    def _select(self, scores: torch.Tensor, dense: torch.Tensor, image_size: tuple[int, int]) -> Features:
        """Threshold, border removal, top-k and descriptors for one (H', W') NMS'd score map."""
        opts = self.options
        # Row-major candidate order, as torch.nonzero in the reference: top-k ties depend on it.
        yx = torch.nonzero(scores > opts.keypoint_threshold)
        border, (height, width) = opts.border_removal, scores.shape
        y, x = yx.unbind(1)
        yx = yx[(y >= border) & (y < height - border) & (x >= border) & (x < width - border)]
        kept = scores[yx[:, 0], yx[:, 1]]
        if 0 <= opts.max_keypoints < len(kept):
            kept, order = torch.topk(kept, opts.max_keypoints)
            yx = yx[order]
        keypoints = yx.flip(1).float()
        if len(keypoints) == 0:
            return Features.empty(image_size, self.descriptor_dim, scores.device)
        return Features(keypoints, kept, sample_descriptors(keypoints, dense, self.cell), image_size)

    @torch.inference_mode()
    def extract(self, images: Images) -> list[Features]:
        """Detect and describe on one image, a list of images (sizes may differ) or a batch.

        Accepted: numpy arrays or torch tensors, channels last: H×W (gray), H×W×3 (RGB), H×W×1,
        N×H×W or N×H×W×3 (batches); uint8 (0..255), uint16 (0..65535) or float in [0, 1].
        Returns one Features per image, keypoints in that image's pixels. Same-size images share
        one CNN batch. ``resize_max`` shrinks with cv2.INTER_AREA (grayscale first, float32).
        """
        prepared = [self._prepare(image) for image in split_images(images)]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (gray, _) in enumerate(prepared):
            groups[tuple(gray.shape)].append(index)
        results: list[Features | None] = [None] * len(prepared)
        for indices in groups.values():
            batch = torch.stack([prepared[i][0] for i in indices])[:, None]
            for i, features in zip(indices, self.forward(batch)):
                results[i] = _to_original(features, prepared[i][1])
        return results  # type: ignore[return-value]

    def _prepare(self, image: ImageLike) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image → ((H', W') float32 gray on the model's device, original (width, height))."""
        height, width = int(image.shape[0]), int(image.shape[1])
        target = _resized_size(width, height, self.options.resize_max)
        if target is None:
            return _grayscale(image, self.device), (width, height)
        import cv2  # only needed when resizing

        gray = _grayscale(image, torch.device("cpu")).numpy()
        small = cv2.resize(gray, target, interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small).to(self.device), (width, height)


# ---------------------------------------------------------------------- input helpers


def _grayscale(image: ImageLike, device: torch.device) -> torch.Tensor:
    """(H, W) float32 in [0, 1]. Integer → float happens on the device, after the (smaller) copy."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint16:  # torch's uint16 support is thin; convert here
            image = image.astype(np.float32) / 65535
        image = torch.from_numpy(np.ascontiguousarray(image))
    t = image.to(device)
    if t.dtype == torch.uint8:
        t = t.float() / 255
    elif t.is_floating_point():
        t = t.float()
    else:
        raise TypeError(f"images must be uint8, uint16 or float in [0, 1], got {t.dtype}")
    if t.ndim == 3:
        if t.shape[-1] == 3:
            r, g, b = t.unbind(-1)
            t = _RGB_WEIGHTS[0] * r + _RGB_WEIGHTS[1] * g + _RGB_WEIGHTS[2] * b
        elif t.shape[-1] == 1:
            t = t[..., 0]
        else:
            raise ValueError(f"images must be H×W, H×W×1 or H×W×3 (RGB), got {tuple(t.shape)}")
    return t


def _resized_size(width: int, height: int, resize_max: int) -> tuple[int, int] | None:
    """(width, height) to shrink to so the long side is ``resize_max``; None = keep as is."""
    if resize_max <= 0 or max(width, height) <= resize_max:
        return None
    scale = resize_max / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_original(features: Features, original_size: tuple[int, int]) -> Features:
    """Map keypoints from the (possibly resized) network input back to the original image."""
    (width, height), (orig_w, orig_h) = features.image_size, original_size
    if (width, height) == (orig_w, orig_h):
        return features
    scale = features.keypoints.new_tensor([orig_w / width, orig_h / height])
    keypoints = (features.keypoints + 0.5) * scale - 0.5  # pixel centres at integers in both images
    return Features(keypoints, features.scores, features.descriptors, original_size)

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
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DEFAULT_EXTRACTOR_WEIGHTS
from ..features import Features
from ..interfaces import DetectionOptions
from .detection import nms
from .extractor import LOW_PRECISION, LearnedExtractor
from .weights import WeightsError, config_value, load_checkpoint, load_into



#: Model defaults, used when the options say -1 (see interfaces.DetectionOptions).
DEFAULT_THRESHOLD = 0.005
DEFAULT_NMS_RADIUS = 4

#: magicleap's original release (superpoint_v1.pth) key prefixes → ours (transformers' names).
_ORIGINAL_PREFIXES = {
    **{f"conv{i + 1}{ab}.": f"encoder.conv_blocks.{i}.conv_{ab}." for i in range(4) for ab in "ab"},
    "convPa.": "keypoint_decoder.conv_score_a.", "convPb.": "keypoint_decoder.conv_score_b.",
    "convDa.": "descriptor_decoder.conv_descriptor_a.", "convDb.": "descriptor_decoder.conv_descriptor_b.",
}


def _our_key(name: str) -> str:
    for old, new in _ORIGINAL_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


class _ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv_b = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool and x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[-2] > _STRIP_ROWS \
                and not torch.is_autocast_enabled("cpu") and x.is_contiguous(memory_format=torch.channels_last):
            return self._strips(x)
        # in-place ReLUs: each out-of-place one allocates another full-resolution feature map
        x = F.relu(self.conv_b(_conv_relu(self.conv_a, x, (1, 1))), inplace=True)
        return _max_pool2(x) if self.pool else x

    def _strips(self, x: torch.Tensor) -> torch.Tensor:
        """The block (conv, ReLU, conv, ReLU, 2x2 max-pool) on horizontal strips of ``_STRIP_ROWS``
        output rows, written into the pooled result: every intermediate is a few MiB instead of a
        full-resolution map (80 MB at 640x480 for the first block), so it stays in cache and its
        memory is reused instead of freshly mapped (page faults cost as much as a convolution there).
        Each strip reads two extra input rows above and below; rows outside the image are the
        convolutions' zero padding. Same values as the whole-image path up to float rounding."""
        batch, _, height, width = x.shape
        kept = height // 2 * 2  # the pool floors: an odd last row is never needed
        out = torch.empty(batch, self.conv_b.out_channels, height // 2, width // 2, dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
        for top in range(0, kept, _STRIP_ROWS):
            bottom = min(top + _STRIP_ROWS, kept)
            first, last = max(top - 2, 0), min(bottom + 2, height)
            strip = F.pad(x[:, :, first:last], (0, 0, first - (top - 2), (bottom + 2) - last))
            # conv_a rows top-1 .. bottom (inclusive); those outside the image are conv_b's zero padding
            hidden = _conv_relu(self.conv_a, strip, (0, 1))
            if top == 0:
                hidden[:, :, 0] = 0
            if bottom + 1 > height - 1:
                hidden[:, :, height - top + 1:] = 0
            strip = F.relu(F.conv2d(hidden, self.conv_b.weight, self.conv_b.bias, padding=(0, 1)), inplace=True)
            out[:, :, top // 2:bottom // 2] = _max_pool2(strip)
        return out


_STRIP_ROWS = 32  # output rows per strip in _ConvBlock._strips (~5 MB of 64-channel features at width 640)


def _conv_relu(conv: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    """``relu(conv(x))`` for a 3x3 stride-1 convolution with the given (rows, columns) zero padding. A
    one-channel float32 input on a CPU (the first layer) goes through im2col and one matrix product
    with a channels-last result: oneDNN's kernel for a single input channel is ~3x slower there (~180
    ms vs ~65 ms at 640x480, one thread). Same values up to float rounding (summation order)."""
    if x.shape[1] != 1 or x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return F.relu(F.conv2d(x, conv.weight, conv.bias, padding=padding), inplace=True)
    pad_rows, pad_cols = padding
    padded = F.pad(x[:, 0], (pad_cols, pad_cols, pad_rows, pad_rows))
    batch, height, width = padded.shape[0], padded.shape[1] - 2, padded.shape[2] - 2
    # (B, H, W, 9) patches, kernel points row-major as the weight's (3, 3)
    columns = torch.stack([padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)], dim=-1)
    weight = conv.weight.view(conv.out_channels, 9).t()
    rows = columns.view(-1, 9)
    out = torch.addmm(conv.bias, rows, weight) if conv.bias is not None else rows @ weight
    return out.clamp_min_(0).view(batch, height, width, -1).permute(0, 3, 1, 2)


def _max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (same values: max is exact). Channels-last on a CPU it is the elementwise
    maximum of the four strided 2x2 phases: ~4x faster than the max-pool kernel there (which is ~25x
    slower still on NCHW, the reason the CNN runs channels-last on a CPU)."""
    if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2)
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :height, :width]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


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


def sample_descriptors(keypoints: torch.Tensor, dense: torch.Tensor, cell: int) -> torch.Tensor:
    """Bilinearly sample L2-normalised descriptors (N, D) from a (D, h, w) map at (N, 2) full-res
    pixel positions. The normalisation (x - cell/2 + 0.5) / (w*cell - cell/2 - 0.5) is the
    original's; the exact cell-centre mapping would divide by (w - 1) * cell. Kept for parity."""
    dim, h, w = dense.shape
    extent = keypoints.new_tensor([w * cell - cell / 2 - 0.5, h * cell - cell / 2 - 0.5])
    grid = (keypoints - cell / 2 + 0.5) / extent * 2 - 1
    sampled = F.grid_sample(dense[None], grid.view(1, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(dim, -1), p=2, dim=0).t().contiguous()


class SuperPoint(LearnedExtractor):
    """SuperPoint network plus the original post-processing.

    Keypoints are (x, y) pixel coordinates with pixel centres at integers, in the input image's own
    pixels (resizing is undone with ``x_orig = (x + 0.5) * W_orig / W_resized - 0.5``).
    """

    features = "superpoint"  # Extractor protocol: descriptor family
    rgb = False  # gray input (RGB is converted with BT.601 weights, as the original preprocessing)

    def __init__(self, options: DetectionOptions | None = None, *,
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
        if dtype not in (torch.float32, *LOW_PRECISION):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.options = options or DetectionOptions()
        self.compute_dtype = dtype
        self.descriptor_dim = descriptor_decoder_dim
        self.encoder = _Encoder(encoder_hidden_sizes)
        self.keypoint_decoder = _KeypointHead(encoder_hidden_sizes[-1], decoder_hidden_size, keypoint_decoder_dim)
        self.descriptor_decoder = _DescriptorHead(encoder_hidden_sizes[-1], decoder_hidden_size,
                                                  descriptor_decoder_dim)
        self.eval()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, weights: str = "", revision: str = "", *, parameter: str = "",
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, options: DetectionOptions | None = None,
                        **runtime_options) -> "SuperPoint":
        """Load weights in any form ``weights.load_checkpoint`` resolves (hub repo id, directory,
        .safetensors, or magicleap's original superpoint_v1.pth, renamed here). Architecture sizes
        come from config.json (defaults for the original file); detection options from
        ``runtime_options`` (see :class:`DetectionOptions`), never from config.json."""
        options = options or DetectionOptions(**runtime_options)
        weights = weights or DEFAULT_EXTRACTOR_WEIGHTS["superpoint"]
        checkpoint = load_checkpoint(weights, revision, parameter=parameter)
        checkpoint.state_dict = {_our_key(k): v for k, v in checkpoint.state_dict.items()}
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
        return model.placed(device, dtype)

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
        scores = nms(F.pixel_shuffle(logits.softmax(1)[:, :-1], self.cell)[:, 0],
                     self.options.radius(DEFAULT_NMS_RADIUS))
        dense = F.normalize(dense, p=2, dim=1)
        return [self._select(scores[i], dense[i], (width, height)) for i in range(batch)]

    def _dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN part: (cell-class logits, raw descriptor map), both float32."""
        weight = self.keypoint_decoder.conv_score_b.weight
        x = x.to(weight.dtype)
        autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.compute_dtype in LOW_PRECISION or x.device.type == "cpu":
            # channels-last: oneDNN's fp32 convolutions are faster in NHWC on a CPU too, and the
            # max-pool far faster (see _max_pool2); low-precision oneDNN/cuDNN kernels prefer it as well
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compute_dtype in LOW_PRECISION:
            autocast = torch.autocast(x.device.type, dtype=self.compute_dtype)
        with autocast:
            encoded = self.encoder(x)
            logits, dense = self.keypoint_decoder(encoded), self.descriptor_decoder(encoded)
        return logits.float(), dense.float()

    def _select(self, scores: torch.Tensor, dense: torch.Tensor, image_size: tuple[int, int]) -> Features:
        """Threshold, border removal, top-k and descriptors for one (H', W') NMS'd score map."""
        opts = self.options
        # Row-major candidate order, as torch.nonzero in the reference: top-k ties depend on it.
        yx = torch.nonzero(scores > opts.threshold(DEFAULT_THRESHOLD))
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

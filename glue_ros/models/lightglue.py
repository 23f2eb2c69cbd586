"""Native LightGlue matcher (Lindenberger, Sarlin, Pollefeys, ICCV 2023) for SuperPoint, ALIKED, DISK and
XFeat features.

Our parameter names are those of transformers' ``LightGlueForKeypointMatching`` (the Hugging Face layout
of ``ETH-CVG/lightglue_superpoint``). Weights come in any form :func:`~.weights.load_checkpoint` reads:

* the HF layout (hub repo or directory): the architecture comes from ``config.json``; the repo also
  embeds a SuperPoint under ``keypoint_detector.*``, dropped on load (features come from our own
  extractor); the features the weights expect come from its ``keypoint_detector_config``;
* original cvg/LightGlue release checkpoints (``aliked_lightglue.pth``, ``disk_lightglue.pth``, ...) and
  XFeat's LighterGlue (``xfeat-lighterglue.pt``: input 64, width 96, 6 layers, 1 head; its XFeat copy
  under ``extractor.*`` is dropped): the architecture is inferred from tensor shapes and the keys are
  renamed into our layout by :func:`convert_original` (both cvg naming generations);
* a bare ``.safetensors`` in our layout (architecture from shapes; expected features unknown).

Behaviour follows the original cvg/LightGlue code that trained the checkpoints: per-image keypoint
normalisation (by the image size (w, h): ``(x - size / 2) / (max(size) / 2)``, also what XFeat's
LighterGlue wrapper does with its ``image_size``), learnable Fourier rotary encoding, self +
bidirectional cross attention, sigmoid matchability + double-softmax assignment, mutual-match filtering,
adaptive depth (early exit) and width (point pruning). Differences, all deliberate:

* Batches of pairs with different keypoint counts are padded and masked; each pair exits and prunes on
  its own, so a batch gives the same result as matching each pair alone (the original prunes only
  correctly with batch size 1; transformers 5.23 mixes up pairs, see test/test_lightglue.py).
* Every on/off combination of early exit and pruning works (transformers 5.23 crashes on two).
* The original skips pruning on CUDA while an image has at most 1024 points, and with its default
  ``flash`` attention (always available on torch >= 2) at most 1536 (``pruning_keypoint_thresholds``;
  a speed heuristic). ``pruning_min_keypoints`` reproduces it; the default (-1) always prunes, like the
  original on CPU.
* ``stop_layer`` is the number of layers run (the original says ``i + 1`` for a pair whose image ran
  out of points, one more than it ran); a pair with an empty image reports 0.
* Cross attention computes both directions with ``q_proj``/``k_proj``; with the released weights
  (``q_proj == k_proj``, the original's shared ``to_qk``) this is exactly the original's
  bidirectional block.
* Under fp16/bf16 only the transformer layers run in autocast; the residual stream, confidence heads,
  log-assignment and match extraction stay float32.
* SIFT / DoGHardNet LightGlue (scale and orientation in the positional encoding) is refused.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import MatcherConfig
from ..features import Features, PairMatches
from .assignment import mutual_matches
from .weights import WeightsError, config_value, default_matcher_weights, load_checkpoint, load_into

DETECTOR_PREFIX = "keypoint_detector."
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class LightGlueConfig:
    """Runtime options; they change no weights."""

    depth_confidence: float = 0.95  # early exit once this share of points is confident; <= 0 (-1) disables
    width_confidence: float = 0.99  # prune confident points with matchability <= 1 - this; <= 0 (-1) disables
    filter_threshold: float = 0.1  # keep mutual matches scoring above this
    pruning_min_keypoints: int = -1  # prune an image only while it has more points (original on CUDA: 1024/1536)

    def __post_init__(self):
        for name in ("depth_confidence", "width_confidence"):
            value = getattr(self, name)
            if not (value <= 0 or 0 < value <= 1):
                raise ValueError(f"LightGlue {name} must be in (0, 1] or <= 0 (disabled), got {value}")
        if not 0 <= self.filter_threshold <= 1:
            raise ValueError(f"LightGlue filter_threshold must be in [0, 1], got {self.filter_threshold}")

    @property
    def early_exit(self) -> bool:
        return self.depth_confidence > 0

    @property
    def pruning(self) -> bool:
        return self.width_confidence > 0


@dataclass(frozen=True)
class LightGlueArchitecture:
    """Shape of the network: from config.json (HF layout) or the tensors' shapes (other forms)."""

    input_dim: int = 256  # descriptor size of the features (the detector's descriptor_decoder_dim)
    descriptor_dim: int = 256
    num_layers: int = 9
    num_heads: int = 4
    intermediate_size: int = 512
    attention_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.descriptor_dim // self.num_heads

    def check(self, source: str, origin: str) -> "LightGlueArchitecture":
        if self.descriptor_dim % self.num_heads or self.head_dim % 2 or self.num_layers < 1:
            raise WeightsError(f"weights '{source}': {origin} gives descriptor_dim {self.descriptor_dim} / "
                               f"{self.num_heads} heads / {self.num_layers} layers, which do not fit")
        return self

    @classmethod
    def from_config_json(cls, config: Mapping[str, Any], source: str = "") -> "LightGlueArchitecture":
        def bad(why: str) -> WeightsError:
            return WeightsError(f"weights '{source}': config.json {why}")

        if config.get("model_type", "lightglue") != "lightglue":
            raise bad(f"describes a '{config['model_type']}' model, not lightglue")
        dim = int(config_value(config, "descriptor_dim", 256))
        heads = int(config_value(config, "num_attention_heads", 4))
        detector = config.get("keypoint_detector_config") or {}
        arch = cls(input_dim=int(config_value(detector, "descriptor_decoder_dim", dim)), descriptor_dim=dim,
                   num_layers=int(config_value(config, "num_hidden_layers", 9)), num_heads=heads,
                   intermediate_size=int(config_value(config, "intermediate_size", 2 * dim)),
                   attention_bias=bool(config_value(config, "attention_bias", True)))
        if int(config_value(config, "hidden_size", dim)) != dim:
            raise bad("hidden_size differs from descriptor_dim")
        if int(config_value(config, "num_key_value_heads", heads)) != heads:
            raise bad("uses grouped key/value heads, which LightGlue does not have")
        if config_value(config, "hidden_act", "gelu") != "gelu":
            raise bad(f"hidden_act '{config['hidden_act']}' is not supported (gelu)")
        return arch.check(source, "config.json")

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], source: str = "") -> "LightGlueArchitecture":
        """Infer the shape from a state dict in our layout (sizes from tensor shapes; heads from the
        rotary encoding, which has one frequency per pair of head channels)."""
        projector = state_dict.get("positional_encoder.projector.weight")
        layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"transformer_layers\.(\d+)\.", k))}
        query = state_dict.get("transformer_layers.0.self_attention.q_proj.weight")
        fc1 = state_dict.get("transformer_layers.0.self_mlp.fc1.weight")
        if projector is None or query is None or fc1 is None or projector.dim() != 2:
            shown = ", ".join(sorted(state_dict)[:4]) + (", …" if len(state_dict) > 4 else "")
            raise WeightsError(f"weights '{source}' are not a LightGlue checkpoint (no positional encoder and "
                               f"transformer layers; its tensors are {shown or 'none'})")
        _refuse_extra_position_inputs(projector, source)
        dim, head_dim = int(query.shape[0]), 2 * int(projector.shape[0])
        if head_dim == 0 or dim % head_dim:
            raise WeightsError(f"weights '{source}': rotary encoding of {head_dim} channels does not divide "
                               f"the descriptor size {dim}")
        projection = state_dict.get("input_projection.weight")
        return cls(input_dim=int(projection.shape[1]) if projection is not None else dim, descriptor_dim=dim,
                   num_layers=max(layer_ids) + 1, num_heads=dim // head_dim, intermediate_size=int(fc1.shape[0]),
                   attention_bias="transformer_layers.0.self_attention.q_proj.bias" in state_dict
                   ).check(source, "the tensors' shapes")


def _refuse_extra_position_inputs(projector: torch.Tensor, source: str) -> None:
    """SIFT and DoGHardNet LightGlue add scale and orientation to the positional encoding (4 inputs; the
    KeyNetAffNetHardNet one adds a local affine frame, 6): our Features carry neither."""
    if projector.dim() == 2 and projector.shape[1] != 2:
        raise WeightsError(f"weights '{source}' encode {projector.shape[1]} values per keypoint (x, y plus scale "
                           "and orientation, as SIFT / DoGHardNet LightGlue does), not just x, y: not supported; "
                           "use weights for superpoint, aliked, disk or xfeat features")


# --------------------------------------------------------------------------- original checkpoints

#: cvg's first naming generation (disk_lightglue.pth): ``self_attn.{i}.*`` / ``cross_attn.{i}.*``;
#: later releases (aliked_lightglue.pth, LighterGlue) say ``transformers.{i}.self_attn.*``.
_FIRST_GENERATION = re.compile(r"^(self_attn|cross_attn)\.(\d+)\.(.*)$")
#: cvg name -> ours, for everything but the packed self-attention projection (split below).
_RENAMES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"^input_proj\.", "input_projection."),
    (r"^posenc\.Wr\.", "positional_encoder.projector."),
    (r"^transformers\.(\d+)\.self_attn\.out_proj\.", r"transformer_layers.\1.self_attention.o_proj."),
    (r"^transformers\.(\d+)\.cross_attn\.to_v\.", r"transformer_layers.\1.cross_attention.v_proj."),
    (r"^transformers\.(\d+)\.cross_attn\.to_out\.", r"transformer_layers.\1.cross_attention.o_proj."),
    # the feed-forward block: Linear (0) -> LayerNorm (1) -> GELU (2) -> Linear (3)
    (r"^transformers\.(\d+)\.self_attn\.ffn\.0\.", r"transformer_layers.\1.self_mlp.fc1."),
    (r"^transformers\.(\d+)\.self_attn\.ffn\.1\.", r"transformer_layers.\1.self_mlp.layer_norm."),
    (r"^transformers\.(\d+)\.self_attn\.ffn\.3\.", r"transformer_layers.\1.self_mlp.fc2."),
    (r"^transformers\.(\d+)\.cross_attn\.ffn\.0\.", r"transformer_layers.\1.cross_mlp.fc1."),
    (r"^transformers\.(\d+)\.cross_attn\.ffn\.1\.", r"transformer_layers.\1.cross_mlp.layer_norm."),
    (r"^transformers\.(\d+)\.cross_attn\.ffn\.3\.", r"transformer_layers.\1.cross_mlp.fc2."),
    (r"^log_assignment\.(\d+)\.final_proj\.", r"match_assignment_layers.\1.final_projection."),
    (r"^log_assignment\.(\d+)\.matchability\.", r"match_assignment_layers.\1.matchability."),
    (r"^token_confidence\.(\d+)\.token\.0\.", r"token_confidence.\1.token."),
)]
_PACKED_QKV = re.compile(r"^transformers\.(\d+)\.self_attn\.Wqkv\.(weight|bias)$")
_SHARED_QK = re.compile(r"^transformers\.(\d+)\.cross_attn\.to_qk\.(weight|bias)$")
#: A scalar ``r`` of each assignment head in early cvg releases (disk_lightglue.pth): unused by any
#: LightGlue forward (the reference loads it with strict=False and ignores it).
_UNUSED = re.compile(r"^log_assignment\.\d+\.r$")


def convert_original(state_dict: Mapping[str, torch.Tensor], source: str = "") -> dict[str, torch.Tensor]:
    """An original cvg/LightGlue or XFeat LighterGlue state dict, renamed into our layout.

    * cvg packs self-attention's q, k, v into one ``Wqkv`` Linear whose output it reads as
      ``unflatten(-1, (heads, head_dim, 3))``: output channel ``(h * head_dim + d) * 3 + j`` is
      channel ``h * head_dim + d`` of q (j = 0), k (1) or v (2). We split it exactly so.
    * cvg's cross attention has one ``to_qk`` for queries and keys: it becomes both q_proj and k_proj.
    """
    tensors = dict(state_dict)
    if any(k.startswith("matcher.") for k in tensors):  # LighterGlue: its XFeat under extractor.*
        tensors = {k[len("matcher."):] if k.startswith("matcher.") else k: v for k, v in tensors.items()
                   if not k.startswith("extractor.")}
    renamed: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if (first := _FIRST_GENERATION.match(key)) is not None:
            key = f"transformers.{first.group(2)}.{first.group(1)}.{first.group(3)}"
        renamed[key] = value
    projector = renamed.get("posenc.Wr.weight")
    if projector is None or not any(_PACKED_QKV.match(k) for k in renamed):
        shown = ", ".join(sorted(state_dict)[:4]) + (", …" if len(state_dict) > 4 else "")
        raise WeightsError(f"weights '{source}' are not a LightGlue checkpoint (no posenc.Wr / self_attn.Wqkv "
                           f"tensors; its tensors are {shown or 'none'})")
    _refuse_extra_position_inputs(projector, source)
    head_dim = 2 * int(projector.shape[0])

    out: dict[str, torch.Tensor] = {}
    for key, value in renamed.items():
        if _UNUSED.match(key):
            continue
        if (packed := _PACKED_QKV.match(key)) is not None:
            layer, kind = packed.groups()
            if value.shape[0] % (3 * head_dim):
                raise WeightsError(f"weights '{source}': {key} has {value.shape[0]} rows, not a multiple of "
                                   f"3 x head_dim ({head_dim})")
            split = value.reshape(-1, head_dim, 3, *value.shape[1:])  # (heads, head_dim, q|k|v, ...)
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"transformer_layers.{layer}.self_attention.{name}.{kind}"] = \
                    split[:, :, j].reshape(-1, *value.shape[1:]).contiguous()
            continue
        if (shared := _SHARED_QK.match(key)) is not None:
            layer, kind = shared.groups()
            for name in ("q_proj", "k_proj"):
                out[f"transformer_layers.{layer}.cross_attention.{name}.{kind}"] = value.clone()
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value  # an unknown name stays as it is: load_into reports it as unexpected
    return out


@dataclass
class LightGlueOutput:
    """Full-size results of :meth:`LightGlue.forward` (B pairs, M / N padded points per image)."""

    matches0: torch.Tensor  # (B, M) int64 index into image1, -1 = unmatched
    matches1: torch.Tensor  # (B, N) int64 index into image0, -1 = unmatched
    matching_scores0: torch.Tensor  # (B, M) float32 score of the mutual best match (also below threshold)
    matching_scores1: torch.Tensor  # (B, N)
    # Log-assignment of the layer each pair stopped at, scattered back to full size: [:, :M, :N] point to
    # point, last column / row = log P(unmatched). Entries of padded or pruned points, and all of a pair
    # without keypoints (or whose image lost all points to pruning), are -inf.
    log_assignment: torch.Tensor  # (B, M+1, N+1) float32
    stop_layer: torch.Tensor  # (B,) int64 layers run (0 when an image has no keypoints)
    layers0: torch.Tensor  # (B, M) int64 layers each point took part in (0 for padding)
    layers1: torch.Tensor  # (B, N)
    pruned0: torch.Tensor  # (B, M) bool, dropped before its pair stopped
    pruned1: torch.Tensor  # (B, N)

    def pair(self, k: int, num0: int) -> PairMatches:
        """PairMatches of pair ``k`` whose image0 has ``num0`` keypoints."""
        idx0 = torch.nonzero(self.matches0[k, :num0] >= 0).squeeze(1)
        matches = torch.stack([idx0, self.matches0[k, idx0]], 1).cpu().numpy().astype(np.int64)
        return PairMatches(matches, self.matching_scores0[k, idx0].cpu().numpy().astype(np.float32),
                           stop_layer=int(self.stop_layer[k]), pruned0=int(self.pruned0[k].sum()),
                           pruned1=int(self.pruned1[k].sum()))


# --------------------------------------------------------------------------- building blocks


def _attention_backends(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA kernels allowed while the transformer runs. On CUDA the cuDNN backend is left out: torch picks
    it by default on Hopper for fp16/bf16, and it builds an execution plan for every new sequence length,
    which pruning produces nearly every frame (~1 s stalls). Elsewhere: torch's default choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class PositionalEncoder(nn.Module):
    """Learnable Fourier features of normalised (x, y), used as rotary phases (one frequency per pair
    of head channels)."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.projector = nn.Linear(2, head_dim // 2, bias=False)

    def forward(self, keypoints: torch.Tensor) -> torch.Tensor:
        return self.projector(keypoints).repeat_interleave(2, dim=-1)


def rotary_tables(phases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin of the rotary phases, computed once per forward (gathered with the points
    when the working set is compacted, never recomputed per layer): ``sin`` is negated on even channels so
    that :func:`apply_rotary` needs a pair swap only (-odd * sin == odd * -sin exactly)."""
    sin = phases.sin()
    sin = torch.stack((-sin[..., 0::2], sin[..., 1::2]), dim=-1).flatten(-2)
    return phases.cos(), sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2j, 2j+1) of ``x`` by the phases (``sin`` from :func:`rotary_tables`); done in
    float32 (phases can be large)."""
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (odd, even) of each pair
    return (x32 * cos + swapped * sin).to(x.dtype)


@dataclass
class _Projections:
    """Fused projection of an :class:`Attention`, built from its Linear layers; ``parts`` output blocks
    of width dim: (q, k, v) or, when q_proj equals k_proj, (q, v) with keys = queries."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    shared_qk: bool
    source: tuple[tuple[torch.Tensor, int, int | None], ...]  # (parameter, data_ptr, version) it was built from

    @staticmethod
    def stamp(t: torch.Tensor) -> tuple[torch.Tensor, int, int | None]:
        try:
            version: int | None = t._version
        except RuntimeError:  # an inference tensor has no version counter: never trusted as unchanged
            version = None
        return t, t.data_ptr(), version

    def fresh(self, params: Sequence[torch.Tensor]) -> bool:
        return len(params) == len(self.source) and all(
            p is t and p.data_ptr() == ptr and v is not None and self.stamp(p)[2] == v
            for p, (t, ptr, v) in zip(params, self.source))


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``source``; padded/pruned keys are masked out."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim, bias=bias) for _ in range(4))
        self._fused: _Projections | None = None  # a cache, not state: rebuilt whenever a projection changes

    def _parameters_of_projections(self) -> list[torch.Tensor]:
        linears = (self.q_proj, self.k_proj, self.v_proj)
        return [lin.weight for lin in linears] + [lin.bias for lin in linears if lin.bias is not None]

    def projections(self) -> _Projections:
        """q, k, v projections fused into one GEMM (one large matrix product is faster than three small
        ones, and one kernel launch instead of three on CUDA). Built on first use and after any change of
        the weights (in-place edits included), so state_dict and loading are untouched. With q_proj ==
        k_proj (every released cvg LightGlue: its cross attention has one shared to_qk) the key projection
        is dropped: keys are the queries."""
        params = self._parameters_of_projections()
        if self._fused is None or not self._fused.fresh(params):
            q, k, v = self.q_proj, self.k_proj, self.v_proj
            with torch.no_grad():
                shared = torch.equal(q.weight, k.weight) and (
                    q.bias is None if k.bias is None else q.bias is not None and torch.equal(q.bias, k.bias))
                parts = (q, v) if shared else (q, k, v)
                weight = torch.cat([lin.weight for lin in parts])
                bias = torch.cat([lin.bias for lin in parts]) if q.bias is not None else None
            self._fused = _Projections(weight, bias, shared, tuple(_Projections.stamp(p) for p in params))
        return self._fused

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Unfused reference path (tests): ``x`` (S, W, D) attends over ``source`` (S, W', D)."""
        def heads(t: torch.Tensor) -> torch.Tensor:  # (S, W, D) -> (S, heads, W, head_dim)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(source)), heads(self.v_proj(source))
        if rope is not None:  # self attention only: relative positions through rotated queries and keys
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # Key mask only: padded queries still see real keys, so no row is all -inf (no NaN).
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.o_proj(context.transpose(1, 2).flatten(-2))

    def self_attention(self, x: torch.Tensor, key_mask: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor) -> torch.Tensor:
        """= forward(x, x, key_mask, rope) with one fused projection and one rotary pass for q and k.
        x (S, W, D); key_mask (S, W); cos / sin (S, W, head_dim)."""
        fused = self.projections()
        y = F.linear(x, fused.weight, fused.bias).unflatten(-1, (-1, self.heads, x.shape[-1] // self.heads))
        q, k, v = (y[:, :, j].transpose(1, 2) for j in (0, 1 - fused.shared_qk, -1))  # (S, heads, W, head_dim)
        # Rotating q and k separately (contiguous outputs) measured faster than one pass over both.
        q, k = apply_rotary(q, cos[:, None], sin[:, None]), apply_rotary(k, cos[:, None], sin[:, None])
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.o_proj(context.transpose(1, 2).flatten(-2))

    def cross_attention(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """Each image of a pair attends to the other: x (P, 2, W, D), key_mask (P, 2, W) the image's own
        active points; returns (2P, W, D). = forward(x, other, other_mask) on the pairs flattened, with
        other = x with image0 / image1 swapped: projecting x once and swapping the projections gives the
        same keys and values."""
        fused = self.projections()
        p, _, w, d = x.shape
        y = F.linear(x, fused.weight, fused.bias).unflatten(-1, (-1, self.heads, d // self.heads))
        other = y.flip(1)  # (P, 2, W, parts, heads, head_dim) of the other image
        q, k, v = y[..., 0, :, :], other[..., 1 - fused.shared_qk, :, :], other[..., -1, :, :]

        def heads(t: torch.Tensor) -> torch.Tensor:  # (P, 2, W, heads, head_dim) -> (2P, heads, W, head_dim)
            return t.flatten(0, 1).transpose(1, 2)

        mask = key_mask.flip(1).reshape(2 * p, 1, 1, w)
        context = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        return self.o_proj(context.transpose(1, 2).flatten(-2))


class MessageMLP(nn.Module):
    """Residual update from [state, message]: Linear -> LayerNorm -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(2 * dim, hidden)
        self.layer_norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.layer_norm(self.fc1(torch.cat([x, message], -1)))))


class TransformerLayer(nn.Module):
    """Self attention within each image, then cross attention between the two images of a pair."""

    def __init__(self, arch: LightGlueArchitecture):
        super().__init__()
        dim, heads, bias = arch.descriptor_dim, arch.num_heads, arch.attention_bias
        self.self_attention = Attention(dim, heads, bias)
        self.self_mlp = MessageMLP(dim, arch.intermediate_size)
        self.cross_attention = Attention(dim, heads, bias)
        self.cross_mlp = MessageMLP(dim, arch.intermediate_size)

    def forward(self, desc: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        """desc (P, 2, W, D) of P pairs (image0, image1); cos / sin (P, 2, W, head_dim) from
        :func:`rotary_tables`; active (P, 2, W) real, unpruned points."""
        pairs, _, width, dim = desc.shape
        x, mask = desc.reshape(2 * pairs, width, dim), active.reshape(2 * pairs, width)
        x = x + self.self_mlp(x, self.self_attention.self_attention(x, mask, cos.flatten(0, 1), sin.flatten(0, 1)))
        x = x.view(pairs, 2, width, dim)
        return x + self.cross_mlp(x, self.cross_attention.cross_attention(x, active).view(pairs, 2, width, dim))


def log_double_softmax(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """(P, M+1, N+1) log assignment: dual softmax of similarities + log matchability of both points;
    the last column / row holds log P(unmatched) of image0 / image1 points."""
    certainty = F.logsigmoid(z0)[:, :, None] + F.logsigmoid(z1)[:, None, :]
    scores = F.pad(sim.log_softmax(2) + sim.log_softmax(1) + certainty, (0, 1, 0, 1))
    scores[:, :-1, -1] = F.logsigmoid(-z0)
    scores[:, -1, :-1] = F.logsigmoid(-z1)
    return scores


class MatchAssignment(nn.Module):
    """Per-layer head: projected similarities and matchability -> log assignment."""

    def __init__(self, dim: int):
        super().__init__()
        self.final_projection = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)

    def matchability_probability(self, desc: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.matchability(desc)).squeeze(-1)

    def forward(self, desc: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """desc (P, 2, W, D) float32, active (P, 2, W) -> (P, W+1, W+1) float32."""
        proj = self.final_projection(desc) / desc.shape[-1] ** 0.25
        sim = proj[:, 0] @ proj[:, 1].transpose(-1, -2)
        # A finite minimum (not -inf) gives padded entries probability 0 without NaN rows.
        valid = active[:, 0, :, None] & active[:, 1, None, :]
        sim = sim.masked_fill(~valid, torch.finfo(sim.dtype).min)
        z = self.matchability(desc).squeeze(-1)
        return log_double_softmax(sim, z[:, 0], z[:, 1])


class TokenConfidence(nn.Module):
    """Per-layer head predicting whether a point's match is already final (drives exit and pruning)."""

    def __init__(self, dim: int):
        super().__init__()
        self.token = nn.Linear(dim, 1)

    def forward(self, desc: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.token(desc)).squeeze(-1)


@dataclass
class _Working:
    """Pairs still in the transformer, compacted: active points first (original order), then padding."""

    pairs: torch.Tensor  # (P,) index in the input batch
    desc: torch.Tensor  # (P, 2, W, D)
    cos: torch.Tensor  # (P, 2, W, head_dim) rotary tables (rotary_tables)
    sin: torch.Tensor  # (P, 2, W, head_dim)
    index: torch.Tensor  # (P, 2, W) point index in its image, -1 = padding
    # (P, 2, W) the point's flat index into _AdaptiveState's (B, 2, max(M, N)) tensors; padding points at
    # its image's point 0 and is only ever given 0 there (scatter-adds by slot need no boolean indexing).
    slot: torch.Tensor
    active: torch.Tensor  # (P, 2, W)

    def select(self, keep: torch.Tensor) -> "_Working":
        """The pairs where ``keep`` (P,) bool: one nonzero (device sync) for all fields."""
        rows = keep.nonzero().squeeze(1)
        return _Working(*(getattr(self, f.name).index_select(0, rows) for f in dataclasses.fields(self)))

    def counts(self) -> list[list[int]]:
        """Active points per pair and image, on the host (a device sync)."""
        return self.active.sum(-1).tolist()

    def compact(self, width: int) -> "_Working":
        """Move active points to the front and trim to ``width`` (the largest active count), so pruning
        actually saves compute."""
        if width == self.active.shape[-1]:
            return self
        order = torch.sort((~self.active).to(torch.uint8), dim=-1, stable=True).indices[..., :width]

        def take(t: torch.Tensor) -> torch.Tensor:
            return t.gather(2, order if t.dim() == 3 else order[..., None].expand(-1, -1, -1, t.shape[-1]))

        return _Working(self.pairs, *(take(getattr(self, f.name)) for f in dataclasses.fields(self)[1:]))


class _AdaptiveState:
    """What adaptive depth and width decided for each of the B pairs, at full size, filled in while the
    transformer runs: :meth:`exit` freezes pairs (stop layer, log assignment of that layer), :meth:`prune`
    drops points. Points are addressed as (pair, image 0|1, index in its image), or by their flat slot."""

    def __init__(self, batch: int, m: int, n: int, device: torch.device):
        p = max(m, n)
        self.m, self.n = m, n
        # One extra row / column beyond the dustbins: padded slots of the working set are written there.
        self.log_assignment = torch.full((batch, m + 2, n + 2), -math.inf, device=device)
        self.stop_layer = torch.zeros(batch, dtype=torch.long, device=device)
        self.layers = torch.zeros(batch, 2, p, dtype=torch.long, device=device)  # layers each point ran
        self._times_pruned = torch.zeros(batch, 2, p, dtype=torch.int32, device=device)  # 0 or 1
        self.has_assignment = torch.zeros(batch, dtype=torch.bool, device=device)

    @staticmethod
    def slots(pairs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Flat slots (see _Working.slot) of points ``index`` (P, 2, W) of batch pairs ``pairs`` (P,)."""
        rows = pairs[:, None, None] * 2 + torch.arange(2, device=index.device)[None, :, None]
        return rows * index.shape[-1] + index.clamp(min=0)

    @property
    def pruned(self) -> torch.Tensor:
        """(B, 2, max(M, N)) bool, dropped before its pair stopped."""
        return self._times_pruned > 0

    def ran_layer(self, st: _Working) -> None:
        # Adding 0/1 by slot: no boolean indexing, so no device sync (each active slot occurs once).
        self.layers.view(-1).index_add_(0, st.slot.flatten(), st.active.flatten().long())

    def exit(self, st: _Working, stop: torch.Tensor | None, layer_index: int,
             head: "MatchAssignment | None") -> _Working:
        """The ``stop`` pairs (None: all) end after layer ``layer_index``: store their stop layer and (given
        the layer's assignment ``head``) their log assignment; return the pairs still running."""
        done = st if stop is None else st.select(stop)
        self.stop_layer[done.pairs] = layer_index + 1
        if head is not None and len(done.pairs):
            la = head(done.desc.float(), done.active)  # (D, W+1, W+1)
            junk = torch.tensor([self.m + 1, self.n + 1], device=la.device)[None, :, None]
            rows_cols = torch.where(done.active, done.index, junk)
            rows = F.pad(rows_cols[:, 0], (0, 1), value=self.m)  # + the dustbin row
            cols = F.pad(rows_cols[:, 1], (0, 1), value=self.n)
            self.log_assignment[done.pairs[:, None, None], rows[:, :, None], cols[:, None, :]] = la
            self.has_assignment[done.pairs] = True
        return st.select(st.pairs[:0]) if stop is None else st.select(~stop)

    def prune(self, st: _Working, drop: torch.Tensor) -> _Working:
        """Drop the ``drop`` points (P, 2, W; active ones only) from the working set."""
        self._times_pruned.view(-1).index_add_(0, st.slot.flatten(), drop.flatten().to(torch.int32))
        return dataclasses.replace(st, active=st.active & ~drop)


# --------------------------------------------------------------------------- the model


class LightGlue(nn.Module):
    """LightGlue for SuperPoint, ALIKED, DISK or XFeat features (whichever the weights were trained on:
    :attr:`expected_features`). Build with :meth:`from_pretrained` or :meth:`from_config`; match with
    :meth:`match` (Features in, PairMatches out) or :meth:`forward` (tensors). Implements the
    :class:`~glue_ros.interfaces.Matcher` protocol."""

    def __init__(self, arch: LightGlueArchitecture = LightGlueArchitecture(),
                 config: LightGlueConfig = LightGlueConfig(), compute_dtype: torch.dtype = torch.float32,
                 expected_features: str | None = None):
        super().__init__()
        if compute_dtype not in _DTYPES:
            raise ValueError(f"LightGlue dtype must be one of {_DTYPES}, got {compute_dtype}")
        self.arch, self.config, self.compute_dtype = arch, config, compute_dtype
        #: Feature family the weights were trained for (None = unknown, e.g. a bare .safetensors file).
        self.expected_features = expected_features
        dim = arch.descriptor_dim
        self.input_projection = nn.Linear(arch.input_dim, dim) if arch.input_dim != dim else nn.Identity()
        self.positional_encoder = PositionalEncoder(arch.head_dim)
        self.transformer_layers = nn.ModuleList(TransformerLayer(arch) for _ in range(arch.num_layers))
        self.match_assignment_layers = nn.ModuleList(MatchAssignment(dim) for _ in range(arch.num_layers))
        self.token_confidence = nn.ModuleList(TokenConfidence(dim) for _ in range(arch.num_layers - 1))
        self.eval()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(cls, weights: str, revision: str = "", *, parameter: str = "",
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, **runtime_options: Any) -> "LightGlue":
        """Load weights in any form load_checkpoint reads (packaged name, hub repo id, directory,
        .safetensors, original .pth/.pt). Runtime options (LightGlueConfig fields) default to the values
        stored in an HF config.json, else to LightGlueConfig's. ``dtype`` is the autocast precision of the
        transformer layers; parameters stay float32."""
        checkpoint = load_checkpoint(weights, revision, drop_prefixes=(DETECTOR_PREFIX,), parameter=parameter)
        packaged = checkpoint.packaged
        if packaged is not None and packaged.role != "matcher":
            raise WeightsError(f"weights '{weights}' are the {packaged.features} extractor's ({packaged.name}), "
                               f"not a matcher's: LightGlue for {packaged.features} features is "
                               f"'{default_matcher_weights('lightglue', packaged.features)}'")
        stored: dict[str, Any] = {}
        expected = packaged.features if packaged is not None else None
        if checkpoint.is_original:
            state_dict = convert_original(checkpoint.state_dict, weights)
            arch = LightGlueArchitecture.from_state_dict(state_dict, weights)
        elif checkpoint.config:  # the Hugging Face layout with its config.json
            config = checkpoint.config
            arch = LightGlueArchitecture.from_config_json(config, weights)
            state_dict = checkpoint.state_dict
            stored = {f.name: config[f.name] for f in dataclasses.fields(LightGlueConfig)
                      if config.get(f.name) is not None}
            detector = config.get("keypoint_detector_config") or {}
            expected = expected or (detector.get("model_type") if isinstance(detector, Mapping) else None)
        else:  # a bare .safetensors in our layout: shapes only, the feature family is unknowable
            state_dict = checkpoint.state_dict
            arch = LightGlueArchitecture.from_state_dict(state_dict, weights)
        projector = state_dict.get("positional_encoder.projector.weight")
        if projector is not None:
            _refuse_extra_position_inputs(projector, weights)
        model = cls(arch, LightGlueConfig(**{**stored, **runtime_options}), dtype, expected)
        load_into(model, dataclasses.replace(checkpoint, state_dict=state_dict))
        return model.to(device).eval()

    @classmethod
    def from_config(cls, config: MatcherConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, features: str | None = None) -> "LightGlue":
        """``config.weights``, or the default LightGlue weights for the extractor's ``features`` family
        (weights.DEFAULT_MATCHER_WEIGHTS; None = superpoint). Weights trained for another family than
        ``features`` are refused (WeightsError)."""
        if config.type != "lightglue":
            raise ValueError(f"matcher.type is '{config.type}', not lightglue")
        weights = config.weights or default_matcher_weights("lightglue", features)
        model = cls.from_pretrained(weights, config.revision, parameter="matcher.weights",
                                    device=device, dtype=dtype, depth_confidence=config.depth_confidence,
                                    width_confidence=config.width_confidence,
                                    filter_threshold=config.filter_threshold)
        if features and model.expected_features and features != model.expected_features:
            raise WeightsError(f"matcher weights '{weights}' are trained for {model.expected_features} features, "
                               f"not {features}: leave matcher.weights empty for the {features} default "
                               f"('{default_matcher_weights('lightglue', features)}')")
        return model

    def set_thresholds(self, config: MatcherConfig) -> None:
        """Apply the live threshold of ``config`` (filter_threshold); read at every call, no reload."""
        self.config = dataclasses.replace(self.config, filter_threshold=config.filter_threshold)

    def with_options(self, **changes: Any) -> "LightGlue":
        """Change runtime options (LightGlueConfig fields, validated) in place; returns self (for tests and
        benchmarks: depth/width confidence are restart-only parameters of the node)."""
        self.config = dataclasses.replace(self.config, **changes)
        return self

    @property
    def device(self) -> torch.device:
        return self.positional_encoder.projector.weight.device

    @property
    def input_dim(self) -> int:
        """Descriptor size the weights take."""
        return self.arch.input_dim

    # ----------------------------------------------------------------- adaptive depth and width

    def confidence_threshold(self, layer_index: int) -> float:
        """Token confidence above which a point counts as confident; strict early, 0.8 late."""
        return float(min(max(0.8 + 0.1 * math.exp(-4.0 * layer_index / self.arch.num_layers), 0.0), 1.0))

    def get_pruning_mask(self, confidences: torch.Tensor | None, matchability: torch.Tensor,
                         layer_index: int) -> torch.Tensor:
        """True = keep. Points go when confidently unmatchable: low matchability and (with early exit
        on) a confident token; unconfident points are never pruned."""
        keep = matchability > 1 - self.config.width_confidence
        if confidences is not None:
            keep |= confidences <= self.confidence_threshold(layer_index)
        return keep

    def check_if_stop(self, confidences: torch.Tensor, active: torch.Tensor, num_points: torch.Tensor,
                      layer_index: int) -> torch.Tensor:
        """(P,) True for pairs whose share of confident points exceeds depth_confidence. Pruned and
        padded points count as confident; the share is over the pair's initial point count."""
        unconfident = (confidences < self.confidence_threshold(layer_index)) & active
        ratio_confident = 1.0 - unconfident.flatten(1).float().sum(1) / num_points
        return ratio_confident > self.config.depth_confidence

    # ----------------------------------------------------------------- matching

    @torch.inference_mode()
    def forward(self, keypoints0: torch.Tensor, keypoints1: torch.Tensor, descriptors0: torch.Tensor,
                descriptors1: torch.Tensor, image_size0: torch.Tensor, image_size1: torch.Tensor,
                mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None) -> LightGlueOutput:
        """Match B pairs in one pass. keypoints (B, M|N, 2) pixels (x, y); descriptors (B, M|N, input_dim);
        image_size (B, 2) as (width, height); masks (B, M|N) bool, True = real point (None = all)."""
        device, arch, options = self.device, self.arch, self.config
        for desc in (descriptors0, descriptors1):
            if desc.shape[-1] != arch.input_dim:
                raise ValueError(f"LightGlue expects {arch.input_dim}-d descriptors, got {desc.shape[-1]}-d")
        b, m, n = keypoints0.shape[0], keypoints0.shape[1], keypoints1.shape[1]
        p = max(m, n)
        mask0 = torch.ones(b, m, dtype=torch.bool, device=device) if mask0 is None else mask0.to(device, torch.bool)
        mask1 = torch.ones(b, n, dtype=torch.bool, device=device) if mask1 is None else mask1.to(device, torch.bool)

        def stack(t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:  # -> (B, 2, P, ...) padded
            pad = [(0, 0) * (t0.dim() - 2) + (0, p - t.shape[1]) for t in (t0, t1)]
            return torch.stack([F.pad(t0, pad[0]), F.pad(t1, pad[1])], 1)

        valid = stack(mask0, mask1)
        kpts = stack(keypoints0.to(device, torch.float32), keypoints1.to(device, torch.float32))
        sizes = torch.stack([image_size0, image_size1], 1).to(device, torch.float32)  # (B, 2, 2)
        kpts = (kpts - sizes[:, :, None] / 2) / (sizes.max(-1).values[:, :, None, None] / 2)
        desc = stack(descriptors0.to(device, torch.float32), descriptors1.to(device, torch.float32))

        num_points = valid.flatten(1).sum(1)  # initial counts: the stop ratio's denominator
        runnable = valid.any(-1).all(-1)  # both images have keypoints
        index = torch.where(valid, torch.arange(p, device=device), -1)
        pairs = torch.arange(b, device=device)
        st = _Working(pairs, desc, *rotary_tables(self.positional_encoder(kpts)), index,
                      _AdaptiveState.slots(pairs, index), valid)
        st = st.select(runnable)
        st = st.compact(max((max(c) for c in st.counts()), default=0))
        state = _AdaptiveState(b, m, n, device)

        def autocast():  # only the transformer runs in reduced precision; the residual stream stays float32
            if self.compute_dtype == torch.float32:
                return contextlib.nullcontext()
            return torch.autocast(device.type, dtype=self.compute_dtype)

        with autocast():
            st.desc = self.input_projection(st.desc).float()
        with _attention_backends(device):
            for i, layer in enumerate(self.transformer_layers):
                if not len(st.pairs):
                    break
                with autocast():
                    st.desc = layer(st.desc, st.cos, st.sin, st.active).float()
                state.ran_layer(st)
                head = self.match_assignment_layers[i]
                if i == arch.num_layers - 1:  # no exit decision or pruning after the last layer
                    state.exit(st, None, i, head)
                    break
                confidences, changed = None, False
                if options.early_exit:
                    confidences = self.token_confidence[i](st.desc)
                    stop = self.check_if_stop(confidences, st.active, num_points[st.pairs], i)
                    if stop.any():  # the layer's one sync when nothing exits
                        st, changed = state.exit(st, stop, i, head), True
                        confidences = confidences[~stop]
                if options.pruning and len(st.pairs):
                    keep = self.get_pruning_mask(confidences, head.matchability_probability(st.desc), i)
                    eligible = st.active.sum(-1, keepdim=True) > options.pruning_min_keypoints
                    st, changed = state.prune(st, st.active & ~keep & eligible), True
                if changed and len(st.pairs):  # one sync for both: emptied images and the new width
                    counts = st.counts()
                    emptied = [min(c) == 0 for c in counts]  # an image lost all points: nothing left to match
                    if any(emptied):
                        st = state.exit(st, torch.tensor(emptied, device=device), i, head=None)
                        counts = [c for c, e in zip(counts, emptied) if not e]
                    st = st.compact(max((max(c) for c in counts), default=0))

        present = valid & ~state.pruned & state.has_assignment[:, None, None]  # points in the final assignment
        log_assignment = state.log_assignment[:, : m + 1, : n + 1]
        m0, m1, s0, s1 = mutual_matches(log_assignment, present[:, 0, :m], present[:, 1, :n],
                                        options.filter_threshold)
        return LightGlueOutput(m0, m1, s0, s1, log_assignment, state.stop_layer, state.layers[:, 0, :m],
                               state.layers[:, 1, :n], state.pruned[:, 0, :m], state.pruned[:, 1, :n])

    def forward_features(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> LightGlueOutput:
        """Full tensor results for pairs (feats0[k], feats1[k]), padded to the largest keypoint counts."""
        if len(feats0) != len(feats1) or not feats0:
            raise ValueError(f"need pairs: {len(feats0)} image0 and {len(feats1)} image1 features")
        (k0, d0, s0, m0), (k1, d1, s1, m1) = self._collate(feats0), self._collate(feats1)
        return self.forward(k0, k1, d0, d1, s0, s1, m0, m1)

    def match(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> list[PairMatches]:
        """Match pairs (feats0[k], feats1[k]) in one batched forward; results equal matching each pair
        alone. Typical use: K keyframes against the current frame repeated K times."""
        if not feats0 and not feats1:
            return []
        out = self.forward_features(feats0, feats1)
        return [out.pair(k, len(f)) for k, f in enumerate(feats0)]

    def _collate(self, feats: Sequence[Features]) -> tuple[torch.Tensor, ...]:
        """Pad to the largest keypoint count: keypoints, descriptors, image sizes (w, h), masks."""
        device, dim = self.device, self.arch.input_dim
        count = max(len(f) for f in feats)
        kpts = torch.zeros(len(feats), count, 2, device=device)
        desc = torch.zeros(len(feats), count, dim, device=device)
        mask = torch.zeros(len(feats), count, dtype=torch.bool, device=device)
        for k, f in enumerate(feats):
            if len(f) and f.descriptors.shape[-1] != dim:
                hint = f" (weights trained for {self.expected_features} features)" if self.expected_features else ""
                raise ValueError(f"LightGlue expects {dim}-d descriptors{hint}, got {f.descriptors.shape[-1]}-d")
            kpts[k, : len(f)] = f.keypoints.to(device, torch.float32).reshape(-1, 2)
            desc[k, : len(f)] = f.descriptors.to(device, torch.float32).reshape(len(f), dim)
            mask[k, : len(f)] = True
        sizes = torch.tensor([f.image_size for f in feats], dtype=torch.float32, device=device)
        return kpts, desc, sizes, mask

"""SuperGlue matcher (Sarlin et al., CVPR 2020), native PyTorch.

Behaviour follows the original magicleap ``SuperGluePretrainedNetwork`` implementation, which trained
the published weights; weights are read from the Hugging Face checkpoints
(``magic-leap-community/superglue_indoor`` / ``_outdoor``, or a local directory in that layout).
Our state-dict keys are exactly those of transformers' ``SuperGlueForKeypointMatching`` minus
``keypoint_detector.*``: the hub repos embed a SuperPoint there, which we drop on load because
keypoints come from our own extractor.

Differences from transformers' implementation (we follow the original in each):

* Scores of mutual matches at or below ``match_threshold``: the original keeps them in the dense
  per-keypoint scores (the match index is -1); transformers zeroes them. The *set* of matches is
  the same. :class:`SuperGlueOutput` keeps the original's dense scores; :meth:`SuperGlue.match`
  returns only the matches (mutual and score > match_threshold), sorted by image0 index, with
  score = exp(log-assignment), identical in both.
* Batches with different keypoint counts: every pair's Sinkhorn uses its own marginals (N, M) and
  ignores padding, so a batched pair equals the pair matched alone. transformers' padded path keeps
  the padded sizes as marginals and lets padding drain through the dustbins: same fixed point, but
  a different result after a finite number of iterations.
* Keypoints are normalised by each image's own size (transformers: one size for the whole batch).

Head layout: the original splits the attention channels into heads as ``channel = d * heads + h``
(interleaved); transformers' converter permuted the q/k/v rows and merge columns so that heads are
contiguous blocks (``channel = h * head_dim + d``). The checkpoints are in the converted layout, so
we split contiguous blocks; ``test/test_superglue.py`` checks the equivalence with the original
formulation on un-permuted weights.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import MatcherConfig, default
from ..device import resolve_device
from ..features import Features, PairMatches
from .assignment import mutual_matches
from .weights import WeightsError, config_value, load_checkpoint, load_into

DROP_PREFIXES = ("keypoint_detector.",)
MIN_KEYPOINTS = 2  # fewer in either image: empty result without running the network


@dataclass(frozen=True)
class SuperGlueArchitecture:
    """Shape of the network, read from the checkpoint's config.json."""

    hidden_size: int = 256
    keypoint_encoder_sizes: tuple[int, ...] = (32, 64, 128, 256)
    gnn_layers_types: tuple[str, ...] = ("self", "cross") * 9
    num_attention_heads: int = 4

    @classmethod
    def from_json(cls, config: Mapping[str, Any], source: str = "") -> "SuperGlueArchitecture":
        model_type = config.get("model_type")
        if model_type not in (None, "superglue"):
            raise WeightsError(f"weights '{source}' are a '{model_type}' checkpoint, not superglue")
        get = lambda key: config_value(config, key, getattr(cls, key))  # noqa: E731  (class defaults)
        try:
            arch = cls(int(get("hidden_size")), tuple(int(s) for s in get("keypoint_encoder_sizes")),
                       tuple(get("gnn_layers_types")), int(get("num_attention_heads")))
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"weights '{source}': invalid config.json: {exc}") from None
        if arch.num_attention_heads < 1 or arch.hidden_size % arch.num_attention_heads \
                or not set(arch.gnn_layers_types) <= {"self", "cross"}:
            raise WeightsError(f"weights '{source}': unsupported config.json (hidden_size {arch.hidden_size}, "
                               f"num_attention_heads {arch.num_attention_heads}, gnn_layers_types "
                               f"{list(arch.gnn_layers_types)})")
        return arch


@dataclass(frozen=True)
class SuperGlueConfig:
    """Runtime options (may change between calls, see :meth:`SuperGlue.with_options`). Defaults are
    the parameters' (= the original's); config.json's sinkhorn_iterations / matching_threshold are ignored."""

    sinkhorn_iterations: int = default("matcher.sinkhorn_iterations")
    match_threshold: float = default("matcher.match_threshold")  # a mutual match is kept when its score is > this

    def __post_init__(self):
        if int(self.sinkhorn_iterations) != self.sinkhorn_iterations or self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be an integer >= 1, got {self.sinkhorn_iterations!r}")
        if not 0.0 <= self.match_threshold <= 1.0:
            raise ValueError(f"match_threshold must be in [0, 1], got {self.match_threshold!r}")


@dataclass
class SuperGlueOutput:
    """Padded batch result; L = padded keypoint count, pair b has N_b / M_b valid keypoints."""

    log_assignment: torch.Tensor  # (B, L+1, L+1) float32; last row/col = dustbins; padding = -inf
    matches0: torch.Tensor  # (B, L) int64 index into image1, -1 = unmatched or padding
    matches1: torch.Tensor  # (B, L) int64 index into image0, -1 = unmatched or padding
    scores0: torch.Tensor  # (B, L) float32 score of the mutual match, > 0 even when below the threshold
    scores1: torch.Tensor  # (B, L) float32 (original semantics; transformers zeroes those)
    mask0: torch.Tensor  # (B, L) bool valid keypoints of image0
    mask1: torch.Tensor  # (B, L) bool valid keypoints of image1

    def pair_log_assignment(self, b: int) -> torch.Tensor:
        """Pair b's (N_b+1, M_b+1) log-assignment, dustbins last, padding removed."""
        dustbin = torch.tensor([self.mask0.shape[1]], device=self.mask0.device)
        rows = torch.cat([self.mask0[b].nonzero()[:, 0], dustbin])
        cols = torch.cat([self.mask1[b].nonzero()[:, 0], dustbin])
        return self.log_assignment[b].index_select(0, rows).index_select(1, cols)


# --------------------------------------------------------------------------- network
# Module and attribute names mirror the HF checkpoint keys (e.g. ``attention.self.query``).


class _LinearBatchNormReLU(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.batch_norm = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        # BatchNorm1d wants channels at dim 1: flatten all leading dims into the batch (eval stats).
        return F.relu(self.batch_norm(x.flatten(0, -2)).view_as(x))


def _mlp(channels: Sequence[int]) -> nn.ModuleList:
    """Linear+BN+ReLU blocks, then a plain Linear (the original's 1x1-conv MLP)."""
    blocks: list[nn.Module] = [_LinearBatchNormReLU(a, b) for a, b in zip(channels[:-2], channels[1:-1])]
    return nn.ModuleList(blocks + [nn.Linear(channels[-2], channels[-1])])


def _run(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x)
    return x


class _KeypointEncoder(nn.Module):
    def __init__(self, arch: SuperGlueArchitecture):
        super().__init__()
        self.encoder = _mlp([3, *arch.keypoint_encoder_sizes, arch.hidden_size])

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return _run(self.encoder, torch.cat([keypoints, scores.unsqueeze(-1)], -1))


class _MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.projections = nn.ModuleDict({name: nn.Linear(dim, dim) for name in ("query", "key", "value")})
        self.output = nn.ModuleDict({"dense": nn.Linear(dim, dim)})

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        proj = self.projections
        # Contiguous head blocks: (n, L, C) -> (n, heads, L, C/heads); see the module docstring.
        q, k, v = (proj[name](t).unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for name, t in (("query", x), ("key", source), ("value", source)))
        message = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # scale 1/sqrt(head_dim)
        return self.output["dense"](message.transpose(1, 2).flatten(-2))


class _AttentionalPropagation(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention = _MultiHeadAttention(dim, heads)
        self.mlp = _mlp([2 * dim, 2 * dim, dim])

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return _run(self.mlp, torch.cat([x, self.attention(x, source, key_mask)], -1))


class _AttentionalGNN(nn.Module):
    def __init__(self, arch: SuperGlueArchitecture):
        super().__init__()
        self.kinds = arch.gnn_layers_types
        self.layers = nn.ModuleList(_AttentionalPropagation(arch.hidden_size, arch.num_attention_heads)
                                    for _ in self.kinds)

    def forward(self, desc: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """desc (B, 2, L, C), mask (B, 2, L) bool or None. Both images of a pair update at once."""
        flat = desc.flatten(0, 1)
        for layer, kind in zip(self.layers, self.kinds):
            # cross: each image attends to the other one of its pair (swap along dim 1)
            source = flat if kind == "self" else flat.unflatten(0, (-1, 2)).flip(1).flatten(0, 1)
            key_mask = None
            if mask is not None:
                key_mask = (mask if kind == "self" else mask.flip(1)).flatten(0, 1)[:, None, None, :]
            flat = flat + layer(flat, source, key_mask)
        return flat.unflatten(0, (-1, 2))


class _FinalProjection(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.final_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_proj(x)


def _our_key(name: str) -> str:
    """Checkpoint (transformers) key → ours: its ``attention.self.*`` projections are our
    ``attention.projections.*`` (an attribute named ``self`` would shadow Python's)."""
    return name.replace(".attention.self.", ".attention.projections.")


def _mlp_keys(original: str, ours: str, depth: int) -> dict[str, str]:
    """The original's Sequential(Conv1d, BatchNorm1d, ReLU, ..., Conv1d) indices → our blocks."""
    keys = {f"{original}.{3 * i}.": f"{ours}.{i}.linear." for i in range(depth - 1)}
    keys.update({f"{original}.{3 * i + 1}.": f"{ours}.{i}.batch_norm." for i in range(depth - 1)})
    keys[f"{original}.{3 * (depth - 1)}."] = f"{ours}.{depth - 1}."
    return keys


def from_original(state: dict[str, torch.Tensor], arch: SuperGlueArchitecture) -> dict[str, torch.Tensor]:
    """magicleap's release checkpoints (superglue_indoor.pth / _outdoor.pth) → our layout: 1x1 Conv1d
    weights become Linear weights, and attention heads move from interleaved channels
    (``d * heads + h``) to contiguous blocks (``h * head_dim + d``), as transformers' converter does."""
    heads, dim = arch.num_attention_heads, arch.hidden_size
    prefixes = _mlp_keys("kenc.encoder", "keypoint_encoder.encoder", len(arch.keypoint_encoder_sizes) + 1)
    prefixes["final_proj."] = "final_projection.final_proj."
    for layer in range(len(arch.gnn_layers_types)):
        ours = f"gnn.layers.{layer}.attention."
        for i, name in enumerate(("query", "key", "value")):
            prefixes[f"gnn.layers.{layer}.attn.proj.{i}."] = f"{ours}projections.{name}."
        prefixes[f"gnn.layers.{layer}.attn.merge."] = f"{ours}output.dense."
        prefixes.update(_mlp_keys(f"gnn.layers.{layer}.mlp", f"gnn.layers.{layer}.mlp", 2))

    def contiguous(t: torch.Tensor, dim0: int) -> torch.Tensor:  # channel d*heads+h -> h*head_dim+d
        shape = list(t.shape)
        moved = t.movedim(dim0, 0)
        moved = moved.reshape(dim // heads, heads, *moved.shape[1:]).transpose(0, 1).reshape(moved.shape)
        return moved.movedim(0, dim0).reshape(shape)

    out = {}
    for key, tensor in state.items():
        new = next((n + key[len(o):] for o, n in prefixes.items() if key.startswith(o)), key)
        if tensor.dim() == 3 and tensor.shape[-1] == 1:  # Conv1d kernel size 1 → Linear
            tensor = tensor[..., 0]
        if ".projections." in new:
            tensor = contiguous(tensor, 0)
        elif ".output.dense.weight" in new:
            tensor = contiguous(tensor, 1)
        out[new] = tensor
    return out


# --------------------------------------------------------------------------- optimal transport


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, mask0: torch.Tensor,
                          mask1: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log-space Sinkhorn with a dustbin row/column, per-pair marginals, padding ignored.

    scores (B, L0, L1) float32, mask0 (B, L0) / mask1 (B, L1) bool. Returns (B, L0+1, L1+1) with the
    dustbins last and -inf at padded entries; valid entries equal those of the unpadded problem.
    """
    b, l0, l1 = scores.shape
    n, m = mask0.sum(1).to(scores), mask1.sum(1).to(scores)  # each pair's own N, M
    alpha = bin_score.to(scores).expand(b, 1, 1)
    couplings = torch.cat([torch.cat([scores, alpha.expand(b, l0, 1)], 2),
                           torch.cat([alpha.expand(b, 1, l1), alpha], 2)], 1)
    bins = mask0.new_ones(b, 1)
    rows, cols = torch.cat([mask0, bins], 1), torch.cat([mask1, bins], 1)
    couplings = couplings.masked_fill(~(rows[:, :, None] & cols[:, None, :]), -math.inf)

    norm = -(n + m).log()  # mass 1/(N+M) per keypoint; the dustbins absorb the other image's count
    log_mu = torch.cat([norm[:, None].expand(b, l0), (m.log() + norm)[:, None]], 1)
    log_nu = torch.cat([norm[:, None].expand(b, l1), (n.log() + norm)[:, None]], 1)
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        # Padded rows/cols sum only -inf entries (LSE = -inf); pin their scaling to 0 so no inf/NaN
        # leaks into valid entries (-inf coupling + 0 contributes exactly nothing).
        u = torch.where(rows, log_mu - torch.logsumexp(couplings + v[:, None, :], 2), 0.0)
        v = torch.where(cols, log_nu - torch.logsumexp(couplings + u[:, :, None], 1), 0.0)
    return couplings + u[:, :, None] + v[:, None, :] - norm[:, None, None]  # probabilities * (N+M)


# --------------------------------------------------------------------------- model


class SuperGlue(nn.Module):
    """SuperGlue matcher. Build with :meth:`from_pretrained` / :meth:`from_config`; inference only.

    Weights stay float32; ``dtype`` float16/bfloat16 runs the encoder and GNN under autocast, while
    the score matrix and Sinkhorn are always float32.
    """

    def __init__(self, arch: SuperGlueArchitecture = SuperGlueArchitecture(),
                 config: SuperGlueConfig = SuperGlueConfig(), dtype: torch.dtype = torch.float32):
        super().__init__()
        self.arch, self.config, self.dtype = arch, config, dtype
        self.keypoint_encoder = _KeypointEncoder(arch)
        self.gnn = _AttentionalGNN(arch)
        self.final_projection = _FinalProjection(arch.hidden_size)
        self.bin_score = nn.Parameter(torch.tensor(1.0))
        self.eval()

    # ---- construction

    @classmethod
    def from_pretrained(cls, weights: str, revision: str = "", *, parameter: str = "",
                        device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32, **runtime_options: Any) -> "SuperGlue":
        """Load weights in any form ``weights.load_checkpoint`` resolves: hub repo id, directory
        (config.json + model.safetensors), .safetensors file, or magicleap's original
        superglue_indoor.pth / superglue_outdoor.pth (renamed here; architecture = the original's).
        ``runtime_options``: fields of :class:`SuperGlueConfig`."""
        config = SuperGlueConfig(**runtime_options)
        checkpoint = load_checkpoint(weights, revision, drop_prefixes=DROP_PREFIXES, parameter=parameter)
        model = cls(SuperGlueArchitecture.from_json(checkpoint.config, weights), config, dtype)
        if "kenc.encoder.0.weight" in checkpoint.state_dict:  # magicleap's original release file
            checkpoint.state_dict = from_original(checkpoint.state_dict, model.arch)
        checkpoint.state_dict = {_our_key(k): v for k, v in checkpoint.state_dict.items()}
        load_into(model, checkpoint)
        return model.to(resolve_device(device) if isinstance(device, str) else device)

    @classmethod
    def from_config(cls, config: MatcherConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, features: str = "superpoint") -> "SuperGlue":
        weights = dataclasses.replace(config, type="superglue").resolved_weights(features)
        return cls.from_pretrained(weights, config.revision, parameter="matcher.weights",
                                   device=device, dtype=dtype, sinkhorn_iterations=config.sinkhorn_iterations,
                                   match_threshold=config.match_threshold)

    # Matcher protocol: SuperGlue is trained on SuperPoint descriptors of this size.
    expected_features = "superpoint"

    @property
    def input_dim(self) -> int:
        return self.arch.hidden_size

    def set_thresholds(self, config: MatcherConfig) -> None:
        """Live update of matcher.match_threshold (read at every call)."""
        self.with_options(match_threshold=config.match_threshold)

    def with_options(self, **runtime_options: Any) -> "SuperGlue":
        """Change runtime options (validated), e.g. ``with_options(match_threshold=0.3)``."""
        self.config = dataclasses.replace(self.config, **runtime_options)
        return self

    @property
    def device(self) -> torch.device:
        return self.bin_score.device

    # ---- tensor-level forward

    def forward(self, keypoints: torch.Tensor, scores: torch.Tensor, descriptors: torch.Tensor,
                image_sizes: torch.Tensor, mask: torch.Tensor | None = None) -> SuperGlueOutput:
        """keypoints (B, 2, L, 2) pixels (x, y); scores (B, 2, L); descriptors (B, 2, L, C);
        image_sizes (B, 2, 2) (width, height) per image; mask (B, 2, L) bool valid keypoints
        (None = all). Dim 1 indexes (image0, image1). Needs >= 1 valid keypoint per image."""
        size = image_sizes.to(keypoints)[:, :, None, :]
        # Original normalisation: centre, divide by 0.7 * the image's longer side.
        normalized = (keypoints - size / 2) / (0.7 * size.amax(-1, keepdim=True))
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast:
            desc = descriptors + self.keypoint_encoder(normalized, scores)
            desc = self.final_projection(self.gnn(desc, mask)).float()
        sim = desc[:, 0] @ desc[:, 1].transpose(1, 2) / self.arch.hidden_size ** 0.5
        b, _, length = scores.shape
        mask = mask if mask is not None else torch.ones(b, 2, length, dtype=torch.bool, device=scores.device)
        log_assignment = log_optimal_transport(sim, self.bin_score.float(), mask[:, 0], mask[:, 1],
                                               self.config.sinkhorn_iterations)
        return self._select(log_assignment, mask[:, 0], mask[:, 1])

    def _select(self, log_assignment: torch.Tensor, mask0: torch.Tensor, mask1: torch.Tensor) -> SuperGlueOutput:
        """Mutual best matches; keep those scoring above the threshold (original semantics)."""
        idx0, idx1, scores0, scores1 = mutual_matches(log_assignment, mask0, mask1, self.config.match_threshold)
        return SuperGlueOutput(log_assignment, idx0, idx1, scores0, scores1, mask0, mask1)

    # ---- Features API

    def pad(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> tuple[torch.Tensor, ...]:
        """Stack pairs into padded forward() inputs: keypoints, scores, descriptors, image_sizes, mask."""
        images = [f for pair in zip(feats0, feats1) for f in pair]
        length = max(len(f) for f in images)
        dim = self.arch.hidden_size
        kpts = torch.zeros(len(images), length, 2, device=self.device)
        scores = torch.zeros(len(images), length, device=self.device)
        desc = torch.zeros(len(images), length, dim, device=self.device)
        mask = torch.zeros(len(images), length, dtype=torch.bool, device=self.device)
        for i, f in enumerate(images):
            if f.descriptors.shape[-1] != dim or not f.descriptors.is_floating_point():
                raise ValueError(f"SuperGlue needs float descriptors of size {dim}, got "
                                 f"{tuple(f.descriptors.shape)} {f.descriptors.dtype}")
            n = len(f)
            kpts[i, :n], scores[i, :n], desc[i, :n], mask[i, :n] = f.keypoints, f.scores, f.descriptors, True
        sizes = torch.tensor([f.image_size for f in images], dtype=torch.float32, device=self.device)
        return tuple(t.unflatten(0, (-1, 2)) for t in (kpts, scores, desc, sizes, mask))

    @torch.inference_mode()
    def match(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> list[PairMatches]:
        """Match pairs (feats0[k], feats1[k]) in one forward; each result equals the pair alone."""
        if len(feats0) != len(feats1):
            raise ValueError(f"match() needs as many image0 as image1 features ({len(feats0)} != {len(feats1)})")
        results = [PairMatches.empty() for _ in feats0]
        todo = [k for k, (f0, f1) in enumerate(zip(feats0, feats1)) if min(len(f0), len(f1)) >= MIN_KEYPOINTS]
        if not todo:
            return results
        out = self(*self.pad([feats0[k] for k in todo], [feats1[k] for k in todo]))
        matches0, scores0 = out.matches0.cpu().numpy(), out.scores0.cpu().numpy()
        for row, k in enumerate(todo):
            idx0 = np.flatnonzero(matches0[row] >= 0)
            results[k] = PairMatches(np.stack([idx0, matches0[row, idx0]], 1).astype(np.int64),
                                     scores0[row, idx0].astype(np.float32))
        return results

    def match_pair(self, feats0: Features, feats1: Features) -> PairMatches:
        return self.match([feats0], [feats1])[0]

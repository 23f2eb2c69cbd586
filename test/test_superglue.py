"""SuperGlue: parity with transformers' SuperGlueForKeypointMatching (random non-degenerate weights),
equivalence with the original magicleap head layout, batching, edge cases, precision, weight errors."""
from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from checkpoints import HUB_IDS
from margins import assert_same_pair_matches
from safetensors.torch import load_file, save_file
from transformers.models.superglue import modeling_superglue as hf

from glue_ros.config import MatcherConfig
from glue_ros.features import Features
from glue_ros.models import superglue as sg
from glue_ros.models.superglue import SuperGlue, SuperGlueConfig, log_optimal_transport
from glue_ros.models.weights import WeightsError

KINDS = ("superglue_indoor", "superglue_outdoor")
SIZE = (640, 480)
N = 320
SCORE_RTOL = 1e-3  # scores = exp(log-assignment); see test_parity_with_transformers


def make_pair(n0: int, n1: int, seed: int, size: tuple[int, int] = SIZE) -> tuple[Features, Features]:
    """Random keypoints in the image; image1 holds a noisy, shifted, reordered subset of image0's
    points (so real correspondences exist) plus new points."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([size[0] - 1.0, size[1] - 1.0])
    k0, k1 = torch.rand(n0, 2, generator=g) * scale, torch.rand(n1, 2, generator=g) * scale
    d0 = F.normalize(torch.randn(n0, 256, generator=g), dim=1)
    d1 = F.normalize(torch.randn(n1, 256, generator=g), dim=1)
    shared = torch.randperm(n0, generator=g)[: min(n0, n1) * 2 // 3]
    k1[: len(shared)] = (k0[shared] + torch.tensor([15.0, -8.0]) + torch.randn(len(shared), 2, generator=g)).clamp(
        torch.zeros(2), scale)
    d1[: len(shared)] = F.normalize(d0[shared] + 0.2 * torch.randn(len(shared), 256, generator=g), dim=1)
    order = torch.randperm(n1, generator=g)
    k1, d1 = k1[order], d1[order]
    s0, s1 = 0.05 + 0.9 * torch.rand(n0, generator=g), 0.05 + 0.9 * torch.rand(n1, generator=g)
    return Features(k0, s0, d0, size), Features(k1, s1, d1, size)


@contextlib.contextmanager
def reference_settings(ref, iterations: int = 100, threshold: float = 0.0):
    """Set the reference's runtime options and capture its full log-assignment (it returns none)."""
    captured: dict[str, torch.Tensor] = {}
    original_ot = hf.log_optimal_transport

    def capture(*args, **kwargs):
        captured["log_assignment"] = original_ot(*args, **kwargs)
        return captured["log_assignment"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ref.config, "sinkhorn_iterations", iterations)
        mp.setattr(ref.config, "matching_threshold", threshold)
        mp.setattr(hf, "log_optimal_transport", capture)
        yield captured


def run_reference(ref, f0: Features, f1: Features, mask=None, output_hidden_states=False):
    """transformers' internal pair matcher on our keypoints (same count in both images unless masked)."""
    stack = lambda a, b: torch.stack([a, b])[None]  # noqa: E731
    with torch.no_grad():
        return ref._match_image_pair(stack(f0.keypoints, f1.keypoints), stack(f0.descriptors, f1.descriptors),
                                     stack(f0.scores, f1.scores), SIZE[1], SIZE[0], mask=mask,
                                     output_hidden_states=output_hidden_states)


def run_ours(model: SuperGlue, f0: Features, f1: Features) -> sg.SuperGlueOutput:
    with torch.inference_mode():
        return model(*model.pad([f0], [f1]))


@pytest.fixture(scope="module")
def pair() -> tuple[Features, Features]:
    return make_pair(N, N, seed=1)


def load(checkpoint_dirs, kind="superglue_indoor", **options) -> SuperGlue:
    return SuperGlue.from_pretrained(str(checkpoint_dirs[kind]), **{"match_threshold": 0.0, **options})


def assert_log_assignment_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5):
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    assert (ours - ref).abs().max().item() <= rel * scale, ((ours - ref).abs().max().item(), scale)


# Comparing match sets of two computations of the same log assignment (other implementation, other
# batch shapes, other machine): float32 rounding moves every entry a little (up to ~1e-3 here, next
# to dustbin entries of ~1e3), which can flip a decision that sits on a near-tie. margins.py holds the
# rule (decisions within 2 d are fragile, excluded, and few) and assert_same_pair_matches.
MAX_FRAGILE_SHARE = 0.1  # fragile matched rows, of the matches; observed 0-4 of 30-90 on x86-64 CPUs


def pair_output(out: sg.SuperGlueOutput, b: int = 0) -> tuple[torch.Tensor, ...]:
    return out.matches0[b], out.matches1[b], out.pair_log_assignment(b)


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_is_transformers_minus_keypoint_detector(kind, reference_models, checkpoint_dirs):
    expected = {k.replace(".attention.self.", ".attention.projections."): v  # renamed at load time
                for k, v in reference_models[kind].state_dict().items() if not k.startswith("keypoint_detector.")}
    ours = load(checkpoint_dirs, kind).state_dict()
    assert list(ours) == list(expected)
    assert all(torch.equal(ours[k], expected[k]) for k in expected)


def test_loads_hub_ids_offline_and_from_matcher_config(offline_hub, reference_models):
    for kind in KINDS:
        model = SuperGlue.from_pretrained(HUB_IDS[kind])
        assert torch.equal(model.gnn.layers[7].attention.output["dense"].weight,
                           reference_models[kind].gnn.layers[7].attention.output.dense.weight)
        assert model.config == SuperGlueConfig()  # original defaults: 100 iterations, threshold 0.2
    model = SuperGlue.from_config(MatcherConfig(type="superglue", sinkhorn_iterations=20, match_threshold=0.3),
                                  "cpu", torch.float32)
    assert model.config == SuperGlueConfig(20, 0.3)
    assert torch.equal(model.bin_score, reference_models["superglue_indoor"].bin_score)


def test_weight_errors_name_the_tensor(checkpoint_dirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_dirs["superglue_indoor"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["gnn.layers.5.attention.self.key.bias"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"missing tensors: gnn\.layers\.5\.attention\.projections\.key\.bias"):
        SuperGlue.from_pretrained(str(broken))
    with pytest.raises(WeightsError, match="not superglue"):
        SuperGlue.from_pretrained(str(checkpoint_dirs["lightglue"]))


def test_runtime_options_are_validated(checkpoint_dirs):
    with pytest.raises(ValueError, match="sinkhorn_iterations"):
        SuperGlueConfig(sinkhorn_iterations=0)
    with pytest.raises(ValueError, match="match_threshold"):
        SuperGlueConfig(match_threshold=1.5)
    with pytest.raises(TypeError):
        load(checkpoint_dirs, filter_threshold=0.1)
    model = load(checkpoint_dirs)
    model.with_options(match_threshold=0.4)
    assert model.config == SuperGlueConfig(100, 0.4)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("kind,iterations", [("superglue_indoor", 100), ("superglue_indoor", 3),
                                             ("superglue_outdoor", 100), ("superglue_outdoor", 20)])
def test_parity_with_transformers(kind, iterations, pair, reference_models, checkpoint_dirs):
    ref = reference_models[kind]
    with reference_settings(ref, iterations) as captured:
        matches, scores, _, _ = run_reference(ref, *pair)
    out = run_ours(load(checkpoint_dirs, kind, sinkhorn_iterations=iterations), *pair)
    assert_log_assignment_close(out.log_assignment, captured["log_assignment"])  # incl. dustbins
    # Same matches, up to the few near-ties that float32 rounding may flip (see margins.fragile_rows).
    rows, cols = assert_same_pair_matches(pair_output(out),
                                          (matches[0, 0], matches[0, 1], captured["log_assignment"][0]), 0.0,
                                          MAX_FRAGILE_SHARE)
    assert (out.matches0[0, rows] >= 0).sum() >= 20  # not a vacuous comparison
    # These random weights give dustbin log-assignment entries of ~1e3, so float32 rounding alone
    # moves a log-score by ~1e-4: compare scores relatively (see test_batch_equals_each_pair_alone).
    torch.testing.assert_close(out.scores0[0, rows], scores[0, 0, rows], rtol=SCORE_RTOL, atol=1e-6)
    torch.testing.assert_close(out.scores1[0, cols], scores[0, 1, cols], rtol=SCORE_RTOL, atol=1e-6)


def _interleaved_head_forward(self, x, source, key_mask):
    """Our attention with the ORIGINAL's head split (channel = d * heads + h) on converted weights."""
    proj = self.projections
    q, k, v = (proj[n](t).unflatten(-1, (-1, self.heads)).transpose(-1, -2).transpose(1, 2)
               for n, t in (("query", x), ("key", source), ("value", source)))
    message = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
    return self.output["dense"](message.transpose(1, 2).transpose(-1, -2).flatten(-2))


def test_parity_is_tight_enough_to_catch_a_wrong_head_split(pair, reference_models, checkpoint_dirs, monkeypatch):
    ref = reference_models["superglue_indoor"]
    with reference_settings(ref) as captured:
        matches, _, _, _ = run_reference(ref, *pair)
    monkeypatch.setattr(sg._MultiHeadAttention, "forward", _interleaved_head_forward)
    out = run_ours(load(checkpoint_dirs), *pair)
    expected = captured["log_assignment"]
    # > 100x the parity tolerance (observed ~700x), and matches change (observed 23 of 84)
    assert (out.log_assignment - expected).abs().max() > 100 * 1e-5 * expected.abs().max()
    assert (out.matches0 != matches[:, 0]).sum() >= 10


def test_head_layout_equals_original_formulation(checkpoint_dirs):
    """Un-permute a layer's weights into the original's layout and run the original's multi-head
    attention (Conv1d channels-first, view(B, head_dim, heads, N)): same result as our module."""
    model = load(checkpoint_dirs)
    attention, heads = model.gnn.layers[3].attention, model.arch.num_attention_heads
    channels = model.arch.hidden_size
    head_dim = channels // heads
    linears = attention.projections

    def to_original_rows(t):  # inverse of the converter's permutation: row h*head_dim+d -> d*heads+h
        return t.reshape(heads, head_dim, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    proj = {n: (to_original_rows(linears[n].weight), to_original_rows(linears[n].bias)) for n in linears}
    dense = attention.output["dense"]
    merge_w = dense.weight.reshape(channels, heads, head_dim).transpose(1, 2).reshape(channels, channels)

    g = torch.Generator().manual_seed(3)
    x, source = torch.randn(2, 50, channels, generator=g), torch.randn(2, 70, channels, generator=g)

    def original(x, source, proj):  # channels-first tensors, as the original's Conv1d layers use
        q, k, v = ((w @ t.transpose(1, 2) + b[:, None]).view(t.shape[0], head_dim, heads, -1)
                   for (w, b), t in ((proj["query"], x), (proj["key"], source), (proj["value"], source)))
        prob = torch.softmax(torch.einsum("bdhn,bdhm->bhnm", q, k) / head_dim ** 0.5, -1)
        message = torch.einsum("bhnm,bdhm->bdhn", prob, v).reshape(x.shape[0], channels, -1)
        return (merge_w @ message + dense.bias[:, None]).transpose(1, 2)

    with torch.no_grad():
        ours = attention(x, source, None)
        torch.testing.assert_close(ours, original(x, source, proj), rtol=1e-4, atol=1e-5)
        # without the permutation the result is different: the layout matters
        naive = {n: (linears[n].weight, linears[n].bias) for n in linears}
        assert (ours - original(x, source, naive)).abs().max() > 1e-2 * ours.abs().max()


def test_below_threshold_mutual_matches_keep_their_score(pair, reference_models, checkpoint_dirs):
    """Deviation from transformers pinned: a mutual match scoring <= match_threshold is not a match in
    either; transformers zeroes its dense score, ours (like the original) keeps exp(log-assignment).
    match() returns only matches scoring > match_threshold, with identical scores in both."""
    ref = reference_models["superglue_indoor"]
    model = load(checkpoint_dirs)
    mutual = run_ours(model, *pair)
    ordered = mutual.scores0[mutual.matches0 >= 0].sort().values
    # In the widest gap between two adjacent scores of the middle half, so no score sits next to it.
    middle = ordered[len(ordered) // 4: 3 * len(ordered) // 4 + 1]
    gap = int((middle[1:] - middle[:-1]).argmax())
    threshold = middle[gap: gap + 2].mean().item()
    model.with_options(match_threshold=threshold)
    with reference_settings(ref, threshold=threshold) as captured:
        matches, scores, _, _ = run_reference(ref, *pair)
    out = run_ours(model, *pair)
    rows, _ = assert_same_pair_matches(pair_output(out), (matches[0, 0], matches[0, 1], captured["log_assignment"][0]),
                                       threshold, MAX_FRAGILE_SHARE)
    rows = rows[None]  # (1, N) like the outputs
    below = (mutual.matches0 >= 0) & (out.matches0 < 0)  # mutual, but at or below the threshold
    assert below.sum() >= 10
    assert torch.all(scores[:, 0][below & rows] == 0)  # transformers
    assert torch.all(out.scores0[below] > 0) and torch.all(out.scores0[below] <= threshold)  # original
    torch.testing.assert_close(out.scores0[below], mutual.scores0[below])
    kept = out.matches0 >= 0
    torch.testing.assert_close(out.scores0[kept & rows], scores[:, 0][kept & rows], rtol=SCORE_RTOL, atol=1e-6)

    result = model.match([pair[0]], [pair[1]])[0]
    assert len(result) == int(kept.sum()) and (result.scores > threshold).all()
    assert (result.matches[:, 1] == out.matches0[0, result.matches[:, 0]].numpy()).all()


def test_unequal_counts_match_reference_descriptors_with_own_marginals(reference_models, checkpoint_dirs):
    """N != M: the reference's masked GNN gives the final descriptors; the Sinkhorn on the unpadded
    (N, M) problem is the original's. transformers' own padded Sinkhorn keeps the padded sizes as
    marginals (padding drains through the dustbin): same fixed point, not the same after 100 iterations."""
    ref = reference_models["superglue_outdoor"]
    f0, f1 = make_pair(300, 210, seed=5)
    pad = torch.zeros(90, 2), torch.zeros(90), torch.zeros(90, 256)
    f1_padded = Features(torch.cat([f1.keypoints, pad[0]]), torch.cat([f1.scores, pad[1]]),
                         torch.cat([f1.descriptors, pad[2]]), SIZE)
    mask = torch.stack([torch.ones(300), torch.cat([torch.ones(210), torch.zeros(90)])]).long()[None]
    with reference_settings(ref) as captured:
        _, _, hidden, _ = run_reference(ref, f0, f1_padded, mask=mask, output_hidden_states=True)
    desc = hidden[-1][0].transpose(-1, -2)  # final projection, (2, 300, 256)
    sim = desc[0] @ desc[1, :210].T / 256 ** 0.5
    expected = hf.log_optimal_transport(sim[None], ref.bin_score.detach(), 100)[0]

    out = run_ours(load(checkpoint_dirs, "superglue_outdoor"), f0, f1)
    assert_log_assignment_close(out.pair_log_assignment(0), expected)
    # transformers' padded path: padded scores are finfo.min but padding still counts in the marginals
    rows = list(range(300)) + [300]
    cols = list(range(210)) + [300]
    padded = captured["log_assignment"][0][rows][:, cols]
    assert (padded - expected).abs().max() > 1e-3


def test_sinkhorn_ignores_padding():
    g = torch.Generator().manual_seed(0)
    bin_score = torch.tensor(0.7)
    problems = [3 * torch.randn(n, m, generator=g) for n, m in ((37, 53), (60, 12), (80, 80))]
    scores = torch.full((3, 80, 80), 123.0)  # garbage in the padding must not matter
    mask0, mask1 = torch.zeros(3, 80, dtype=torch.bool), torch.zeros(3, 80, dtype=torch.bool)
    for b, p in enumerate(problems):
        scores[b, : p.shape[0], : p.shape[1]] = p
        mask0[b, : p.shape[0]], mask1[b, : p.shape[1]] = True, True
    z = log_optimal_transport(scores, bin_score, mask0, mask1, 50)
    for b, p in enumerate(problems):
        expected = hf.log_optimal_transport(p[None], bin_score, 50)[0]
        rows = torch.cat([torch.arange(p.shape[0]), torch.tensor([80])])
        cols = torch.cat([torch.arange(p.shape[1]), torch.tensor([80])])
        torch.testing.assert_close(z[b][rows][:, cols], expected, rtol=1e-5, atol=1e-5)
        assert torch.isneginf(z[b][~torch.cat([mask0[b], torch.tensor([True])])]).all()


# --------------------------------------------------------------------------- batching and edge cases


@pytest.mark.parametrize("projection_scale", [1.0, 0.5])
def test_batch_equals_each_pair_alone(projection_scale, checkpoint_dirs):
    """Padding is exact; only float32 rounding differs (other matrix shapes). The fixture weights give
    dustbin log-assignment entries of ~1.8e3, where rounding moves scores by up to ~1e-3 relative
    (3e-5 absolute); with the final projection halved (entries ~4e2) scores agree within 1e-5."""
    model = load(checkpoint_dirs, "superglue_outdoor")
    with torch.no_grad():
        model.final_projection.final_proj.weight.mul_(projection_scale)
        model.final_projection.final_proj.bias.mul_(projection_scale)
    pairs = [make_pair(300, 220, seed=11), make_pair(150, 260, seed=12, size=(320, 240)),
             make_pair(256, 256, seed=13, size=(1280, 720))]
    batch = model.match([p[0] for p in pairs], [p[1] for p in pairs])
    with torch.inference_mode():
        batched = model(*model.pad([p[0] for p in pairs], [p[1] for p in pairs]))
    for b, (f0, f1) in enumerate(pairs):
        # match() is the batched forward, exactly (same computation)
        idx0 = (batched.matches0[b] >= 0).nonzero()[:, 0]
        assert np.array_equal(batch[b].matches, torch.stack([idx0, batched.matches0[b, idx0]], 1).numpy())
        assert np.array_equal(batch[b].scores, batched.scores0[b, idx0].numpy())
        # ...and equals the pair on its own (L = max(N, M)) up to float32 rounding: the same matches
        # except near-ties that rounding may flip (few; see margins.fragile_rows), scores within tolerance.
        alone = run_ours(model, f0, f1)
        assert_log_assignment_close(batched.pair_log_assignment(b), alone.pair_log_assignment(0), rel=1e-6)
        rows, _ = assert_same_pair_matches(pair_output(batched, b), pair_output(alone), 0.0, MAX_FRAGILE_SHARE)
        n0 = len(rows)
        compared = rows & (alone.matches0[0, :n0] >= 0)
        assert compared.sum() >= 10
        got, expected = batched.scores0[b, :n0][compared], alone.scores0[0, :n0][compared]
        difference = (got - expected).abs()
        if projection_scale == 1.0:
            assert (difference <= SCORE_RTOL * expected).all()
        else:
            assert difference.max() <= 1e-5


def test_degenerate_pairs_give_empty_matches(checkpoint_dirs):
    model = load(checkpoint_dirs)
    good = make_pair(40, 30, seed=2)
    one = Features(torch.tensor([[10.0, 20.0]]), torch.tensor([0.5]), F.normalize(torch.randn(1, 256), dim=1), SIZE)
    empty = Features.empty(SIZE)
    feats0 = [empty, one, good[0], good[0], empty, one, good[0]]
    feats1 = [good[1], good[1], one, empty, empty, one, good[1]]
    results = model.match(feats0, feats1)
    assert [len(r) for r in results[:6]] == [0] * 6
    assert all(r.matches.shape == (0, 2) and r.scores.shape == (0,) for r in results[:6])
    alone = model.match([good[0]], [good[1]])[0]
    assert np.array_equal(results[6].matches, alone.matches) and len(alone) > 0  # the same single-pair batch
    assert model.match([], []) == []
    two = Features(torch.tensor([[1.0, 2.0], [300.0, 200.0]]), torch.tensor([0.5, 0.9]),
                   F.normalize(torch.randn(2, 256), dim=1), SIZE)
    assert len(model.match_pair(two, two)) <= 2
    with pytest.raises(ValueError, match="as many"):
        model.match([good[0]], [])
    with pytest.raises(ValueError, match="float descriptors of size 256"):
        model.match_pair(Features(good[0].keypoints, good[0].scores, good[0].descriptors[:, :128], SIZE), good[1])


def test_bf16_mostly_agrees_with_fp32(pair, checkpoint_dirs):
    fp32 = load(checkpoint_dirs).match([pair[0]], [pair[1]])[0]
    bf16_model = load(checkpoint_dirs, dtype=torch.bfloat16)
    assert bf16_model.bin_score.dtype == torch.float32  # weights stay fp32, autocast computes in bf16
    out = run_ours(bf16_model, *pair)
    assert out.log_assignment.dtype == torch.float32 and torch.isfinite(out.log_assignment).all()
    bf16 = bf16_model.match([pair[0]], [pair[1]])[0]
    shared = set(map(tuple, fp32.matches.tolist())) & set(map(tuple, bf16.matches.tolist()))
    share = len(shared) / len(fp32)
    print(f"bf16 keeps {share:.0%} of {len(fp32)} fp32 matches ({len(bf16)} bf16 matches)")
    assert share >= 0.6

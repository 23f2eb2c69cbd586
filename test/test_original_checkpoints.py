"""magicleap's original release files (superpoint_v1.pth, superglue_indoor.pth / _outdoor.pth) load
through the one resolver (torch.load weights_only) and are renamed into our layout at load time.

The real files cannot be downloaded here, so each test writes a file in the ORIGINAL layout (key names,
Conv1d kernels, interleaved attention heads ``channel = d * heads + h``) from a random-weight model and
checks the loaded model equals the one the file was made from, tensor for tensor and output for output.
"""
from __future__ import annotations

import numpy as np
import torch

from glue_ros.features import Features
from glue_ros.models.superglue import SuperGlue
from glue_ros.models.superpoint import SuperPoint


def superpoint_original(model: SuperPoint) -> dict[str, torch.Tensor]:
    names = {"keypoint_decoder.conv_score_a": "convPa", "keypoint_decoder.conv_score_b": "convPb",
             "descriptor_decoder.conv_descriptor_a": "convDa", "descriptor_decoder.conv_descriptor_b": "convDb"}
    names.update({f"encoder.conv_blocks.{i}.conv_{ab}": f"conv{i + 1}{ab}" for i in range(4) for ab in "ab"})
    out = {}
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        out[f"{names[module]}.{leaf}"] = tensor.clone()
    return out


def test_superpoint_v1_pth_loads(checkpoint_dirs, tmp_path):
    ours = SuperPoint.from_pretrained(str(checkpoint_dirs["superpoint"]))
    path = tmp_path / "superpoint_v1.pth"
    torch.save(superpoint_original(ours), path)
    loaded = SuperPoint.from_pretrained(str(path))
    for key, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    a, b = ours.extract(image)[0], loaded.extract(image)[0]
    assert len(a) > 10 and torch.equal(a.keypoints, b.keypoints) and torch.equal(a.descriptors, b.descriptors)


def superglue_original(model: SuperGlue) -> dict[str, torch.Tensor]:
    """Our (transformers-layout) SuperGlue → magicleap's layout, written from the original's definition:
    MLPs are Sequential(Conv1d(k=1), BatchNorm1d, ReLU, ...); attention splits channels as
    ``view(b, head_dim, heads, n)``, i.e. channel = d * heads + h."""
    heads, dim = model.arch.num_attention_heads, model.arch.hidden_size
    head_dim = dim // heads
    interleave = torch.tensor([h * head_dim + d for d in range(head_dim) for h in range(heads)])
    out = {"bin_score": model.bin_score.detach().clone()}

    def mlp(ours, original):
        blocks = list(ours)
        for i, block in enumerate(blocks[:-1]):
            out[f"{original}.{3 * i}.weight"] = block.linear.weight[..., None].clone()
            out[f"{original}.{3 * i}.bias"] = block.linear.bias.clone()
            for name, t in block.batch_norm.state_dict().items():
                out[f"{original}.{3 * i + 1}.{name}"] = t.clone()
        out[f"{original}.{3 * (len(blocks) - 1)}.weight"] = blocks[-1].weight[..., None].clone()
        out[f"{original}.{3 * (len(blocks) - 1)}.bias"] = blocks[-1].bias.clone()

    mlp(model.keypoint_encoder.encoder, "kenc.encoder")
    for i, layer in enumerate(model.gnn.layers):
        for j, name in enumerate(("query", "key", "value")):
            linear = layer.attention.projections[name]
            out[f"gnn.layers.{i}.attn.proj.{j}.weight"] = linear.weight[interleave][..., None].clone()
            out[f"gnn.layers.{i}.attn.proj.{j}.bias"] = linear.bias[interleave].clone()
        dense = layer.attention.output["dense"]
        out[f"gnn.layers.{i}.attn.merge.weight"] = dense.weight[:, interleave][..., None].clone()
        out[f"gnn.layers.{i}.attn.merge.bias"] = dense.bias.clone()
        mlp(layer.mlp, f"gnn.layers.{i}.mlp")
    out["final_proj.weight"] = model.final_projection.final_proj.weight[..., None].clone()
    out["final_proj.bias"] = model.final_projection.final_proj.bias.clone()
    return {k: v.detach() for k, v in out.items()}


def random_features(seed: int, n: int) -> Features:
    g = torch.Generator().manual_seed(seed)
    desc = torch.nn.functional.normalize(torch.randn(n, 256, generator=g), dim=1)
    return Features(torch.rand(n, 2, generator=g) * torch.tensor([320.0, 240.0]), torch.rand(n, generator=g),
                    desc, (320, 240))


def test_superglue_original_pth_loads(checkpoint_dirs, tmp_path):
    ours = SuperGlue.from_pretrained(str(checkpoint_dirs["superglue_indoor"]))
    path = tmp_path / "superglue_indoor.pth"
    torch.save(superglue_original(ours), path)
    loaded = SuperGlue.from_pretrained(str(path))
    for key, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    f0, f1 = random_features(1, 60), random_features(2, 70)
    a, b = ours.match([f0], [f1])[0], loaded.match([f0], [f1])[0]
    np.testing.assert_array_equal(a.matches, b.matches)

"""Random-weight checkpoints in the exact Hugging Face layout, for offline tests.

``transformers`` builds the reference model; we re-initialise it with non-degenerate weights
(N(0, 1/fan_in) for Linear/Conv — transformers' N(0, 0.02) is so flat that wrong attention wiring
still passes parity), save it with ``save_pretrained`` (config.json + model.safetensors) and install
it in a hub cache directory exactly as huggingface_hub would have downloaded it.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

HUB_IDS = {
    "superpoint": "magic-leap-community/superpoint",
    "lightglue": "ETH-CVG/lightglue_superpoint",
    "superglue_indoor": "magic-leap-community/superglue_indoor",
    "superglue_outdoor": "magic-leap-community/superglue_outdoor",
}


def reinit_(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
            elif isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)) and module.weight is not None:
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
                if isinstance(module, nn.BatchNorm1d):
                    module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                    module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=generator))
    return model.eval()


def make_reference(kind: str, seed: int = 0, **config_overrides):
    """A transformers model of ``kind`` (superpoint | lightglue | superglue_indoor | superglue_outdoor)
    with non-degenerate random weights, in eval mode."""
    import transformers as tf

    if kind == "superpoint":
        model = tf.SuperPointForKeypointDetection(tf.SuperPointConfig(**config_overrides))
    elif kind == "lightglue":
        model = tf.LightGlueForKeypointMatching(tf.LightGlueConfig(**config_overrides))
    elif kind.startswith("superglue"):
        model = tf.SuperGlueForKeypointMatching(tf.SuperGlueConfig(**config_overrides))
    else:
        raise ValueError(kind)
    return reinit_(model, seed)


def save_checkpoint(model, directory: Path) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    assert (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()
    return directory


def install_in_hub_cache(directory: Path, cache_dir: Path, repo_id: str) -> str:
    """Lay out ``directory``'s files as huggingface_hub's cache does (blobs + snapshot symlinks +
    refs/main). Returns the fake commit hash."""
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode() + str(directory).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    for file in Path(directory).iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo_dir / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.name
        if link.exists() or link.is_symlink():
            link.unlink()
        os.symlink(os.path.relpath(blob, snapshot), link)
    (repo_dir / "refs" / "main").write_text(commit)
    return commit

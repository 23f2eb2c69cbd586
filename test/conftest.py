"""Shared fixtures: random-weight checkpoints resolved offline through a temporary hub cache."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import HUB_IDS, install_in_hub_cache, make_reference, save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def reference_models():
    """transformers reference models with non-degenerate random weights (built once per session)."""
    return {kind: make_reference(kind, seed=i) for i, kind in enumerate(HUB_IDS)}


@pytest.fixture(scope="session")
def checkpoint_dirs(reference_models, tmp_path_factory):
    """kind → plain local directory with config.json + model.safetensors."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {kind: save_checkpoint(model, root / kind) for kind, model in reference_models.items()}


@pytest.fixture(scope="session")
def hub_cache(checkpoint_dirs, tmp_path_factory):
    """A hub cache directory in which the default repo ids resolve to the random checkpoints."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    for kind, directory in checkpoint_dirs.items():
        install_in_hub_cache(directory, cache, HUB_IDS[kind])
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """Point huggingface_hub at the temporary cache, offline (as on a robot without internet)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def pytest_configure(config):
    # Reproducible fuzzing on every machine: fixed examples, no example database written into the repo.
    from hypothesis import settings

    settings.register_profile("glue_ros", derandomize=True, database=None)
    settings.load_profile("glue_ros")
    # Never touch the network or the user's real cache from tests.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

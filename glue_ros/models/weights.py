"""Checkpoint resolution and loading: hub repo id or local directory, safetensors only.

A checkpoint is a directory (or hub repo) holding ``config.json`` and ``model.safetensors`` in the
Hugging Face layout. Hub repos resolve through huggingface_hub, which honours ``HF_HOME``,
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``; we read those at call time so a process can change them.
No pickle path exists: tensors are read with ``safetensors`` only.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class WeightsError(RuntimeError):
    """Weights cannot be found or do not fit the model. The message says what to do."""


@dataclass
class Checkpoint:
    source: str  # what the user gave (repo id or directory)
    directory: Path  # where config.json and model.safetensors lie
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub would use, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.sep + os.sep in source or source.count("/") > 1


def _not_available_message(repo_id: str, revision: str, reason: str) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"weights '{repo_id}'{' @ ' + revision if revision else ''} are not available: {reason}. "
        f"Looked in the hub cache {hub_cache_dir()} (set by HF_HUB_CACHE / HF_HOME)"
        f"{' with HF_HUB_OFFLINE=1' if hub_offline() else ''}. "
        f"Pre-download them on a machine with internet: `hf download {repo_id}{rev}` "
        f"(then copy the cache, or the files, to this machine), "
        f"or point the parameter at a local directory holding {CONFIG_NAME} and {WEIGHTS_NAME}."
    )


def resolve(source: str, revision: str = "") -> Path:
    """Return a local directory holding config.json and model.safetensors for ``source``."""
    if not source:
        raise WeightsError("no weights given (empty repo id / directory)")
    expanded = Path(source).expanduser()
    if expanded.is_dir():
        return expanded
    if _looks_like_path(source) or expanded.exists():
        raise WeightsError(f"weights directory '{source}' does not exist (or is not a directory)")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HFValidationError
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise WeightsError(f"huggingface_hub is needed to resolve '{source}': {exc}") from None
    # A full commit hash is immutable: use the cached copy without asking the hub.
    pinned = len(revision) == 40 and all(c in "0123456789abcdef" for c in revision.lower())
    paths = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            with _quiet_hub_logging():
                path = _download(hf_hub_download, source, name, revision, pinned)
        except HFValidationError as exc:
            raise WeightsError(f"weights '{source}' is neither a local directory nor a valid hub repo id: "
                               f"{str(exc).splitlines()[0]}") from None
        except Exception as exc:  # offline, not cached, 404, network down: all end the same for the user
            reason = type(exc).__name__ + (f" ({str(exc).splitlines()[0]})" if str(exc) else "")
            raise WeightsError(_not_available_message(source, revision, f"{name}: {reason}")) from None
        paths.append(Path(path))
    return paths[0].parent


def _download(hf_hub_download, repo_id: str, filename: str, revision: str, pinned: bool) -> str:
    kwargs = dict(revision=revision or None, cache_dir=hub_cache_dir())
    if pinned and not hub_offline():
        try:
            return hf_hub_download(repo_id, filename, local_files_only=True, **kwargs)
        except Exception:  # not cached yet: download it below
            pass
    return hf_hub_download(repo_id, filename, local_files_only=hub_offline(), **kwargs)


@contextlib.contextmanager
def _quiet_hub_logging():
    """huggingface_hub logs every network retry as a warning; our single error says it all."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_checkpoint(source: str, revision: str = "", *, drop_prefixes: tuple[str, ...] = ()) -> Checkpoint:
    """Resolve and read a checkpoint. Tensors whose names start with ``drop_prefixes`` are dropped."""
    directory = resolve(source, revision)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WeightsError(f"weights '{source}': {path} is missing (need {CONFIG_NAME} and {WEIGHTS_NAME}; "
                               "only safetensors weights are accepted)")
    try:
        config = json.loads(config_path.read_text(), object_hook=lambda d: _Config(d, source))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"weights '{source}': {config_path} is not valid JSON: {exc}") from None
    try:
        from safetensors.torch import load_file

        state_dict = load_file(str(weights_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise WeightsError(f"weights '{source}': {weights_path} is not a readable safetensors file "
                           f"(corrupt or truncated?): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from None
    if drop_prefixes:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(drop_prefixes)}
    return Checkpoint(source, directory, config, state_dict)


def load_into(model: nn.Module, checkpoint: Checkpoint) -> nn.Module:
    """Strictly load ``checkpoint.state_dict`` into ``model``; name every missing, unexpected or
    mis-shaped tensor in the error."""
    expected = model.state_dict()
    given = checkpoint.state_dict
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(given) & set(expected) if given[k].shape != expected[k].shape)
    problems = []
    for label, items in (("missing tensors", missing), ("unexpected tensors", unexpected),
                         ("wrong shapes", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"weights '{checkpoint.source}' do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(given, strict=True)
    return model


class _Config(dict):
    """A config.json object that knows which weights it came from (for error messages)."""

    def __init__(self, items: Mapping[str, Any], source: str):
        super().__init__(items)
        self.source = source


#: Architecture sizes in config.json (layer widths, head and layer counts) must be integers in
#: [1, MAX_CONFIG_SIZE]: the model is built from them *before* the tensors' shapes can be compared,
#: so a corrupt value must not reach torch (a negative size raised a RuntimeError traceback at start).
MAX_CONFIG_SIZE = 1 << 16


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _config_error(config: Mapping[str, Any], text: str) -> WeightsError:
    source = getattr(config, "source", "")
    return WeightsError((f"weights '{source}': " if source else "") + f"config.json {text}"[:300])


def _size(config: Mapping[str, Any], key: str, value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_int(value) or not 1 <= value <= MAX_CONFIG_SIZE:
        raise _config_error(config, f"'{key}' must be an integer in [1, {MAX_CONFIG_SIZE}], got {value!r}")
    return value


def config_value(config: Mapping[str, Any], key: str, default: Any) -> Any:
    """``config[key]`` or ``default``. Where the default is a size (an int, or a sequence of ints), the
    value is checked to be one (WeightsError naming the weights and the key otherwise)."""
    value = config.get(key, default)
    if value is None:
        return default
    if _is_int(default):
        return _size(config, key, value)
    if isinstance(default, (tuple, list)) and default and all(_is_int(v) for v in default):
        if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 64:
            shown = f"{len(value)} entries" if isinstance(value, (tuple, list)) else repr(value)
            raise _config_error(config, f"'{key}' must be a list of 1 to 64 integers, got {shown}")
        return type(value)(_size(config, key, v) for v in value)
    return value

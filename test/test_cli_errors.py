"""Every CLI failure is one line and a non-zero exit; outputs are complete or absent (issue 12, items 2 and 6).

In-process ``main([...])`` with capsys where possible (cheap), one real subprocess for the "exactly one
line, no Traceback" guarantee and one for SIGTERM. The weights cases never touch the network: the hub
download function and the reachability probe are replaced by recorders.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest

from glue_ros.models import weights
from glue_ros.synthetic import parse_stamp, read_tum_trajectory, render_sequence
from glue_ros.tools import common, eval_pairs, eval_sequence, make_bag, match

ROOT = Path(__file__).resolve().parents[1]
SIFT = ["--profile", "sift_nn"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("pair")
    seq = render_sequence(2, width=160, height=120, motion="sideways", seed=3)
    paths = []
    for i, image in enumerate(seq.images):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(str(folder / f"{i}.png"))
    return paths[0], paths[1]


def one_error(capsys, code: int) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# --------------------------------------------------------------------------- glue-ros-match


def test_json_into_missing_folder_fails_before_any_work(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(match, "match_images", lambda *a: pytest.fail("matched although the output is unwritable"))
    target = tmp_path / "no" / "such" / "m.json"
    line = one_error(capsys, match.main([*pair, *SIFT, "--json", str(target)]))
    assert line == f"error: --json '{target}': folder '{target.parent}' does not exist (create it first)"
    assert not (tmp_path / "no").exists()


def test_unknown_picture_extension(pair, tmp_path, capsys):
    line = one_error(capsys, match.main([*pair, *SIFT, "--image", str(tmp_path / "m.foo")]))
    assert "--image" in line and "unknown picture extension '.foo'" in line and ".png" in line
    line = one_error(capsys, match.main([*pair, *SIFT, "--image", str(tmp_path / "noext")]))
    assert "unknown picture extension" in line
    assert not list(tmp_path.iterdir())


def test_directory_as_image_says_so(pair, tmp_path, capsys):
    line = one_error(capsys, match.main([str(tmp_path), pair[1], *SIFT]))
    assert line == f"error: image '{tmp_path}' is a directory, not a file"


def test_unwritable_outputs(pair, tmp_path, capsys, monkeypatch):
    # a folder that is a file
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error(capsys, match.main([*pair, *SIFT, "--json", str(blocker / "m.json")]))
    assert f"'{blocker}' is not a folder" in line
    # a directory given as output
    line = one_error(capsys, match.main([*pair, *SIFT, "--json", str(tmp_path)]))
    assert "is a directory; give a file name" in line

    # a folder that refuses new files (root ignores chmod, so the refusal is simulated)
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    line = one_error(capsys, match.main([*pair, *SIFT, "--image", str(tmp_path / "m.png")]))
    assert line == f"error: --image '{tmp_path / 'm.png'}': folder '{tmp_path}' is not writable (Permission denied)"


def test_outputs_are_complete_or_absent(pair, tmp_path, capsys, monkeypatch):
    """A run interrupted (SIGTERM arrives as Terminated) while writing leaves no JSON, not half a one."""
    out = tmp_path / "m.json"
    assert match.main([*pair, *SIFT, "--json", str(out), "--image", str(tmp_path / "m.png")]) == 0
    assert json.loads(out.read_text())["matcher"] == "nn" and cv2.imread(str(tmp_path / "m.png")) is not None
    capsys.readouterr()
    before = out.read_bytes()

    def interrupted_fsync(fd):
        raise common.Terminated()

    monkeypatch.setattr(common.os, "fsync", interrupted_fsync)
    code = match.main([*pair, *SIFT, "--json", str(out)])
    assert code == 143 and one_error(capsys, code) == "terminated (SIGTERM)"
    assert out.read_bytes() == before  # the old file untouched, no partial new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.png"]  # no temporary left
    fresh = tmp_path / "fresh.json"
    assert match.main([*pair, *SIFT, "--json", str(fresh)]) == 143 and not fresh.exists()


def test_sigterm_behaves_like_sigint(capsys):
    def body() -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises at the next bytecode: never reached
        pytest.fail("SIGTERM did not interrupt the body")

    previous = signal.getsignal(signal.SIGTERM)
    assert common.run_cli(body) == 143
    assert one_error(capsys, 143) == "terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is restored

    def ctrl_c() -> int:
        raise KeyboardInterrupt

    assert common.run_cli(ctrl_c) == 130 and one_error(capsys, 130) == "interrupted"


def test_real_process_errors_are_one_line_without_traceback(pair, tmp_path):
    """The installed command's process: exactly one stderr line, exit 2, for the raw-traceback cases."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for args in ([*pair, *SIFT, "--json", str(tmp_path / "none" / "m.json")],
                 [*pair, *SIFT, "--image", str(tmp_path / "m.foo")],
                 [str(tmp_path), pair[1], *SIFT]):
        result = subprocess.run([sys.executable, "-m", "glue_ros.tools.match", *args], capture_output=True,
                                text=True, cwd=ROOT, env=env, timeout=120)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr + result.stdout


def test_real_process_sigterm_exits_with_one_line(tmp_path):
    """SIGTERM to a one-shot CLI process: one line, exit 143, the output absent (not half-written)."""
    out = tmp_path / "out.json"
    script = textwrap.dedent(f"""
        import sys, time
        from glue_ros.tools.common import run_cli, write_text_atomic

        def body():
            print("ready", flush=True)
            time.sleep(60)
            write_text_atomic({str(out)!r}, "{{}}")
            return 0

        sys.exit(run_cli(body))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines() == ["terminated (SIGTERM)"], err
    assert not out.exists()


# --------------------------------------------------------------------------- weights: fast offline error


def test_offline_default_profile_fails_at_once_naming_everything(pair, tmp_path, capsys, monkeypatch):
    """Hub unreachable (HF_HUB_OFFLINE unset), nothing cached: one error naming both parameters, the
    `hf download` command of every repo the profile needs and an offline profile, after cache lookups
    only (local_files_only=True) and a single reachability probe: no hub retries."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    calls, probes = [], []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("local_files_only")))
        if not kwargs.get("local_files_only"):
            pytest.fail(f"asked the hub for {repo_id}/{filename} (retries) although it is unreachable")
        raise LocalEntryNotFoundError("not cached")

    def probe(endpoint, timeout):
        probes.append(timeout)
        return False, "ConnectError: [Errno -2] Name or service not known"

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(weights, "_probe_hub", probe)
    monkeypatch.setattr(match, "match_images", lambda *a: pytest.fail("models loaded although weights are missing"))
    weights.reset_hub_probe()
    try:
        line = one_error(capsys, match.main(list(pair)))  # the default profile: superpoint_lightglue
        for fragment in ("parameter 'extractor.weights'", "parameter 'matcher.weights'",
                         "`hf download magic-leap-community/superpoint && hf download ETH-CVG/lightglue_superpoint`",
                         "--profile xfeat_lighterglue (or profile:=xfeat_lighterglue), which ships its weights",
                         "offline", "Name or service not known",
                         str(tmp_path / "empty_cache")):
            assert fragment in line, (fragment, line)
        assert calls and all(local for _, _, local in calls)
        assert len(probes) == 1 and probes[0] <= 5
        line = one_error(capsys, match.main([*pair, "--profile", "superpoint_superglue"]))
        assert "`hf download magic-leap-community/superpoint && hf download magic-leap-community/superglue_indoor`" \
            in line
        assert len(probes) == 1  # probed once per process
    finally:
        weights.reset_hub_probe()


# --------------------------------------------------------------------------- glue-ros-make-bag


def _image_folder(tmp_path: Path, count: int = 2) -> Path:
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i, image in enumerate(render_sequence(count, width=64, height=48, motion="forward").images):
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


def _bag_stamps(bag: Path, topic: str = "/camera/image") -> list[int]:
    from glue_ros.ros.bag_io import open_reader

    reader = open_reader(bag)
    try:
        return [stamp for connection, stamp, _ in reader.messages() if connection.topic == topic]
    finally:
        reader.close()


def test_make_bag_without_intrinsics_warns_in_one_line(tmp_path, capsys):
    folder = _image_folder(tmp_path)
    assert make_bag.main([str(tmp_path / "bag"), "--images", str(folder), "--rate", "10"]) == 0
    captured = capsys.readouterr()
    warning = captured.err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning:") and "--intrinsics" in warning[0]
    assert "CameraInfo" in warning[0] and "wrote 2 frames" in captured.out
    assert len(_bag_stamps(tmp_path / "bag")) == 2 and _bag_stamps(tmp_path / "bag", "/camera/camera_info") == []
    assert make_bag.main([str(tmp_path / "bag2"), "--images", str(folder), "--rate", "10",
                          "--intrinsics", "50,50,31.5,23.5"]) == 0
    assert capsys.readouterr().err == ""  # with intrinsics: no warning


def test_make_bag_warns_about_a_ros1_looking_name(tmp_path, capsys):
    folder = _image_folder(tmp_path)
    assert make_bag.main([str(tmp_path / "fr3.bag"), "--images", str(folder), "--rate", "10",
                          "--intrinsics", "50,50,31.5,23.5"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ROS 1" in err[0] and "fr3_bag" in err[0]


def test_make_bag_interrupted_leaves_no_partial_bag(tmp_path, capsys, monkeypatch):
    folder = _image_folder(tmp_path)
    real = make_bag.write_bag

    def interrupted(path, frames, camera=None, **kwargs):
        def stop():
            yield next(iter(frames))
            raise KeyboardInterrupt
        real(path, stop(), camera, **kwargs)

    monkeypatch.setattr(make_bag, "write_bag", interrupted)
    code = make_bag.main([str(tmp_path / "bag"), "--images", str(folder), "--rate", "10",
                          "--intrinsics", "50,50,31.5,23.5"])
    assert code == 130 and one_error(capsys, code) == "interrupted"
    assert not (tmp_path / "bag").exists()


# --------------------------------------------------------------------------- exact TUM stamps


@pytest.mark.parametrize("text, ns", [("1341847980.722988", 1341847980722988000),
                                      ("1305031102.175304", 1305031102175304000),
                                      ("1341847980.7229881239", 1341847980722988123),  # truncated at 9
                                      ("1341847980", 1341847980000000000), ("0.5", 500000000),
                                      (".25", 250000000), ("-1.5", -1500000000), ("1.5e9", 1500000000 * 10**9)])
def test_tum_stamps_are_exact_integers(text, ns):
    assert parse_stamp(text) == ns


def test_float_parsing_would_have_been_wrong():
    assert int(round(float("1341847980.722988") * 1e9)) == 1341847980722987776  # why stamps are parsed as text


@pytest.mark.parametrize("text", ["nan", "inf", "", ".", "1.2.3", "abc", "1,5"])
def test_bad_stamps_are_refused(text):
    with pytest.raises(ValueError):
        parse_stamp(text)


def test_make_bag_and_trajectories_keep_tum_stamps_exact(tmp_path, capsys):
    folder = _image_folder(tmp_path, 2)
    stamps = ["1341847980.722988", "1341847980.754743"]
    (tmp_path / "rgb.txt").write_text("# timestamp filename\n" + "".join(
        f"{s} rgb/{i}.png\n" for i, s in enumerate(stamps)))
    assert make_bag.main([str(tmp_path / "bag"), "--images", str(folder), "--rgb-txt", str(tmp_path / "rgb.txt"),
                          "--intrinsics", "50,50,31.5,23.5"]) == 0
    assert _bag_stamps(tmp_path / "bag") == [1341847980722988000, 1341847980754743000]
    (tmp_path / "gt.txt").write_text(f"{stamps[0]} 0 0 0 0 0 0 1\n{stamps[1]} 1 0 0 0 0 0 1\n")
    assert read_tum_trajectory(tmp_path / "gt.txt")[0].tolist() == [1341847980722988000, 1341847980754743000]
    (tmp_path / "bad.txt").write_text("1341847980.72x 0\n")
    line = one_error(capsys, make_bag.main([str(tmp_path / "bag3"), "--images", str(folder),
                                            "--rgb-txt", str(tmp_path / "bad.txt"), "--intrinsics", "50,50,31.5,23.5"]))
    assert "bad.txt:1" in line and "not a time stamp" in line and not (tmp_path / "bag3").exists()


# --------------------------------------------------------------------------- eval tools


def test_eval_tools_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "gt.txt").write_text("1.0 0 0 0 0 0 0\n")  # 7 fields
    line = one_error(capsys, eval_sequence.main([str(tmp_path / "nobag"), str(tmp_path / "gt.txt")]))
    assert "gt.txt" in line and "expected 8 fields" in line
    line = one_error(capsys, eval_sequence.main([str(tmp_path / "nobag"), str(tmp_path)]))
    assert "is a directory" in line
    (tmp_path / "pairs.txt").write_text("a.png b.png\n")
    line = one_error(capsys, eval_pairs.main([str(tmp_path / "pairs.txt"), str(tmp_path), *SIFT,
                                              "--json", str(tmp_path / "none" / "e.json")]))
    assert "--json" in line and "does not exist" in line
    line = one_error(capsys, eval_pairs.main([str(tmp_path), str(tmp_path), *SIFT]))
    assert "pairs file" in line and "is a directory" in line

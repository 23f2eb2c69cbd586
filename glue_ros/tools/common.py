"""Shared CLI plumbing: --params-file / --set parsing, one-line errors, signals and atomic outputs.

Every CLI error is one line on stderr and a non-zero exit (2), never a traceback. SIGINT (Ctrl-C) and
SIGTERM both interrupt the body (exit 130 / 143, one line); outputs written with
:func:`write_text_atomic` / :func:`write_bytes_atomic` are then either complete or absent.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import ParameterError, load_config


def add_param_args(parser: argparse.ArgumentParser) -> None:
    from ..config import PROFILES

    parser.add_argument("--profile", metavar="NAME",
                        help=f"shipped parameter file, applied first: {', '.join(PROFILES)}")
    parser.add_argument("--params-file", metavar="FILE.yaml",
                        help="ROS 2 params file (same as the node's), e.g. config/matcher.yaml")
    parser.add_argument("--set", metavar="NAME=VALUE", action="append", default=[],
                        help="override a parameter by its dotted name, e.g. --set extractor.max_keypoints=512")


def params_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return load_config(args.params_file, args.set, profile=args.profile)


def preflight(params: dict[str, Any]) -> None:
    """Fail in seconds, before any model loads: an explicitly requested device/precision that cannot be
    had (checked first, as building the models would), then hub weights that are neither cached nor
    downloadable (one error naming every parameter and `hf download` command; no hub retries)."""
    from ..models.weights import check_available

    if params.get("device", "auto") != "auto" or params.get("precision", "auto") != "auto":
        from ..device import resolve_device, resolve_dtype  # imports torch: only when asked for

        resolve_dtype(params["precision"], resolve_device(params["device"]))
    check_available(params)


class CliError(RuntimeError):
    """A user-facing CLI error (bad path, unreadable file)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C (a KeyboardInterrupt) so the same cleanup runs."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread;
    the previous handler is restored afterwards. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _known_error(exc: BaseException) -> bool:
    """Is ``exc`` a user-facing failure (one line, exit 2)? Checked without importing torch: a DeviceError
    can only have been raised once glue_ros.device (which imports torch) is loaded."""
    from ..models.weights import WeightsError  # imports without torch

    if isinstance(exc, (ParameterError, WeightsError, CliError)):
        return True
    device = sys.modules.get(f"{__package__.rpartition('.')[0]}.device")
    return device is not None and isinstance(exc, device.DeviceError)


def run_cli(body: Callable[[], int]) -> int:
    """Run a CLI body; known failures become one line on stderr and a non-zero exit, no traceback.
    Ctrl-C → "interrupted", exit 130; SIGTERM → "terminated", exit 143 (128 + signal number)."""
    try:
        with sigterm_as_interrupt():
            return body()
    except Terminated:
        print("terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _known_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- input and output paths


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path if it is a readable file; CliError saying what is wrong otherwise."""
    file = Path(path)
    if file.is_dir():
        raise CliError(f"{what} '{path}' is a directory, not a file")
    if not file.exists():
        raise CliError(f"{what} '{path}' does not exist")
    if not os.access(file, os.R_OK):
        raise CliError(f"{what} '{path}' is not readable (permission denied)")
    return file


def check_output_file(path: str | Path, option: str) -> Path:
    """Check before any work that ``path`` can be written (its folder exists and is writable, it is not
    a directory); CliError naming the option otherwise."""
    file = Path(path)
    if str(path).endswith(("/", os.sep)) or file.is_dir():
        raise CliError(f"{option} '{path}' is a directory; give a file name")
    folder = file.parent
    if not folder.exists():
        raise CliError(f"{option} '{path}': folder '{folder}' does not exist (create it first)")
    if not folder.is_dir():
        raise CliError(f"{option} '{path}': '{folder}' is not a folder")
    try:  # really create a file there (os.access says yes to root, also on read-only file systems)
        fd, probe = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CliError(f"{option} '{path}': folder '{folder}' is not writable ({exc.strerror or exc})") from None
    return file


def write_bytes_atomic(path: str | Path, data: bytes, option: str = "output") -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``: readers (and an
    interrupted run) see the complete file or none. OSError → CliError naming the option."""
    file = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent or ".")
    except OSError as exc:
        raise CliError(f"{option} '{path}' cannot be written: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, file)
    except BaseException as exc:  # also KeyboardInterrupt / SIGTERM: never leave a partial file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CliError(f"{option} '{path}' cannot be written: {exc.strerror or exc}") from None
        raise


def write_text_atomic(path: str | Path, text: str, option: str = "output") -> None:
    write_bytes_atomic(path, text.encode(), option)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

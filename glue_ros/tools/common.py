"""Shared CLI plumbing: --params-file / --set parsing and one-line errors."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

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


def run_cli(body: Callable[[], int]) -> int:
    """Run a CLI body; known failures become one line on stderr and a non-zero exit, no traceback."""
    from ..device import DeviceError
    from ..models.weights import WeightsError

    try:
        return body()
    except (ParameterError, WeightsError, DeviceError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class CliError(RuntimeError):
    """A user-facing CLI error (bad path, unreadable file)."""

"""glue-ros-launch: the pip-venv equivalent of `ros2 launch glue_ros matcher.launch.py ARG:=VALUE ...`.

Takes the same launch arguments, builds the same node invocations (glue_ros.ros.launch_args) and
runs them as child processes with this venv's python; Ctrl-C / SIGTERM stop them cleanly.
`--print` only shows the commands.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys

from ..ros.launch_args import LAUNCH_ARGUMENTS, invocations


def parse_launch_args(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep:
            raise ValueError(f"launch arguments look like NAME:=VALUE, got {item!r}")
        values[name] = value
    return values


def main(argv: list[str] | None = None) -> int:
    epilog = "launch arguments:\n" + "\n".join(f"  {n}:=  {d} (default {v!r})"
                                               for n, (v, d) in LAUNCH_ARGUMENTS.items())
    parser = argparse.ArgumentParser(prog="glue-ros-launch", description=__doc__.splitlines()[0],
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arguments", nargs="*", metavar="NAME:=VALUE")
    parser.add_argument("--print", action="store_true", help="print the node commands and exit")
    args = parser.parse_args(argv)
    try:
        nodes = invocations(parse_launch_args(args.arguments))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    commands = [inv.command() for inv in nodes]
    if args.print:
        for command in commands:
            print(shlex.join(command))
        return 0
    children = [subprocess.Popen(command) for command in commands]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    return max(codes, key=abs) if codes else 0


if __name__ == "__main__":
    sys.exit(main())

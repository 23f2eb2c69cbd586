"""glue-ros-launch: the pip-venv equivalent of `ros2 launch glue_ros matcher.launch.py ARG:=VALUE ...`.

Takes the same launch arguments, builds the same node invocations (glue_ros.ros.launch_args) and
runs them as child processes with this venv's python; Ctrl-C / SIGTERM are forwarded to every node,
which stop cleanly (exit 0: a stop request is not a failure). Parameters by their dotted names go in
params:='NAME=VALUE ...' (as with ros2 launch). `--print` only shows the commands.
"""
from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time

from ..ros.launch_args import LAUNCH_ARGUMENTS, invocations

SIGTERM_AFTER_S = 10.0  # after SIGINT (ros2 launch: sigterm_timeout 5 s, then sigkill_timeout 5 s)
SIGKILL_AFTER_S = 15.0


def parse_launch_args(items: list[str]) -> dict[str, str]:
    values = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep:
            raise ValueError(f"launch arguments look like NAME:=VALUE, got {item!r}")
        if name in values:
            raise ValueError(f"launch argument '{name}' given twice")
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
    return run(commands)


def run(commands: list[list[str]], *, sigterm_after_s: float = SIGTERM_AFTER_S,
        sigkill_after_s: float = SIGKILL_AFTER_S) -> int:
    """Run the node commands until they all exit. SIGINT / SIGTERM are forwarded to every child
    (like ros2 launch); children still running ``sigterm_after_s`` later get SIGTERM, and SIGKILL
    after ``sigkill_after_s``. Returns 0 if every node exited 0, else the first non-zero code."""
    stop = {"since": None}
    children: list[subprocess.Popen] = []

    def forward(signum, _frame):
        if stop["since"] is None:
            stop["since"] = time.monotonic()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    # Handlers first: a Ctrl-C while the children start must not end in a traceback.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for command in commands:
            if stop["since"] is not None:
                break
            children.append(subprocess.Popen(command))
        escalated = set()
        while any(child.poll() is None for child in children):
            time.sleep(0.05)
            if stop["since"] is None:
                continue
            waited = time.monotonic() - stop["since"]
            for sig, after in ((signal.SIGTERM, sigterm_after_s), (signal.SIGKILL, sigkill_after_s)):
                if waited > after and sig not in escalated:
                    escalated.add(sig)
                    for child in children:
                        if child.poll() is None:
                            print(f"glue-ros-launch: pid {child.pid} still running {waited:.0f} s after the "
                                  f"stop request: sending {sig.name}", file=sys.stderr)
                            child.send_signal(sig)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [child.wait() for child in children]
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main())

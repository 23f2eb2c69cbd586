"""``/diagnostics``: diagnostic_msgs/DiagnosticArray from a dict of figures, and its decoder.

``diagnostic_level`` turns figures into (level, message) with ``DiagnosticThresholds``;
``build_diagnostics`` makes one DiagnosticStatus of them (every figure a KeyValue);
``decode_diagnostics`` reads any DiagnosticArray back (either flavour).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from .msg_types import MessageFactory, header_stamp_ns

__all__ = ["OK", "WARN", "ERROR", "STALE", "DIAGNOSTIC_NAME", "DIAGNOSTICS_TOPIC", "DiagnosticThresholds",
           "diagnostic_level", "build_diagnostics", "DiagnosticsReport", "decode_diagnostics"]

DIAGNOSTIC_NAME = "glue_ros_matcher: front-end"
DIAGNOSTICS_TOPIC = ("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray")

OK, WARN, ERROR, STALE = 0, 1, 2, 3


@dataclass(frozen=True)
class DiagnosticThresholds:
    """When diagnostics leave OK. Figures absent from the dict are not checked."""

    stall_s: float = 5.0  # ERROR: no output for this long while frames arrive (seconds_since_output)
    max_dropped: int = 0  # WARN: frames_dropped (this period) above this
    min_pose_ratio: float = 0.5  # WARN: pose_valid_ratio below this


def diagnostic_level(figures: Mapping[str, Any], thresholds: DiagnosticThresholds = DiagnosticThresholds()
                     ) -> tuple[int, str]:
    """(level, message) from a dict of figures. Recognised keys (all optional):

    * ERROR: ``stalled`` (truthy), ``seconds_since_output`` > ``stall_s``, ``error`` (non-empty str);
    * WARN: ``frames_dropped`` > ``max_dropped``, ``decode_errors`` > 0, ``pose_valid_ratio`` <
      ``min_pose_ratio``, ``no_pose`` (truthy, e.g. no intrinsics), ``warning`` and ``clock_warning``
      (non-empty str: input stamps far from the node's clock, with the fix).
    """
    errors, warnings = [], []
    if figures.get("stalled"):
        errors.append("stalled")
    since = figures.get("seconds_since_output")
    if since is not None and float(since) > thresholds.stall_s:
        errors.append(f"no output for {float(since):.1f} s")
    if figures.get("error"):
        errors.append(str(figures["error"]))
    dropped = figures.get("frames_dropped")
    if dropped is not None and int(dropped) > thresholds.max_dropped:
        warnings.append(f"{int(dropped)} frames dropped")
    if figures.get("decode_errors"):
        warnings.append(f"{int(figures['decode_errors'])} decode errors")
    ratio = figures.get("pose_valid_ratio")
    if ratio is not None and float(ratio) < thresholds.min_pose_ratio:
        warnings.append(f"valid pose in {100 * float(ratio):.0f}% of frames")
    if figures.get("no_pose"):
        warnings.append(str(figures["no_pose"]) if isinstance(figures["no_pose"], str) else "no pose")
    for key in ("warning", "clock_warning"):
        if figures.get(key):
            warnings.append(str(figures[key]))
    if errors:
        return ERROR, "; ".join(errors + warnings)
    if warnings:
        return WARN, "; ".join(warnings)
    return OK, "ok"


def _format_value(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def build_diagnostics(factory: MessageFactory, stamp_ns: int, figures: Mapping[str, Any], *, hardware_id: str,
                      name: str = DIAGNOSTIC_NAME, thresholds: DiagnosticThresholds = DiagnosticThresholds()) -> Any:
    """diagnostic_msgs/DiagnosticArray with one DiagnosticStatus: ``name``, ``hardware_id`` (the
    compute device), level/message from ``diagnostic_level``, every figure as a KeyValue (floats
    with 6 significant digits, bools as true/false), in the dict's order."""
    level, message = diagnostic_level(figures, thresholds)
    values = [factory.new("diagnostic_msgs/msg/KeyValue", key=str(k), value=_format_value(v))
              for k, v in figures.items()]
    status = factory.new("diagnostic_msgs/msg/DiagnosticStatus", level=factory.byte(level), name=str(name),
                         message=message, hardware_id=str(hardware_id), values=values)
    return factory.new("diagnostic_msgs/msg/DiagnosticArray", header=factory.header(stamp_ns, ""), status=[status])


class DiagnosticsReport(NamedTuple):
    stamp_ns: int
    level: int
    name: str
    message: str
    hardware_id: str
    values: dict


def decode_diagnostics(msg: Any) -> list[DiagnosticsReport]:
    out = []
    for status in msg.status:
        level = status.level
        level = level[0] if isinstance(level, (bytes, bytearray)) else int(level)
        out.append(DiagnosticsReport(header_stamp_ns(msg), int(level), str(status.name), str(status.message),
                                     str(status.hardware_id), {str(kv.key): str(kv.value) for kv in status.values}))
    return out

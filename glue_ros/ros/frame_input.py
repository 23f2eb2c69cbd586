"""One input path for the node and the replay tool: image message → decoded image → intrinsics →
``Frame`` → ``FrontEnd.process``, with every frame and every CameraInfo accounted for.

Both adapters drive a ``FrameInput`` the same way:

* ``receive()`` for each image message that arrives (node: its subscription callback; replay: each
  image in the bag, a corrupt one included);
* ``add_camera_info(msg)`` for each CameraInfo, in arrival order (replay: stamp order, each before
  the image with the same stamp);
* ``process(frontend, msg)`` → ``(frame, result)``, or None when the frame gives no output; then
  ``finish()`` once the frame's outputs are out.

Intrinsics, the same rule in both (``camera_for``): the usable CameraInfo with the image's exact
stamp, else the last usable CameraInfo, else the ``camera.*`` fallback parameters, else none
(matches still flow, no pose; warned once). An unusable CameraInfo (NaN/inf or zero K, unreadable)
is never stored: it is counted (``camera_info_rejected``) and warned about, and frames keep the
intrinsics they had.

Counters (``InputCounters``): ``received = processed + sum(rejected.values())`` plus whatever the
adapter still holds (the node: frames its queue dropped, frames pending). A frame gives no output
(``rejected[reason]``) when it does not decode (``ImageDecodeError.reason``: bad_step, short_data,
corrupt_compressed ...), when the pipeline refuses it (``FrameResult.status``: repeated_stamp,
image_too_small ...) or when it runs out of memory (out_of_memory; the device cache is freed).
Warnings go to ``log(key, text)``, which the node rate-limits per key; the replay passes none.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..geometry import CameraModel
from ..results import FrameResult
from .camera_info import camera_from_info, camera_from_params
from .image_codec import ImageDecodeError, decode_compressed, decode_image, to_gray_or_rgb_uint8
from .msg_types import stamp_to_ns

if TYPE_CHECKING:
    from ..frontend import Frame

__all__ = ["InputCounters", "FrameInput", "CAMERA_INFO_HISTORY", "ACCEPTED_STATUS", "is_out_of_memory"]

CAMERA_INFO_HISTORY = 128  # usable CameraInfo messages kept by stamp (covers a queue or a reorder window)
ACCEPTED_STATUS = ("ok", "no_features")  # FrameResult.status values that are published


@dataclass
class InputCounters:
    received: int = 0  # image messages taken in
    processed: int = 0  # frames whose outputs are out (one ~/matches each)
    rejected: collections.Counter = field(default_factory=collections.Counter)  # reason → frames without output
    camera_info_received: int = 0
    camera_info_rejected: int = 0  # unusable CameraInfo messages (NaN / zero K, unreadable): not stored

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


class FrameInput:
    """Decode, intrinsics, Frame, process and count; see the module docstring.

    ``params``: the flat parameters (``input.bit_depth``, ``camera.*``). ``counters``: an
    ``InputCounters`` (the node passes its own subclass). ``lock``: guards the counters, ``busy`` and
    the stored CameraInfo (the node passes the lock its diagnostics snapshot takes, so totals are
    consistent); re-entrant. ``log(key, text)``: where warnings go.
    """

    def __init__(self, params: Mapping[str, Any], *, counters: InputCounters | None = None, lock=None,
                 log: Callable[[str, str], None] | None = None):
        self.bit_depth = params["input.bit_depth"] or None
        self.fallback_camera = camera_from_params(params)
        self.counters = counters if counters is not None else InputCounters()
        self.lock = lock if lock is not None else threading.RLock()
        self.busy = False  # a frame is taken for processing and not yet counted
        self.latest_camera: CameraModel | None = None
        self._cameras: collections.OrderedDict[int, CameraModel] = collections.OrderedDict()
        self._log = log or (lambda key, text: None)
        self._warned_no_intrinsics = False

    # ------------------------------------------------------------------ camera info

    def add_camera_info(self, msg: Any) -> str:
        """Take one CameraInfo (None: a message that could not be deserialised). Usable: stored by
        stamp and as the latest, returns "". Unusable: counted and warned about, returns why."""
        with self.lock:
            self.counters.camera_info_received += 1
        camera, problem = None, "unreadable (the message could not be deserialised)"
        if msg is not None:
            try:
                camera, stamp_ns = camera_from_info(msg), stamp_to_ns(msg.header.stamp)
                problem = camera.problem()
            except Exception as exc:  # a malformed message must not take the adapter down
                camera, problem = None, f"unreadable ({type(exc).__name__}: {exc})"
        if problem:
            with self.lock:
                self.counters.camera_info_rejected += 1
                count = self.counters.camera_info_rejected
            self._log("camera_info: " + problem.split("(")[0], f"CameraInfo ignored: {problem} [{count} so far]")
            return problem
        with self.lock:
            self._cameras[stamp_ns] = camera
            while len(self._cameras) > CAMERA_INFO_HISTORY:
                self._cameras.popitem(last=False)
            self.latest_camera = camera
        return ""

    def camera_for(self, stamp_ns: int) -> CameraModel | None:
        """The exact-stamp CameraInfo, else the last usable one, else ``camera.*``, else None."""
        with self.lock:
            camera = self._cameras.get(stamp_ns)
            if camera is None:
                camera = self.latest_camera if self.latest_camera is not None else self.fallback_camera
            rejected = self.counters.camera_info_rejected
        if camera is None and not self._warned_no_intrinsics:
            self._warned_no_intrinsics = True
            unusable = " (the CameraInfo received is unusable)" if rejected else ""
            self._log("no_intrinsics", f"no CameraInfo received{unusable} and no camera.* parameters: matches are "
                      "published, the relative pose is not")
        return camera

    @property
    def intrinsics(self) -> str:
        """Where frames get intrinsics from now: camera_info, parameters or none."""
        return ("camera_info" if self.latest_camera is not None else
                "parameters" if self.fallback_camera is not None else "none")

    # ------------------------------------------------------------------ frames

    def receive(self) -> None:
        with self.lock:
            self.counters.received += 1

    def decode(self, msg: Any) -> np.ndarray:
        """sensor_msgs/Image or CompressedImage (either flavour) → (H, W) / (H, W, 3) uint8;
        ``ImageDecodeError`` when it cannot be decoded."""
        image = decode_compressed(msg) if hasattr(msg, "format") else decode_image(msg)
        return to_gray_or_rgb_uint8(image, getattr(msg, "encoding", ""), bit_depth=self.bit_depth)

    def process(self, frontend, msg: Any, *, previous_input_stamp_ns: int | None = None
                ) -> tuple[Frame, FrameResult] | None:
        """Decode ``msg``, pick its intrinsics, run ``frontend.process``; None (counted) when the
        frame gives no output. Exceptions other than out-of-memory propagate (the frame is still
        ``busy``: the adapter decides, e.g. ``reject("error", ...)``). The two halves, for adapters
        that extract ahead: :meth:`prepare` and :meth:`run`."""
        frame = self.prepare(msg)
        if frame is None:
            return None
        return self.run(frontend, frame, previous_input_stamp_ns=previous_input_stamp_ns)

    def prepare(self, msg: Any) -> Frame | None:
        """Decode ``msg`` and pick its intrinsics: the ``Frame``, or None (counted) when it does not decode."""
        with self.lock:
            self.busy = True
        try:
            frame = self.decode_frame(msg)
        except ImageDecodeError as exc:
            self.reject_undecodable(stamp_to_ns(msg.header.stamp), exc)
            return None
        frame.camera = self.camera_for(frame.stamp_ns)
        return frame

    def decode_frame(self, msg: Any) -> Frame:
        """The ``Frame`` of ``msg`` without intrinsics (``camera_for`` when its turn comes: its
        CameraInfo may still be on the way); raises ``ImageDecodeError`` and counts nothing (the node
        calls it on its extraction thread, as the frame arrives, and counts when the frame's turn comes)."""
        from ..frontend import Frame  # here, not at the top: it imports torch (the node checks parameters first)

        return Frame(self.decode(msg), stamp_to_ns(msg.header.stamp), str(msg.header.frame_id))

    def run(self, frontend, frame: Frame, *, previous_input_stamp_ns: int | None = None,
            extracted: Callable[[], Any] | None = None) -> tuple[Frame, FrameResult] | None:
        """``frontend.process(frame)``: ``(frame, result)``, or None (counted) when it gives no output.
        ``extracted``: returns the frame's ``overlap.Extracted`` (waiting for the extraction thread);
        an out-of-memory there is handled like one in serial extraction."""
        try:
            features, extract_ms = None, None
            if extracted is not None:
                ahead = extracted()
                features, extract_ms = ahead.features, ahead.extract_ms
            # gap resets measure arrivals, so frames dropped by a queue do not look like a pause
            result = frontend.process(frame, features, previous_input_stamp_ns=previous_input_stamp_ns,
                                      extract_ms=extract_ms)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _free_device_memory()
            shape = frame.image.shape
            self.reject("out_of_memory", f"frame {shape[1]}x{shape[0]} dropped: out of memory")
            return None
        if result.status not in ACCEPTED_STATUS:
            self.reject(result.status, f"frame at {frame.stamp_ns} ns dropped: {result.status}")
            return None
        return frame, result

    def finish(self) -> None:
        """The outputs of the frame ``process`` accepted are out: count it processed."""
        with self.lock:
            self.counters.processed += 1
            self.busy = False

    def reject_undecodable(self, stamp_ns: int | None, exc: ImageDecodeError) -> None:
        self.reject(exc.reason, f"image at {stamp_ns} ns dropped: {exc}")

    def reject(self, reason: str, text: str = "") -> None:
        """Count a frame that gives no output, and warn (``text``) under the key ``reason``."""
        with self.lock:
            self.counters.rejected[reason] += 1
            self.busy = False
            count = self.counters.rejected[reason]
        if text:
            self._log(reason, f"{text} [{reason}; {count} so far]")

    # ------------------------------------------------------------------ diagnostics

    def figures(self) -> dict:
        """The input figures of /diagnostics (the node's and the replay's): frames received,
        processed, rejected (total and per reason), CameraInfo received / rejected, intrinsics."""
        with self.lock:
            c = self.counters
            rejected = dict(c.rejected)
            figures = {"frames_received": c.received, "frames_processed": c.processed,
                       "frames_rejected_total": sum(rejected.values()),
                       **{f"rejected.{k}": v for k, v in sorted(rejected.items())},
                       "camera_info_received": c.camera_info_received,
                       "camera_info_rejected": c.camera_info_rejected}
        figures["intrinsics"] = self.intrinsics
        if figures["intrinsics"] == "none":
            figures["no_pose"] = "no intrinsics (no usable CameraInfo, no camera.* parameters)"
        return figures


def is_out_of_memory(exc: BaseException) -> bool:
    """GPU or host allocation failures (torch, numpy MemoryError, OpenCV "Insufficient memory")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("out of memory", "insufficient memory", "failed to allocate"))


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

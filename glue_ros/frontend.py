"""The front-end pipeline: frame in, FrameResult out.

    frame ─► extractor (once per frame) ─► match vs newest K keyframes (one batched call)
          ─► relative pose per keyframe ─► track ids + velocities ─► keyframe decision

ROS-free: the node, the replay tool and the CLIs feed it and publish what it returns.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import backends
from .config import SPECS, FrontEndConfig, ParameterError
from .device import resolve_device, resolve_dtype
from .features import Features, PairMatches
from .geometry import CameraModel, estimate_relative_pose
from .keyframes import (Keyframe, KeyframeBuffer, KeyframeSignals, keyframe_reason, median_displacement,
                        reset_reason)
from .results import FrameResult, KeyframeDecision, KeyframeMatches, RelativePose
from .tracks import TrackTable

log = logging.getLogger("glue_ros.frontend")


@dataclass
class Frame:
    image: np.ndarray  # H×W (mono) or H×W×3 (RGB), uint8 or float in [0, 1]
    stamp_ns: int
    frame_id: str = "camera"
    camera: CameraModel | None = None  # None: matches still flow, pose unavailable


@dataclass
class PipelineStats:
    frames: int = 0
    keyframes: int = 0
    resets: int = 0
    extract_calls: int = 0
    images_extracted: int = 0
    match_calls: int = 0
    pairs_matched: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class FrontEnd:
    def __init__(self, config: FrontEndConfig | None = None, *, extractor=None, matcher=None,
                 on_reset: Callable[[str], None] | None = None):
        self.config = config or FrontEndConfig()
        self.device = resolve_device(self.config.device)
        self.dtype = resolve_dtype(self.config.precision, self.device)
        self.extractor, self.matcher = backends.build(self.config, self.device, self.dtype, extractor=extractor,
                                                      matcher=matcher)
        self.buffer = KeyframeBuffer(self.config.keyframes.buffer_size)
        self.tracks = TrackTable()
        self.stats = PipelineStats()
        self._next_keyframe_id = 0
        self._last_stamp_ns: int | None = None
        self._on_reset = on_reset or (lambda reason: log.warning("keyframe buffer reset: %s", reason))

    # ------------------------------------------------------------------ configuration

    def update_config(self, new: FrontEndConfig) -> None:
        """Apply live-changeable parameters (``ParamSpec.live``); raise ParameterError naming one that
        needs a restart (new models or device)."""
        old_flat, new_flat = self.config.to_flat(), new.to_flat()
        for name, value in new_flat.items():
            if old_flat[name] != value and not SPECS[name].live:
                raise ParameterError(f"parameter '{name}' cannot change while running (it needs the models to be "
                                     "reloaded): restart the node with the new value")
        self.config = new
        self.buffer.resize(new.keyframes.buffer_size)
        self.matcher.set_thresholds(new.matcher)

    # ------------------------------------------------------------------ processing

    def reset(self, reason: str) -> None:
        self.buffer.clear()
        self.tracks.clear()
        self._last_stamp_ns = None
        self.stats.resets += 1
        self._on_reset(reason)

    def extract(self, images: Sequence[np.ndarray]) -> list[Features]:
        """Extract features of several frames in one call (the only place features are computed)."""
        self.stats.extract_calls += 1
        self.stats.images_extracted += len(images)
        with torch.inference_mode():
            return self.extractor.extract(list(images))

    def process(self, frame: Frame, features: Features | None = None,
                previous_input_stamp_ns: int | None = None, extract_ms: float | None = None) -> FrameResult:
        """Process one frame. ``features`` lets a caller that extracted elsewhere (batched, or ahead on
        another thread: ``overlap.ExtractionThread``) pass them in, with the ``extract_ms`` it took.

        ``previous_input_stamp_ns``: stamp of the input frame that arrived before this one, when the
        caller dropped frames in between (a live node under load). The camera-gap reset then measures
        the gap between *arrivals*, not between processed frames, so slow processing is not mistaken
        for a camera that stopped."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        problem = image_problem(frame.image)
        if problem:
            return self._rejected(frame, problem)
        height, width = frame.image.shape[:2]
        if self._last_stamp_ns is not None and frame.stamp_ns == self._last_stamp_ns:
            return self._rejected(frame, "repeated_stamp")

        newest = self.buffer.newest(1)
        # The previous arrival only shortens the measured gap; it never makes this frame "backwards":
        # an input stamped later than this frame (a rejected message with a garbage stamp, or frames
        # arriving out of order) must not reset the keyframes.
        gap_reference = self._last_stamp_ns
        if gap_reference is not None and previous_input_stamp_ns is not None \
                and gap_reference < previous_input_stamp_ns <= frame.stamp_ns:
            gap_reference = previous_input_stamp_ns
        why_reset = reset_reason(frame.stamp_ns, (width, height), gap_reference,
                                 newest[0].image_size if newest else None, self.config.keyframes)

        # Everything that can fail on resources (extraction, matching: e.g. out of device memory on a
        # huge frame) runs before the pipeline state changes: a frame that raises leaves no trace, the
        # next frame continues from the same keyframes, tracks and last stamp.
        if features is None:
            t = time.perf_counter()
            features = self.extract([frame.image])[0]
            timings["extract_ms"] = (time.perf_counter() - t) * 1e3
        elif extract_ms is not None:
            timings["extract_ms"] = extract_ms
        keypoints = features.keypoints_numpy()
        scores = features.scores.detach().float().cpu().numpy()
        camera = frame.camera

        keyframes = [] if why_reset else self.buffer.newest(self.config.keyframes.match_against)
        matched: list[KeyframeMatches] = []
        if keyframes:
            t = time.perf_counter()
            pairs = self._match(keyframes, features)
            timings["match_ms"] = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            matched = [self._keyframe_matches(kf, pair, keypoints, camera) for kf, pair in zip(keyframes, pairs)]
            timings["pose_ms"] = (time.perf_counter() - t) * 1e3

        # Commit.
        if why_reset:
            self.reset(why_reset)
        self._last_stamp_ns = frame.stamp_ns
        self.stats.frames += 1
        track_ids = self.tracks.assign(len(keypoints), [(m.matches[:, 1], m.track_ids) for m in matched])
        velocities = self.tracks.velocities(frame.stamp_ns, keypoints, track_ids)

        decision = self._decide(frame, matched, why_reset)
        if decision.is_keyframe:
            self.buffer.add(Keyframe(decision.keyframe_id, frame.stamp_ns, frame.frame_id, features, keypoints,
                                     track_ids, camera, (width, height)))
            self.stats.keyframes += 1
        live = [track_ids] + [kf.track_ids for kf in self.buffer]
        self.tracks.retain(np.concatenate(live))
        timings["total_ms"] = (time.perf_counter() - t_start) * 1e3
        return FrameResult(
            stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, image_size=(width, height),
            keypoints=keypoints, keypoint_scores=scores, track_ids=track_ids, track_velocities=velocities,
            matches=matched, keyframe=decision, reset_reason=why_reset, timings_ms=timings,
            stop_layer=max((m.stop_layer for m in matched), default=-1),
            status="ok" if len(keypoints) else "no_features")

    def process_many(self, frames: Sequence[Frame]) -> list[FrameResult]:
        """Process frames in order, extracting all valid same-size frames in one batched call."""
        valid = [f for f in frames if not image_problem(f.image)]
        features = dict(zip(map(id, valid), self.extract([f.image for f in valid]))) if valid else {}
        return [self.process(f, features.get(id(f))) for f in frames]

    # ------------------------------------------------------------------ steps

    def _match(self, keyframes: list[Keyframe], features: Features) -> list[PairMatches]:
        self.stats.match_calls += 1
        self.stats.pairs_matched += len(keyframes)
        with torch.inference_mode():
            return self.matcher.match([kf.features for kf in keyframes], [features] * len(keyframes))

    def _keyframe_matches(self, kf: Keyframe, pair: PairMatches, keypoints: np.ndarray,
                          camera: CameraModel | None) -> KeyframeMatches:
        idx = pair.matches.astype(np.int64).reshape(-1, 2)
        points_kf = kf.keypoints[idx[:, 0]].astype(np.float32)
        points_frame = keypoints[idx[:, 1]].astype(np.float32)
        pose = self._pose(points_kf, points_frame, kf.camera, camera)
        inliers = pose.inliers if len(pose.inliers) == len(idx) else np.zeros(len(idx), bool)
        return KeyframeMatches(
            keyframe_id=kf.id, keyframe_stamp_ns=kf.stamp_ns, matches=idx,
            scores=pair.scores.astype(np.float32), points_keyframe=points_kf, points_frame=points_frame,
            track_ids=kf.track_ids[idx[:, 0]], inliers=inliers, pose=pose, stop_layer=pair.stop_layer,
            pruned=(pair.pruned0, pair.pruned1))

    def _pose(self, points_kf, points_frame, camera_kf, camera) -> RelativePose:
        if camera is None or camera_kf is None:
            return RelativePose(False, "no_intrinsics", inliers=np.zeros(len(points_kf), bool),
                                parallax_px=median_displacement(points_kf, points_frame))
        for cam in (camera_kf, camera):
            problem = cam.problem()
            if problem:
                return RelativePose(False, f"invalid_camera: {problem}", inliers=np.zeros(len(points_kf), bool),
                                    parallax_px=median_displacement(points_kf, points_frame))
        return estimate_relative_pose(points_kf, points_frame, camera_kf, camera, self.config.pose)

    def _decide(self, frame: Frame, matched: list[KeyframeMatches], why_reset: str) -> KeyframeDecision:
        if not matched:
            reason = f"reset:{why_reset}" if why_reset else "first_frame"
            return self._new_keyframe(reason)
        newest = matched[0]
        pose = newest.pose
        estimated = pose.reason not in ("no_intrinsics",) and not pose.reason.startswith("invalid_camera")
        signals = KeyframeSignals(
            num_matches=len(newest),
            inlier_ratio=(pose.num_inliers / max(len(newest), 1)) if estimated else None,
            parallax_px=pose.parallax_px,
            seconds_since_keyframe=(frame.stamp_ns - newest.keyframe_stamp_ns) * 1e-9)
        reason = keyframe_reason(signals, self.config.keyframes)
        if reason:
            return self._new_keyframe(reason)
        return KeyframeDecision(False, "", newest.keyframe_id)

    def _new_keyframe(self, reason: str) -> KeyframeDecision:
        decision = KeyframeDecision(True, reason, self._next_keyframe_id)
        self._next_keyframe_id += 1
        return decision

    def _rejected(self, frame: Frame, reason: str) -> FrameResult:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        newest = self.buffer.newest(1)
        shape = getattr(frame.image, "shape", (0, 0))
        size = (int(shape[1]), int(shape[0])) if len(shape) >= 2 else (0, 0)
        empty2 = np.zeros((0, 2), np.float32)
        return FrameResult(
            stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, image_size=size, keypoints=empty2,
            keypoint_scores=np.zeros(0, np.float32), track_ids=np.zeros(0, np.int64), track_velocities=empty2,
            matches=[], keyframe=KeyframeDecision(False, "", newest[0].id if newest else -1), status=reason)


def image_problem(image) -> str:
    if not isinstance(image, np.ndarray):
        return "invalid_image"
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        return "invalid_image"
    if image.dtype not in (np.uint8, np.uint16) and image.dtype.kind != "f":  # what the extractors take
        return "invalid_image"
    if image.shape[0] < 16 or image.shape[1] < 16:
        return "image_too_small"
    if image.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32 (the extractors' type)
            if not np.isfinite(image.astype(np.float32, copy=False)).all():
                return "invalid_image"  # NaN / inf
    return ""


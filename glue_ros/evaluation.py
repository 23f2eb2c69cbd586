"""Pose and match evaluation, compatible with SuperGlue's (SuperGluePretrainedNetwork) protocol.

Conventions. SuperGlue's pairs files and ``T_0to1`` map points from camera 0 to camera 1
(``X1 = R_0to1 X0 + t_0to1``). glue_ros poses are the pose of camera 1 in camera 0
(``X0 = R X1 + t``), so ``R = R_0to1^T`` and ``t = -R_0to1^T t_0to1`` (see :func:`pose_from_T_0to1`).
Rotation errors are identical in both conventions; translation *direction* errors are compared
between vectors of the same convention (both ours, or both SuperGlue's).

SuperGlue's metrics reproduced here:

* :func:`pose_auc` — area under the cumulative error curve up to each threshold (degrees),
  trapezoid rule from (0, 0), divided by the threshold (``models/utils.py: pose_auc``).
* :func:`pose_error` — rotation angle and translation-direction angle; the translation error is
  ``min(e, 180 - e)`` by default, as SuperGlue's ``compute_pose_error`` ("ambiguity of E
  estimation"). Use ``ignore_sign=False`` for VO, where the cheirality-resolved sign matters.
* :func:`epipolar_error` / :func:`match_precision` — squared symmetric epipolar distance in
  normalised coordinates, correct below 5e-4; precision = share of correct matches; matching
  score = correct matches / keypoints in image 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .geometry import rotation_angle_deg, skew, translation_angle_deg

EPIPOLAR_THRESHOLD = 5e-4  # SuperGlue's "correct match" threshold (squared normalised units)


# --------------------------------------------------------------------------- pose metrics


def pose_auc(errors_deg: Iterable[float], thresholds: Sequence[float] = (5, 10, 20)) -> list[float]:
    """SuperGlue's pose AUC per threshold, in [0, 1] (multiply by 100 for the paper's numbers).

    NaN errors count as failures (infinite error). An empty input gives zeros."""
    errors = np.asarray(list(errors_deg), dtype=np.float64).reshape(-1)
    errors = np.where(np.isnan(errors), np.inf, errors)
    if len(errors) == 0:
        return [0.0 for _ in thresholds]
    errors = np.sort(errors)
    recall = (np.arange(len(errors)) + 1) / len(errors)
    errors = np.r_[0.0, errors]
    recall = np.r_[0.0, recall]
    aucs = []
    for t in thresholds:
        last = int(np.searchsorted(errors, t))
        r = np.r_[recall[:last], recall[last - 1]]
        e = np.r_[errors[:last], t]
        aucs.append(float(np.sum((e[1:] - e[:-1]) * (r[1:] + r[:-1]) / 2.0) / t))
    return aucs


def pose_error(R_est: np.ndarray | None, t_est: np.ndarray | None, R_gt: np.ndarray, t_gt: np.ndarray,
               ignore_sign: bool = True) -> tuple[float, float]:
    """(rotation error, translation-direction error) in degrees.

    All four in the same convention (e.g. both glue_ros poses). A missing or non-finite estimate
    gives ``inf``; a zero estimated translation gives ``inf`` translation error (no direction), a
    zero ground-truth translation gives 0 (any direction is right). ``ignore_sign`` folds the error
    to ``min(e, 180 - e)`` as SuperGlue does."""
    if R_est is None or t_est is None:
        return math.inf, math.inf
    R_est, t_est = np.asarray(R_est, float), np.asarray(t_est, float).reshape(-1)
    if R_est.shape != (3, 3) or t_est.shape != (3,) or not (np.all(np.isfinite(R_est)) and np.all(np.isfinite(t_est))):
        return math.inf, math.inf
    err_R = rotation_angle_deg(R_est, R_gt)
    t_gt = np.asarray(t_gt, float).reshape(3)
    if np.linalg.norm(t_gt) < 1e-12:
        err_t = 0.0
    elif np.linalg.norm(t_est) < 1e-12:
        err_t = math.inf
    else:
        err_t = translation_angle_deg(t_est, t_gt)
        if ignore_sign:
            err_t = min(err_t, 180.0 - err_t)
    return err_R, err_t


def pose_from_T_0to1(T_0to1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SuperGlue ``T_0to1`` (X1 = T X0) → glue_ros (R, t) of camera 1 in camera 0 (t not normalised)."""
    T = np.asarray(T_0to1, dtype=np.float64).reshape(4, 4)
    R = T[:3, :3].T
    return R, -R @ T[:3, 3]


def T_0to1_from_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """glue_ros (R, t) (camera 1 in camera 0) → SuperGlue ``T_0to1``."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, float).T
    T[:3, 3] = -T[:3, :3] @ np.asarray(t, float).reshape(3)
    return T


# --------------------------------------------------------------------------- match metrics


def epipolar_error(kpts0: np.ndarray, kpts1: np.ndarray, T_0to1: np.ndarray, K0: np.ndarray,
                   K1: np.ndarray) -> np.ndarray:
    """Squared symmetric epipolar distance of each match in normalised coordinates (SuperGlue's
    ``compute_epipolar_error``): ``(x1^T E x0)^2 (1/|(E x0)_12|^2 + 1/|(E^T x1)_12|^2)``,
    ``E = [t]x R`` of ``T_0to1``. Keypoints are pixels (no distortion)."""
    k0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    k1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    K0, K1 = np.asarray(K0, float), np.asarray(K1, float)
    x0 = np.c_[(k0 - K0[[0, 1], [2, 2]]) / K0[[0, 1], [0, 1]], np.ones(len(k0))]
    x1 = np.c_[(k1 - K1[[0, 1], [2, 2]]) / K1[[0, 1], [0, 1]], np.ones(len(k1))]
    T = np.asarray(T_0to1, float)
    E = skew(T[:3, 3]) @ T[:3, :3]
    Ex0 = x0 @ E.T
    Etx1 = x1 @ E
    x1Ex0 = np.sum(x1 * Ex0, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x1Ex0 ** 2 * (1.0 / (Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2) + 1.0 / (Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2))


def match_precision(kpts0: np.ndarray, kpts1: np.ndarray, T_0to1: np.ndarray, K0: np.ndarray, K1: np.ndarray,
                    threshold: float = EPIPOLAR_THRESHOLD) -> tuple[float, int, np.ndarray]:
    """(precision, number of correct matches, epipolar errors) of matched keypoints (M, 2) each."""
    errors = epipolar_error(kpts0, kpts1, T_0to1, K0, K1)
    correct = errors < threshold
    return (float(np.mean(correct)) if len(correct) else 0.0), int(correct.sum()), errors


def matching_score(num_correct: int, num_keypoints0: int) -> float:
    """SuperGlue's matching score: correct matches / keypoints detected in image 0."""
    return float(num_correct) / num_keypoints0 if num_keypoints0 > 0 else 0.0


# --------------------------------------------------------------------------- pairs files


@dataclass
class PairSpec:
    """One line of a SuperGluePretrainedNetwork pairs file."""

    name0: str
    name1: str
    rot0: int = 0  # EXIF rotation: number of np.rot90 quarter turns (counter-clockwise) of image 0
    rot1: int = 0
    K0: np.ndarray | None = None  # (3, 3), for the image as stored (before rotation)
    K1: np.ndarray | None = None
    T_0to1: np.ndarray | None = None  # (4, 4), X1 = T_0to1 X0

    @property
    def has_ground_truth(self) -> bool:
        return self.K0 is not None and self.K1 is not None and self.T_0to1 is not None

    def relative_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth in the glue_ros convention (camera 1 in camera 0), t not normalised."""
        if self.T_0to1 is None:
            raise ValueError(f"pair {self.name0} {self.name1} has no ground truth")
        return pose_from_T_0to1(self.T_0to1)


def read_pairs_file(path: str | Path) -> list[PairSpec]:
    """Parse ``name0 name1 [rot0 rot1 [K0(9) K1(9) T_0to1(16)]]`` lines (2, 4 or 38 fields).

    Blank lines and ``#`` comments are skipped; any other field count raises ValueError naming the
    line. K and T are returned as stored; :func:`rotate_pair` applies EXIF rotations."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 4, 38):
            raise ValueError(f"{path}:{number}: expected 2, 4 or 38 fields (name0 name1 [rot0 rot1 "
                             f"[K0(9) K1(9) T_0to1(16)]]), got {len(fields)}")
        try:
            spec = PairSpec(fields[0], fields[1])
            if len(fields) >= 4:
                spec.rot0, spec.rot1 = int(fields[2]), int(fields[3])
            if len(fields) == 38:
                values = np.array(fields[4:], dtype=np.float64)
                spec.K0 = values[0:9].reshape(3, 3)
                spec.K1 = values[9:18].reshape(3, 3)
                spec.T_0to1 = values[18:34].reshape(4, 4)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        pairs.append(spec)
    return pairs


def rotate_intrinsics(K: np.ndarray, image_shape: tuple[int, ...], rot: int) -> np.ndarray:
    """K of an image turned by ``np.rot90(image, k=rot)``; ``image_shape`` is the shape *after*
    rotation (as SuperGlue's ``rotate_intrinsics``)."""
    rot = int(rot) % 4
    K = np.asarray(K, dtype=np.float64)
    if rot == 0:
        return K.copy()
    h, w = image_shape[:2][::-1] if rot % 2 else image_shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if rot == 1:
        return np.array([[fy, 0.0, cy], [0.0, fx, w - 1 - cx], [0.0, 0.0, 1.0]])
    if rot == 2:
        return np.array([[fx, 0.0, w - 1 - cx], [0.0, fy, h - 1 - cy], [0.0, 0.0, 1.0]])
    return np.array([[fy, 0.0, h - 1 - cy], [0.0, fx, cx], [0.0, 0.0, 1.0]])


def rotate_pose_inplane(cam_T_w: np.ndarray, rot: int) -> np.ndarray:
    """Camera pose of an image turned by ``np.rot90(image, k=rot)`` (SuperGlue's helper)."""
    angle = math.radians((0, 270, 180, 90)[int(rot) % 4])
    c, s = math.cos(angle), math.sin(angle)
    Rz = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    return Rz @ np.asarray(cam_T_w, dtype=np.float64)


def rotate_pair(spec: PairSpec, image0: np.ndarray, image1: np.ndarray):
    """Apply the EXIF rotations as SuperGlue's match_pairs.py: ``np.rot90`` of the images, and (with
    ground truth) rotated K0, K1 and T_0to1. Returns (image0, image1, K0, K1, T_0to1)."""
    img0 = np.ascontiguousarray(np.rot90(image0, k=spec.rot0)) if spec.rot0 else image0
    img1 = np.ascontiguousarray(np.rot90(image1, k=spec.rot1)) if spec.rot1 else image1
    if not spec.has_ground_truth:
        return img0, img1, spec.K0, spec.K1, spec.T_0to1
    K0, K1, T = spec.K0.copy(), spec.K1.copy(), spec.T_0to1.copy()
    if spec.rot0 or spec.rot1:
        cam0_T_w, cam1_T_w = np.eye(4), T
        if spec.rot0:
            K0 = rotate_intrinsics(K0, img0.shape, spec.rot0)
            cam0_T_w = rotate_pose_inplane(cam0_T_w, spec.rot0)
        if spec.rot1:
            K1 = rotate_intrinsics(K1, img1.shape, spec.rot1)
            cam1_T_w = rotate_pose_inplane(cam1_T_w, spec.rot1)
        T = cam1_T_w @ np.linalg.inv(cam0_T_w)
    return img0, img1, K0, K1, T


def load_pair(spec: PairSpec, input_dir: str | Path, resize: tuple[int, int] | None = None):
    """Read a pair's images (RGB uint8), optionally resize to ``resize`` = (w, h) scaling K like
    SuperGlue's ``scale_intrinsics``, then apply EXIF rotations (:func:`rotate_pair`).
    Returns (image0, image1, K0, K1, T_0to1)."""
    import cv2

    images, Ks = [], []
    for name, K in ((spec.name0, spec.K0), (spec.name1, spec.K1)):
        bgr = cv2.imread(str(Path(input_dir) / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read image {Path(input_dir) / name}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if resize is not None:
            h, w = image.shape[:2]
            image = cv2.resize(image, tuple(int(v) for v in resize), interpolation=cv2.INTER_AREA)
            if K is not None:
                K = np.diag([resize[0] / w, resize[1] / h, 1.0]) @ K
        images.append(image)
        Ks.append(K)
    scaled = PairSpec(spec.name0, spec.name1, spec.rot0, spec.rot1, Ks[0], Ks[1], spec.T_0to1)
    return rotate_pair(scaled, images[0], images[1])


# --------------------------------------------------------------------------- sequences


@dataclass
class SequenceEvaluation:
    """Per-pair errors of keyframe-relative poses against ground truth, plus a summary."""

    keyframe_stamps_ns: np.ndarray  # (P,)
    frame_stamps_ns: np.ndarray  # (P,)
    valid: np.ndarray  # (P,) bool: estimate valid (R and t)
    rotation_valid: np.ndarray  # (P,) bool
    rotation_error_deg: np.ndarray  # (P,) inf where the rotation is not valid
    translation_error_deg: np.ndarray  # (P,) inf where not valid, nan where GT baseline too small
    gt_baseline_m: np.ndarray  # (P,) ground-truth distance between the two camera centres
    reasons: list[str] = field(default_factory=list)
    unmatched: int = 0  # estimates without ground truth within max_dt

    def __len__(self) -> int:
        return len(self.valid)

    def summary(self) -> dict[str, Any]:
        rot = self.rotation_error_deg[self.rotation_valid]
        trans = self.translation_error_deg[self.valid & np.isfinite(self.translation_error_deg)]
        pose = np.maximum(self.rotation_error_deg, np.nan_to_num(self.translation_error_deg, nan=0.0))
        out: dict[str, Any] = {
            "pairs": int(len(self)), "valid": int(self.valid.sum()), "rotation_valid": int(self.rotation_valid.sum()),
            "unmatched": int(self.unmatched),
            "rotation_median_deg": _stat(np.median, rot), "rotation_mean_deg": _stat(np.mean, rot),
            "translation_median_deg": _stat(np.median, trans), "translation_mean_deg": _stat(np.mean, trans),
        }
        for t, auc in zip((5, 10, 20), pose_auc(np.where(self.valid, pose, np.inf))):
            out[f"auc@{t}"] = auc
        reasons: dict[str, int] = {}
        for r in self.reasons:
            reasons[r] = reasons.get(r, 0) + 1
        out["reasons"] = reasons
        return out


def _stat(fn, values: np.ndarray) -> float:
    return float(fn(values)) if len(values) else math.nan


def _nearest(stamps: np.ndarray, query: int, max_dt_ns: int) -> int | None:
    k = int(np.searchsorted(stamps, query))
    best = None
    for c in (k - 1, k):
        if 0 <= c < len(stamps) and abs(int(stamps[c]) - query) <= max_dt_ns:
            if best is None or abs(int(stamps[c]) - query) < abs(int(stamps[best]) - query):
                best = c
    return best


def _as_estimates(result_poses) -> list[tuple[int, int, Any]]:
    out = []
    for item in result_poses:
        if hasattr(item, "matches") and hasattr(item, "stamp_ns"):  # FrameResult
            if not item.matches:
                continue
            out.append((int(item.matches[0].keyframe_stamp_ns), int(item.stamp_ns), item.matches[0].pose))
        else:
            kf, frame, pose = item
            out.append((int(kf), int(frame), pose))
    return out


def evaluate_sequence(result_poses, gt_stamps_ns: Sequence[int], gt_poses: Sequence[np.ndarray],
                      max_dt_s: float = 0.02, min_baseline_m: float = 1e-3,
                      ignore_sign: bool = False) -> SequenceEvaluation:
    """Compare keyframe-relative poses with a ground-truth trajectory (e.g. TUM ``T_world_cam``).

    ``result_poses``: iterable of ``(keyframe_stamp_ns, frame_stamp_ns, RelativePose)`` or of
    FrameResult (the pose to its newest keyframe is used; frames without matches are skipped).
    Ground truth is looked up by nearest stamp within ``max_dt_s`` (TUM's associate.py default);
    pairs without both are counted in ``unmatched``. The translation direction error is NaN when
    the ground-truth baseline is below ``min_baseline_m`` (direction undefined). VO cares about the
    sign of t, so ``ignore_sign`` defaults to False here (unlike :func:`pose_error`).
    Ground-truth poses must be of the camera's optical frame (X_world = T @ X_cam)."""
    stamps = np.asarray(gt_stamps_ns, dtype=np.int64).reshape(-1)
    poses = np.asarray(gt_poses, dtype=np.float64).reshape(-1, 4, 4)
    order = np.argsort(stamps, kind="stable")
    stamps, poses = stamps[order], poses[order]
    max_dt = int(round(max_dt_s * 1e9))
    rows = []
    unmatched = 0
    for kf_stamp, frame_stamp, pose in _as_estimates(result_poses):
        a, b = _nearest(stamps, kf_stamp, max_dt), _nearest(stamps, frame_stamp, max_dt)
        if a is None or b is None:
            unmatched += 1
            continue
        T = np.linalg.inv(poses[a]) @ poses[b]
        R_gt, t_gt = T[:3, :3], T[:3, 3]
        baseline = float(np.linalg.norm(t_gt))
        valid = bool(getattr(pose, "valid", False))
        rot_valid = bool(getattr(pose, "rotation_valid", valid))
        err_R = rotation_angle_deg(pose.rotation, R_gt) if rot_valid else math.inf
        if not valid:
            err_t = math.inf
        elif baseline < min_baseline_m:
            err_t = math.nan
        else:
            _, err_t = pose_error(pose.rotation, pose.translation, R_gt, t_gt, ignore_sign=ignore_sign)
        rows.append((kf_stamp, frame_stamp, valid, rot_valid, err_R, err_t, baseline, getattr(pose, "reason", "")))
    if not rows:
        empty = np.zeros(0)
        return SequenceEvaluation(empty.astype(np.int64), empty.astype(np.int64), empty.astype(bool),
                                  empty.astype(bool), empty, empty, empty, [], unmatched)
    cols = list(zip(*rows))
    return SequenceEvaluation(np.array(cols[0], np.int64), np.array(cols[1], np.int64), np.array(cols[2], bool),
                              np.array(cols[3], bool), np.array(cols[4], float), np.array(cols[5], float),
                              np.array(cols[6], float), list(cols[7]), unmatched)

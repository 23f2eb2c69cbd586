"""Camera model, normalisation and two-view relative pose (ROS-free).

Pose convention (see :mod:`glue_ros.results`): the pose of the *current* camera (image1) in the
*keyframe* camera frame (image0), optical axes, ``X_kf = R @ X_cur + t`` with unit ``t``.
OpenCV's ``findEssentialMat``/``recoverPose`` return the opposite direction
(``x1 = R_cv @ x0 + t_cv``: keyframe → current), so ``R = R_cv.T`` and ``t = -R_cv.T @ t_cv``.

Nothing in this module raises on bad data: :func:`estimate_relative_pose` returns a
:class:`~glue_ros.results.RelativePose` with ``valid=False`` and a ``reason``:

``"ok"``                    valid pose.
``"no_intrinsics"``         a camera is ``None``.
``"invalid_camera: <why>"`` :meth:`CameraModel.problem` text (NaN, fx <= 0, wrong D length, ...).
``"bad_input"``             point arrays are not (M, 2) of equal length.
``"too_few_matches"``       fewer than ``max(5, config.min_inliers)`` finite correspondences.
``"too_few_inliers"``       the essential matrix has fewer than ``config.min_inliers`` inliers
                            passing the cheirality check (R, t are still reported, not trusted).
``"degenerate"``            no essential matrix could be estimated.
``"pure_rotation"``         near-pure rotation: ``rotation_only=True``, ``rotation_valid=True``,
                            the rotation is reported, ``translation`` is zero (unknown).
``"error: <exception>"``    an unexpected OpenCV/numpy failure (should not happen).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .config import PoseConfig
from .results import RelativePose

#: Expected number of distortion coefficients per model (OpenCV order, as in sensor_msgs/CameraInfo).
DISTORTION_LENGTHS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}
DISTORTION_MODELS = ("none", *DISTORTION_LENGTHS)

#: Variance (m², rad²) put on unobservable directions of the covariance: the translation along the
#: unit vector ``t`` (monocular scale is unknown) and all of the translation for pure rotation.
UNOBSERVABLE_VARIANCE = 1e6

#: Lower bound of the residual standard deviation used for the covariance, in pixels. With exact
#: (synthetic) correspondences the residuals vanish and the covariance would claim impossible
#: certainty; real keypoints are never better than ~0.1 px.
MIN_RESIDUAL_STD_PX = 0.1

#: Cap on essential-matrix RANSAC/MAGSAC iterations (OpenCV's default). Bounds the worst case
#: (all outliers, 1000 matches) to ~40 ms with MAGSAC and ~250 ms with RANSAC (10000 iterations took
#: 0.16 s / 2.1 s); 1000 iterations still find a model with 99.9% confidence down to ~40% inliers.
MAX_RANSAC_ITERATIONS = 1000

_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
# OpenCV's default 5 undistortion iterations leave ~0.8 px error at the corners of a k1=-0.3 lens.


# --------------------------------------------------------------------------- camera model


@dataclass(frozen=True, eq=False)
class CameraModel:
    """Pinhole camera with optional lens distortion (sensor_msgs/CameraInfo semantics).

    ``K`` is the 3x3 intrinsic matrix, ``D`` the distortion coefficients in OpenCV order,
    ``distortion_model`` one of ``none``, ``plumb_bob`` (5), ``rational_polynomial`` (8),
    ``equidistant`` (4, OpenCV fisheye). ``""`` is accepted as ``none``. ``width``/``height`` are
    0 when unknown. Instances are immutable (arrays are read-only) and compare by value.
    """

    K: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))
    distortion_model: str = "none"
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        K = _float_array(self.K)
        if K.size == 9:
            K = K.reshape(3, 3)
        D = _float_array(self.D).reshape(-1)
        model = str(self.distortion_model or "none").strip().lower()
        for arr in (K, D):
            arr.setflags(write=False)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "distortion_model", model)
        object.__setattr__(self, "width", _int_or_zero(self.width))
        object.__setattr__(self, "height", _int_or_zero(self.height))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_intrinsics(cls, fx: float, fy: float, cx: float, cy: float, width: int = 0, height: int = 0,
                        distortion_model: str = "none", D: Sequence[float] = ()) -> "CameraModel":
        K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)
        return cls(K, np.asarray(D, dtype=np.float64), distortion_model, width, height)

    @classmethod
    def from_dict(cls, data: dict) -> "CameraModel":
        """From a ROS ``camera_info`` YAML mapping (camera_calibration_parsers layout:
        ``image_width``, ``image_height``, ``camera_matrix: {data: [...]}``, ``distortion_model``,
        ``distortion_coefficients: {data: [...]}``) or the flat ``K``/``D`` keys of CameraInfo."""

        def values(key_yaml: str, key_msg: str):
            value = data.get(key_yaml, data.get(key_msg))
            if isinstance(value, dict):
                value = value.get("data")
            return [] if value is None else value

        return cls(np.asarray(values("camera_matrix", "k"), dtype=np.float64),
                   np.asarray(values("distortion_coefficients", "d"), dtype=np.float64),
                   data.get("distortion_model", "none") or "none",
                   data.get("image_width", data.get("width", 0)), data.get("image_height", data.get("height", 0)))

    def to_dict(self, camera_name: str = "camera") -> dict:
        """ROS ``camera_info`` YAML mapping (readable by camera_calibration_parsers)."""
        P = np.zeros((3, 4))
        P[:3, :3] = self.K
        model = "plumb_bob" if self.distortion_model == "none" else self.distortion_model
        D = self.D if self.distortion_model != "none" else np.zeros(5)
        return {
            "image_width": int(self.width), "image_height": int(self.height), "camera_name": camera_name,
            "camera_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in self.K.reshape(-1)]},
            "distortion_model": model,
            "distortion_coefficients": {"rows": 1, "cols": int(D.size), "data": [float(v) for v in D]},
            "rectification_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in np.eye(3).reshape(-1)]},
            "projection_matrix": {"rows": 3, "cols": 4, "data": [float(v) for v in P.reshape(-1)]},
        }

    # ------------------------------------------------------------------ properties

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def image_size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def has_distortion(self) -> bool:
        return self.distortion_model != "none" and bool(np.any(self.D != 0))

    def problem(self) -> str | None:
        """Why the camera cannot be used, or None if it can."""
        if self.K.shape != (3, 3):
            return f"K must be 3x3, got shape {self.K.shape}"
        if not np.all(np.isfinite(self.K)):
            return "K contains NaN or inf"
        if not np.all(np.isfinite(self.D)):
            return "distortion coefficients contain NaN or inf"
        if not self.fx > 0 or not self.fy > 0:
            return f"focal length must be positive (fx={self.fx:g}, fy={self.fy:g})"
        if not np.allclose(self.K[2], (0.0, 0.0, 1.0)) or self.K[1, 0] != 0:
            return "K must be upper triangular with last row [0, 0, 1]"
        if self.width < 0 or self.height < 0:
            return f"image size must not be negative ({self.width}x{self.height})"
        model = self.distortion_model
        if model not in DISTORTION_MODELS:
            return f"unknown distortion model '{model}' (expected one of {', '.join(DISTORTION_MODELS)})"
        if model == "none":
            if np.any(self.D != 0):
                return "non-zero distortion coefficients with distortion_model 'none'"
        elif self.D.size != DISTORTION_LENGTHS[model]:
            return f"distortion model '{model}' needs {DISTORTION_LENGTHS[model]} coefficients, got {self.D.size}"
        return None

    # ------------------------------------------------------------------ value semantics

    def _key(self) -> tuple:
        return (self.K.tobytes(), self.K.shape, self.D.tobytes(), self.distortion_model, self.width, self.height)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CameraModel):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"CameraModel(fx={self.fx:g}, fy={self.fy:g}, cx={self.cx:g}, cy={self.cy:g}, "
                f"{self.width}x{self.height}, {self.distortion_model}, D={self.D.tolist()})")


def _float_array(value) -> np.ndarray:
    try:
        return np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        return np.full((0,), np.nan)


def _int_or_zero(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1  # reported by problem()


def normalize_points(points_px: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Pixel coordinates (M, 2) → normalised image coordinates (M, 2) (undistorted, z = 1).

    Uses ``K^-1`` directly without distortion, else ``cv2.undistortPoints`` (``cv2.fisheye`` for
    ``equidistant``) iterated to convergence. Non-finite input rows give NaN rows (all rows for a
    singular K; check :meth:`CameraModel.problem` first).
    """
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
    out = np.full(pts.shape, np.nan)
    finite = np.all(np.isfinite(pts), axis=1)
    if not finite.any():
        return out
    p = pts[finite]
    if not camera.has_distortion:
        try:
            Kinv = np.linalg.inv(camera.K)
        except np.linalg.LinAlgError:  # unusable camera (see problem()): no coordinates
            return out
        h = p @ Kinv[:, :2].T + Kinv[:, 2]
        out[finite] = h[:, :2] / h[:, 2:3]
        return out
    src = np.ascontiguousarray(p.reshape(-1, 1, 2))
    if camera.distortion_model == "equidistant":
        und = cv2.fisheye.undistortPoints(src, camera.K, camera.D, criteria=_UNDISTORT_CRITERIA)
    else:
        und = cv2.undistortPoints(src, camera.K, camera.D, criteria=_UNDISTORT_CRITERIA)
    out[finite] = und.reshape(-1, 2)
    return out


def project_points(points_cam: np.ndarray, camera: CameraModel) -> np.ndarray:
    """Camera-frame 3D points (N, 3) → pixels (N, 2), applying the camera's distortion."""
    X = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    if len(X) == 0:
        return np.zeros((0, 2))
    if not camera.has_distortion:
        h = X @ camera.K.T
        return h[:, :2] / h[:, 2:3]
    zero = np.zeros(3)
    if camera.distortion_model == "equidistant":
        px, _ = cv2.fisheye.projectPoints(X.reshape(-1, 1, 3), zero, zero, camera.K, camera.D)
    else:
        px, _ = cv2.projectPoints(X, zero, zero, camera.K, camera.D)
    return px.reshape(-1, 2)


# --------------------------------------------------------------------------- rotation helpers


def skew(v: np.ndarray) -> np.ndarray:
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (axis * angle, radians)."""
    w = np.asarray(w, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3) + skew(w)
    return cv2.Rodrigues(w)[0]


def so3_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle) of a rotation matrix."""
    return cv2.Rodrigues(np.asarray(R, dtype=np.float64))[0].reshape(3)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle (degrees, 0..180) of the rotation ``R_a^T R_b`` (atan2 form: exact near 0 and 180)."""
    M = np.asarray(R_a, float).T @ np.asarray(R_b, float)
    s = 0.5 * np.linalg.norm([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]])
    c = 0.5 * (np.trace(M) - 1.0)
    return float(np.degrees(math.atan2(s, c)))


def translation_angle_deg(t_a: np.ndarray, t_b: np.ndarray) -> float:
    """Angle (degrees, 0..180) between two directions; 0 if either vector is zero."""
    a, b = np.asarray(t_a, float).reshape(3), np.asarray(t_b, float).reshape(3)
    if np.linalg.norm(a) < 1e-12 or np.linalg.norm(b) < 1e-12:
        return 0.0
    return float(np.degrees(math.atan2(np.linalg.norm(np.cross(a, b)), a @ b)))


def quaternion_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` (``w >= 0``) of a rotation matrix (Shepperd's method)."""
    m = np.asarray(R, dtype=np.float64).reshape(3, 3)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 1e-300))
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 1e-300))
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * math.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 1e-300))
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def matrix_from_quaternion(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix of a quaternion ``(x, y, z, w)`` (normalised first)."""
    x, y, z, w = np.asarray(q, dtype=np.float64).reshape(4) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def nearest_rotation(M: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


# --------------------------------------------------------------------------- relative pose


def estimate_relative_pose(points0_px: np.ndarray, points1_px: np.ndarray, camera0: CameraModel | None,
                           camera1: CameraModel | None, config: PoseConfig | None = None) -> RelativePose:
    """Relative pose of image1 (current) in image0 (keyframe) from pixel correspondences.

    ``points0_px[k] <-> points1_px[k]`` (M, 2) in raw (distorted) pixels. The returned inlier mask
    covers all M given matches. Never raises; see the module docstring for the ``reason`` values.

    Pipeline: undistort/normalise → essential matrix (MAGSAC++ or RANSAC, ``K = I``, threshold
    ``threshold_px / mean focal``) → ``recoverPose`` (cheirality) → near-pure-rotation test →
    robust Levenberg-Marquardt refinement of the Sampson error (5 DoF) with re-classification of
    all matches → covariance from the Gauss-Newton normal equations (see :func:`_pose_covariance`).

    Near-pure rotation: a rotation-only model ``b_kf = R b_cur`` (the infinite homography
    ``K0 R K1^-1``) is fitted robustly (2-point RANSAC + Kabsch). Motion is flagged
    ``pure_rotation`` when it explains as many matches as the essential matrix,
    ``n_rot >= rotation_only_ratio * n_E`` (inlier threshold 2 * threshold_px, the rotation model's
    error being 2D), *and* the rotation-compensated (translation-induced) parallax is small, median
    over the E inliers below ``min_parallax_px``. A general homography would also fit a planar
    scene seen under translation; the rotation-only model does not. A static camera is flagged
    too (R = I). Then ``valid=False``, ``rotation_only=rotation_valid=True``, ``rotation`` is the
    rotation-only fit (exact for pure rotation, unlike E whose decomposition is degenerate there),
    ``translation`` zero, inliers those of the rotation model.

    ``inliers`` (length M) are the final model's inliers (Sampson distance below the threshold, in
    front of both cameras); ``parallax_px`` is their median displacement in undistorted pixels (the
    raw median displacement of the finite matches when no model was fitted).
    """
    config = config or PoseConfig()
    try:
        p0 = np.asarray(points0_px, dtype=np.float64)
        p1 = np.asarray(points1_px, dtype=np.float64)
    except (TypeError, ValueError):
        return RelativePose(False, "bad_input")
    if p0.ndim != 2 or p0.shape[-1] != 2 or p0.shape != p1.shape:
        if p0.size == 0 and p1.size == 0:
            return RelativePose(False, "too_few_matches")
        return RelativePose(False, "bad_input",
                            inliers=np.zeros(p0.shape[0] if p0.ndim == 2 else 0, bool))
    try:
        return _estimate(p0, p1, camera0, camera1, config)
    except Exception as exc:  # never raise on data: OpenCV may throw on degenerate input
        return RelativePose(False, f"error: {type(exc).__name__}: {exc}".splitlines()[0],
                            inliers=np.zeros(len(p0), bool))


def _estimate(p0: np.ndarray, p1: np.ndarray, camera0, camera1, config: PoseConfig) -> RelativePose:
    M = len(p0)
    no_inliers = np.zeros(M, bool)
    finite = np.all(np.isfinite(p0), axis=1) & np.all(np.isfinite(p1), axis=1)
    # Failures before any model still report the raw (distorted) median displacement: keyframe
    # logic can use it without intrinsics.
    raw_parallax = _median(np.linalg.norm(p1[finite] - p0[finite], axis=1))

    def fail(reason: str) -> RelativePose:
        return RelativePose(False, reason, inliers=no_inliers.copy(), parallax_px=raw_parallax)

    if camera0 is None or camera1 is None:
        return fail("no_intrinsics")
    for camera in (camera0, camera1):
        problem = camera.problem()
        if problem is not None:
            return fail(f"invalid_camera: {problem}")
    min_matches = max(5, int(config.min_inliers))
    if finite.sum() < min_matches:
        return fail("too_few_matches")
    idx = np.flatnonzero(finite)
    x0 = normalize_points(p0[idx], camera0)
    x1 = normalize_points(p1[idx], camera1)
    ok = np.all(np.isfinite(x0), axis=1) & np.all(np.isfinite(x1), axis=1)
    idx, x0, x1 = idx[ok], x0[ok], x1[ok]
    N = len(idx)
    if N < min_matches:
        return fail("too_few_matches")

    # Undistorted pixel positions: displacement (parallax) is measured without lens distortion.
    u0 = x0 * (camera0.fx, camera0.fy) + (camera0.cx, camera0.cy)
    u1 = x1 * (camera1.fx, camera1.fy) + (camera1.cx, camera1.cy)
    displacement = np.linalg.norm(u1 - u0, axis=1)

    # Threshold conversion: a displacement of d normalised units is d*f pixels (x_px = f*x_n + c),
    # so a pixel threshold becomes threshold_px / f. The two images may have different focal
    # lengths (and fx != fy), so use the mean of all four, as SuperGlue's evaluation does. OpenCV
    # compares this threshold with the Sampson (first-order geometric) epipolar distance of the
    # normalised points, i.e. the same quantity, in the same units.
    f_mean = float(np.mean([camera0.fx, camera0.fy, camera1.fx, camera1.fy]))
    threshold_n = float(config.threshold_px) / f_mean
    method = cv2.USAC_MAGSAC if config.method == "magsac" else cv2.RANSAC
    E_mask, R_cv, t_cv, cheirality = _essential(x0, x1, threshold_n, method, float(config.confidence))

    # ---- near-pure rotation test (translation direction unobservable)
    b0, b1 = _bearings(x0), _bearings(x1)
    focal0 = np.array([camera0.fx, camera0.fy])
    R_rot, rot_inliers, rot_residual_px = _fit_rotation(b0, b1, x0, focal0, 2.0 * float(config.threshold_px))
    support = E_mask if E_mask is not None and E_mask.any() else rot_inliers
    n_e = int(support.sum())
    n_rot = int(rot_inliers.sum())
    compensated = float(np.median(rot_residual_px[support])) if n_e else math.inf
    rotation_only = (R_rot is not None and n_rot >= config.rotation_only_ratio * n_e
                     and compensated < config.min_parallax_px)
    if rotation_only and n_rot >= config.min_inliers:
        inliers = no_inliers.copy()
        inliers[idx[rot_inliers]] = True
        return RelativePose(False, "pure_rotation", rotation=R_rot, translation=np.zeros(3), inliers=inliers,
                            num_inliers=n_rot, rotation_valid=True, rotation_only=True,
                            parallax_px=float(np.median(displacement[rot_inliers])),
                            covariance=_rotation_covariance(R_rot, b0[rot_inliers], b1[rot_inliers], f_mean))

    if R_cv is None:
        return fail("degenerate")
    n_in = int(cheirality.sum())
    inliers = no_inliers.copy()
    inliers[idx[cheirality]] = True
    if n_in < config.min_inliers or n_in < 5:
        R, t = R_cv.T, -R_cv.T @ t_cv
        return RelativePose(False, "too_few_inliers", rotation=R, translation=_unit(t), inliers=inliers,
                            num_inliers=n_in,
                            parallax_px=_median(displacement[cheirality]) if n_in else raw_parallax)

    # Robust (Cauchy) refinement from the RANSAC inliers; then re-classify *all* correspondences
    # with the refined model (threshold + cheirality), refine robustly again, re-classify, and
    # polish with plain least squares on the final inliers (its normal equations give the
    # covariance). The estimator's own inlier set can miss good points or keep a bad one.
    H0, H1 = _homogeneous(x0), _homogeneous(x1)
    mask = cheirality
    for _ in range(2):
        R_cv, t_cv, _, _ = _refine(R_cv, t_cv, H0[mask], H1[mask], scale=threshold_n)
        new_mask = _classify(R_cv, t_cv, H0, H1, threshold_n)
        if new_mask.sum() < max(5, config.min_inliers):
            break
        mask = new_mask
    R_cv, t_cv, J, residuals = _refine(R_cv, t_cv, H0[mask], H1[mask])
    n_in = int(mask.sum())
    inliers = no_inliers.copy()
    inliers[idx[mask]] = True
    cheirality = mask
    R = R_cv.T
    t = _unit(-R_cv.T @ t_cv)
    covariance = _pose_covariance(R_cv, t_cv, J, residuals, f_mean)
    return RelativePose(True, "ok", rotation=R, translation=t, inliers=inliers, num_inliers=n_in,
                        rotation_valid=True, rotation_only=False,
                        parallax_px=_median(displacement[cheirality]), covariance=covariance)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else 0.0


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    return v / n if n > 1e-15 else np.zeros(3)


def _homogeneous(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _bearings(x: np.ndarray) -> np.ndarray:
    h = _homogeneous(x)
    return h / np.linalg.norm(h, axis=1, keepdims=True)


def _essential(x0: np.ndarray, x1: np.ndarray, threshold: float, method: int, confidence: float):
    """(RANSAC inlier mask, R_cv, t_cv, cheirality inlier mask) or Nones. OpenCV convention."""
    E, mask = cv2.findEssentialMat(x0, x1, np.eye(3), method=method, prob=confidence,
                                   threshold=threshold, maxIters=MAX_RANSAC_ITERATIONS)
    if E is None or mask is None or E.shape[0] < 3 or E.shape[0] % 3 or not np.all(np.isfinite(E)):
        return None, None, None, None
    mask = mask.reshape(-1).astype(bool)
    best = None
    for k in range(E.shape[0] // 3):
        n, R, t, cheir, _ = cv2.recoverPose(E[3 * k:3 * k + 3], x0, x1, np.eye(3), distanceThresh=1e9,
                                            mask=mask.astype(np.uint8).reshape(-1, 1).copy())
        if best is None or n > best[0]:
            best = (n, R, t.reshape(3), cheir.reshape(-1).astype(bool) & mask)
    return mask, best[1], _unit(best[2]), best[3]


def _classify(R: np.ndarray, t: np.ndarray, h0: np.ndarray, h1: np.ndarray, threshold: float) -> np.ndarray:
    """Inliers of (R, t) (OpenCV convention): Sampson distance below ``threshold`` and the point in
    front of both cameras, unless its parallax angle is too small to tell (< 2 thresholds)."""
    residual = _sampson(R, t, h0, h1)
    Rx0 = h0 @ R.T
    c = np.cross(h1, Rx0)
    n2 = np.maximum(np.sum(c * c, axis=1), 1e-300)
    z0 = np.sum(np.cross(t, h1) * c, axis=1) / n2  # depth along h0 in camera 0 (h0 has z = 1)
    z1 = np.sum(np.cross(t, Rx0) * c, axis=1) / n2  # depth along h1 in camera 1
    parallax = np.sqrt(n2) / (np.linalg.norm(h1, axis=1) * np.linalg.norm(Rx0, axis=1))
    front = ((z0 > 0) & (z1 > 0)) | (parallax < 2 * threshold)
    return (np.abs(residual) < threshold) & front


def _kabsch(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Batched rotation(s) R minimising sum ||a_i - R c_i||^2; a, c: (..., N, 3)."""
    Mx = np.einsum("...ni,...nj->...ij", a, c)
    U, _, Vt = np.linalg.svd(Mx)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros(U.shape)
    D[..., 0, 0] = D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return U @ D @ Vt


def _rotation_residual_px(R: np.ndarray, b1: np.ndarray, x0: np.ndarray, focal0: np.ndarray) -> np.ndarray:
    """Pixel distance (in image0) between x0 and the rotation-only prediction of b1; R: (..., 3, 3)."""
    pred = np.matmul(b1, np.swapaxes(R, -1, -2))  # (..., N, 3)
    z = pred[..., 2]
    safe = np.where(z > 1e-9, z, 1.0)
    dx = (pred[..., 0] / safe - x0[:, 0]) * focal0[0]
    dy = (pred[..., 1] / safe - x0[:, 1]) * focal0[1]
    return np.where(z > 1e-9, np.sqrt(dx * dx + dy * dy), np.inf)


def _fit_rotation(b0: np.ndarray, b1: np.ndarray, x0: np.ndarray, focal0: np.ndarray, threshold_px: float,
                  hypotheses: int = 96, preview: int = 256):
    """Robust rotation-only model b0 ~ R b1 (R maps current → keyframe, our convention).

    This is the infinite homography K0 R K1^-1: a 2-point minimal solver (Kabsch on bearing pairs)
    in RANSAC (hypotheses scored on a random subset of ``preview`` points), then Kabsch re-fits on
    all inliers. Returns (R or None, inlier mask, residual in pixels for every point)."""
    N = len(b0)
    if N < 2:
        return None, np.zeros(N, bool), np.full(N, np.inf)
    rng = np.random.default_rng(0)  # deterministic
    i = rng.integers(0, N, hypotheses)
    j = (i + rng.integers(1, N, hypotheses)) % N
    Rs = _kabsch(b0[np.stack([i, j], axis=1)], b1[np.stack([i, j], axis=1)])
    sub = rng.choice(N, preview, replace=False) if N > preview else np.arange(N)
    counts = (_rotation_residual_px(Rs, b1[sub], x0[sub], focal0) < threshold_px).sum(axis=1)
    R = Rs[int(np.argmax(counts))]
    res = _rotation_residual_px(R, b1, x0, focal0)
    inliers = res < threshold_px
    for _ in range(4):
        if inliers.sum() < 2:
            break
        R = _kabsch(b0[inliers], b1[inliers])
        res = _rotation_residual_px(R, b1, x0, focal0)
        new = res < threshold_px
        if np.array_equal(new, inliers):
            break
        inliers = new
    return R, inliers, res


def _sampson(R: np.ndarray, t: np.ndarray, h0: np.ndarray, h1: np.ndarray) -> np.ndarray:
    """Signed Sampson distance of x1^T [t]x R x0 = 0 (normalised units, OpenCV convention)."""
    E = skew(t) @ R
    Ex0 = h0 @ E.T
    Etx1 = h1 @ E
    num = np.sum(h1 * Ex0, axis=1)
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return num / np.sqrt(np.maximum(den, 1e-300))


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane orthogonal to unit t."""
    a = np.array([1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(t, a)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(t, u)], axis=1)


def _perturb(R: np.ndarray, t: np.ndarray, delta: np.ndarray, B: np.ndarray):
    return so3_exp(delta[:3]) @ R, _unit(t + B @ delta[3:])


def _jacobian(R, t, h0, h1, B):
    """Analytic (N, 5) Jacobian of :func:`_sampson` for R <- exp(w) R, t <- unit(t + B a), at 0.

    dE/dw_k = [t]x [e_k]x R, dE/da_k = [b_k]x R; r = e / sqrt(D) with e = x1^T E x0 and
    D = |(E x0)_12|^2 + |(E^T x1)_12|^2, so dr = de / sqrt(D) - e dD / (2 D^1.5)."""
    E = skew(t) @ R
    Ex0 = h0 @ E.T
    Etx1 = h1 @ E
    e = np.sum(h1 * Ex0, axis=1)
    D = np.maximum(Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2, 1e-300)
    sqrtD = np.sqrt(D)
    tx = skew(t)
    generators = [tx @ skew(axis) @ R for axis in np.eye(3)] + [skew(B[:, k]) @ R for k in range(2)]
    J = np.empty((len(h0), 5))
    for k, G in enumerate(generators):
        Gx0 = h0 @ G.T
        Gtx1 = h1 @ G
        de = np.sum(h1 * Gx0, axis=1)
        dD = 2.0 * (Ex0[:, 0] * Gx0[:, 0] + Ex0[:, 1] * Gx0[:, 1] + Etx1[:, 0] * Gtx1[:, 0] + Etx1[:, 1] * Gtx1[:, 1])
        J[:, k] = de / sqrtD - e * dD / (2.0 * D * sqrtD)
    return J


def _numeric_jacobian(R, t, h0, h1, B, eps=1e-7):
    """Central differences of :func:`_sampson` (reference for tests)."""
    cols = []
    for k in range(5):
        d = np.zeros(5)
        d[k] = eps
        rp = _sampson(*_perturb(R, t, d, B), h0, h1)
        rm = _sampson(*_perturb(R, t, -d, B), h0, h1)
        cols.append((rp - rm) / (2 * eps))
    return np.stack(cols, axis=1)


def _refine(R: np.ndarray, t: np.ndarray, h0: np.ndarray, h1: np.ndarray, scale: float | None = None,
            iterations: int = 15):
    """Levenberg-Marquardt on the Sampson error (5 DoF: R <- exp(w) R, t <- unit(t + B a)).

    With ``scale`` the Cauchy loss s^2 log(1 + (r/s)^2) is minimised (iteratively reweighted), so
    a few outliers left in the RANSAC inlier set cannot pull the solution.
    Returns (R, t, Jacobian at the solution (N, 5), residuals (N,))."""

    def cost_of(r):
        if scale is None:
            return float(r @ r)
        return float(np.sum(np.log1p((r / scale) ** 2)))

    r = _sampson(R, t, h0, h1)
    cost = cost_of(r)
    lam = 1e-3
    for _ in range(iterations):
        B = _tangent_basis(t)
        J = _jacobian(R, t, h0, h1, B)
        w = np.ones_like(r) if scale is None else 1.0 / (1.0 + (r / scale) ** 2)
        A, g = J.T @ (J * w[:, None]), J.T @ (w * r)
        improved = converged = False
        for _ in range(8):
            try:
                delta = -np.linalg.solve(A + lam * np.diag(np.diag(A) + 1e-12), g)
            except np.linalg.LinAlgError:
                break
            R_new, t_new = _perturb(R, t, delta, B)
            r_new = _sampson(R_new, t_new, h0, h1)
            cost_new = cost_of(r_new)
            if cost_new < cost:
                converged = cost - cost_new < 1e-7 * max(cost, 1e-300) or np.linalg.norm(delta) < 1e-10
                R, t, r, cost, improved = R_new, t_new, r_new, cost_new, True
                lam = max(lam / 10, 1e-9)
                break
            lam *= 10
        if not improved or converged:
            break
    return R, t, _jacobian(R, t, h0, h1, _tangent_basis(t)), r


def _pose_covariance(R_cv: np.ndarray, t_cv: np.ndarray, J: np.ndarray, residuals: np.ndarray,
                     f_mean: float) -> np.ndarray:
    """6x6 covariance (x y z roll pitch yaw) of the pose in our convention.

    Gauss-Newton approximation at the solution: Cov(delta) = s^2 (J^T J)^+ for the 5 parameters
    (left rotation increment w of R_cv, 2D tangent increment of unit t_cv), s^2 the residual
    variance (Sampson errors, normalised units; floored at MIN_RESIDUAL_STD_PX). It is propagated
    to our pose (R = R_cv^T, t = -R_cv^T t_cv); the rotation block is a small rotation phi of the
    keyframe (parent) frame, R <- exp(phi) R, as geometry_msgs' "rotation about fixed axes".
    Translation along t itself is unobservable (monocular scale): UNOBSERVABLE_VARIANCE is added
    along that direction, so the translation block is the unit-direction uncertainty plus scale.
    """
    n = len(residuals)
    dof = max(n - 5, 1)
    s2 = max(float(residuals @ residuals) / dof, (MIN_RESIDUAL_STD_PX / f_mean) ** 2)
    cov5 = s2 * np.linalg.pinv(J.T @ J)
    B = _tangent_basis(t_cv)
    Rt = R_cv.T
    # Derivatives of (t, phi) of our pose with respect to (w, a), at delta = 0:
    #   R_cv' = exp(w) R_cv  ->  R' = R_cv^T exp(-w) = exp(-R_cv^T w) R  ->  phi = -R_cv^T w
    #   t' = -R_cv'^T t_cv'  ->  dt/dw = -R_cv^T [t_cv]x ,  dt/da = -R_cv^T B
    G = np.zeros((6, 5))
    G[:3, :3] = -Rt @ skew(t_cv)
    G[:3, 3:] = -Rt @ B
    G[3:, :3] = -Rt
    cov = G @ cov5 @ G.T
    t = -Rt @ t_cv
    cov[:3, :3] += UNOBSERVABLE_VARIANCE * np.outer(t, t)
    return _symmetric_psd(cov)


def _rotation_covariance(R: np.ndarray, b0: np.ndarray, b1: np.ndarray, f_mean: float) -> np.ndarray:
    """Rotation-only model b0 = R b1: Cov(phi) = s^2 (sum_i (I - b0 b0^T))^-1 (bearing noise s in
    radians, 2 DoF per point), translation unknown (UNOBSERVABLE_VARIANCE on the diagonal)."""
    r = b0 - b1 @ R.T
    n = len(b0)
    s2 = max(float(np.sum(r * r)) / max(2 * n - 3, 1), (MIN_RESIDUAL_STD_PX / f_mean) ** 2)
    info = n * np.eye(3) - b0.T @ b0
    cov = np.zeros((6, 6))
    cov[:3, :3] = UNOBSERVABLE_VARIANCE * np.eye(3)
    cov[3:, 3:] = s2 * np.linalg.pinv(info)
    return _symmetric_psd(cov)


def _symmetric_psd(cov: np.ndarray) -> np.ndarray:
    cov = 0.5 * (cov + cov.T)
    w, V = np.linalg.eigh(cov)
    if w.min() < 0:
        cov = (V * np.maximum(w, 0.0)) @ V.T
        cov = 0.5 * (cov + cov.T)
    return cov

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
``"low_parallax"``          translation unobservable: the rotation-compensated parallax of the
                            inliers is below ``min_translation_parallax_px`` (but the motion is not
                            a rotation); ``rotation_valid=True``, ``rotation_only=False``, the
                            refined rotation is reported, ``translation`` is zero (unknown).
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
#: (all outliers, 1000-2000 matches) to ~20 ms with either method (was ~50 ms with MAGSAC and
#: ~250 ms with OpenCV's old RANSAC path before the USAC settings and the subset below); 1000
#: iterations still find a model with 99.9% confidence down to ~40% inliers.
MAX_RANSAC_ITERATIONS = 1000

#: The essential-matrix hypothesis search sees at most this many correspondences (a fixed random
#: subset; every correspondence is then classified and the model refined on all inliers). The
#: search only has to land in the basin of the refinement (the local optimisation below and the
#: robust refinement take it from there); 200 points with 25 % outliers still hold ~150 inliers.
#: MAGSAC++ costs ~2 ms at 200 points, ~8 ms at 1000, ~16 ms at 2000 (2-core EPYC); at 50 %
#: outliers ~10 ms whatever the count (iterations dominate).
MAX_ESSENTIAL_POINTS = 200

#: When more than this share of the final model's epipolar inliers (Sampson distance below the
#: threshold) fail the cheirality test, the hypothesis was probably wrong (seen at low parallax,
#: where 200 points cannot tell the models apart; 1 % of ordinary pairs trip it): the search is
#: repeated on up to RETRY_ESSENTIAL_POINTS matches and the model with more inliers kept.
RETRY_CHEIRALITY_LOSS = 0.03
RETRY_ESSENTIAL_POINTS = 1000


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
        """Why the camera cannot be used, or None if it can (computed once: instances are immutable)."""
        cache = self.__dict__
        if "_problem" not in cache:
            object.__setattr__(self, "_problem", self._find_problem())
        return cache["_problem"]

    def _inverse_K(self) -> np.ndarray | None:
        """K^-1 (read-only, computed once), None if K is not an invertible 3x3 matrix."""
        cache = self.__dict__
        if "_Kinv" not in cache:
            try:
                Kinv = np.linalg.inv(self.K)
                Kinv.setflags(write=False)
            except (np.linalg.LinAlgError, ValueError):
                Kinv = None
            object.__setattr__(self, "_Kinv", Kinv)
        return cache["_Kinv"]

    def _find_problem(self) -> str | None:
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
    finite = np.isfinite(pts).all(axis=1)
    all_finite = bool(finite.all())
    if not all_finite and not finite.any():
        return np.full(pts.shape, np.nan)
    p = pts if all_finite else pts[finite]
    if not camera.has_distortion:
        Kinv = camera._inverse_K()
        if Kinv is None:  # unusable camera (see problem()): no coordinates
            return np.full(pts.shape, np.nan)
        h = p @ Kinv[:, :2].T + Kinv[:, 2]
        result = h[:, :2] / h[:, 2:3]
    else:
        src = np.ascontiguousarray(p.reshape(-1, 1, 2))
        if camera.distortion_model == "equidistant":
            und = cv2.fisheye.undistortPoints(src, camera.K, camera.D, criteria=_UNDISTORT_CRITERIA)
        else:
            und = cv2.undistortPoints(src, camera.K, camera.D, criteria=_UNDISTORT_CRITERIA)
        result = und.reshape(-1, 2)
    if all_finite:
        return result
    out = np.full(pts.shape, np.nan)
    out[finite] = result
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

    Pipeline: undistort/normalise → essential matrix (OpenCV USAC with MAGSAC++ or RANSAC scoring,
    ``K = I``, threshold ``threshold_px / mean focal``, on at most MAX_ESSENTIAL_POINTS matches) →
    local optimisation of E (LO-RANSAC, :func:`_local_optimisation`) → decomposition with the
    cheirality test (what ``recoverPose`` does) → near-pure-rotation test → robust
    Levenberg-Marquardt refinement of the Sampson error (5 DoF) with re-classification of all
    matches (and re-choice of the sign of t), then least squares on the inliers → covariance from
    the Gauss-Newton normal equations (see :func:`_pose_covariance`) → translation-observability
    test. All per-point work is vectorised over the (33, N) products of :func:`_pair_products`.

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

    Low parallax: when the motion is not flagged as a rotation but the rotation-compensated parallax
    of the final inliers (median pixel distance, in image0, between each point and the best
    rotation-only prediction) is below ``config.min_translation_parallax_px`` (the parameter
    ``pose.min_translation_parallax_px``; 0 disables), the translation direction is at noise level: ``low_parallax``,
    ``valid=False``, ``rotation_valid=True``, ``rotation`` the refined one, ``translation`` zero, the
    covariance keeps the rotation block and puts UNOBSERVABLE_VARIANCE on the translation.

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
    finite = np.isfinite(p0).all(axis=1) & np.isfinite(p1).all(axis=1)
    all_finite = bool(finite.all())

    def raw_parallax() -> float:
        # Failures before any model still report the raw (distorted) median displacement:
        # keyframe logic can use it without intrinsics.
        return _median(np.linalg.norm(p1[finite] - p0[finite], axis=1))

    def fail(reason: str) -> RelativePose:
        return RelativePose(False, reason, inliers=no_inliers.copy(), parallax_px=raw_parallax())

    if camera0 is None or camera1 is None:
        return fail("no_intrinsics")
    for camera in (camera0, camera1):
        problem = camera.problem()
        if problem is not None:
            return fail(f"invalid_camera: {problem}")
    min_matches = max(5, int(config.min_inliers))
    if finite.sum() < min_matches:
        return fail("too_few_matches")
    idx = np.arange(M) if all_finite else np.flatnonzero(finite)
    x0 = normalize_points(p0 if all_finite else p0[idx], camera0)
    x1 = normalize_points(p1 if all_finite else p1[idx], camera1)
    ok = np.isfinite(x0).all(axis=1) & np.isfinite(x1).all(axis=1)
    if not ok.all():
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
    f_mean = (camera0.fx + camera0.fy + camera1.fx + camera1.fy) / 4.0
    threshold_n = float(config.threshold_px) / f_mean
    H0, H1 = _homogeneous(x0), _homogeneous(x1)
    K = _pair_products(H0, H1)
    E_mask, R_cv, t_cv, cheirality = _essential(x0, x1, K, threshold_n, config.method, float(config.confidence))

    # ---- near-pure rotation test (translation direction unobservable)
    b0 = H0 / np.sqrt(K[9] + K[13] + K[17])[:, None]  # |x0|^2 from x0 x0^T
    b1 = H1 / np.sqrt(K[18] + K[22] + K[26])[:, None]
    focal0 = np.array([camera0.fx, camera0.fy])
    has_e = E_mask is not None and bool(E_mask.any())
    n_e = int(E_mask.sum()) if has_e else 0
    min_translation_parallax = float(config.min_translation_parallax_px)

    def plausible(rot_inliers: np.ndarray, residual_px: np.ndarray) -> bool:
        # Re-fitting the best rotation hypothesis is skipped only when it is far from passing the
        # tests below (half the inliers needed and twice the parallax limits).
        return (not has_e or rot_inliers.sum() >= 0.5 * config.rotation_only_ratio * n_e
                or float(np.median(residual_px[E_mask]))
                < 2.0 * max(float(config.min_parallax_px), min_translation_parallax))

    R_rot, rot_inliers, rot_residual_px = _fit_rotation(b0, b1, x0, focal0, 2.0 * float(config.threshold_px),
                                                        pool=np.flatnonzero(E_mask) if has_e else None,
                                                        plausible=plausible)
    support = E_mask if has_e else rot_inliers
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
                            parallax_px=_median(displacement[cheirality]) if n_in else raw_parallax())

    # Robust (Cauchy) refinement on the matches near the estimator's model, re-classification of
    # *all* correspondences with the refined model (threshold + cheirality, for both signs of t: see
    # _select_sign), least squares on the inliers, re-classified once more (its normal equations
    # give the covariance). The estimator's own inlier set can miss good points or keep a bad one.
    min_count = max(5, int(config.min_inliers))
    R_cv, t_cv, J, residuals, mask = _refine_and_classify(R_cv, t_cv, K, cheirality, threshold_n, min_count)
    # A wrong hypothesis (low parallax: the subset could not tell) leaves a model whose own epipolar
    # inliers are partly behind the cameras: search again on more matches, keep the better model.
    n_epipolar = int(np.count_nonzero(np.abs(_sampson(R_cv, t_cv, None, None, K)) < threshold_n))
    if mask.sum() < (1.0 - RETRY_CHEIRALITY_LOSS) * n_epipolar:
        _, R2, t2, inliers2 = _essential(x0, x1, K, threshold_n, config.method, float(config.confidence),
                                         max_points=RETRY_ESSENTIAL_POINTS, seed=1)
        if R2 is not None and inliers2.sum() >= min_count:
            second = _refine_and_classify(R2, t2, K, inliers2, threshold_n, min_count)
            if second[4].sum() > mask.sum():
                R_cv, t_cv, J, residuals, mask = second
    n_in = int(mask.sum())
    inliers = no_inliers.copy()
    inliers[idx[mask]] = True
    R = R_cv.T
    t = _unit(-R_cv.T @ t_cv)
    covariance = _pose_covariance(R_cv, t_cv, J, residuals, f_mean)
    parallax_px = _median(displacement[mask])
    # ---- translation observability: the part of the inliers' image motion that no rotation explains
    if R_rot is not None and _median(rot_residual_px[mask]) < min_translation_parallax:
        covariance[:3, :] = 0.0
        covariance[:, :3] = 0.0
        covariance[:3, :3] = UNOBSERVABLE_VARIANCE * np.eye(3)
        return RelativePose(False, "low_parallax", rotation=R, translation=np.zeros(3), inliers=inliers,
                            num_inliers=n_in, rotation_valid=True, rotation_only=False, parallax_px=parallax_px,
                            covariance=covariance)
    return RelativePose(True, "ok", rotation=R, translation=t, inliers=inliers, num_inliers=n_in,
                        rotation_valid=True, rotation_only=False, parallax_px=parallax_px, covariance=covariance)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else 0.0


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    return v / n if n > 1e-15 else np.zeros(3)


def _homogeneous(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)


def _usac_params(method: str, threshold: float, confidence: float) -> "cv2.UsacParams":
    """OpenCV USAC settings of the essential-matrix search: MAGSAC++ (``magsac``) or inlier-count
    (``ransac``) scoring, uniform sampling, no local optimisation and no final polishing (our own
    local optimisation and refinement follow). Measured at 1000 points: ``cv2.USAC_MAGSAC`` through
    the plain API 12.7 ms, these settings 8 ms, the same essential matrix (OpenCV 5.0's LO and
    polisher choices did not change E); ``cv2.RANSAC`` (the pre-USAC path) 11 ms, these 2.6 ms."""
    params = cv2.UsacParams()
    params.threshold = threshold
    params.confidence = confidence
    params.maxIterations = MAX_RANSAC_ITERATIONS
    params.score = cv2.SCORE_METHOD_MAGSAC if method == "magsac" else cv2.SCORE_METHOD_RANSAC
    params.sampler = cv2.SAMPLING_UNIFORM
    params.loMethod = cv2.LOCAL_OPTIM_NULL
    params.final_polisher = cv2.NONE_POLISHER
    params.isParallel = False
    return params


def _essential(x0: np.ndarray, x1: np.ndarray, K: np.ndarray, threshold: float, method: str, confidence: float,
               max_points: int = MAX_ESSENTIAL_POINTS, seed: int = 0):
    """(support, R_cv, t_cv, inliers) or Nones; OpenCV convention; ``K``: :func:`_pair_products`.

    The hypothesis search runs on at most ``max_points`` correspondences (a random subset, fixed by
    ``seed`` as is the search): it only has to land in the basin of the refinement, which (like the
    classification) uses all of them; the hypothesis is improved first (:func:`_local_optimisation`).
    ``support``: Sampson distance of every correspondence below ``threshold``. Of the four
    decompositions of each returned E, the one with the most support points in front of both
    cameras is kept (``cv2.recoverPose``'s choice, without its triangulation); ``inliers`` is
    :func:`_classify` of that model."""
    N = len(x0)
    if N > max_points:
        sub = np.sort(np.random.default_rng(seed).choice(N, max_points, replace=False))
        s0, s1 = x0[sub], x1[sub]
    else:
        s0, s1 = x0, x1
    params = _usac_params(method, threshold, confidence)
    params.randomGeneratorState = seed
    E, _ = cv2.findEssentialMat(np.ascontiguousarray(s0), np.ascontiguousarray(s1), _EYE3, _EYE3, None, None,
                                params)
    if E is None or E.shape[0] < 3 or E.shape[0] % 3 or E.shape[1] != 3 or not np.all(np.isfinite(E)):
        return None, None, None, None
    best = None
    for k in range(E.shape[0] // 3):
        Ek = _local_optimisation(E[3 * k:3 * k + 3], K, threshold) if LO_ITERATIONS else E[3 * k:3 * k + 3]
        support = np.abs(_sampson_of(Ek, None, None, K)) < threshold
        R1, R2, t = cv2.decomposeEssentialMat(Ek)
        t = t.reshape(3)
        for R in (R1, R2):
            num0, num1 = _depth_terms(R, t, K)[:2]
            for sign in (1.0, -1.0):
                count = int(np.count_nonzero(support & (sign * num0 > 0) & (sign * num1 > 0)))
                if best is None or count > best[0]:
                    best = (count, support, R, sign * t)
    _, support, R, t = best
    return support, R, _unit(t), _classify_signs(R, t, K, threshold)[0]


#: Local optimisation of the essential-matrix hypothesis (LO-RANSAC's inner RANSAC, Chum et al.
#: 2003): OpenCV 5.0's USAC LO/polisher settings do not change its E (measured), so the hypothesis
#: is a 5-point model, 2-5 degrees off in translation at 25-50 % outliers, from which the
#: refinement can settle in a wrong local minimum (its inliers confirm it). LO_ITERATIONS linear
#: (8-point) fits on LO_SAMPLE random points of the current support (Sampson distance < LO_GATE
#: thresholds) and LO_FINAL Sampson-weighted fits on the whole support, each kept when it lowers
#: the truncated quadratic (MSAC) score of up to LO_POINTS correspondences (~0.8 ms).
LO_ITERATIONS = 6
LO_SAMPLE = 16
LO_GATE = 2.0
LO_FINAL = 2
LO_POINTS = 400


def _eight_point(A: np.ndarray) -> np.ndarray:
    """Essential matrix minimising |A vec(E)| (rows of A: vec(x1 x0^T)), projected onto the
    essential manifold (singular values 1, 1, 0)."""
    _, V = np.linalg.eigh(A.T @ A)
    U, _, Wt = np.linalg.svd(V[:, 0].reshape(3, 3))
    return (U * _ESSENTIAL_SINGULAR) @ Wt


_ESSENTIAL_SINGULAR = np.array([1.0, 1.0, 0.0])


def _local_optimisation(E: np.ndarray, K: np.ndarray, threshold: float) -> np.ndarray:
    """E improved by LO-RANSAC's inner RANSAC + iterative least squares (see LO_ITERATIONS)."""
    thr2 = threshold * threshold
    rng = np.random.default_rng(2)
    if K.shape[1] > LO_POINTS:
        K = K[:, rng.choice(K.shape[1], LO_POINTS, replace=False)]
    P = K[:9]  # vec(x1 x0^T) of every point, (9, N)

    def score(M):
        r = _sampson_of(M, None, None, K)
        return float(np.minimum(r * r, thr2).sum()), r

    best, r = score(E)
    pool = np.flatnonzero(np.abs(r) < LO_GATE * threshold)
    for _ in range(LO_ITERATIONS):
        if len(pool) < 8:
            break
        candidate = _eight_point(P[:, pool[rng.integers(0, len(pool), LO_SAMPLE)]].T)
        s, rc = score(candidate)
        if s < best:
            best, E, r = s, candidate, rc
            pool = np.flatnonzero(np.abs(r) < LO_GATE * threshold)
    for _ in range(LO_FINAL):
        if len(pool) < 8:
            break
        den = _forms(K[:, pool], _sampson_weights(E)[1:])[0]  # Sampson weights: 1 / sqrt(D)
        candidate = _eight_point(P[:, pool].T / np.sqrt(np.maximum(den, 1e-300))[:, None])
        s, rc = score(candidate)
        if s >= best:
            break
        best, E, r = s, candidate, rc
        pool = np.flatnonzero(np.abs(r) < LO_GATE * threshold)
    return E


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _pair_products(h0: np.ndarray, h1: np.ndarray) -> np.ndarray:
    """(33, N) per point (columns): vec(x1 x0^T), vec(x0 x0^T), vec(x1 x1^T) (vec: row-major), x0,
    x1. Every bilinear, quadratic or linear form of the points that the pose needs (epipolar
    residual x1^T E x0, Sampson denominator, depths, norms) is then one product W @ K with a small
    W (:func:`_forms`); points along the columns, so each form is a contiguous row."""
    a, b = np.ascontiguousarray(h0.T), np.ascontiguousarray(h1.T)
    N = len(h0)
    K = np.empty((33, N))
    K[:27].reshape(3, 3, 3, N)[0] = b[:, None] * a[None]
    K[:27].reshape(3, 3, 3, N)[1] = a[:, None] * a[None]
    K[:27].reshape(3, 3, 3, N)[2] = b[:, None] * b[None]
    K[27:30] = a
    K[30:] = b
    return K


def _forms(K: np.ndarray, W: np.ndarray) -> np.ndarray:
    """W @ K for a (m, 33) W (or (m, 27): the bilinear and quadratic rows only)."""
    return W @ K[:W.shape[1]]


_IDENTITY9 = np.eye(3).reshape(9)


def _sampson_weights(E: np.ndarray) -> np.ndarray:
    """(2, 27) W: rows (x1^T E x0, |(E x0)_12|^2 + |(E^T x1)_12|^2) of :func:`_pair_products`."""
    W = np.zeros((2, 27))
    W[0, :9] = E.reshape(9)
    W[1, 9:18] = (E[:2].T @ E[:2]).reshape(9)
    W[1, 18:] = (E[:, :2] @ E[:, :2].T).reshape(9)
    return W


def _depth_terms(R: np.ndarray, t: np.ndarray, K: np.ndarray):
    """Triangulated depths of x1 ~ R x0 + t (OpenCV convention) as fractions: z0 = num0 / n2 along
    x0 (camera 0, x0 has z = 1), z1 = num1 / n2 along x1 (camera 1); n2 = |x1 x R x0|^2 >= 0.
    From (a x b).(c x d) = (a.c)(b.d) - (a.d)(b.c) with |R x0| = |x0|: with a = t.x1, b = t.R x0,
    c = x1.R x0, num0 = a c - b |x1|^2, num1 = a |x0|^2 - b c. Returns (num0, num1, n2, |x0|^2,
    |x1|^2) for the points of ``K`` (:func:`_pair_products`)."""
    W = np.zeros((5, 33))
    W[0, :9] = R.reshape(9)
    W[1, 30:] = t
    W[2, 27:30] = R.T @ t
    W[3, 9:18] = _IDENTITY9
    W[4, 18:27] = _IDENTITY9
    c, a, b, s0, s1 = W @ K
    return a * c - b * s1, a * s0 - b * c, np.maximum(s1 * s0 - c * c, 0.0), s0, s1


def _classify(R: np.ndarray, t: np.ndarray, h0: np.ndarray, h1: np.ndarray, threshold: float) -> np.ndarray:
    """Inliers of (R, t) (OpenCV convention): Sampson distance below ``threshold`` and the point in
    front of both cameras, unless its parallax angle is too small to tell (< 2 thresholds)."""
    return _classify_signs(R, t, _pair_products(h0, h1), threshold)[0]


def _classify_signs(R: np.ndarray, t: np.ndarray, K: np.ndarray, threshold: float):
    """(:func:`_classify` of (R, t), of (R, -t)) for the points of ``K`` (:func:`_pair_products`):
    the Sampson distance does not depend on the sign of t and the depths only change sign, so both
    come from one evaluation."""
    num0, num1, n2, s0, s1 = _depth_terms(R, t, K)
    e, den = _forms(K, _sampson_weights(skew(t) @ R))
    close = np.abs(e) < threshold * np.sqrt(np.maximum(den, 1e-300))
    unsure = close & (n2 < (2 * threshold) ** 2 * (s1 * s0))  # parallax angle (sine) < 2 thresholds
    return (close & (num0 > 0) & (num1 > 0)) | unsure, (close & (num0 < 0) & (num1 < 0)) | unsure


def _select_sign(R: np.ndarray, t: np.ndarray, K: np.ndarray, threshold: float):
    """(t or -t, its inliers): the sign of t with more inliers. The Sampson error cannot see the sign
    of t, so a refinement started from a wrong-signed decomposition (low parallax, noisy E) keeps it
    and the cheirality test then rejects most points; re-choosing after refining fixes that."""
    plus, minus = _classify_signs(R, t, K, threshold)
    return (t, plus) if np.count_nonzero(plus) >= np.count_nonzero(minus) else (-t, minus)


def _kabsch(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Batched rotation(s) R minimising sum ||a_i - R c_i||^2; a, c: (..., N, 3)."""
    Mx = a.T @ c if a.ndim == 2 else np.einsum("...ni,...nj->...ij", a, c)
    U, _, Vt = np.linalg.svd(Mx)
    d = np.sign(np.linalg.det(U @ Vt))
    d = np.where(d == 0, 1.0, d)
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def _rotation_residual_px(R: np.ndarray, b1: np.ndarray, x0: np.ndarray, focal0: np.ndarray) -> np.ndarray:
    """Pixel distance (in image0) between x0 and the rotation-only prediction of b1; R: (..., 3, 3)."""
    pred = np.matmul(b1, np.swapaxes(R, -1, -2))  # (..., N, 3)
    z = pred[..., 2]
    safe = np.where(z > 1e-9, z, 1.0)
    dx = (pred[..., 0] / safe - x0[:, 0]) * focal0[0]
    dy = (pred[..., 1] / safe - x0[:, 1]) * focal0[1]
    return np.where(z > 1e-9, np.sqrt(dx * dx + dy * dy), np.inf)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (..., 3) arrays (np.cross without its axis handling)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def _frames(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(K, 3, 3) orthonormal frames [u v w] of bearing pairs: u along p + q, v along p x q."""
    u = p + q
    v = _cross(p, q)
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-300)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-300)
    return np.stack([u, v, _cross(u, v)], axis=-1)


def _two_point_rotations(a1: np.ndarray, a2: np.ndarray, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """(K, 3, 3) rotations R with a ~ R c from K pairs of bearing pairs (a1, a2) <-> (c1, c2):
    the frame of (c1, c2) onto the frame of (a1, a2) (bisector and normal matched; symmetric in the
    two points, exact without noise)."""
    return _frames(a1, a2) @ np.swapaxes(_frames(c1, c2), -1, -2)


def _fit_rotation(b0: np.ndarray, b1: np.ndarray, x0: np.ndarray, focal0: np.ndarray, threshold_px: float,
                  pool: np.ndarray | None = None, plausible=None, hypotheses: int = 40, batch: int = 16,
                  preview: int = 128, min_share: float = 0.4):
    """Robust rotation-only model b0 ~ R b1 (R maps current → keyframe, our convention).

    This is the infinite homography K0 R K1^-1: a 2-point minimal solver (:func:`_two_point_rotations`)
    in RANSAC, then Kabsch re-fits on all inliers. Hypotheses are drawn from ``pool`` (indices; the
    essential-matrix support, which holds the rotation inliers when the motion is a rotation; all
    points when None or < 2) and scored on a random subset of it (``preview`` points): a first
    batch, then as many as the adaptive RANSAC stop (99.9 % confidence) needs to find a model
    holding ``min_share`` of the pool (a rotation explaining less cannot make the motion
    rotation-only), at most ``hypotheses``. ``plausible(inliers, residual)`` (optional) says whether
    the best hypothesis is worth the re-fits. Returns (R or None, inlier mask, residual in pixels
    for every point)."""
    N = len(b0)
    if N < 2:
        return None, np.zeros(N, bool), np.full(N, np.inf)
    if pool is None or len(pool) < 2:
        pool = np.arange(N)
    rng = np.random.default_rng(0)  # deterministic
    P = len(pool)
    sub = pool[rng.choice(P, preview, replace=False)] if P > preview else pool
    b1_sub, x0_sub = b1[sub], x0[sub]
    best_R, best_count, done = np.eye(3), -1, 0
    size = min(batch, hypotheses)
    while size > 0:
        i = rng.integers(0, P, size)
        j = pool[(i + rng.integers(1, P, size)) % P]
        i = pool[i]
        Rs = _two_point_rotations(b0[i], b0[j], b1[i], b1[j])
        counts = (_rotation_residual_px(Rs, b1_sub, x0_sub, focal0) < threshold_px).sum(axis=1)
        k = int(np.argmax(counts))
        if counts[k] > best_count and np.all(np.isfinite(Rs[k])):
            best_R, best_count = Rs[k], int(counts[k])
        done += size
        w = max(best_count / len(sub), min_share)
        needed = math.log(1e-3) / math.log(max(1.0 - w * w, 1e-12)) if w < 1 else 1
        size = min(int(math.ceil(needed)), hypotheses) - done
    R = best_R
    res = _rotation_residual_px(R, b1, x0, focal0)
    inliers = res < threshold_px
    if plausible is not None and not plausible(inliers, res):
        return R, inliers, res
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


def _sampson_of(E: np.ndarray, h0: np.ndarray | None, h1: np.ndarray | None,
                K: np.ndarray | None = None) -> np.ndarray:
    """Signed Sampson distance of x1^T E x0 = 0 (normalised units), for the points h0, h1 or those
    of ``K`` (:func:`_pair_products`; then one product gives numerator and denominator)."""
    if K is None:
        Ex0 = h0 @ E[:2].T
        Etx1 = h1 @ E[:, :2]
        num = _rowdot(h1, h0 @ E.T)
        den = _rowdot(Ex0, Ex0) + _rowdot(Etx1, Etx1)
    else:
        num, den = _forms(K, _sampson_weights(E))
    return num / np.sqrt(np.maximum(den, 1e-300))


def _sampson(R: np.ndarray, t: np.ndarray, h0: np.ndarray | None, h1: np.ndarray | None,
             K: np.ndarray | None = None) -> np.ndarray:
    """Signed Sampson distance of x1^T [t]x R x0 = 0 (normalised units, OpenCV convention)."""
    return _sampson_of(skew(t) @ R, h0, h1, K)


def _tangent_basis(t: np.ndarray) -> np.ndarray:
    """(3, 2) orthonormal basis of the plane orthogonal to unit t."""
    x, y, z = float(t[0]), float(t[1]), float(t[2])
    if abs(x) < 0.9:  # u = t x (1, 0, 0)
        u = np.array([0.0, z, -y])
    else:  # u = t x (0, 1, 0)
        u = np.array([-z, 0.0, x])
    u /= math.sqrt(float(u @ u))
    v = np.array([y * u[2] - z * u[1], z * u[0] - x * u[2], x * u[1] - y * u[0]])  # t x u
    return np.stack([u, v], axis=1)


def _perturb(R: np.ndarray, t: np.ndarray, delta: np.ndarray, B: np.ndarray):
    return so3_exp(delta[:3]) @ R, _unit(t + B @ delta[3:])


#: [e_k]x for k = 0, 1, 2 (generators of so(3)).
_SO3_GENERATORS = np.array([skew(axis) for axis in np.eye(3)])
_EYE3 = np.eye(3)


def _residual_and_jacobian(R: np.ndarray, t: np.ndarray, h0: np.ndarray | None, h1: np.ndarray | None,
                           B: np.ndarray, K: np.ndarray | None = None):
    """Sampson residuals (N,) and their analytic Jacobian, transposed: (5, N), for R <- exp(w) R,
    t <- unit(t + B a), at 0; for the points h0, h1 or those of ``K`` (:func:`_pair_products`).

    With E = [t]x R: dE/dw_k = [t]x [e_k]x R, dE/da_k = [b_k]x R; r = e / sqrt(D) with
    e = x1^T E x0 and D = |(E x0)_12|^2 + |(E^T x1)_12|^2, so dr = de / sqrt(D) - e dD / (2 D^1.5).
    Every term is a bilinear or quadratic form of the points: with E and its derivatives S_s
    stacked (6, 3, 3), e and de are x1^T S_s x0, D is x0^T E_12^T E_12 x0 + x1^T E^12 E^12^T x1
    (E_12: first two rows, E^12: first two columns) and dD the symmetrised products with S_s, so
    one (12, 27) x (27, N) product gives them all."""
    tx = skew(t)
    S = np.empty((6, 3, 3))
    S[0] = tx @ R
    S[1:4] = tx @ _SO3_GENERATORS @ R
    S[4] = skew(B[:, 0]) @ R
    S[5] = skew(B[:, 1]) @ R
    E = S[0]
    A0 = E[:2].T @ S[:, :2, :]  # E_12^T S_s,12
    A1 = S[:, :, :2] @ E[:, :2].T  # S_s^12 E^12^T
    A0 += A0.transpose(0, 2, 1).copy()
    A1 += A1.transpose(0, 2, 1).copy()
    A0[0] *= 0.5
    A1[0] *= 0.5
    W = np.zeros((12, 27))
    W[:6, :9] = S.reshape(6, 9)
    W[6:, 9:18] = A0.reshape(6, 9)
    W[6:, 18:] = A1.reshape(6, 9)
    Z = _forms(_pair_products(h0, h1) if K is None else K, W)  # rows: e, de (5), D, dD (5)
    D = np.maximum(Z[6], 1e-300)
    inv = 1.0 / np.sqrt(D)
    r = Z[0] * inv
    return r, Z[1:6] * inv - (r / (2.0 * D)) * Z[7:]


def _jacobian(R, t, h0, h1, B):
    """Analytic (N, 5) Jacobian of :func:`_sampson` (see :func:`_residual_and_jacobian`)."""
    return _residual_and_jacobian(R, t, h0, h1, B)[1].T


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


#: Levenberg-Marquardt stops when a step lowers the cost by less than this fraction, or moves the
#: pose by less than REFINE_MIN_STEP (radians / unit-vector tangent). Gauss-Newton on the Sampson
#: error converges linearly (steps shrink ~3x per iteration); a 1e-5 decrease is a ~2e-4 rad step,
#: 0.01 degrees, far below the translation-direction noise.
REFINE_RELATIVE_DECREASE = 1e-5
REFINE_MIN_STEP = 1e-7


def _refine(R: np.ndarray, t: np.ndarray, K: np.ndarray, scale: float | None = None, iterations: int = 15,
            jacobian: bool = True):
    """Levenberg-Marquardt on the Sampson error (5 DoF: R <- exp(w) R, t <- unit(t + B a)).

    With ``scale`` the Cauchy loss s^2 log(1 + (r/s)^2) is minimised, so a few outliers left in the
    inlier set cannot pull the solution. Its normal equations use the loss' own curvature,
    max(1 - u, 0.1) / (1 + u)^2 with u = (r/s)^2 (clipped: it is negative for |r| > s), instead of
    the IRLS weight 1 / (1 + u): IRLS over-estimates the curvature of residuals near the scale and
    crawls (measured: 15 iterations moved t by 0.09 of the > 0.85 degrees to its optimum), the
    curvature weights get there in a few (the cost test keeps every step a descent).
    ``K``: :func:`_pair_products` of the points. Returns (R, t, Jacobian at the solution (N, 5) or
    None without ``jacobian``, residuals (N,))."""

    def cost_of(r):
        if scale is None:
            return float(r @ r)
        return float(np.log1p((r / scale) ** 2).sum())

    B = _tangent_basis(t)
    r, J = _residual_and_jacobian(R, t, None, None, B, K)
    cost = cost_of(r)
    lam = 1e-3
    J_current = True  # J (and B) belong to the current (R, t)
    for _ in range(iterations):
        if not J_current:
            B = _tangent_basis(t)
            r, J = _residual_and_jacobian(R, t, None, None, B, K)
            J_current = True
        if scale is None:  # J is (5, N) (see _residual_and_jacobian)
            A, g = J @ J.T, J @ r
        else:
            u = (r / scale) ** 2
            w = 1.0 / (1.0 + u)
            g = J @ (w * r)
            A = (J * (np.maximum(1.0 - u, 0.1) * w * w)) @ J.T
        damping = np.diag(np.diag(A) + 1e-12)
        improved = converged = False
        for _ in range(8):
            try:
                delta = -np.linalg.solve(A + lam * damping, g)
            except np.linalg.LinAlgError:
                break
            R_new, t_new = _perturb(R, t, delta, B)
            r_new = _sampson(R_new, t_new, None, None, K)
            cost_new = cost_of(r_new)
            if cost_new < cost:
                converged = (cost - cost_new < REFINE_RELATIVE_DECREASE * max(cost, 1e-300)
                             or float(np.linalg.norm(delta)) < REFINE_MIN_STEP)
                R, t, r, cost, improved, J_current = R_new, t_new, r_new, cost_new, True, False
                lam = max(lam / 10, 1e-9)
                break
            lam *= 10
        if not improved or converged:
            break
    if jacobian and not J_current:
        r, J = _residual_and_jacobian(R, t, None, None, _tangent_basis(t), K)
    return R, t, (J.T if jacobian else None), r


#: Refinement schedule (:func:`_refine_and_classify`): ROBUST_ROUNDS rounds of ROBUST_ITERATIONS
#: robust (Cauchy) iterations on the correspondences within ROBUST_GATE thresholds of the current
#: model (wider than the inlier threshold, so that true inliers a rough start misses still pull),
#: each followed by a re-classification; then up to LSQ_ROUNDS least-squares fits on the inliers,
#: re-classified between them (stops early once the inliers no longer change).
ROBUST_GATE = 3.0
ROBUST_ROUNDS = 1
ROBUST_ITERATIONS = 5
LSQ_ROUNDS = 2


def _refine_and_classify(R: np.ndarray, t: np.ndarray, K: np.ndarray, mask: np.ndarray, threshold: float,
                         min_count: int):
    """Robust refinement and re-classification of all correspondences (``K``:
    :func:`_pair_products`), then least squares on the inliers (see ROBUST_GATE). Every
    classification chooses the sign of t (:func:`_select_sign`). Returns (R, t, Jacobian (N, 5)
    and residuals of the inliers at the solution, inlier mask)."""
    for _ in range(ROBUST_ROUNDS):
        t, wide = _select_sign(R, t, K, ROBUST_GATE * threshold)
        work = wide if wide.sum() >= min_count else mask
        R, t, _, _ = _refine(R, t, K[:, work], scale=threshold, iterations=ROBUST_ITERATIONS, jacobian=False)
        t, new_mask = _select_sign(R, t, K, threshold)
        if new_mask.sum() < min_count:
            break
        mask = new_mask
    for k in range(LSQ_ROUNDS):
        R, t, _, _ = _refine(R, t, K[:, mask], jacobian=False)
        if k == LSQ_ROUNDS - 1:
            break
        t, new_mask = _select_sign(R, t, K, threshold)
        if new_mask.sum() < min_count or np.array_equal(new_mask, mask):
            break
        mask = new_mask
    residuals, J = _residual_and_jacobian(R, t, None, None, _tangent_basis(t), K[:, mask])
    return R, t, J.T, residuals, mask


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

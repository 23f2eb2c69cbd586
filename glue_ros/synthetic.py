"""Synthetic image sequences with exact ground truth (tests, benchmarks, demo).

The scene is a closed room (5 m wide, 2.7 m high, 18 m long) with textured walls, floor and ceiling,
boxes standing on the floor and pillars at many depths, so two views are *not* related by a single
homography. Every surface carries its own procedural texture (multi-scale colour noise, filled
polygons, circles, lines, checker patches and text), so SIFT, ORB and SuperPoint find many corners.

Rendering is exact pinhole projection: each textured rectangle (tile) is clipped against the near
plane, warped into the image with one homography (``cv2.warpPerspective`` of a mip level chosen from
the texel/pixel ratio) and composited with a z-buffer of per-pixel inverse depth (affine in pixel
coordinates for a plane). Deterministic for a given seed.

Frames and conventions:

* World frame: x right, y down, z forward (optical-like), origin in the room, floor at y = +1.2,
  ceiling at y = -1.5, walls at x = +-2.5, z = -4 and z = 14.
* ``poses[i]`` is ``T_world_cam`` (4x4) of frame i, camera in optical axes (x right, y down,
  z forward). Pixel centres are at integer coordinates.
* :func:`relative_pose_gt` gives the glue_ros relative pose of the current camera in the keyframe
  camera (``X_kf = R @ X_cur + t``, unit ``t``).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .geometry import CameraModel, matrix_from_quaternion, quaternion_from_matrix

#: First stamp of every sequence (2023-11-14T22:13:20Z), non-zero like a real bag.
START_STAMP_NS = 1_700_000_000 * 10**9
#: Nominal speeds for ``speed=1``: 0.9 m/s (3 cm/frame at 30 Hz) and 15 deg/s (0.5 deg/frame).
NOMINAL_LINEAR_SPEED = 0.9
NOMINAL_ANGULAR_SPEED = math.radians(15.0)
MOTIONS = ("forward", "sideways", "orbit", "rotation", "mixed")

_TEXELS_PER_M = 160.0
_TILE_M = 3.0
_NEAR = 0.05
_ARANGE = np.arange(16384, dtype=np.float32)  # pixel coordinates (images up to 16k pixels wide)


# --------------------------------------------------------------------------- scene


@dataclass
class _Tile:
    origin: np.ndarray  # 3D corner of texel (0, 0)'s outer corner
    u: np.ndarray  # edge along texture x (3,)
    v: np.ndarray  # edge along texture y (3,)
    normal: np.ndarray  # unit normal, facing the side it is seen from
    mips: list[np.ndarray]  # texture pyramid, level 0 = full resolution (h, w, 3) uint8 RGB

    def __post_init__(self) -> None:
        o, u, v = self.origin, self.u, self.v
        self.corners = np.stack([o, o + u, o + u + v, o + v])
        h0, w0 = self.mips[0].shape[:2]
        # [u/w, v/h, centre of texel (0, 0)]: texel (a, b, 1) -> world point (a homography column set)
        self.texel_frame = np.stack([u / w0, v / h0, o + 0.5 * u / w0 + 0.5 * v / h0], 1)
        self.texels_per_m = math.sqrt(w0 * h0 / (np.linalg.norm(u) * np.linalg.norm(v)))


@dataclass
class SyntheticScene:
    """Textured 3D tiles; :meth:`render` draws them from any camera pose."""

    tiles: list[_Tile]
    seed: int = 0
    background: tuple[int, int, int] = (90, 90, 90)

    def render(self, T_world_cam: np.ndarray, camera: CameraModel, with_depth: bool = False):
        """(RGB uint8 image, depth float32 (z along the optical axis, inf where empty) or None).

        Distortion of ``camera`` is ignored (the synthetic cameras are ideal pinholes)."""
        W, H = int(camera.width), int(camera.height)
        K = camera.K
        Kinv = np.linalg.inv(K)
        T = np.asarray(T_world_cam, dtype=np.float64)
        R_cw = T[:3, :3].T
        C = T[:3, 3]
        image = np.empty((H, W, 3), np.uint8)
        image[:] = self.background
        invdepth = np.zeros((H, W), np.float32)
        fx, fy = K[0, 0], K[1, 1]
        for tile in self.tiles:
            if tile.normal @ (C - tile.origin) <= 1e-9:
                continue  # back face
            cam = (tile.corners - C) @ R_cw.T
            poly = cam if cam[:, 2].min() >= _NEAR else _clip_near(cam, _NEAR)
            if len(poly) < 3:
                continue
            proj = poly @ K.T
            px = proj[:, :2] / proj[:, 2:3]
            x0, y0 = np.floor(px.min(axis=0)).astype(int)
            x1, y1 = np.ceil(px.max(axis=0)).astype(int) + 1
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
            if x1 <= x0 or y1 <= y0:
                continue
            bw, bh = x1 - x0, y1 - y0
            # Inverse depth is affine in pixels for a plane: n_c . K^-1 [u v 1] / d_c.
            n_c = R_cw @ tile.normal
            d_c = n_c @ cam[0]
            a, b, c = (Kinv.T @ n_c) / d_c
            inv = (np.float32(a) * _ARANGE[x0:x1])[None, :] + (np.float32(b) * _ARANGE[y0:y1] + np.float32(c))[:, None]
            zb = invdepth[y0:y1, x0:x1]
            update = cv2.compare(inv, zb, cv2.CMP_GT)
            mask = np.zeros((bh, bw), np.uint8)
            pts = np.round((px - (x0, y0)) * 16.0).astype(np.int32)
            cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8, shift=4)
            cv2.bitwise_and(update, mask, dst=update)
            if not cv2.countNonZero(update):
                continue
            # Homography texel (level 0, centres at integers) -> image pixel; mip level from the
            # texel/pixel ratio at the visible polygon's centre: one pixel there covers
            # depth / (f sqrt(cos)) metres of the plane.
            centre = px.mean(axis=0)
            ray = Kinv @ np.array([centre[0], centre[1], 1.0])
            z = 1.0 / max(abs(a * centre[0] + b * centre[1] + c), 1e-12)
            cos = max(abs(n_c @ ray) / np.linalg.norm(ray), 1e-3)
            texels_per_pixel = tile.texels_per_m * z / (math.sqrt(fx * fy) * math.sqrt(cos))
            level = 0 if texels_per_pixel <= 1.0 else min(int(math.log2(texels_per_pixel)), len(tile.mips) - 1)
            s = float(2 ** level)
            Hm = K @ R_cw @ (tile.texel_frame - np.outer((0.0, 0.0, 1.0), C).T)
            Hm = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ Hm @ \
                np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])
            warped = cv2.warpPerspective(tile.mips[level], Hm, (bw, bh), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE)
            cv2.copyTo(warped, update, dst=image[y0:y1, x0:x1])
            cv2.copyTo(inv, update, dst=zb)
        depth = None
        if with_depth:
            with np.errstate(divide="ignore"):
                depth = np.where(invdepth > 0, 1.0 / invdepth, np.inf).astype(np.float32)
        return image, depth


def _clip_near(poly: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a 3D polygon (camera frame) against z >= near."""
    out = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        pin, qin = p[2] >= near, q[2] >= near
        if pin:
            out.append(p)
        if pin != qin:
            s = (near - p[2]) / (q[2] - p[2])
            out.append(p + s * (q - p))
    return np.array(out).reshape(-1, 3)


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Procedural RGB texture rich in corners and blobs at several scales."""
    img = np.zeros((h, w, 3), np.float32)
    base = rng.uniform(60, 190, 3).astype(np.float32)
    for octave, amp in ((4, 45.0), (16, 25.0), (48, 12.0)):
        gw, gh = octave, max(2, round(octave * h / w))  # grid cells across the texture
        noise = rng.normal(0, 1, (gh, gw, 3)).astype(np.float32)
        img += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    img += base
    img = np.clip(img, 0, 255).astype(np.uint8)
    area = w * h
    n_shapes = int(area / 1400)

    def color():
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    for _ in range(n_shapes):
        kind = rng.random()
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(4, 36))
        if kind < 0.25:
            x2, y2 = cx + int(rng.integers(3, 2 * size)), cy + int(rng.integers(3, 2 * size))
            cv2.rectangle(img, (cx, cy), (x2, y2), color(), -1)
        elif kind < 0.42:
            cv2.circle(img, (cx, cy), max(2, size // 2), color(), -1, lineType=cv2.LINE_AA)
        elif kind < 0.62:
            k = int(rng.integers(3, 7))
            ang = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = rng.uniform(0.4, 1.0, k) * size
            pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], color(), lineType=cv2.LINE_AA)
        elif kind < 0.75:
            x2, y2 = cx + int(rng.integers(-3 * size, 3 * size)), cy + int(rng.integers(-3 * size, 3 * size))
            cv2.line(img, (cx, cy), (x2, y2), color(), int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        elif kind < 0.85:
            cell = int(rng.integers(3, 9))
            n = int(rng.integers(2, 6))
            c1, c2 = color(), color()
            for i in range(n):
                for j in range(n):
                    corner = (cx + i * cell, cy + j * cell)
                    cv2.rectangle(img, corner, (corner[0] + cell - 1, corner[1] + cell - 1),
                                  c1 if (i + j) % 2 else c2, -1)
        else:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 6))))
            font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX]))
            cv2.putText(img, text, (cx, cy), font, float(rng.uniform(0.4, 1.4)), color(), int(rng.integers(1, 3)),
                        lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


def _mips(texture: np.ndarray) -> list[np.ndarray]:
    levels = [texture]
    while min(levels[-1].shape[:2]) >= 16 and len(levels) < 6:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def _add_rect(tiles: list, rng, origin, u, v, facing_point=None, facing_away_from=None) -> None:
    """Split the rectangle (origin, u, v) into tiles of at most _TILE_M and give each a texture.

    The normal faces ``facing_point`` (room walls) or away from ``facing_away_from`` (box faces)."""
    origin, u, v = (np.asarray(a, dtype=np.float64) for a in (origin, u, v))
    lu, lv = np.linalg.norm(u), np.linalg.norm(v)
    nu, nv = max(1, math.ceil(lu / _TILE_M - 1e-9)), max(1, math.ceil(lv / _TILE_M - 1e-9))
    normal = np.cross(u, v)
    normal /= np.linalg.norm(normal)
    centre = origin + 0.5 * (u + v)
    if facing_point is not None and normal @ (np.asarray(facing_point) - centre) < 0:
        normal = -normal
    if facing_away_from is not None and normal @ (centre - np.asarray(facing_away_from)) < 0:
        normal = -normal
    du, dv = u / nu, v / nv
    for i in range(nu):
        for j in range(nv):
            w = int(np.clip(round(lu / nu * _TEXELS_PER_M), 32, 1024))
            h = int(np.clip(round(lv / nv * _TEXELS_PER_M), 32, 1024))
            tiles.append(_Tile(origin + i * du + j * dv, du.copy(), dv.copy(), normal.copy(),
                               _mips(_texture(rng, w, h))))


def _add_box(tiles: list, rng, x: float, z: float, sx: float, sy: float, sz: float, y_floor: float) -> None:
    """Axis-aligned box standing on the floor (y down): x, z centre; sx, sy, sz sizes."""
    x0, x1, z0, z1, y0 = x - sx / 2, x + sx / 2, z - sz / 2, z + sz / 2, y_floor - sy
    centre = (x, y_floor - sy / 2, z)
    faces = [
        ((x0, y0, z0), (sx, 0, 0), (0, sy, 0)),  # front (z0)
        ((x0, y0, z1), (sx, 0, 0), (0, sy, 0)),  # back
        ((x0, y0, z0), (0, 0, sz), (0, sy, 0)),  # left
        ((x1, y0, z0), (0, 0, sz), (0, sy, 0)),  # right
        ((x0, y0, z0), (sx, 0, 0), (0, 0, sz)),  # top
    ]
    for origin, u, v in faces:
        _add_rect(tiles, rng, origin, u, v, facing_away_from=centre)


@functools.lru_cache(maxsize=4)
def make_scene(seed: int = 0) -> SyntheticScene:
    """The textured room (cached per seed). Boxes keep |x| >= 1 where the camera paths run."""
    rng = np.random.default_rng(seed)
    X, Y0, Y1, Z0, Z1 = 2.5, -1.5, 1.2, -4.0, 14.0  # walls, ceiling, floor, front, back
    inside = (0.0, 0.0, 5.0)
    tiles: list[_Tile] = []
    _add_rect(tiles, rng, (-X, Y0, Z1), (2 * X, 0, 0), (0, Y1 - Y0, 0), facing_point=inside)  # back wall
    _add_rect(tiles, rng, (-X, Y0, Z0), (2 * X, 0, 0), (0, Y1 - Y0, 0), facing_point=inside)  # front wall
    _add_rect(tiles, rng, (-X, Y0, Z0), (0, 0, Z1 - Z0), (0, Y1 - Y0, 0), facing_point=inside)  # left wall
    _add_rect(tiles, rng, (X, Y0, Z0), (0, 0, Z1 - Z0), (0, Y1 - Y0, 0), facing_point=inside)  # right wall
    _add_rect(tiles, rng, (-X, Y1, Z0), (2 * X, 0, 0), (0, 0, Z1 - Z0), facing_point=inside)  # floor
    _add_rect(tiles, rng, (-X, Y0, Z0), (2 * X, 0, 0), (0, 0, Z1 - Z0), facing_point=inside)  # ceiling
    # Boxes on the floor beside the camera paths (|x| >= 1) and a few across the far corridor.
    for z in (2.5, 4.5, 6.5, 8.5):
        for side in (-1, 1):
            if rng.random() < 0.8:
                sx, sy, sz = rng.uniform(0.4, 0.9), rng.uniform(0.4, 1.3), rng.uniform(0.4, 0.9)
                x = side * rng.uniform(1.0 + sx / 2, X - sx / 2 - 0.05)
                _add_box(tiles, rng, x, z + rng.uniform(-0.5, 0.5), sx, sy, sz, Y1)
    for x in (-1.2, 0.2, 1.4):
        sx, sy, sz = rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.6), rng.uniform(0.5, 1.0)
        _add_box(tiles, rng, x + rng.uniform(-0.2, 0.2), rng.uniform(10.5, 12.5), sx, sy, sz, Y1)
    # Two pillars (floor to ceiling) at different depths.
    _add_box(tiles, rng, -1.7, 5.5, 0.4, Y1 - Y0, 0.4, Y1)
    _add_box(tiles, rng, 1.8, 9.5, 0.5, Y1 - Y0, 0.5, Y1)
    return SyntheticScene(tiles, seed)


# --------------------------------------------------------------------------- trajectories


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _bounce(s: float, lo: float, hi: float) -> float:
    """Position after travelling s from lo towards hi, bouncing between lo and hi."""
    length = hi - lo
    u = s % (2 * length)
    return lo + (u if u <= length else 2 * length - u)


def camera_pose(motion: str, time_s: float, speed: float = 1.0) -> np.ndarray:
    """T_world_cam (4x4, optical axes) of ``motion`` at ``time_s``.

    * forward: along +z (3 cm/frame at 30 Hz, speed 1) between z = -1 and 8, bouncing.
    * sideways: along +x between x = -1.5 and 1.5 at z = -0.5, bouncing, looking +z.
    * orbit: on a 6 m circle around (0, 0, 6), looking at it, +-15 deg (0.9 m/s), bouncing.
    * rotation: pure rotation about the fixed centre (0, 0, 1): yaw 15 deg/s plus a +-5 deg pitch
      oscillation (0.2 Hz).
    * mixed: forward as above plus lateral/vertical sway and yaw/pitch/roll oscillations
      (peak ~0.6 deg/frame).
    """
    v = NOMINAL_LINEAR_SPEED * speed
    s = v * time_s
    tp = time_s * speed  # phase time for oscillations
    R = np.eye(3)
    C = np.zeros(3)
    if motion == "forward":
        C = np.array([0.0, 0.0, _bounce(s, -1.0, 8.0)])
    elif motion == "sideways":
        C = np.array([_bounce(s, -1.5, 1.5), 0.0, -0.5])
    elif motion == "orbit":
        radius, pivot, amp = 6.0, np.array([0.0, 0.0, 6.0]), math.radians(15.0)
        theta = _bounce(s / radius + amp, 0.0, 2 * amp) - amp
        R = _rot_y(theta)
        C = pivot - radius * R[:, 2]
    elif motion == "rotation":
        R = _rot_y(NOMINAL_ANGULAR_SPEED * tp) @ _rot_x(math.radians(5.0) * math.sin(2 * math.pi * 0.2 * tp))
        C = np.array([0.0, 0.0, 1.0])
    elif motion == "mixed":
        C = np.array([0.3 * math.sin(2 * math.pi * 0.2 * tp), 0.1 * math.sin(2 * math.pi * 0.35 * tp + 1.0),
                      _bounce(s, -1.0, 8.0)])
        R = (_rot_y(math.radians(8.0) * math.sin(2 * math.pi * 0.3 * tp))
             @ _rot_x(math.radians(4.0) * math.sin(2 * math.pi * 0.25 * tp + 0.5))
             @ _rot_z(math.radians(3.0) * math.sin(2 * math.pi * 0.2 * tp + 2.0)))
    else:
        raise ValueError(f"unknown motion '{motion}' (expected one of {', '.join(MOTIONS)})")
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = C
    return T


# --------------------------------------------------------------------------- sequences


@dataclass
class SyntheticSequence:
    name: str
    images: list[np.ndarray]  # (H, W, 3) uint8 RGB
    stamps_ns: list[int]
    poses: np.ndarray  # (N, 4, 4) T_world_cam, optical axes
    camera: CameraModel
    motion: str = ""
    fps: float = 30.0
    depths: list[np.ndarray] | None = None  # (H, W) float32 z-depth (metres) when rendered with_depth
    frame_indices: list[int] = field(default_factory=list)  # frame number of each image (see frames=)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def relative_pose(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth glue_ros relative pose of image j in image i (list positions): (R, unit t)."""
        return relative_pose_gt(self.poses[i], self.poses[j])


_NOISE_MARGIN = 64


@functools.lru_cache(maxsize=4)
def _noise_bank(seed: int, height: int, width: int, std: float) -> np.ndarray:
    """Integer Gaussian noise, larger than the image; each frame uses a seeded random crop
    (drawing fresh Gaussian noise for every frame would cost more than rendering)."""
    rng = np.random.default_rng((seed, 7919))
    noise = rng.standard_normal((height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3), dtype=np.float32) * std
    return np.round(noise).astype(np.int16)


def default_camera(width: int = 640, height: int = 480) -> CameraModel:
    """Ideal pinhole with a 65 deg horizontal field of view (fx = fy = 500 at 640x480)."""
    f = 500.0 * width / 640.0
    return CameraModel.from_intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def render_sequence(num_frames: int, width: int = 640, height: int = 480, motion: str = "forward",
                    fps: float = 30.0, seed: int = 0, speed: float = 1.0, noise_std: float = 1.0,
                    with_depth: bool = False, camera: CameraModel | None = None,
                    frames: Sequence[int] | None = None) -> SyntheticSequence:
    """Render ``num_frames`` frames of ``motion`` (see :func:`camera_pose`) at ``fps``.

    ``frames``: render only these frame indices (of the ``num_frames`` sequence; stamps, poses and
    noise are those of the full sequence) — e.g. ``frames=(0, 10, 20)`` for pair tests.

    ``speed`` scales the nominal velocities (NOMINAL_LINEAR_SPEED, NOMINAL_ANGULAR_SPEED).
    ``noise_std`` adds Gaussian pixel noise (grey levels, seeded per frame); 0 disables.
    Deterministic: same arguments → identical images."""
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion '{motion}' (expected one of {', '.join(MOTIONS)})")
    if num_frames < 0 or fps <= 0:
        raise ValueError("num_frames must be >= 0 and fps > 0")
    camera = camera or default_camera(width, height)
    if (camera.width, camera.height) != (width, height):
        camera = CameraModel(camera.K, camera.D, camera.distortion_model, width, height)
    scene = make_scene(seed)
    images, depths, stamps, poses = [], [], [], []
    indices = range(num_frames) if frames is None else [int(i) for i in frames]
    if any(not 0 <= i < num_frames for i in indices):
        raise ValueError(f"frames must be in [0, {num_frames})")
    for i in indices:
        T = camera_pose(motion, i / fps, speed)
        image, depth = scene.render(T, camera, with_depth)
        if noise_std > 0:
            bank = _noise_bank(seed, height, width, float(noise_std))
            dy, dx = np.random.default_rng((seed, i)).integers(0, _NOISE_MARGIN, 2)
            image = np.clip(image.astype(np.int16) + bank[dy:dy + height, dx:dx + width], 0, 255).astype(np.uint8)
        images.append(image)
        depths.append(depth)
        stamps.append(START_STAMP_NS + int(round(i * 1e9 / fps)))
        poses.append(T)
    return SyntheticSequence(f"synthetic_{motion}_s{seed}", images, stamps,
                             np.array(poses).reshape(-1, 4, 4), camera, motion, fps,
                             depths if with_depth else None, list(indices))


def relative_pose_gt(T_world_kf: np.ndarray, T_world_cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """glue_ros relative pose (R, unit t) of the current camera in the keyframe camera
    (``X_kf = R @ X_cur + t``); ``t`` is zero when the cameras share their centre."""
    T = np.linalg.inv(np.asarray(T_world_kf, float)) @ np.asarray(T_world_cur, float)
    t = T[:3, 3]
    n = np.linalg.norm(t)
    return T[:3, :3].copy(), (t / n if n > 1e-12 else np.zeros(3))


# --------------------------------------------------------------------------- files


def _stamp_str(stamp_ns: int) -> str:
    stamp_ns = int(stamp_ns)
    sign = "-" if stamp_ns < 0 else ""
    s, ns = divmod(abs(stamp_ns), 10**9)
    return f"{sign}{s}.{ns:09d}"


def parse_stamp(text: str) -> int:
    """Decimal seconds (a TUM ``rgb.txt`` / trajectory stamp) → integer nanoseconds, exactly: the digit
    string is split at "." and the fraction padded / truncated to 9 digits, so "1341847980.722988" is
    1341847980722988000 (float parsing gives ...722987776). Exponent forms ("1.5e9") are read exactly
    with Decimal. ValueError for anything that is not a finite decimal number."""
    text = text.strip()
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
    whole, dot, frac = body.partition(".")
    if (whole or frac) and (not whole or whole.isdigit()) and (not frac or frac.isdigit()) and \
            whole.isascii() and frac.isascii():
        return sign * (int(whole or "0") * 10**9 + int((frac + "000000000")[:9]))
    from decimal import ROUND_DOWN, Decimal, InvalidOperation

    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"'{text}' is not a time stamp (decimal seconds)") from None
    if not value.is_finite():
        raise ValueError(f"'{text}' is not a time stamp (decimal seconds)")
    return int((value * 10**9).to_integral_value(rounding=ROUND_DOWN))


_parse_stamp = parse_stamp  # the name this module used before


def write_tum_trajectory(path: str | Path, stamps_ns: Sequence[int], poses: Sequence[np.ndarray]) -> None:
    """TUM RGB-D format: ``timestamp tx ty tz qx qy qz qw`` (seconds with 9 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    for stamp, T in zip(stamps_ns, poses):
        T = np.asarray(T, dtype=np.float64)
        q = quaternion_from_matrix(T[:3, :3])
        values = " ".join(f"{v:.9f}" for v in (*T[:3, 3], *q))
        lines.append(f"{_stamp_str(stamp)} {values}")
    path.write_text("\n".join(lines) + "\n")


def read_tum_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(stamps_ns int64 (N,), poses (N, 4, 4)) from a TUM trajectory file (comments skipped)."""
    stamps, poses = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.replace(",", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 8:
            raise ValueError(f"{path}:{number}: expected 8 fields (timestamp tx ty tz qx qy qz qw), got {len(fields)}")
        values = [float(v) for v in fields[1:]]
        T = np.eye(4)
        T[:3, :3] = matrix_from_quaternion(values[3:])
        T[:3, 3] = values[:3]
        stamps.append(parse_stamp(fields[0]))
        poses.append(T)
    return np.array(stamps, dtype=np.int64), np.array(poses).reshape(-1, 4, 4)


def write_images(seq: SyntheticSequence, directory: str | Path) -> Path:
    """Write a TUM-style dataset: ``rgb/<stamp>.png``, ``rgb.txt``, ``groundtruth.txt``,
    ``camera.yaml`` (ROS camera_info layout) and ``camera.json`` (same content). Returns directory."""
    directory = Path(directory)
    (directory / "rgb").mkdir(parents=True, exist_ok=True)
    lines = ["# color images", f"# sequence: {seq.name}", "# timestamp filename"]
    for stamp, image in zip(seq.stamps_ns, seq.images):
        name = f"rgb/{_stamp_str(stamp)}.png"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(directory / name), bgr):
            raise OSError(f"could not write {directory / name}")
        lines.append(f"{_stamp_str(stamp)} {name}")
    (directory / "rgb.txt").write_text("\n".join(lines) + "\n")
    write_tum_trajectory(directory / "groundtruth.txt", seq.stamps_ns, seq.poses)
    info = seq.camera.to_dict(camera_name=seq.name)
    import yaml

    (directory / "camera.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
    (directory / "camera.json").write_text(json.dumps(info, indent=2))
    return directory


def read_camera_file(path: str | Path) -> CameraModel:
    """CameraModel from a camera.yaml / camera.json written by :func:`write_images` (or any ROS
    camera_info YAML)."""
    import yaml

    return CameraModel.from_dict(yaml.safe_load(Path(path).read_text()))

"""Classical baseline behind the learned models' interface: SIFT/ORB + mutual nearest neighbour.

``ClassicalExtractor.extract(images) -> list[Features]`` and
``NearestNeighborMatcher.match(feats0, feats1) -> list[PairMatches]`` follow the same contracts as
``SuperPoint.extract`` and ``SuperGlue.match``/``LightGlue.match``:

* keypoints are (x, y) float32 pixels of the *input* image, pixel centres at integers;
* descriptors are float32 for SIFT (RootSIFT by default, unit L2 norm) and uint8 (N, 32) for ORB;
* a pair is (image0, image1) = (keyframe, current); matches are ``[i0, i1]``.

Both classes count their work (``calls``, ``images_processed`` / ``pairs_processed``) so the
front-end tests can prove each frame is extracted once.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from .config import ExtractorConfig, MatcherConfig
from .features import Features, ImageLike, Images, PairMatches, split_images


DESCRIPTOR_DIMS = {"sift": 128, "orb": 32}


class ClassicalExtractor:
    """OpenCV SIFT or ORB keypoints and descriptors.

    ``max_keypoints``: keep the strongest (by detector response); -1 = no limit.
    ``root_sift``: SIFT descriptors as RootSIFT (L1-normalise, square root: unit L2 norm, so L2
    distances compare like the Hellinger kernel; better matching at no cost).
    ``border``: drop keypoints closer than this to any image border (pixels of the input image).
    ``resize_max``: detect on an image shrunk so its long side is at most this (0 = native);
    keypoints are mapped back with ``x = (x_small + 0.5) * W / W_small - 0.5``.
    """

    def __init__(self, kind: str = "sift", max_keypoints: int = 1024, *, root_sift: bool = True,
                 border: int = 0, resize_max: int = 0) -> None:
        kind = kind.lower()
        if kind not in DESCRIPTOR_DIMS:
            raise ValueError(f"unknown classical extractor '{kind}' (expected sift or orb)")
        if max_keypoints == 0 or max_keypoints < -1:
            raise ValueError(f"max_keypoints must be positive or -1 (no limit), got {max_keypoints}")
        self.kind = kind
        self.features = kind  # Extractor protocol: the descriptor family
        self.max_keypoints = int(max_keypoints)
        self.root_sift = bool(root_sift)
        self.border = int(border)
        self.resize_max = int(resize_max)
        self.descriptor_dim = DESCRIPTOR_DIMS[kind]
        self.device = torch.device("cpu")
        self.calls = 0  # extract() invocations
        self.images_processed = 0  # images run through the detector
        limit = self.max_keypoints if self.max_keypoints > 0 else 0
        if kind == "sift":
            self._detector = cv2.SIFT_create(nfeatures=limit)
        else:
            # ORB needs a number; FAST threshold 10 (OpenCV default 20) keeps texture-poor frames alive.
            self._detector = cv2.ORB_create(nfeatures=limit or 100_000, scaleFactor=1.2, nlevels=8,
                                            edgeThreshold=31, fastThreshold=10)

    @classmethod
    def from_config(cls, config: ExtractorConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> "ClassicalExtractor":
        """OpenCV runs on the CPU in its own types: ``device`` and ``dtype`` are accepted and ignored."""
        return cls(config.type, config.max_keypoints, border=config.border_removal, resize_max=config.resize_max)

    def __repr__(self) -> str:
        return f"ClassicalExtractor({self.kind!r}, max_keypoints={self.max_keypoints})"

    # ------------------------------------------------------------------ extraction

    def extract(self, images: Images) -> list[Features]:
        """One Features per image. Accepts what SuperPoint.extract accepts: numpy arrays or torch
        tensors, H×W, H×W×1, H×W×3 (RGB), N×H×W, N×H×W×3 or a list; uint8, uint16 or float
        (in [0, 1]; float images with values above 1 are taken as 0..255)."""
        items = split_images(images)
        self.calls += 1
        self.images_processed += len(items)
        return [self._extract_one(image) for image in items]

    def __call__(self, images: Images) -> list[Features]:
        return self.extract(images)

    def _empty(self, size: tuple[int, int]) -> Features:
        dtype = torch.uint8 if self.kind == "orb" else torch.float32
        return Features.empty(size, self.descriptor_dim, dtype=dtype)

    def _extract_one(self, image: ImageLike) -> Features:
        gray = _to_gray_uint8(image)
        height, width = gray.shape[:2]
        size = (int(width), int(height))
        if gray.size == 0 or min(height, width) < 8:
            return self._empty(size)
        scale = None
        if self.resize_max > 0 and max(width, height) > self.resize_max:
            f = self.resize_max / max(width, height)
            small = (max(1, round(width * f)), max(1, round(height * f)))
            gray = cv2.resize(gray, small, interpolation=cv2.INTER_AREA)
            scale = (width / small[0], height / small[1])
        keypoints, descriptors = self._detector.detectAndCompute(gray, None)
        if descriptors is None or len(keypoints) == 0:
            return self._empty(size)
        xy = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
        response = np.array([kp.response for kp in keypoints], dtype=np.float32)
        if scale is not None:
            xy = (xy + 0.5) * np.array(scale, dtype=np.float32) - 0.5
        keep = np.ones(len(xy), bool)
        if self.border > 0:
            b = self.border
            keep = (xy[:, 0] >= b) & (xy[:, 1] >= b) & (xy[:, 0] <= width - 1 - b) & (xy[:, 1] <= height - 1 - b)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-response[order], kind="stable")]
        if self.max_keypoints > 0:
            order = order[: self.max_keypoints]
        if len(order) == 0:
            return self._empty(size)
        xy, response, descriptors = xy[order], response[order], descriptors[order]
        if self.kind == "sift":
            descriptors = descriptors.astype(np.float32)
            if self.root_sift:
                descriptors /= np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-12)
                descriptors = np.sqrt(descriptors)
            else:
                descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
        else:
            descriptors = np.ascontiguousarray(descriptors, dtype=np.uint8)
        return Features(torch.from_numpy(np.ascontiguousarray(xy)), torch.from_numpy(response),
                        torch.from_numpy(np.ascontiguousarray(descriptors)), size)


def _to_gray_uint8(image: ImageLike) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3:
        if image.shape[-1] == 1:
            image = image[..., 0]
        elif image.shape[-1] != 3:
            raise ValueError(f"images must be H×W, H×W×1 or H×W×3 (RGB), got {image.shape}")
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if image.size and float(image.max()) <= 1.0:
            image = image * 255.0
        image = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    else:
        raise TypeError(f"images must be uint8, uint16 or float, got {image.dtype}")
    if image.ndim == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image)


class NearestNeighborMatcher:
    """Mutual nearest neighbour matching with Lowe's ratio test.

    Distances: L2 for float descriptors, Hamming for uint8 (binary, ORB) descriptors.
    A match (i, j) needs j = NN(i) and i = NN(j) (mutual) and, with ``ratio_test`` r > 0,
    ``d1 < r * d2`` (Lowe; d1, d2: best and second-best distance from i, a missing second neighbour
    passes). ``ratio_test = 0`` disables the ratio test.
    Score: ``1 - d1/d2`` in the 0→1 direction, the ratio-test margin in [0, 1] (1 without a second
    neighbour, 0 for two equally close neighbours). It ranks distinctive matches first whatever the
    descriptor type or scale; with ratio test r every kept match scores above 1 - r.
    ``extra["distance"]`` holds d1 (L2 or Hamming bits).
    """

    def __init__(self, ratio_test: float = 0.8, mutual: bool = True) -> None:
        if not 0.0 <= ratio_test <= 1.0:
            raise ValueError(f"ratio_test must be in [0, 1], got {ratio_test}")
        self.expected_features = None  # Matcher protocol: any descriptors (float L2 or binary Hamming)
        self.ratio_test = float(ratio_test)
        self.mutual = bool(mutual)
        self.device = torch.device("cpu")
        self.calls = 0  # match() invocations
        self.pairs_processed = 0  # pairs matched

    @classmethod
    def from_config(cls, config: MatcherConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, features: str | None = None) -> "NearestNeighborMatcher":
        return cls(config.ratio_test)

    def set_thresholds(self, config: MatcherConfig) -> None:
        """Live parameter update (matcher.ratio_test)."""
        if not 0.0 <= config.ratio_test <= 1.0:
            raise ValueError(f"ratio_test must be in [0, 1], got {config.ratio_test}")
        self.ratio_test = float(config.ratio_test)

    def __repr__(self) -> str:
        return f"NearestNeighborMatcher(ratio_test={self.ratio_test})"

    def match(self, feats0: Sequence[Features], feats1: Sequence[Features]) -> list[PairMatches]:
        """Match pairs (feats0[k], feats1[k]); one PairMatches per pair."""
        if isinstance(feats0, Features):
            feats0 = [feats0]
        if isinstance(feats1, Features):
            feats1 = [feats1]
        if len(feats0) != len(feats1):
            raise ValueError(f"match() needs as many image0 as image1 features ({len(feats0)} != {len(feats1)})")
        for f0, f1 in zip(feats0, feats1):
            _check_compatible(f0, f1)
        self.calls += 1
        self.pairs_processed += len(feats0)
        return [self._match_pair(f0, f1) for f0, f1 in zip(feats0, feats1)]

    def match_pair(self, feats0: Features, feats1: Features) -> PairMatches:
        return self.match([feats0], [feats1])[0]

    @torch.inference_mode()
    def _match_pair(self, f0: Features, f1: Features) -> PairMatches:
        if len(f0) == 0 or len(f1) == 0:
            return PairMatches.empty()
        d0, d1 = f0.descriptors.cpu(), f1.descriptors.cpu()
        binary0 = d0.dtype == torch.uint8
        # Ranking by squared L2 (or Hamming) distance; roots only for the kept candidates.
        dist = _hamming(d0, d1) if binary0 else _squared_l2(d0.float(), d1.float())
        n0, n1 = dist.shape
        best, nn0 = dist.topk(min(2, n1), dim=1, largest=False)  # (n0, k), rows contiguous
        i0 = torch.arange(n0)
        j = nn0[:, 0]
        keep = torch.ones(n0, dtype=torch.bool)
        if self.mutual:
            keep &= dist.argmin(dim=0)[j] == i0
        first = best[:, 0]
        second = best[:, 1] if n1 > 1 else torch.full_like(first, float("inf"))
        if not binary0:
            first, second = first.clamp_min(0).sqrt(), second.clamp_min(0).sqrt()
        if self.ratio_test > 0:
            keep &= first < self.ratio_test * second
        ratio = torch.where(second > 0, first / second.clamp_min(1e-30), torch.ones_like(first))
        ratio = torch.where(torch.isinf(second), torch.zeros_like(ratio), ratio)
        idx = torch.nonzero(keep).reshape(-1)
        if len(idx) == 0:
            return PairMatches.empty()
        matches = torch.stack([idx, j[idx]], dim=1).numpy().astype(np.int64)
        scores = (1.0 - ratio[idx]).clamp(0.0, 1.0).numpy().astype(np.float32)
        return PairMatches(matches, scores, -1, extra={"distance": first[idx].numpy().astype(np.float32)})


def _check_compatible(f0: Features, f1: Features) -> None:
    d0, d1 = f0.descriptors, f1.descriptors
    if len(f0) == 0 or len(f1) == 0:
        return  # nothing to compare; the result is empty
    if (d0.dtype == torch.uint8) != (d1.dtype == torch.uint8):
        raise ValueError(f"cannot match {d0.dtype} with {d1.dtype} descriptors")
    if d0.shape[-1] != d1.shape[-1]:
        raise ValueError(f"descriptor sizes differ: {d0.shape[-1]} vs {d1.shape[-1]}")


def _squared_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n0, n1): |a|^2 + |b|^2 - 2 a.b in one BLAS call."""
    norms = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None]
    return torch.addmm(norms, a, b.T, beta=1.0, alpha=-2.0)


_SIGNS = torch.tensor([[1.0 - 2.0 * ((v >> k) & 1) for k in range(8)] for v in range(256)], dtype=torch.float32)


def _hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distances (n0, n1) of uint8 bit strings: with bits as +-1, a.b = bits - 2 * hamming."""
    sa = _SIGNS[a.long()].reshape(len(a), -1)
    sb = _SIGNS[b.long()].reshape(len(b), -1)
    return (sa.shape[1] - sa @ sb.T) * 0.5

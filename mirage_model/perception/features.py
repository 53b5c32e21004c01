"""SIFT features of video frames (OpenCV), in the form COLMAP's matcher and mapper read.

``sift_features`` detects and describes each frame with OpenCV's SIFT. It replaces COLMAP's own
extractor in ``estimate_poses``: on 33 frames of 320x240 it takes 0.6 s against COLMAP's 2-5 s on
one core, with the same downstream accuracy on rendered clips (docs/method.md, "Camera poses").

Repeatable by construction: each frame is described on its own (so frames can be spread over
threads), and keypoints are sorted by position before their descriptors are computed, so the
result does not depend on the order in which OpenCV's threads report them.

Conventions: keypoint ``x, y`` in pixels with the centre of pixel column ``i`` at ``x = i`` (the
project's convention; COLMAP's is +0.5, ``to_colmap`` converts), ``scale`` (half the SIFT size)
and ``orientation`` in radians. Descriptors are RootSIFT quantised to uint8 exactly as COLMAP
stores its own (L1-normalise, square root, x 512, clip to 255), so COLMAP's matcher thresholds
mean the same thing for them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_FEATURES", "Features", "match_features", "sift_features"]

MAX_FEATURES = 4096
"""Keypoints kept per frame (the strongest)."""
CONTRAST_THRESHOLD = 0.02
"""OpenCV SIFT's contrast threshold (its default 0.04 keeps about half as many keypoints as
COLMAP's extractor on the same frames; 0.02 keeps about as many)."""


@dataclass(frozen=True)
class Features:
    """One frame's keypoints (N, 4) float32 ``[x, y, scale, orientation]`` and descriptors (N, 128) uint8."""

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def xy(self) -> np.ndarray:
        """(N, 2) float32 pixel positions (project convention)."""
        return self.keypoints[:, :2]

    def to_colmap(self) -> np.ndarray:
        """(N, 4) keypoints in COLMAP's pixel convention (top-left corner of the image at 0)."""
        kp = self.keypoints.copy()
        kp[:, :2] += 0.5
        return kp


def _describe(frame: np.ndarray, max_features: int) -> Features:
    import cv2

    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    sift = cv2.SIFT_create(nfeatures=int(max_features), contrastThreshold=CONTRAST_THRESHOLD)
    kps = sorted(sift.detect(grey, None), key=lambda k: (k.pt[1], k.pt[0], k.size, k.angle, k.response))
    kps, desc = sift.compute(grey, kps)
    if desc is None or not len(kps):
        return Features(np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8))
    keypoints = np.array([[k.pt[0], k.pt[1], k.size / 2, np.deg2rad(k.angle)] for k in kps], dtype=np.float32)
    desc = desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)  # RootSIFT, quantised as COLMAP does
    return Features(keypoints, np.clip(np.round(np.sqrt(desc) * 512.0), 0, 255).astype(np.uint8))


def sift_features(frames: np.ndarray, *, max_features: int = MAX_FEATURES, num_threads: int = 1) -> list[Features]:
    """SIFT features of each frame of ``frames`` ((N, H, W, 3) or (N, H, W) uint8), frames spread
    over ``num_threads`` threads (OpenCV releases the GIL); the result does not depend on it."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
        raise ValueError(f"frames: expected (N, H, W[, 3]) uint8, got {frames.dtype} {frames.shape}")
    if num_threads <= 1 or len(frames) < 2:
        return [_describe(f, max_features) for f in frames]
    with ThreadPoolExecutor(max_workers=int(num_threads), thread_name_prefix="sift") as pool:
        return list(pool.map(lambda f: _describe(f, max_features), frames))


def match_features(a: Features, b: Features, max_ratio: float = 0.8) -> np.ndarray:
    """(M, 2) indices of mutual nearest neighbours between ``a`` and ``b`` that pass Lowe's ratio
    test (COLMAP's matcher's rule: ratio 0.8 and cross-check), in order of ``a``'s keypoints."""
    import cv2

    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    da, db = a.descriptors.astype(np.float32), b.descriptors.astype(np.float32)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    ab = matcher.knnMatch(da, db, k=2)
    ba = {m[0].queryIdx: m[0].trainIdx for m in matcher.knnMatch(db, da, k=1) if m}
    pairs = [(m[0].queryIdx, m[0].trainIdx) for m in ab
             if len(m) == 2 and m[0].distance < max_ratio * m[1].distance and ba.get(m[0].trainIdx) == m[0].queryIdx]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)

"""Shot boundaries: hard cuts and fades, so that no clip (and no SfM run) spans two shots.

``detect_shots`` runs PySceneDetect's detectors on decoded frames (weight-free):

* ``AdaptiveDetector`` finds hard cuts: a frame whose HSV content differs from its neighbours'
  rolling average by much more than the local motion does (fast pans stay one shot);
* ``ThresholdDetector`` finds fades to and from black; the dark frames themselves belong to no
  shot (they carry no geometry), so a fade splits the video and its frames are dropped.

Shots are ``[start, end)`` frame spans of the decoded video, in order, non-overlapping.
"""

from __future__ import annotations

import cv2
import numpy as np

from .config import ShotConfig

__all__ = ["detect_shots"]

ANALYSIS_WIDTH = 256
"""Frames are downscaled to this width for detection (PySceneDetect's own default is similar)."""


def _small(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if w <= ANALYSIS_WIDTH:
        return np.ascontiguousarray(frame[..., ::-1])
    size = (ANALYSIS_WIDTH, max(1, round(h * ANALYSIS_WIDTH / w)))
    return cv2.resize(np.ascontiguousarray(frame[..., ::-1]), size, interpolation=cv2.INTER_AREA)


def detect_shots(frames: np.ndarray, fps: float, config: ShotConfig | None = None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` shots of ``frames`` ((N, H, W, 3) uint8 RGB at ``fps``).

    Cuts split shots; black frames (fades) are left out of every shot. A video with no cut and
    no fade is one shot ``[(0, N)]``; an all-black video has none.
    """
    from scenedetect import AdaptiveDetector, FrameTimecode

    cfg = config or ShotConfig()
    n = len(frames)
    if n == 0:
        return []
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    min_len = max(1, round(cfg.min_shot_s * fps))
    detector = AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_content_val=cfg.min_content_val,
                                min_scene_len=min_len, window_width=2)
    cuts: set[int] = set()
    dark = np.zeros(n, dtype=bool)
    for i, frame in enumerate(frames):
        small = _small(frame)
        dark[i] = float(small.mean()) < cfg.dark_threshold
        for tc in detector.process_frame(FrameTimecode(i, fps), small):
            cuts.add(int(tc.frame_num))
    for tc in detector.post_process(FrameTimecode(n - 1, fps)):
        cuts.add(int(tc.frame_num))

    shots: list[tuple[int, int]] = []
    bounds = sorted(c for c in cuts if 0 < c < n)
    for start, end in zip([0, *bounds], [*bounds, n], strict=True):
        s = start
        while s < end:  # split [start, end) at runs of dark frames, dropping them
            while s < end and dark[s]:
                s += 1
            e = s
            while e < end and not dark[e]:
                e += 1
            if e > s:
                shots.append((s, e))
            s = e
    return shots

"""Can a clip be posed at all? A check of the camera's motion that costs a fraction of a second.

Structure from motion needs the camera to *translate*: a static camera has no baseline, and a
camera that only rotates (a pan on a tripod, a tracking shot through a long lens whose parallax
is below a pixel) moves the image by a homography, from which no depth follows. SfM on such clips
is slow to fail: it tries initial pairs, focal lengths and seeds before giving up. Here the few
matches that decide it are measured first.

``check_camera_motion`` takes the SIFT features of a handful of frames spread over the clip
(``sample_frames``) and, for pairs of them at 1, 2, 4 and 8 sample steps apart (near pairs for
fast cameras, far pairs for slow ones), matches them and fits, with the same 1-pixel threshold,

* a fundamental matrix (the epipolar geometry: any rigid camera motion), and
* a homography (what a rotation about the camera centre, or a plane, produces).

Verdicts (``MotionCheck.verdict``), in this order:

* ``too_few_matches``: no pair shares ``MIN_PAIR_MATCHES`` matches (textureless, noise, or frames
  that do not overlap). Sampled frames are far apart in a long clip, so before this verdict is
  final ``estimate_poses`` adds a few frames right after sampled ones (``adjacent_frames``): a
  fast camera whose neighbouring frames match goes on to SfM;
* ``static``: the matched features of every pair move by less than ``MIN_MOTION_PX`` pixels of the
  input frames (median over each pair's matches, so a moving object in a static shot does not count);
* ``no_parallax``: in every pair whose features move, the homography explains at least
  ``MAX_HOMOGRAPHY_RATIO`` of the matches the epipolar geometry explains -- a rotation, or a
  single plane (a drone over flat ground, a facade filmed head-on: set ``poses.check_motion``
  false for such footage);
* ``moving``: otherwise; SfM can try.

Displacements are measured on the frames given (SfM's working size) and reported in pixels of
the input (``pixel_scale``), so ``static`` means the same at every working size. ``no_parallax``
does not: parallax below a pixel at a downscaled size can be several pixels at the native size,
and the pipeline checks again there before it rejects such a clip (``pipeline.stages``).
Random sampling is seeded (``cv2.setRNGSeed``): the same frames give the same verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .features import Features, match_features

__all__ = ["MAX_HOMOGRAPHY_RATIO", "MIN_MOTION_PX", "MIN_PAIR_MATCHES", "MotionCheck", "adjacent_frames",
           "check_camera_motion", "judge_motion", "pair_motion", "sample_frames"]

SAMPLES = 9
"""Frames the check looks at (evenly spread, first and last included)."""
MIN_PAIR_MATCHES = 30
"""Matches below which a pair of frames counts as not matched."""
MIN_MOTION_PX = 2.0
"""Median feature displacement (pixels of the input frames) below which a pair shows no motion."""
MAX_HOMOGRAPHY_RATIO = 0.9
"""Homography inliers / epipolar inliers at or above which a pair shows no parallax."""
FIT_THRESHOLD_PX = 1.0
"""RANSAC inlier threshold of both fits, pixels of the frames checked."""


@dataclass
class MotionCheck:
    """The verdict, a message that says why, and the measurements per pair of sampled frames."""

    verdict: str
    message: str
    max_displacement_px: float = 0.0
    min_homography_ratio: float = float("nan")
    pairs: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict == "moving"

    def to_dict(self) -> dict:
        return asdict(self)


def sample_frames(n: int, samples: int = SAMPLES) -> list[int]:
    """The frame indices the check looks at: ``samples`` spread evenly over ``n`` frames."""
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, min(samples, n))})


def pair_motion(x1: np.ndarray, x2: np.ndarray, pixel_scale: float = 1.0) -> dict:
    """What one pair of frames says about the camera, from matched points ``x1``, ``x2`` ((M, 2)
    pixels, M >= 8): the median displacement (input pixels), and the inliers of a fundamental
    matrix and of a homography fitted with the same threshold (seeded RANSAC)."""
    import cv2

    x1, x2 = np.asarray(x1, dtype=np.float64), np.asarray(x2, dtype=np.float64)
    displacement = float(np.median(np.linalg.norm(x2 - x1, axis=1))) * pixel_scale
    cv2.setRNGSeed(0)
    _, f_mask = cv2.findFundamentalMat(x1, x2, cv2.FM_RANSAC, FIT_THRESHOLD_PX, 0.999)
    cv2.setRNGSeed(0)
    _, h_mask = cv2.findHomography(x1, x2, cv2.RANSAC, FIT_THRESHOLD_PX)
    n_f = int(f_mask.sum()) if f_mask is not None else 0
    n_h = int(h_mask.sum()) if h_mask is not None else 0
    return {"matches": int(len(x1)), "displacement_px": displacement, "epipolar_inliers": n_f,
            "homography_inliers": n_h, "homography_ratio": n_h / n_f if n_f else 1.0}


def judge_motion(pairs: list[dict], what: str) -> MotionCheck:
    """The verdict (module docstring) from per-pair measurements (``pair_motion`` plus ``frames``;
    a pair with fewer than ``MIN_PAIR_MATCHES`` matches counts as not matched). ``what`` names the
    frames in the messages. The one rule both the check before SfM and the diagnosis of a failed
    SfM (``colmap_sfm.diagnose``) use."""
    matched = [p for p in pairs if p.get("matches", 0) >= MIN_PAIR_MATCHES and "displacement_px" in p]
    if not matched:
        return MotionCheck("too_few_matches", f"no two of {what} share {MIN_PAIR_MATCHES} matches (textureless, "
                           "noise, or frames that do not overlap)", pairs=pairs)
    moved = [p for p in matched if p["displacement_px"] >= MIN_MOTION_PX]
    max_disp = max(p["displacement_px"] for p in matched)
    if not moved:
        return MotionCheck("static", f"static camera: matched features move by at most {max_disp:.2f} px "
                           f"between any two of {what} (< {MIN_MOTION_PX} px), so there is no "
                           "baseline to triangulate from", max_disp, pairs=pairs)
    worst = min(moved, key=lambda p: p["homography_ratio"])
    ratio = worst["homography_ratio"]
    if ratio >= MAX_HOMOGRAPHY_RATIO:
        return MotionCheck("no_parallax", f"no parallax: in each of {len(moved)} pairs of {what} whose features move "
                           f"(up to {max_disp:.0f} px), a homography explains {100 * ratio:.0f}% or more of the matches "
                           "the epipolar geometry explains: a camera rotating in place (or a plane), from which "
                           "no depth follows", max_disp, ratio, pairs)
    return MotionCheck("moving", f"the camera translates: frames {worst['frames']} show parallax (homography "
                       f"explains {100 * ratio:.0f}% of the epipolar inliers)", max_disp, ratio, pairs)


def check_camera_motion(features: dict[int, Features], pixel_scale: float = 1.0) -> MotionCheck:
    """The verdict on the camera's motion from the features of sampled frames (see the module
    docstring). ``features``: frame index -> its features, at least two frames;
    ``pixel_scale``: input pixels per pixel of the frames the features were found on."""
    frames = sorted(features)
    if len(frames) < 2:
        raise ValueError(f"need the features of at least 2 frames, got {len(frames)}")
    pairs = []
    for stride in (1, 2, 4, 8):
        for k in range(0, len(frames) - stride, stride):
            i, j = frames[k], frames[k + stride]
            m = match_features(features[i], features[j])
            stats = ({"matches": int(len(m))} if len(m) < MIN_PAIR_MATCHES else
                     pair_motion(features[i].xy[m[:, 0]], features[j].xy[m[:, 1]], pixel_scale))
            pairs.append({"frames": [i, j], **stats})
    return judge_motion(pairs, f"the frames {frames}")


def adjacent_frames(sampled: list[int], n: int, count: int = 3) -> list[int]:
    """Frames right after the first sampled ones: when sampled frames far apart share nothing (a
    fast camera), whether neighbours match decides between "cannot be posed" and "let SfM try"."""
    return [s + 1 for s in sampled[:-1] if s + 1 < n and s + 1 not in sampled][:count]

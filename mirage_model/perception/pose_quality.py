"""Is a camera path from SfM usable? Checks that do not rely on the reprojection error alone.

A degenerate reconstruction can have a perfectly normal reprojection error (0.4-0.9 px on real
clips whose rotations were 10 degrees off): a handful of frames explained by a wild focal length
and a huge radial distortion, or two partial models glued at a jump. ``assess_poses`` measures

* the focal length against the image size (``fx / max(H, W)``; 0.25-4 spans 14-127 degrees of
  horizontal field of view) and the pixel aspect ``fy / fx``;
* the radial distortion SfM had to add;
* gaps: runs of frames SfM did not register (interpolated or missing);
* jumps: a camera step much longer than the clip's median step;
* the reprojection error, last.

and ``good_span`` -- the longest run of frames with poses, no long gap and no jump -- so that a clip
can be trimmed to its good part instead of being lost. Thresholds live in ``PoseThresholds``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["PoseQuality", "PoseThresholds", "assess_poses"]


@dataclass(frozen=True)
class PoseThresholds:
    min_focal: float = 0.25  # fx / max(H, W): about 127 degrees of horizontal field of view
    max_focal: float = 4.0  # about 14 degrees
    max_aspect_error: float = 0.1  # |fy / fx - 1| of an estimated (not given) camera
    max_distortion: float = 0.3  # |k| of the radial terms SfM estimated
    max_gap: int = 2  # unregistered frames in a row that may be interpolated over
    max_step_ratio: float = 6.0  # a step longer than this times the median step is a jump
    max_reprojection_px: float = 2.0


@dataclass
class PoseQuality:
    """The measurements and, in ``problems``, ``(reason, message)`` pairs; ``ok`` when none."""

    frames: int
    registered_fraction: float
    focal_ratio: float
    aspect: float
    distortion: float
    longest_gap: int
    max_step_ratio: float
    reprojection_px: float
    good_span: tuple[int, int]
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        d = asdict(self)
        d["good_span"] = list(self.good_span)
        d["problems"] = [f"{r}: {m}" for r, m in self.problems]
        return d


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` runs of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, v in enumerate(mask.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i))
            start = None
    return runs


def assess_poses(result, thresholds: PoseThresholds | None = None, *, intrinsics_given: bool = False) -> PoseQuality:
    """Quality of a ``PoseResult`` (see the module docstring). ``intrinsics_given``: K came from
    the user (a camera file), so focal length and aspect are not SfM's to get wrong."""
    th = thresholds or PoseThresholds()
    n = len(result)
    h, w = result.image_size
    K = result.K[0]
    fx, fy = float(K[0, 0]), float(K[1, 1])
    focal_ratio = fx / max(h, w)
    aspect = fy / fx if fx else float("nan")
    distortion = max((abs(d) for d in result.distortion), default=0.0)
    registered = result.registered.bool()

    # gaps: runs of unregistered frames (interpolated or not)
    gaps = _runs(~registered)
    longest_gap = max((e - s for s, e in gaps), default=0)

    # jumps: camera steps between consecutive frames with poses
    centers = result.c2w[:, :3, 3]
    valid = torch.isfinite(centers).all(dim=1)
    steps = torch.full((n,), float("nan"), dtype=torch.float64)  # steps[i]: from frame i-1 to i
    both = valid[1:] & valid[:-1]
    steps[1:][both] = (centers[1:][both] - centers[:-1][both]).norm(dim=1)
    finite = steps[torch.isfinite(steps)]
    # the typical step: the median, but never below a fifth of the 90th percentile (a camera that
    # stands still for half the clip and then moves has a median step of ~0)
    median = float(finite.median()) if len(finite) else 0.0
    typical = max(median, 0.2 * float(torch.quantile(finite, 0.9))) if len(finite) else 0.0
    floor = max(typical, 1e-6 * max(1.0, float(finite.max()) if len(finite) else 1.0))
    ratio = torch.where(torch.isfinite(steps), steps / floor, torch.zeros_like(steps))
    max_step_ratio = float(ratio.max()) if n > 1 else 0.0
    jump = ratio > th.max_step_ratio

    # the good span: frames with a pose, split at long gaps and at jumps
    usable = valid & registered
    for s, e in gaps:  # short gaps are interpolated over and stay usable
        if e - s <= th.max_gap and valid[s:e].all():
            usable[s:e] = True
    spans: list[tuple[int, int]] = []
    for s, e in _runs(usable):
        cut = [i for i in range(s + 1, e) if jump[i]]
        bounds = [s, *cut, e]
        spans += list(zip(bounds[:-1], bounds[1:], strict=True))
    good_span = max(spans, key=lambda se: (se[1] - se[0], -se[0]), default=(0, 0))

    q = PoseQuality(frames=n, registered_fraction=float(registered.float().mean()), focal_ratio=focal_ratio,
                    aspect=aspect, distortion=distortion, longest_gap=longest_gap,
                    max_step_ratio=max_step_ratio, reprojection_px=float(result.reprojection_error),
                    good_span=good_span)
    if not intrinsics_given:
        if not th.min_focal <= focal_ratio <= th.max_focal:
            fov = 2 * math.degrees(math.atan(w / (2 * fx))) if fx > 0 else float("nan")
            q.problems.append(("implausible_focal", f"focal length {fx:.0f} px is {focal_ratio:.2f} x max(H, W) "
                               f"({fov:.0f} deg horizontal field of view; plausible "
                               f"{th.min_focal}-{th.max_focal})"))
        if abs(aspect - 1.0) > th.max_aspect_error:
            q.problems.append(("implausible_focal", f"fy / fx = {aspect:.2f} for square pixels"))
        if distortion > th.max_distortion:
            q.problems.append(("degenerate_sfm", f"SfM needed a radial distortion of {distortion:.2f} "
                               f"(> {th.max_distortion}): a degenerate reconstruction"))
    if not bool(valid.all()):
        q.problems.append(("registration_gap", f"{int((~valid).sum())} frames at the clip's ends have no pose "
                           "(not registered, nothing to interpolate from)"))
    elif longest_gap > th.max_gap:
        q.problems.append(("registration_gap", f"{longest_gap} frames in a row without a registered pose "
                           f"(at most {th.max_gap} are interpolated)"))
    if max_step_ratio > th.max_step_ratio:
        i = int(ratio.argmax())
        q.problems.append(("path_jump", f"the camera jumps between frames {i - 1} and {i}: "
                           f"{max_step_ratio:.1f} x the median step"))
    if math.isfinite(q.reprojection_px) and q.reprojection_px > th.max_reprojection_px:
        q.problems.append(("high_reprojection_error", f"mean reprojection error {q.reprojection_px:.2f} px "
                           f"(> {th.max_reprojection_px})"))
    return q

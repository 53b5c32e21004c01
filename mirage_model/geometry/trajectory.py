"""Camera trajectories: a validated sequence of poses + intrinsics, builders and resampling.

Everything here uses the single convention of ``camera.py`` (OpenCV axes, c2w float64 4x4, K in
pixels of ``image_size``). World y points *down* in this project, so the horizontal plane is x-z
and "up" is -y; the builders place cameras accordingly.

Resampling treats the frame index as the arc parameter: frame ``j`` of ``M`` output frames sits at
input position ``s = j * (N - 1) / (M - 1)``; rotations are slerped, camera centres, intrinsics and
timestamps are interpolated linearly. Output frames that land exactly on an input frame are copied
bit for bit, so endpoints are kept and resampling to the same length is the identity.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .camera import (
    as_tensor,
    intrinsics_from_fov,
    invert_pose,
    look_at,
    scale_intrinsics,
    validate_image_size,
    validate_intrinsics,
    validate_pose,
)

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE: tuple[int, int] = (704, 1280)
"""(H, W) used by the builders when none is given: the generator's working resolution (docs/method.md §1)."""

__all__ = [
    "DEFAULT_IMAGE_SIZE",
    "OUTBOUND_KINDS",
    "PRESETS",
    "Trajectory",
    "dolly",
    "is_4n_plus_1",
    "make_trajectory",
    "orbit",
    "pan_and_return",
    "random_outbound_path",
    "resample",
    "resample_to_4n_plus_1",
    "there_and_back",
]


# ----------------------------------------------------------------------------------------------
# The trajectory container
# ----------------------------------------------------------------------------------------------
def _first_bad_frame(x: torch.Tensor) -> int | None:
    """Index of the first frame (leading dim) holding NaN/inf, or None."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    idx = torch.nonzero(bad).flatten()
    return int(idx[0]) if len(idx) else None


@dataclass(eq=False)
class Trajectory:
    """N camera frames in the project's convention.

    Attributes:
        c2w: (N, 4, 4) float64 camera-to-world poses, OpenCV axes.
        K: (N, 3, 3) float64 intrinsics in pixels of ``image_size``; a single (3, 3) is broadcast.
        image_size: (H, W) of the images the intrinsics belong to.
        timestamps: optional (N,) float64 seconds.

    Inputs may be numpy arrays, lists or tensors; they are copied to float64 tensors and validated
    (errors name the field and the frame index).
    """

    c2w: torch.Tensor
    K: torch.Tensor
    image_size: tuple[int, int]
    timestamps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.image_size = validate_image_size(self.image_size)
        c2w = as_tensor(self.c2w, torch.float64, "c2w").clone()
        if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4) or c2w.shape[0] == 0:
            raise ValueError(f"c2w: expected shape (N, 4, 4) with N >= 1, got {tuple(c2w.shape)}")
        n = c2w.shape[0]
        bad = _first_bad_frame(c2w)
        if bad is not None:
            raise ValueError(f"c2w[{bad}]: non-finite value(s) (NaN or inf)")
        self.c2w = validate_pose(c2w, "c2w")

        K = as_tensor(self.K, torch.float64, "K").clone()
        if tuple(K.shape) == (3, 3):
            K = K.expand(n, 3, 3).clone()
        if tuple(K.shape) != (n, 3, 3):
            raise ValueError(f"K: expected shape (3, 3) or ({n}, 3, 3), got {tuple(K.shape)}")
        bad = _first_bad_frame(K)
        if bad is not None:
            raise ValueError(f"K[{bad}]: non-finite value(s) (NaN or inf)")
        last_row = torch.tensor([0.0, 0.0, 1.0], dtype=K.dtype, device=K.device)
        bad_rows = torch.nonzero((K[:, 2] - last_row).abs().amax(dim=-1) > 1e-9).flatten()
        if len(bad_rows):
            raise ValueError(f"K[{int(bad_rows[0])}]: last row must be [0, 0, 1]")
        self.K = validate_intrinsics(K, "K")

        if self.timestamps is not None:
            ts = as_tensor(self.timestamps, torch.float64, "timestamps").clone()
            if tuple(ts.shape) != (n,):
                raise ValueError(f"timestamps: expected shape ({n},), got {tuple(ts.shape)}")
            bad = _first_bad_frame(ts[:, None])
            if bad is not None:
                raise ValueError(f"timestamps[{bad}]: non-finite value")
            self.timestamps = ts

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def w2c(self) -> torch.Tensor:
        """(N, 4, 4) world-to-camera poses (exact rigid inverse of ``c2w``)."""
        return invert_pose(self.c2w)

    @property
    def centers(self) -> torch.Tensor:
        """(N, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3].clone()

    def select(self, indices: Sequence[int] | torch.Tensor | slice | int) -> Trajectory:
        """A new trajectory holding the frames at ``indices`` (ints, slice, bool mask or tensor)."""
        if isinstance(indices, slice):
            idx = torch.arange(len(self))[indices]
        elif isinstance(indices, int):
            idx = torch.tensor([indices])
        else:
            idx = torch.as_tensor(indices)
            if idx.dtype == torch.bool:
                idx = torch.nonzero(idx).flatten()
            idx = idx.to(torch.long).reshape(-1)
        ts = None if self.timestamps is None else self.timestamps[idx]
        return Trajectory(self.c2w[idx], self.K[idx], self.image_size, ts)

    def resized(self, new_image_size: tuple[int, int]) -> Trajectory:
        """The same cameras for images of ``new_image_size`` (H, W); only K changes."""
        new_size = validate_image_size(new_image_size, "new_image_size")
        K = scale_intrinsics(self.K, self.image_size, new_size)
        return Trajectory(self.c2w, K, new_size, self.timestamps)

    def to_4n_plus_1(self, n_frames: int | None = None) -> Trajectory:
        """Resample to a 4n+1 frame count (the Wan VAE's causal temporal layout); see ``resample``."""
        return resample_to_4n_plus_1(self, n_frames)


# ----------------------------------------------------------------------------------------------
# Rotation <-> quaternion (internal; quaternions are (w, x, y, z), float64)
# ----------------------------------------------------------------------------------------------
def _matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotations -> (..., 4) unit quaternions (w, x, y, z), w >= 0.

    Shepperd's method: pick the largest of (trace, R00, R11, R22) as the pivot so the square root
    is never taken of a small number, which keeps it accurate near 180-degree rotations.
    """
    r = R.reshape(-1, 3, 3)
    m00, m01, m02 = r[:, 0, 0], r[:, 0, 1], r[:, 0, 2]
    m10, m11, m12 = r[:, 1, 0], r[:, 1, 1], r[:, 1, 2]
    m20, m21, m22 = r[:, 2, 0], r[:, 2, 1], r[:, 2, 2]
    trace = m00 + m11 + m22
    # Four candidate solutions, one per pivot; each row is 4 * pivot_component * q.
    cand = torch.stack([
        torch.stack([1 + trace, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22], dim=-1),
    ], dim=1)  # (B, 4 candidates, 4)
    pivots = torch.stack([trace, m00, m11, m22], dim=-1)
    best = pivots.argmax(dim=-1)
    q = cand[torch.arange(len(r)), best]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    return q.reshape(*R.shape[:-2], 4)


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), normalised here -> (..., 3, 3) rotation matrices."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def _slerp(q0: torch.Tensor, q1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of (B, 4) unit quaternions at fractions t (B,), shortest arc."""
    dot = (q0 * q1).sum(dim=-1)
    q1 = torch.where(dot[:, None] < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    near = sin_theta < 1e-8  # (almost) identical rotations: plain lerp is exact enough
    safe_sin = torch.where(near, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    w1 = torch.where(near, t, torch.sin(t * theta) / safe_sin)
    q = w0[:, None] * q0 + w1[:, None] * q1
    return q / q.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------
def is_4n_plus_1(n_frames: int) -> bool:
    """True for 1, 5, 9, ...: frame counts the causal Wan VAE accepts."""
    return n_frames >= 1 and (n_frames - 1) % 4 == 0


def resample(traj: Trajectory, n_frames: int) -> Trajectory:
    """Resample ``traj`` to ``n_frames`` frames spread evenly over its frame-index range.

    Rotations: quaternion slerp; camera centres, K and timestamps: linear. Output frames that fall
    exactly on an input frame (always the two endpoints) are copied unchanged.
    """
    n_frames = int(n_frames)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    n_in = len(traj)
    if n_in == 1 or n_frames == 1:
        return traj.select([0] * n_frames)
    s = torch.arange(n_frames, dtype=torch.float64) * (n_in - 1) / (n_frames - 1)
    i0 = torch.clamp(torch.floor(s).long(), max=n_in - 2)
    t = s - i0.to(torch.float64)
    i1 = i0 + 1

    quats = _matrix_to_quaternion(traj.c2w[:, :3, :3])
    c2w = torch.zeros(n_frames, 4, 4, dtype=torch.float64)
    c2w[:, :3, :3] = _quaternion_to_matrix(_slerp(quats[i0], quats[i1], t))
    tw = t[:, None]
    c2w[:, :3, 3] = (1 - tw) * traj.c2w[i0, :3, 3] + tw * traj.c2w[i1, :3, 3]
    c2w[:, 3, 3] = 1.0
    K = (1 - tw[..., None]) * traj.K[i0] + tw[..., None] * traj.K[i1]
    ts = None
    if traj.timestamps is not None:
        ts = (1 - t) * traj.timestamps[i0] + t * traj.timestamps[i1]

    # Frames that coincide with input frames are copied exactly (endpoints, same-length identity).
    for mask, src in ((t == 0, i0), (t == 1, i1)):
        c2w[mask] = traj.c2w[src[mask]]
        K[mask] = traj.K[src[mask]]
        if ts is not None:
            ts[mask] = traj.timestamps[src[mask]]
    return Trajectory(c2w, K, traj.image_size, ts)


def resample_to_4n_plus_1(traj: Trajectory, n_frames: int | None = None) -> Trajectory:
    """Resample to ``n_frames`` (must be 4n+1) or, when None, to the smallest 4n+1 >= len(traj)."""
    if n_frames is None:
        n_frames = 4 * math.ceil((len(traj) - 1) / 4) + 1
    if not is_4n_plus_1(int(n_frames)):
        raise ValueError(f"n_frames must be of the form 4n+1 (1, 5, 9, ..., 33, ..., 81), got {n_frames}")
    if int(n_frames) == len(traj):
        return traj
    return resample(traj, int(n_frames))


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------
def _builder_intrinsics(image_size: tuple[int, int], fov_x_deg: float, K) -> torch.Tensor:
    """K given (3,3 or N,3,3, pixels of image_size) or a centred pinhole with ``fov_x_deg``."""
    if K is not None:
        return as_tensor(K, torch.float64, "K")
    return intrinsics_from_fov(fov_x_deg, image_size)


def _fractions(n_frames: int) -> torch.Tensor:
    """(n,) evenly spaced fractions 0 .. 1 inclusive (all 0 for a single frame)."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if n_frames == 1:
        return torch.zeros(1, dtype=torch.float64)
    return torch.arange(n_frames, dtype=torch.float64) / (n_frames - 1)


def _yaw_rotation(degrees: float) -> torch.Tensor:
    """3x3 rotation about world y (down); positive turns the +z view towards +x (to the right)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def orbit(
    n_frames: int,
    radius: float,
    center: Sequence[float] = (0.0, 0.0, 0.0),
    height: float = 0.0,
    degrees: float = 360.0,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_x_deg: float = 60.0,
    K=None,
) -> Trajectory:
    """Cameras on a horizontal circle (x-z plane) around ``center``, all looking at it.

    Frame 0 sits at ``center + (0, -height, -radius)`` looking along +z; the angle runs from 0 to
    ``degrees`` inclusive (so a 360-degree orbit ends where it started: a closed loop). Positive
    degrees move the camera towards its right. ``height`` is elevation above the centre (world y
    is down, hence the minus sign).
    """
    center_t = as_tensor(center, name="center")
    angles = _fractions(n_frames) * math.radians(degrees)
    poses = []
    for a in angles.tolist():
        eye = center_t + torch.tensor([radius * math.sin(a), -height, -radius * math.cos(a)],
                                      dtype=torch.float64)
        poses.append(look_at(eye, center_t))
    return Trajectory(torch.stack(poses), _builder_intrinsics(image_size, fov_x_deg, K), image_size)


def dolly(
    n_frames: int,
    distance: float,
    start: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (0.0, 0.0, 1.0),
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_x_deg: float = 60.0,
    K=None,
) -> Trajectory:
    """A camera looking along ``direction`` that moves ``distance`` along it, starting at ``start``.

    ``direction`` must not be vertical (parallel to world y) since the camera keeps -y as up.
    """
    start_t = as_tensor(start, name="start")
    dir_t = as_tensor(direction, name="direction")
    if float(dir_t.norm()) < 1e-12:
        raise ValueError("dolly: direction must be non-zero")
    dir_t = dir_t / dir_t.norm()
    rot = look_at(torch.zeros(3, dtype=torch.float64), dir_t)[:3, :3]
    c2w = torch.eye(4, dtype=torch.float64).repeat(n_frames, 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = start_t + _fractions(n_frames)[:, None] * distance * dir_t
    return Trajectory(c2w, _builder_intrinsics(image_size, fov_x_deg, K), image_size)


def pan_and_return(
    n_frames: int,
    yaw_degrees: float = 90.0,
    start: Sequence[float] = (0.0, 0.0, 0.0),
    translation: Sequence[float] = (0.0, 0.0, 0.0),
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    fov_x_deg: float = 60.0,
    K=None,
) -> Trajectory:
    """Look away and come back: yaw 0 -> ``yaw_degrees`` -> 0 about world y, starting along +z.

    The camera also moves from ``start`` to ``start + translation`` and back. The return half
    revisits the outgoing poses exactly: frame ``i`` and frame ``n - 1 - i`` are bit-identical (for
    any ``n``; with odd ``n`` the middle frame is the single turning point, with even ``n`` the two
    middle frames both sit at the full yaw). Positive yaw turns right.
    """
    start_t = as_tensor(start, name="start")
    trans_t = as_tensor(translation, name="translation")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    half = (n_frames - 1) // 2  # index of the (first) turning-point frame
    c2w = torch.eye(4, dtype=torch.float64).repeat(n_frames, 1, 1)
    for i in range(n_frames):
        mirror = n_frames - 1 - i
        if mirror < i:  # return half: a copy of the outgoing frame, hence exactly mirrored
            c2w[i] = c2w[mirror]
            continue
        p = i / half if half else 0.0
        c2w[i, :3, :3] = _yaw_rotation(p * yaw_degrees)
        c2w[i, :3, 3] = start_t + p * trans_t
    return Trajectory(c2w, _builder_intrinsics(image_size, fov_x_deg, K), image_size)


def there_and_back(outgoing: Trajectory) -> Trajectory:
    """``outgoing`` followed by the same poses in reverse: N cameras -> 2N - 1 (frame i and
    2N - 2 - i are identical), the closed-loop revisit path for any one-way trajectory."""
    back = torch.arange(len(outgoing) - 2, -1, -1)
    return Trajectory(torch.cat([outgoing.c2w, outgoing.c2w[back]]), torch.cat([outgoing.K, outgoing.K[back]]),
                      outgoing.image_size)


OUTBOUND_KINDS = ("pan", "orbit", "dolly")


def random_outbound_path(rng, n_frames: int, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE) -> tuple[Trajectory, str]:
    """One fast one-way camera path from a random place and heading in the synthetic room
    (``rng``: a ``numpy.random.Generator``): a pan of 50-100 degrees (with up to 0.3 of sideways
    and forward drift), an orbit of 40-80 degrees (radius 0.8-1.5 around a point 1.2 ahead) or a
    0.8-1.5 dolly, each to either side, then turned by a random heading and moved by up to
    (0.6, 0.3, 0.6). Returns (trajectory, kind); ``there_and_back`` closes it into a revisit path.
    Deterministic in the state of ``rng``."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    kind = int(rng.integers(3))
    if kind == 0:
        full = pan_and_return(2 * n_frames - 1, yaw_degrees=sign * rng.uniform(50, 100),
                              translation=(rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)), image_size=image_size)
        out = Trajectory(full.c2w[:n_frames], full.K[:n_frames], image_size)
    elif kind == 1:
        out = orbit(n_frames, radius=rng.uniform(0.8, 1.5), degrees=sign * rng.uniform(40, 80), center=(0, 0, 1.2),
                    image_size=image_size)
    else:
        out = dolly(n_frames, distance=sign * rng.uniform(0.8, 1.5), image_size=image_size)
    move = torch.eye(4, dtype=torch.float64)
    move[:3, :3] = _yaw_rotation(rng.uniform(0, 360))
    move[:3, 3] = torch.tensor([rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.3), rng.uniform(-0.6, 0.6)])
    return Trajectory(move @ out.c2w, out.K, image_size), OUTBOUND_KINDS[kind]


# ----------------------------------------------------------------------------------------------
# Named presets
# ----------------------------------------------------------------------------------------------
PRESETS: dict[str, functools.partial] = {
    "orbit": functools.partial(orbit, radius=0.5, degrees=60.0),
    "dolly": functools.partial(dolly, distance=1.0),
    "pan-and-return": functools.partial(pan_and_return, yaw_degrees=60.0, translation=(0.3, 0.0, 0.0)),
}
"""The named camera paths (``mirage trajectory``, ``mirage generate --trajectory``, the
``trajectory`` of a ``mirage generate-batch`` item): name -> builder with its defaults bound
(``PRESETS[name].keywords``). Build them with ``make_trajectory``."""


def make_trajectory(name: str, frames: int, /, image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
                    **params: Any) -> Trajectory:
    """The preset trajectory ``name`` with ``frames`` cameras at ``image_size``.

    Presets and their defaults (scene units are those of the synthetic scene / the first frame's
    depth; every other keyword of the builder keeps the builder's default, e.g. ``fov_x_deg=60``):

    * ``"orbit"`` -- ``orbit(radius=0.5, degrees=60.0)``: a 60-degree arc of a horizontal circle
      of radius 0.5 around the point the first camera looks at (``center``, default the origin),
      all cameras looking at it.
    * ``"dolly"`` -- ``dolly(distance=1.0)``: move 1.0 straight ahead along +z (``direction``),
      looking along it.
    * ``"pan-and-return"`` -- ``pan_and_return(yaw_degrees=60.0, translation=(0.3, 0.0, 0.0))``:
      turn 60 degrees to the right while moving 0.3 to the right, then come back along the same
      poses (frame ``i`` and ``frames - 1 - i`` are identical: the revisit test).

    ``params`` override the defaults and may set any other keyword of the preset's builder
    (``center``, ``height``, ``start``, ``direction``, ``fov_x_deg``, ``K``, ...).

    Raises:
        ValueError: unknown preset name, or a parameter the preset's builder does not take
            (both named in the message); the builders' own ValueErrors (e.g. ``frames < 1``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown trajectory preset {name!r}; choose from {', '.join(PRESETS)}")
    preset = PRESETS[name]
    allowed = [p for p in inspect.signature(preset.func).parameters if p not in ("n_frames", "image_size")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"trajectory preset {name!r}: unknown parameter(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")
    return preset(frames, image_size=image_size, **params)

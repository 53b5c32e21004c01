"""Synthetic scenes with exact ground truth, rendered by vectorised ray casting in pure torch.

A scene is an axis-aligned room seen from the inside (optionally without a ceiling, so rays that
leave upward see sky), a few axis-aligned boxes (furniture) and an optional moving sphere. Every
pixel's ray goes through the pixel *centre* in the convention of ``geometry/camera.py`` (OpenCV
axes, x right / y down / z forward, centre of column ``j`` at ``x = j``), so the returned depth,
points and masks are exact and can be checked against ``camera.backproject_depth`` and
``camera.project_points``. The world is y-down too: the floor is the plane ``y = +half_y``.

Why the texture looks the way it does: the renders feed SfM (SIFT), multi-view stereo and optical
flow tests, so every surface carries a procedural texture that is

* attached to the surface (a function of the hit point's 2D coordinates on its face, in world
  units), hence identical from every view; shading is Lambertian from a fixed light and thus
  view-independent too (photo-consistent scenes, no specular effects);
* rich everywhere (multi-octave value noise on rotated lattices, cells 7.5-60 cm) with sharp
  edges (per-tile random colours on a coarse grid, plus irregular "paint blobs") that give
  distinctive, non-repetitive corners;
* deterministic from ``SyntheticScene.seed``; every primitive face has its own palette and its
  own part of the noise lattice.

Ray/geometry math runs in float64, texturing in float32; outputs are float32 / bool / int32.
"""

from __future__ import annotations

import colorsys
import functools
import logging
import math
import random
from dataclasses import dataclass, field, fields

import torch

from mirage_model.geometry.camera import (
    as_tensor,
    pixel_grid,
    validate_image_size,
    validate_intrinsics,
    validate_pose,
)

logger = logging.getLogger(__name__)

SKY_ID = -1
"""``surface_id`` of pixels that hit nothing (sky through an open ceiling)."""
ROOM_ID = 0
"""``surface_id`` of the room's walls, floor and ceiling; box ``i`` is ``i + 1``, the sphere
``len(boxes) + 1`` (``SyntheticScene.moving_id``)."""

LIGHT_DIR = (0.35, -1.0, 0.25)
"""Direction *towards* the light (world, y down: the light is above). Normalised on use."""
AMBIENT, DIFFUSE = 0.5, 0.5

_NOISE_SIZE = 256  # lattice side of the shared value-noise table (power of two)
# Texture layers: (cell size in metres, rotation in degrees). 0-3: fbm octaves, 4: paint blobs,
# 5: second palette mix.
_LAYERS = ((0.6, 0.0), (0.3, 27.0), (0.15, 61.0), (0.075, 103.0), (0.2, 149.0), (0.45, 11.0))
_FBM_WEIGHTS = (0.2, 0.25, 0.3, 0.25)
_BLOB_THRESHOLD = 0.64
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------------------------
def _vec3(x, name: str) -> tuple[float, float, float]:
    t = as_tensor(x, torch.float64, name).flatten()
    if t.numel() != 3 or not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected 3 finite numbers, got {x!r}")
    return (float(t[0]), float(t[1]), float(t[2]))


@dataclass(frozen=True)
class Box:
    """Axis-aligned solid box (world units); ``texture_seed`` varies its texture/palette."""

    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    texture_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", _vec3(self.center, "Box.center"))
        object.__setattr__(self, "half_size", _vec3(self.half_size, "Box.half_size"))
        if min(self.half_size) <= 0:
            raise ValueError(f"Box.half_size must be positive, got {self.half_size}")


@dataclass(frozen=True)
class MovingSphere:
    """A textured sphere whose centre at time ``t`` (seconds) is
    ``start + velocity * t + amplitude * sin(2 pi frequency t)``; the texture moves with it."""

    start: tuple[float, float, float]
    velocity: tuple[float, float, float]
    radius: float
    amplitude: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frequency: float = 0.0
    texture_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("start", "velocity", "amplitude"):
            object.__setattr__(self, name, _vec3(getattr(self, name), f"MovingSphere.{name}"))
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"MovingSphere.radius must be positive, got {self.radius}")

    def center_at(self, time: float) -> torch.Tensor:
        """(3,) float64 world position of the centre at ``time`` seconds."""
        s = math.sin(2.0 * math.pi * self.frequency * float(time))
        return torch.tensor([a + v * time + m * s for a, v, m in
                             zip(self.start, self.velocity, self.amplitude)], dtype=torch.float64)


@dataclass(frozen=True)
class SyntheticScene:
    """A room (seen from inside) with boxes and an optional moving sphere.

    The camera is meant to be inside the room and outside the boxes. ``open_ceiling`` removes the
    ceiling (the face ``y = center_y - half_y``): rays leaving through it see sky.
    ``texture_scale`` multiplies every texture's feature size (1: the detailed textures SfM and
    stereo are tested on; 2-3: smoother surfaces a small VAE reconstructs, the CPU "world").
    """

    room_half_size: tuple[float, float, float] = (4.0, 1.5, 4.0)
    boxes: tuple[Box, ...] = ()
    moving: MovingSphere | None = None
    open_ceiling: bool = False
    seed: int = 0
    room_center: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))
    texture_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "room_half_size", _vec3(self.room_half_size, "room_half_size"))
        object.__setattr__(self, "room_center", _vec3(self.room_center, "room_center"))
        object.__setattr__(self, "boxes", tuple(self.boxes))
        if min(self.room_half_size) <= 0:
            raise ValueError(f"room_half_size must be positive, got {self.room_half_size}")
        if not self.texture_scale > 0:
            raise ValueError(f"texture_scale must be positive, got {self.texture_scale}")

    @property
    def moving_id(self) -> int:
        """``surface_id`` of the moving sphere."""
        return len(self.boxes) + 1

    @property
    def floor_y(self) -> float:
        """World y of the floor plane (y is down)."""
        return self.room_center[1] + self.room_half_size[1]


def default_scene(seed: int = 0, moving_object: bool = False, open_ceiling: bool = False,
                  texture_scale: float = 1.0) -> SyntheticScene:
    """An 8 x 3 x 8 m room (floor at y = +1.5) with five pieces of furniture on the floor.

    The layout is fixed (the seed only changes textures): from a camera near the origin looking
    horizontally in any direction one sees walls and boxes at depths ~1.5-5.7 m, and the ball of
    radius 2 m around the origin is free. With ``moving_object`` a ball of radius 0.35 rolls
    along +x on the floor in front of the +z view (x = -1.2 + 0.9 t, z = 2.6).
    """
    floor = 1.5

    def on_floor(x: float, z: float, half: tuple[float, float, float], tex: int) -> Box:
        return Box((x, floor - half[1], z), half, texture_seed=tex)

    boxes = (
        on_floor(2.3, 1.8, (0.6, 0.45, 0.5), 11),    # low table, front right
        on_floor(-2.4, 2.2, (0.45, 0.9, 0.45), 12),  # tall cabinet, front left
        on_floor(-2.0, -2.1, (0.7, 0.35, 0.55), 13),  # low chest, back left
        on_floor(2.6, -1.9, (0.5, 1.1, 0.8), 14),    # tall shelf, back right
        on_floor(0.2, -2.9, (0.55, 0.65, 0.4), 15),  # box, back centre
    )
    moving = None
    if moving_object:
        r = 0.35
        moving = MovingSphere(start=(-1.2, floor - r, 2.6), velocity=(0.9, 0.0, 0.0), radius=r,
                              texture_seed=21)
    return SyntheticScene(room_half_size=(4.0, floor, 4.0), boxes=boxes, moving=moving,
                          open_ceiling=open_ceiling, seed=int(seed), texture_scale=float(texture_scale))


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
@dataclass
class RenderOutput:
    """One rendered view (or N stacked views: add a leading N to every shape).

    rgb: (H, W, 3) float32 in [0, 1]. depth: (H, W) float32 camera z-depth (not ray length) of the
    nearest surface, 0 for sky. dynamic_mask: (H, W) bool, the moving sphere is the nearest
    surface. sky_mask: (H, W) bool. surface_id: (H, W) int32 (``SKY_ID``, ``ROOM_ID``, box
    ``i + 1``, ``scene.moving_id``). points: (H, W, 3) float32 world hit points (0 for sky).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    dynamic_mask: torch.Tensor
    sky_mask: torch.Tensor
    surface_id: torch.Tensor
    points: torch.Tensor


def _camera_rays(K: torch.Tensor, c2w: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Origin (3,) and world directions (H*W, 3) scaled so the camera-z component is 1.

    With that scaling the ray parameter ``t`` of a hit *is* its camera z-depth.
    """
    grid = pixel_grid(h, w, torch.float64).reshape(-1, 2)
    y = (grid[:, 1] - K[1, 2]) / K[1, 1]
    x = (grid[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    return c2w[:3, 3].clone(), cam @ c2w[:3, :3].T


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d with exact zeros replaced by a huge finite value (slab tests stay NaN-free)."""
    return 1.0 / torch.where(d == 0, torch.full_like(d, 1e-300), d)


def _hit_room(o: torch.Tensor, inv_d: torch.Tensor, d: torch.Tensor, scene: SyntheticScene) -> torch.Tensor:
    """Ray parameter where each ray leaves the room (inf when it leaves through an open ceiling)."""
    c = torch.tensor(scene.room_center, dtype=torch.float64)
    hs = torch.tensor(scene.room_half_size, dtype=torch.float64)
    t1 = (c - hs - o) * inv_d
    t2 = (c + hs - o) * inv_d
    t_exit, axis = torch.maximum(t1, t2).min(dim=-1)
    t_entry = torch.minimum(t1, t2).amax(dim=-1)
    valid = (t_exit > _EPS) & (t_entry <= t_exit)
    if scene.open_ceiling:
        valid &= ~((axis == 1) & (d[:, 1] < 0))
    return torch.where(valid, t_exit, torch.full_like(t_exit, math.inf))


def _hit_box(o: torch.Tensor, inv_d: torch.Tensor, box: Box) -> torch.Tensor:
    """Ray parameter of the entry point into ``box`` (inf if missed or behind the camera)."""
    c = torch.tensor(box.center, dtype=torch.float64)
    hs = torch.tensor(box.half_size, dtype=torch.float64)
    t1 = (c - hs - o) * inv_d
    t2 = (c + hs - o) * inv_d
    t_entry = torch.minimum(t1, t2).amax(dim=-1)
    t_exit = torch.maximum(t1, t2).amin(dim=-1)
    valid = (t_entry > _EPS) & (t_entry <= t_exit)
    return torch.where(valid, t_entry, torch.full_like(t_entry, math.inf))


def _hit_sphere(o: torch.Tensor, d: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Ray parameter of the nearest sphere hit in front of the camera (inf if none)."""
    oc = o - center
    a = (d * d).sum(-1)
    b = d @ oc
    c = float(oc @ oc) - radius * radius
    disc = b * b - a * c
    sq = disc.clamp_min(0).sqrt()
    t_near = (-b - sq) / a
    t_far = (-b + sq) / a
    t = torch.where(t_near > _EPS, t_near, t_far)
    valid = (disc >= 0) & (t > _EPS)
    return torch.where(valid, t, torch.full_like(t, math.inf))


@functools.lru_cache(maxsize=8)
def _noise_table(seed: int) -> torch.Tensor:
    """Flat (N*N,) float32 lattice of uniform values shared by all primitives of a scene."""
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.rand(_NOISE_SIZE * _NOISE_SIZE, generator=gen, dtype=torch.float32)


def _hsv(h: float, s: float, v: float) -> list[float]:
    return list(colorsys.hsv_to_rgb(h % 1.0, s, v))


@functools.lru_cache(maxsize=32)
def _face_params(scene: SyntheticScene) -> dict[str, torch.Tensor]:
    """Per (primitive, face) texture parameters, indexed by ``key = primitive * 6 + face``.

    Cached per scene (scenes are frozen and hashable); the returned tensors are never modified.

    Returns palette (n, 4, 3) [dark, light, tile colour, blob colour], offsets (n, L + 2, 2) int64
    lattice offsets (L noise layers plus two tile layers), tile (n,) tile size in metres.
    """
    n_prim = len(scene.boxes) + 2
    texture_seeds = [0] + [b.texture_seed for b in scene.boxes] + [
        scene.moving.texture_seed if scene.moving is not None else 0]
    palette, offsets, tile = [], [], []
    for p in range(n_prim):
        rng = random.Random(f"mirage-synthetic/{scene.seed}/{p}/{texture_seeds[p]}")
        hue = rng.random()
        prim_tile = rng.uniform(0.3, 0.55)
        for _face in range(6):
            h = hue + rng.uniform(-0.12, 0.12)
            sat = rng.uniform(0.25, 0.65)
            palette.append([
                _hsv(h, sat, rng.uniform(0.1, 0.25)),
                _hsv(h + rng.uniform(0.04, 0.12), sat * 0.8, rng.uniform(0.75, 0.95)),
                _hsv(h + 0.5 + rng.uniform(-0.1, 0.1), rng.uniform(0.3, 0.7), rng.uniform(0.5, 0.9)),
                _hsv(h + rng.uniform(0.25, 0.4), rng.uniform(0.4, 0.9),
                     rng.choice((rng.uniform(0.05, 0.15), rng.uniform(0.9, 1.0)))),
            ])
            offsets.append([[rng.randrange(_NOISE_SIZE), rng.randrange(_NOISE_SIZE)]
                            for _ in range(len(_LAYERS) + 2)])
            tile.append(prim_tile * rng.uniform(0.85, 1.15))
    return {
        "palette": torch.tensor(palette, dtype=torch.float32),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "tile": torch.tensor(tile, dtype=torch.float32),
    }


def _lattice(table: torch.Tensor, iu: torch.Tensor, iv: torch.Tensor) -> torch.Tensor:
    """Table values at integer lattice coordinates (wrapped to the table size)."""
    m = _NOISE_SIZE - 1
    return table.take((iv & m) * _NOISE_SIZE + (iu & m))


def _value_noise(table: torch.Tensor, u: torch.Tensor, v: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
    """Smoothstep-interpolated value noise in [0, 1] at lattice coordinates (u, v); off: (P, 2)."""
    fu, fv = torch.floor(u), torch.floor(v)
    su, sv = u - fu, v - fv
    su = su * su * (3.0 - 2.0 * su)
    sv = sv * sv * (3.0 - 2.0 * sv)
    iu = fu.long() + off[:, 0]
    iv = fv.long() + off[:, 1]
    a, b = _lattice(table, iu, iv), _lattice(table, iu + 1, iv)
    c, d = _lattice(table, iu, iv + 1), _lattice(table, iu + 1, iv + 1)
    top = torch.lerp(a, b, su)
    return torch.lerp(top, torch.lerp(c, d, su), sv)


def _shade_surfaces(scene: SyntheticScene, points: torch.Tensor, sid: torch.Tensor,
                    centers: torch.Tensor, halves: torch.Tensor) -> torch.Tensor:
    """Colour (P, 3) float32 of hit points (P, 3) float64 on primitives ``sid`` (P,) >= 0.

    The face is the axis where the normalised local coordinate |p - c| / half is largest (1 on a
    box or room face; the dominant normal axis on the sphere, i.e. a cube-map projection); the
    texture is a function of the two remaining local coordinates in metres.
    """
    params = _face_params(scene)
    table = _noise_table(scene.seed)
    local64 = points - centers[sid]
    q = local64 / halves[sid]
    axis = q.abs().argmax(dim=-1)
    positive = q.gather(1, axis[:, None])[:, 0] > 0
    key = sid * 6 + axis * 2 + positive.long()
    local = local64.float()
    uv_axes = torch.tensor([[1, 2], [0, 2], [0, 1]], dtype=torch.int64)[axis]
    uv = local.gather(1, uv_axes)
    u, v = uv[:, 0], uv[:, 1]

    offsets = params["offsets"][key]  # (P, L + 2, 2)
    layers = []
    for i, (cell, angle) in enumerate(_LAYERS):
        cell = cell * scene.texture_scale
        ca, sa = math.cos(math.radians(angle)) / cell, math.sin(math.radians(angle)) / cell
        layers.append(_value_noise(table, ca * u - sa * v, sa * u + ca * v, offsets[:, i]))
    fbm = sum(wt * n for wt, n in zip(_FBM_WEIGHTS, layers))
    fbm = ((fbm - 0.5) * 2.6 + 0.5).clamp(0.0, 1.0)

    pal = params["palette"][key]  # (P, 4, 3)
    col = torch.lerp(pal[:, 0], pal[:, 1], fbm[:, None])
    col = torch.lerp(col, pal[:, 2], 0.35 * layers[5][:, None])
    tile = params["tile"][key] * scene.texture_scale
    tu, tv = torch.floor(u / tile).long(), torch.floor(v / tile).long()
    n_l = len(_LAYERS)
    r1 = _lattice(table, tu + offsets[:, n_l, 0], tv + offsets[:, n_l, 1])
    r2 = _lattice(table, tu + offsets[:, n_l + 1, 0], tv + offsets[:, n_l + 1, 1])
    col = torch.lerp(col, pal[:, 2], (0.5 * r1)[:, None]) * (0.7 + 0.6 * r2)[:, None]
    blob = (layers[4] > _BLOB_THRESHOLD)[:, None]
    col = torch.where(blob, torch.lerp(col, pal[:, 3], 0.65), col)

    # Lambertian shading, view-independent: outward normals for boxes/sphere, inward for the room.
    normal = torch.zeros_like(local)
    sign = torch.where(positive, 1.0, -1.0) * torch.where(sid == ROOM_ID, -1.0, 1.0)
    normal.scatter_(1, axis[:, None], sign[:, None].float())
    if scene.moving is not None:
        on_sphere = (sid == scene.moving_id)[:, None]
        normal = torch.where(on_sphere, local / scene.moving.radius, normal)
    light = torch.tensor(LIGHT_DIR, dtype=torch.float32)
    light = light / light.norm()
    shade = AMBIENT + DIFFUSE * (normal @ light).clamp_min(0.0)
    return (col * shade[:, None]).clamp(0.0, 1.0)


def _sky_colour(d: torch.Tensor) -> torch.Tensor:
    """Smooth sky gradient (P, 3) float32 from ray directions (P, 3): hazy horizon to blue zenith."""
    elevation = (-d[:, 1] / d.norm(dim=-1)).clamp(0.0, 1.0).float()[:, None]
    horizon = torch.tensor([0.86, 0.9, 0.95])
    zenith = torch.tensor([0.25, 0.45, 0.85])
    return torch.lerp(horizon, zenith, elevation.sqrt())


def render(scene: SyntheticScene, K, c2w, image_size: tuple[int, int], time: float = 0.0) -> RenderOutput:
    """Ray-cast ``scene`` from one pinhole camera at ``time`` seconds.

    Args:
        scene: the scene.
        K: (3, 3) intrinsics in pixels of ``image_size`` (torch or numpy).
        c2w: (4, 4) OpenCV camera-to-world pose (torch or numpy).
        image_size: (H, W).
        time: seconds; only moves the sphere.
    Returns:
        RenderOutput with (H, W, ...) tensors; rays go through pixel centres.
    """
    h, w = validate_image_size(image_size)
    K = validate_intrinsics(K, "K").cpu()
    c2w = validate_pose(c2w, "c2w").cpu()
    if K.shape != (3, 3) or c2w.shape != (4, 4):
        raise ValueError(f"render: expected K (3, 3) and c2w (4, 4), got {tuple(K.shape)}, {tuple(c2w.shape)}")
    o, d = _camera_rays(K, c2w, h, w)
    inv_d = _safe_inverse(d)

    t = _hit_room(o, inv_d, d, scene)
    sid = torch.full_like(t, ROOM_ID, dtype=torch.int64)
    centers = [scene.room_center] + [b.center for b in scene.boxes]
    halves = [scene.room_half_size] + [b.half_size for b in scene.boxes]
    for i, box in enumerate(scene.boxes):
        tb = _hit_box(o, inv_d, box)
        closer = tb < t
        t = torch.where(closer, tb, t)
        sid = torch.where(closer, i + 1, sid)
    if scene.moving is not None:
        center = scene.moving.center_at(time)
        ts = _hit_sphere(o, d, center, scene.moving.radius)
        closer = ts < t
        t = torch.where(closer, ts, t)
        sid = torch.where(closer, scene.moving_id, sid)
        centers.append(center.tolist())
        halves.append([scene.moving.radius] * 3)

    sky = torch.isinf(t)
    depth = torch.where(sky, 0.0, t)
    points = o + depth[:, None] * d
    sid = torch.where(sky, SKY_ID, sid)
    rgb = _shade_surfaces(scene, points, sid.clamp_min(0),
                          torch.tensor(centers, dtype=torch.float64),
                          torch.tensor(halves, dtype=torch.float64))
    if bool(sky.any()):
        rgb = torch.where(sky[:, None], _sky_colour(d), rgb)
    dynamic = (sid == scene.moving_id) if scene.moving is not None else torch.zeros_like(sky)
    return RenderOutput(
        rgb=rgb.reshape(h, w, 3).contiguous(),
        depth=depth.float().reshape(h, w),
        dynamic_mask=dynamic.reshape(h, w),
        sky_mask=sky.reshape(h, w),
        surface_id=sid.to(torch.int32).reshape(h, w),
        points=points.float().reshape(h, w, 3),
    )


def render_trajectory(scene: SyntheticScene, Ks, c2ws, image_size: tuple[int, int],
                      fps: float = 16.0) -> RenderOutput:
    """Render N frames, frame ``i`` at ``time = i / fps``; every field gets a leading N.

    ``Ks`` is (N, 3, 3) or one shared (3, 3); ``c2ws`` is (N, 4, 4).
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    c2ws = validate_pose(c2ws, "c2ws")
    Ks = validate_intrinsics(Ks, "Ks")
    if c2ws.ndim != 3:
        raise ValueError(f"c2ws: expected (N, 4, 4), got {tuple(c2ws.shape)}")
    n = c2ws.shape[0]
    if Ks.ndim == 2:
        Ks = Ks.expand(n, 3, 3)
    if Ks.shape != (n, 3, 3):
        raise ValueError(f"Ks: expected (N, 3, 3) or (3, 3) with N = {n}, got {tuple(Ks.shape)}")
    frames = [render(scene, Ks[i], c2ws[i], image_size, time=i / fps) for i in range(n)]
    if not frames:
        raise ValueError("render_trajectory: no cameras")
    return RenderOutput(**{f.name: torch.stack([getattr(fr, f.name) for fr in frames])
                           for f in fields(RenderOutput)})

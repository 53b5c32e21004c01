"""A 3D point memory on a camera grid: the machinery shared by the latent memory and its RGB twin.

Each point is one cell of a grid of stride ``stride`` pixels (16 = one Wan2.2 latent cell for the
latent memory, 1 = one pixel for the RGB twin): a float32 world position, a feature vector in the
subclass's storage dtype and the index of the frame that wrote it. Writing back-projects the cells
with valid depth that are not excluded (moving objects, sky); reading projects every point with the
shared z-buffer of ``projection.py``.

De-duplication (``MemoryConfig.dedup``) decides whether a new cell is already in memory:

* ``"view"`` (default): project the memory into the writing camera; a cell is known when some
  stored point lands in it at a depth within ``depth_tolerance`` (relative) of the new depth --
  any such point, not only the z-buffer winner, so a foreground edge point spilling over a cell
  does not make its background look new on every revisit. Pure revisits add exactly 0 points and,
  unlike a voxel hash, a surface is not re-added just because a new sampling of it falls into
  voxels the old sampling missed.
* ``"voxel"``: a world voxel grid (``voxel_size``, or automatically the median footprint of one
  cell at its depth on the first write); a point whose voxel is occupied is known.
* ``"none"``: append everything (what the reference release does).

``keep="first"`` (default) keeps the stored feature (first seen wins); ``keep="latest"`` overwrites
the stored feature of the known point with the new one.

``view_radius`` (off by default) keeps one sample of a surface per writing *view* instead of one
per surface: a stored point makes a new cell known only when the camera that wrote it is within
``view_radius`` of the new camera (``camera_distance``: centre distance in scene units plus the
rotation angle in radians). A read then shows, among the samples of the nearest surface in a cell
(within ``view_depth_tolerance`` of the nearest), the one written from the camera nearest the target.
What a 4-frame latent holds depends on where it was seen from (docs/method.md §2); the sample from
the nearest camera is the one most like what the target will hold. An exact revisit still adds
nothing and reads back exactly the samples written from that camera. Every write needs its own
``frame_index`` (the memory keeps each write's camera under it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file

from mirage_model.config import StrictConfig
from mirage_model.geometry.camera import (
    backproject_depth,
    check_finite,
    invert_pose,
    scale_intrinsics,
    validate_image_size,
    validate_intrinsics,
    validate_pose,
)
from mirage_model.io.atomic import atomic_path
from mirage_model.memory.projection import (
    ZBuffer,
    boxes_in_view,
    fill_gaps,
    gather_features,
    nearest_per_cell,
    splat_cells,
    zbuffer,
)

FORMAT_TAG = "mirage-point-memory/1"

GROUP_TILE_PX = 128
"""Each write is stored as groups of points from one 128x128-pixel tile, with a bounding box, so a
read of a large memory projects only the groups whose box meets a target frustum (cost follows
what is in view, not the length of the trajectory; see ``MemoryConfig.cull_min_points``)."""
MIN_GROUP_POINTS = 64
"""Consecutive small groups are merged up to this size: culling a box must cost less than
projecting its points."""


WRITE_OUTCOMES = ("written", "no_depth", "excluded", "known")
"""What an insert does with each cell of its grid: ``written`` (a new point), ``no_depth`` (depth
missing or invalid there), ``excluded`` (the exclude mask: moving objects, sky), ``known`` (the
memory already stores that surface: same-view or same-voxel de-duplication)."""


class MemoryConfig(StrictConfig):
    """How a point memory de-duplicates, bounds and reads itself (the module text says how)."""

    dedup: Literal["view", "voxel", "none"] = Field("view", description="what makes a new cell known: a stored "
                                                    "point in the same view cell, a voxel, or nothing (append all)")
    keep: Literal["first", "latest"] = Field("first", description="a known cell keeps the stored feature, or "
                                             "takes the new one")
    depth_tolerance: float = Field(0.05, gt=0, description="relative depth within which a stored point and a new "
                                   "cell are one surface (dedup: view)")
    voxel_size: float | None = Field(None, gt=0, description="dedup: voxel; null: one cell's footprint at the first "
                                     "write's median depth")
    max_points: int | None = Field(None, gt=0, description="capacity: the oldest points go first; null: unbounded")
    near: float = Field(1e-3, gt=0, description="points at camera depth <= near are not projected")
    cull_min_points: int = Field(32768, ge=0, description=(
        "reads cull groups outside the target frustums only from this many points on: below it, projecting every "
        "point costs less than the test (measured in docs/benchmarks.md, memory_bench)"))
    fill_gaps: int = Field(2, ge=0, description=(
        "reads close cracks of up to this many empty cells between two visible points that were neighbours in the "
        "grid that wrote them and agree on depth (a surface seen magnified; projection.fill_gaps); 0 reads the "
        "bare z-buffer"))
    fill_gaps_tolerance: float = Field(0.2, gt=0, description="relative depth difference within which the two "
                                       "cells around a crack count as one surface")
    view_radius: float | None = Field(None, ge=0, description=(
        "keep a sample of a surface per writing camera farther than this from every camera that already wrote it "
        "(camera_distance: centre distance in scene units + rotation angle in radians), and read each cell from "
        "the sample whose camera is nearest the target; null: one sample per surface"))
    view_depth_tolerance: float = Field(0.3, gt=0, description=(
        "with view_radius: relative depth behind a cell's nearest point within which a sample counts as the same "
        "surface when the read picks the nearest camera"))

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        if self.view_radius is not None and self.dedup != "view":
            raise ValueError(f"view_radius needs dedup='view', got dedup={self.dedup!r}")
        return self


@dataclass
class Readout:
    """What a memory returns for T target frames on the latent grid.

    features: (T, C, h, w) in the memory's storage dtype, zeros where nothing is visible.
    visibility: (T, h, w) bool.
    depth: (T, h, w) float32 camera depth of the visible content, 0 elsewhere.
    filled: (T, h, w) bool, the visible cells that would be empty without the crack fill
        (``MemoryConfig.fill_gaps``); None when the reader does not fill.
    """

    features: torch.Tensor
    visibility: torch.Tensor
    depth: torch.Tensor
    filled: torch.Tensor | None = None

    @property
    def hole_rate(self) -> float:
        """Fraction of target cells the memory leaves empty."""
        return 1.0 - float(self.visibility.float().mean()) if self.visibility.numel() else 1.0

    def conditioning(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(C + 1, T, h, w) readout + visibility channel, the layout the generator's branch takes."""
        feats = self.features.to(dtype).permute(1, 0, 2, 3)
        vis = self.visibility.to(dtype).unsqueeze(0)
        return torch.cat([feats, vis], dim=0)


# ----------------------------------------------------------------------------------------------
# Resampling dense maps onto the memory grid
# ----------------------------------------------------------------------------------------------
def resize_depth(depth: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly resize a z-depth map (align_corners=False), ignoring invalid (<= 0) pixels.

    Returns (depth, valid) on the target grid. A target cell is valid only when every source pixel
    its bilinear taps touch is valid, so depth is never blended with holes. Downsampling by 16
    samples exactly the cell centre 16u + 7.5 (see ``geometry.camera``).
    """
    if tuple(depth.shape) == tuple(size):
        valid = depth > 0
        return torch.where(valid, depth, torch.zeros_like(depth)), valid
    valid = (depth > 0).to(torch.float32)
    d = torch.where(depth > 0, depth, torch.zeros_like(depth)).to(torch.float32)
    num = F.interpolate(d[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    den = F.interpolate(valid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    ok = den > 1 - 1e-4
    out = torch.where(ok, num / den.clamp(min=1e-6), torch.zeros_like(num))
    return out, ok


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of a bool mask, sampling each target cell at its centre ('nearest-exact')."""
    if tuple(mask.shape) == tuple(size):
        return mask.bool()
    out = F.interpolate(mask[None, None].to(torch.float32), size=size, mode="nearest-exact")
    return out[0, 0] > 0.5


def _voxel_keys(points: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Pack integer voxel coordinates (21 bits per axis) into one int64 per point."""
    ijk = torch.floor(points.to(torch.float64) / voxel_size).to(torch.int64)
    limit = 1 << 20
    if bool((ijk.abs() >= limit).any()):
        raise ValueError(
            f"voxel_size {voxel_size:g} is too small for the scene extent (more than 2**20 voxels per axis)")
    ijk = ijk + limit
    return (ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2]


def _first_occurrence(keys: torch.Tensor) -> torch.Tensor:
    """Bool mask selecting the first occurrence of every distinct key (deterministic)."""
    uniq, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(uniq),), len(keys), dtype=torch.int64, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
    mask = torch.zeros(len(keys), dtype=torch.bool, device=keys.device)
    mask[first] = True
    return mask


def camera_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(A, B) distance between camera poses a (A, 4, 4) and b (B, 4, 4), both c2w: the distance
    of their centres (scene units) plus the angle of the rotation between them (radians)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    centre = torch.cdist(a[:, :3, 3], b[:, :3, 3])
    # trace(R_a^T R_b) = sum of the element-wise product
    trace = torch.einsum("aij,bij->ab", a[:, :3, :3], b[:, :3, :3])
    angle = torch.arccos(((trace - 1) / 2).clamp(-1.0, 1.0))
    return centre + angle


# ----------------------------------------------------------------------------------------------
# The memory
# ----------------------------------------------------------------------------------------------
class PointMemory:
    """Points on a camera grid of ``stride`` pixels, with a shared z-buffer readout."""

    stride: int = 1
    feature_dtype: torch.dtype = torch.float16

    def __init__(self, channels: int, config: MemoryConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or MemoryConfig()
        self.channels = int(channels)
        self.device = torch.device(device)
        self.points = torch.zeros((0, 3), dtype=torch.float32, device=self.device)
        self.features = torch.zeros((0, self.channels), dtype=self.feature_dtype, device=self.device)
        self.frame_index = torch.zeros((0,), dtype=torch.int32, device=self.device)
        self.write_cell = torch.zeros((0, 2), dtype=torch.int16, device=self.device)  # (row, col) written at
        self.voxel_size: float | None = self.config.voxel_size
        self._voxel_sorted: torch.Tensor | None = None  # sorted voxel keys (dedup="voxel")
        self._voxel_order: torch.Tensor | None = None   # point index for each sorted key
        self.group_sizes = torch.zeros((0,), dtype=torch.int64, device=self.device)  # contiguous runs
        self.group_bounds = torch.zeros((0, 2, 3), dtype=torch.float32, device=self.device)
        # each write's camera under its frame index, sorted by frame (view_radius only)
        self.camera_frame = torch.zeros((0,), dtype=torch.int64, device=self.device)
        self.camera_c2w = torch.zeros((0, 4, 4), dtype=torch.float64, device=self.device)

    # -- bookkeeping -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.points.shape[0])

    def stats(self) -> dict:
        """Point count and exact storage bytes (positions + features + metadata)."""
        n = len(self)
        nbytes = self.points.nbytes + self.features.nbytes + self.frame_index.nbytes + self.write_cell.nbytes
        return {"points": n, "bytes": int(nbytes), "bytes_per_point": self.bytes_per_point(),
                "channels": self.channels}

    def bytes_per_point(self) -> int:
        """Storage cost of one point: xyz float32 + features + int32 frame index + 2 x int16 cell."""
        return 12 + self.channels * torch.empty((), dtype=self.feature_dtype).element_size() + 4 + 4

    def to(self, device: str | torch.device) -> PointMemory:
        """Move the memory to ``device`` (in place) and return it."""
        self.device = torch.device(device)
        self.points = self.points.to(self.device)
        self.features = self.features.to(self.device)
        self.frame_index = self.frame_index.to(self.device)
        self.write_cell = self.write_cell.to(self.device)
        self.group_sizes = self.group_sizes.to(self.device)
        self.group_bounds = self.group_bounds.to(self.device)
        self.camera_frame = self.camera_frame.to(self.device)
        self.camera_c2w = self.camera_c2w.to(self.device)
        self._voxel_sorted = self._voxel_order = None
        return self

    def clear(self) -> None:
        """Forget every point (the voxel size chosen automatically is forgotten too)."""
        self.points = self.points[:0]
        self.features = self.features[:0]
        self.frame_index = self.frame_index[:0]
        self.write_cell = self.write_cell[:0]
        self.group_sizes = self.group_sizes[:0]
        self.group_bounds = self.group_bounds[:0]
        self.camera_frame = self.camera_frame[:0]
        self.camera_c2w = self.camera_c2w[:0]
        self.voxel_size = self.config.voxel_size
        self._voxel_sorted = self._voxel_order = None

    # -- input checking --------------------------------------------------------------------------
    def _cameras(self, K, c2w, w2c, image_size) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Validate (T,3,3) K and (T,4,4) poses (either c2w or w2c) and return (K, w2c, (H, W))."""
        if (c2w is None) == (w2c is None):
            raise ValueError("give exactly one of c2w or w2c")
        image_size = validate_image_size(image_size)
        K = validate_intrinsics(K, "K")
        if w2c is None:
            w2c = invert_pose(validate_pose(c2w, "c2w"))
        else:
            w2c = validate_pose(w2c, "w2c")
        if K.ndim == 2:
            K = K.unsqueeze(0)
        if w2c.ndim == 2:
            w2c = w2c.unsqueeze(0)
        if K.shape[0] == 1 and w2c.shape[0] > 1:
            K = K.expand(w2c.shape[0], 3, 3)
        if K.ndim != 3 or w2c.ndim != 3 or K.shape[0] != w2c.shape[0]:
            raise ValueError(f"K {tuple(K.shape)} and poses {tuple(w2c.shape)} must describe the same T cameras")
        return K, w2c, image_size

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Grid (h, w) of this memory for an image (H, W)."""
        h, w = validate_image_size(image_size)
        s = self.stride
        if h % s or w % s:
            raise ValueError(f"image_size {(h, w)} must be a multiple of the memory stride {s}")
        return h // s, w // s

    def grid_intrinsics(self, K: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Intrinsics of this memory's grid (cell centres at integer coordinates)."""
        return scale_intrinsics(K, image_size, self.grid_size(image_size))

    # -- writing ---------------------------------------------------------------------------------
    def _insert_grid(self, feats: torch.Tensor, depth, K, c2w, image_size, exclude, frame_index: int,
                     counts: dict[str, int] | None = None) -> int:
        """Write one frame given features on this memory's grid (h, w, C). Returns points added.

        ``counts``, when given, accumulates what became of the frame's cells (see ``WRITE_OUTCOMES``).
        """
        image_size = validate_image_size(image_size)
        gh, gw = self.grid_size(image_size)
        if feats.shape != (gh, gw, self.channels):
            raise ValueError(f"features: expected shape {(gh, gw, self.channels)} on the "
                             f"{gh}x{gw} grid of a {image_size} image, got {tuple(feats.shape)}")
        depth = torch.as_tensor(depth)
        if depth.ndim != 2:
            raise ValueError(f"depth: expected a 2-D (H, W) map, got shape {tuple(depth.shape)}")
        check_finite(depth, "depth")
        K = validate_intrinsics(K, "K")
        c2w = validate_pose(c2w, "c2w")
        if K.shape != (3, 3) or c2w.shape != (4, 4):
            raise ValueError(f"insert takes one camera: K (3, 3) and c2w (4, 4), got "
                             f"{tuple(K.shape)} and {tuple(c2w.shape)}")
        depth = depth.to(self.device, torch.float32)
        d_grid, valid = resize_depth(depth, (gh, gw))
        tally = {k: 0 for k in WRITE_OUTCOMES}
        tally["no_depth"] = int((~valid).sum())
        if exclude is not None:
            exclude = torch.as_tensor(exclude, device=self.device)
            if exclude.ndim != 2:
                raise ValueError(f"exclude: expected a 2-D (H, W) mask, got shape {tuple(exclude.shape)}")
            excluded = valid & resize_mask(exclude, (gh, gw))
            tally["excluded"] = int(excluded.sum())
            valid &= ~excluded
        K_grid = self.grid_intrinsics(K, image_size)
        feats = feats.to(self.device)

        if self.config.view_radius is not None:
            self._record_camera(frame_index, c2w)
        if self.config.dedup == "view" and len(self):
            known, owner = self._known_cells(d_grid, valid, K_grid, invert_pose(c2w), c2w)
            if self.config.keep == "latest":
                self._overwrite(owner[known], feats[known], frame_index)
            tally["known"] = int((valid & known).sum())
            valid &= ~known

        # Keep each tile's points contiguous (row-major tiles, row-major cells within a tile).
        tile = max(1, GROUP_TILE_PX // self.stride)
        rows, cols = torch.meshgrid(torch.arange(gh, device=self.device), torch.arange(gw, device=self.device),
                                    indexing="ij")
        tile_id = ((rows // tile) * ((gw + tile - 1) // tile) + cols // tile)[valid]
        order = torch.sort(tile_id, stable=True).indices
        points = backproject_depth(d_grid, K_grid, c2w)[valid].to(torch.float32)[order]
        new_feats = feats[valid].to(self.feature_dtype)[order]
        cells = torch.stack([rows, cols], -1)[valid].to(torch.int16)[order]
        tile_id = tile_id[order]

        if self.config.dedup == "voxel" and len(points):
            keep = self._voxel_filter(points, new_feats, d_grid[valid][order], K_grid, frame_index)
            tally["known"] += int((~keep).sum())
            points, new_feats, cells, tile_id = points[keep], new_feats[keep], cells[keep], tile_id[keep]

        self._append(points, new_feats, frame_index, cells, tile_id)
        tally["written"] = int(points.shape[0])
        if counts is not None:
            for k, v in tally.items():
                counts[k] = counts.get(k, 0) + v
        return tally["written"]

    def _record_camera(self, frame_index: int, c2w: torch.Tensor) -> None:
        """Keep the camera of the write ``frame_index`` (a frame index names one camera)."""
        c2w = c2w.detach().to(self.device, torch.float64)
        at = int(torch.searchsorted(self.camera_frame, torch.tensor(int(frame_index), device=self.device)))
        if at < len(self.camera_frame) and int(self.camera_frame[at]) == int(frame_index):
            if not torch.allclose(self.camera_c2w[at], c2w, atol=1e-6):
                raise ValueError(f"frame_index {frame_index} was written from another camera before: with "
                                 "view_radius every write needs its own frame index")
            return
        self.camera_frame = torch.cat([self.camera_frame[:at], torch.tensor([int(frame_index)], device=self.device),
                                       self.camera_frame[at:]])
        self.camera_c2w = torch.cat([self.camera_c2w[:at], c2w[None], self.camera_c2w[at:]])

    def _write_slot(self, pid: torch.Tensor) -> torch.Tensor:
        """(M,) row of the cameras table that holds the camera of the write of each point ``pid``."""
        frames = self.frame_index[pid].to(torch.int64)
        slot = torch.searchsorted(self.camera_frame, frames).clamp(max=max(len(self.camera_frame) - 1, 0))
        if len(frames) and not bool((self.camera_frame[slot] == frames).all()):
            raise ValueError("the memory holds points of a write whose camera it did not keep")
        return slot

    def _write_distances(self, c2w: torch.Tensor) -> torch.Tensor:
        """(T, W) ``camera_distance`` from each of T cameras c2w (T, 4, 4) to each write's camera."""
        return camera_distance(c2w.to(self.device), self.camera_c2w).to(torch.float32)

    def _known_cells(self, depth: torch.Tensor, valid: torch.Tensor, K_grid: torch.Tensor, w2c: torch.Tensor,
                     c2w: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cells (h, w) where a stored point lands within ``depth_tolerance`` of ``depth`` (written,
        with ``view_radius``, from a camera within the radius of ``c2w``), and the nearest such
        point's index (-1 elsewhere)."""
        h, w = depth.shape
        pts, ids = self._points_in_view(K_grid[None], w2c[None], (h, w))
        cell, z, pid = splat_cells(pts, K_grid[None].to(self.device), w2c[None].to(self.device), (h, w),
                                   self.config.near)
        d_new = depth.reshape(-1)[cell]
        agree = valid.reshape(-1)[cell] & ((z - d_new).abs() <= self.config.depth_tolerance * d_new)
        if self.config.view_radius is not None and len(pid):
            gid = pid if ids is None else ids[pid]
            agree &= self._write_distances(c2w[None])[0, self._write_slot(gid)] <= self.config.view_radius
        owner, _ = nearest_per_cell(cell[agree], z[agree], pid[agree], h * w)
        if ids is not None and len(ids):
            owner = torch.where(owner >= 0, ids[owner.clamp(min=0)], owner)
        owner = owner.view(h, w)
        return owner >= 0, owner

    def _overwrite(self, index: torch.Tensor, feats: torch.Tensor, frame_index: int) -> None:
        if len(index):
            self.features[index] = feats.to(self.feature_dtype)
            self.frame_index[index] = frame_index
            self.write_cell[index] = -1  # no longer the cell of the frame now recorded: no neighbours

    def _voxel_filter(self, points, feats, depths, K_grid, frame_index) -> torch.Tensor:
        """Mask of the points to keep: voxel not occupied yet and first of its voxel in this frame."""
        if self.voxel_size is None:
            focal = float(K_grid[0, 0])
            self.voxel_size = float(depths.median()) / focal  # one cell's footprint at its depth
        keys = _voxel_keys(points, self.voxel_size)
        fresh = _first_occurrence(keys)
        if len(self):
            if self._voxel_sorted is None:
                all_keys = _voxel_keys(self.points, self.voxel_size)
                self._voxel_sorted, self._voxel_order = torch.sort(all_keys)
            pos = torch.searchsorted(self._voxel_sorted, keys).clamp(max=len(self._voxel_sorted) - 1)
            occupied = self._voxel_sorted[pos] == keys
            if self.config.keep == "latest":
                hit = occupied & fresh
                self._overwrite(self._voxel_order[pos[hit]], feats[hit], frame_index)
            fresh &= ~occupied
        return fresh

    def _append(self, points: torch.Tensor, feats: torch.Tensor, frame_index: int, cells: torch.Tensor,
                tile_id: torch.Tensor) -> None:
        n0 = len(self)
        self.points = torch.cat([self.points, points])
        self.features = torch.cat([self.features, feats])
        self.frame_index = torch.cat([self.frame_index, torch.full(
            (len(points),), frame_index, dtype=torch.int32, device=self.device)])
        self.write_cell = torch.cat([self.write_cell, cells])
        if len(points):
            self._add_groups(points, tile_id)
        if self.config.dedup == "voxel" and self.voxel_size is not None and len(points):
            keys = _voxel_keys(points, self.voxel_size)
            order = torch.arange(n0, n0 + len(points), device=self.device)
            if self._voxel_sorted is not None:
                keys = torch.cat([self._voxel_sorted, keys])
                order = torch.cat([self._voxel_order, order])
            self._voxel_sorted, perm = torch.sort(keys, stable=True)
            self._voxel_order = order[perm]
        cap = self.config.max_points
        if cap is not None and len(self) > cap:
            self._evict_oldest(len(self) - cap)

    def _add_groups(self, points: torch.Tensor, tile_id: torch.Tensor) -> None:
        """Record the bounding boxes of the tiles just appended, merging small consecutive ones."""
        _, tile_sizes = torch.unique_consecutive(tile_id, return_counts=True)
        sizes, acc = [], 0
        for n in tile_sizes.tolist():  # greedy: close a group once it holds MIN_GROUP_POINTS
            acc += n
            if acc >= MIN_GROUP_POINTS:
                sizes.append(acc)
                acc = 0
        if acc:
            if sizes and acc < MIN_GROUP_POINTS:
                sizes[-1] += acc
            else:
                sizes.append(acc)
        merge_prev = (len(sizes) == 1 and sizes[0] < MIN_GROUP_POINTS and len(self.group_sizes)
                      and int(self.group_sizes[-1]) < MIN_GROUP_POINTS)
        sizes_t = torch.tensor(sizes, dtype=torch.int64, device=self.device)
        group = torch.repeat_interleave(torch.arange(len(sizes), device=self.device), sizes_t)
        lo = torch.full((len(sizes), 3), float("inf"), device=self.device)
        hi = torch.full((len(sizes), 3), float("-inf"), device=self.device)
        lo.scatter_reduce_(0, group[:, None].expand(-1, 3), points, reduce="amin")
        hi.scatter_reduce_(0, group[:, None].expand(-1, 3), points, reduce="amax")
        bounds = torch.stack([lo, hi], 1)
        if merge_prev:  # a sliver of a write joins the previous small group
            self.group_sizes[-1] += sizes_t[0]
            prev = self.group_bounds[-1]
            self.group_bounds[-1] = torch.stack([torch.minimum(prev[0], lo[0]), torch.maximum(prev[1], hi[0])])
        else:
            self.group_sizes = torch.cat([self.group_sizes, sizes_t])
            self.group_bounds = torch.cat([self.group_bounds, bounds])

    def _evict_oldest(self, drop: int) -> None:
        """Forget the ``drop`` oldest points (the first written); boxes of cut groups stay valid."""
        self.points, self.features = self.points[drop:], self.features[drop:]
        self.frame_index = self.frame_index[drop:]
        self.write_cell = self.write_cell[drop:]
        ends = torch.cumsum(self.group_sizes, 0)
        keep = ends > drop
        first = int(torch.nonzero(keep)[0])
        self.group_sizes = self.group_sizes[keep].clone()
        self.group_sizes[0] = int(ends[first]) - drop
        self.group_bounds = self.group_bounds[keep]
        self._voxel_sorted = self._voxel_order = None

    def _points_in_view(self, K_grid: torch.Tensor, w2c: torch.Tensor, grid: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The points of groups that may be seen by any of the cameras, and their indices (None = all)."""
        if len(self.group_sizes) == 0 or len(self) < self.config.cull_min_points:
            return self.points, None
        seen = boxes_in_view(self.group_bounds, K_grid, w2c, grid, self.config.near)
        if bool(seen.all()):
            return self.points, None
        starts = torch.cumsum(self.group_sizes, 0) - self.group_sizes
        sizes = self.group_sizes[seen]
        offsets = torch.repeat_interleave(starts[seen] - (torch.cumsum(sizes, 0) - sizes), sizes)
        ids = torch.arange(int(sizes.sum()), device=self.device) + offsets
        return self.points[ids], ids

    # -- reading ---------------------------------------------------------------------------------
    def project(self, K, c2w=None, *, w2c=None, image_size) -> ZBuffer:
        """Z-buffer of every point on this memory's grid for T cameras given in image pixels."""
        K, w2c, image_size = self._cameras(K, c2w, w2c, image_size)
        grid = self.grid_size(image_size)
        K_grid = self.grid_intrinsics(K, image_size).to(self.device)
        w2c = w2c.to(self.device)
        points, ids = self._points_in_view(K_grid, w2c, grid)
        if self.config.view_radius is None:
            zb = zbuffer(points, K_grid, w2c, grid, self.config.near)
        else:
            zb = self._nearest_view_zbuffer(points, ids, K_grid, w2c, grid)
        if ids is not None and len(ids):  # back to indices into the whole memory
            zb.index = torch.where(zb.visible, ids[zb.index.clamp(min=0)], zb.index)
        return zb

    def _nearest_view_zbuffer(self, points: torch.Tensor, ids: torch.Tensor | None, K_grid: torch.Tensor,
                              w2c: torch.Tensor, grid: tuple[int, int]) -> ZBuffer:
        """The z-buffer of ``view_radius``, from one projection: per cell, among the points within
        ``view_depth_tolerance`` behind the nearest, the one written from the camera nearest the
        target (ties: the nearer, then the older point)."""
        h, w = grid
        n_cells = w2c.shape[0] * h * w
        cell, z, pid = splat_cells(points, K_grid, w2c, grid, self.config.near)
        _, nearest = nearest_per_cell(cell, z, pid, n_cells)
        nearest = nearest[cell]
        keep = z <= nearest * (1 + self.config.view_depth_tolerance)
        cell, z, pid, nearest = cell[keep], z[keep], pid[keep], nearest[keep]
        gid = pid if ids is None else ids[pid]
        score = self._write_distances(invert_pose(w2c.to(torch.float64)))[cell // (h * w), self._write_slot(gid)]
        # one int64 key orders (camera distance, depth, index): the distance in steps of 1e-3 (16 bits:
        # beyond 65 units every camera is as far), the depth behind the nearest, relative, in steps of
        # 1e-4 (15 bits), the point's index (32 bits)
        q = torch.round(score * 1e3).to(torch.int64).clamp(max=(1 << 16) - 1)
        zq = ((z / nearest.clamp(min=1e-12) - 1) * 1e4).round().to(torch.int64).clamp(max=(1 << 15) - 1)
        buf = torch.full((n_cells + 1,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=cell.device)
        buf.scatter_reduce_(0, cell, (q << 47) | (zq << 32) | pid, reduce="amin", include_self=True)
        buf = buf[:n_cells]
        hit = buf != torch.iinfo(torch.int64).max
        index = torch.where(hit, buf & 0xFFFFFFFF, torch.full_like(buf, -1))
        depth = torch.zeros(n_cells, dtype=torch.float32, device=cell.device)
        chosen = (buf[cell] & 0xFFFFFFFF) == pid  # the chosen point's depth, among the listed pairs
        depth[cell[chosen]] = z[chosen]
        return ZBuffer(index.view(-1, h, w), depth.view(-1, h, w))

    def read_grid(self, K, c2w=None, *, w2c=None, image_size) -> Readout:
        """Features, visibility and depth on this memory's own grid for T cameras, cracks filled."""
        zb = self.project(K, c2w, w2c=w2c, image_size=image_size)
        zb, filled = fill_gaps(zb, self.frame_index, self.write_cell, self.config.fill_gaps,
                               self.config.fill_gaps_tolerance)
        return Readout(gather_features(self.features, zb), zb.visible, zb.depth, filled)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the memory to a safetensors file atomically (temp name, then rename)."""
        path = os.fspath(path)
        meta = {
            "format": FORMAT_TAG,
            "kind": type(self).__name__,
            "channels": str(self.channels),
            "config": self.config.model_dump_json(),
            "voxel_size": json.dumps(self.voxel_size),
        }
        tensors = {"points": self.points.contiguous().cpu(), "features": self.features.contiguous().cpu(),
                   "frame_index": self.frame_index.contiguous().cpu(),
                   "write_cell": self.write_cell.contiguous().cpu(),
                   "group_sizes": self.group_sizes.contiguous().cpu(),
                   "group_bounds": self.group_bounds.contiguous().cpu(),
                   "camera_frame": self.camera_frame.contiguous().cpu(),
                   "camera_c2w": self.camera_c2w.contiguous().cpu()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def _load_state(cls, path: str | os.PathLike, device="cpu") -> tuple[dict, dict]:
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such memory file")
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT_TAG:
            raise ValueError(f"{path}: not a Mirage point memory (format tag {meta.get('format')!r})")
        if meta.get("kind") != cls.__name__:
            raise ValueError(f"{path}: holds a {meta.get('kind')}, not a {cls.__name__}")
        return load_file(path, device=str(device)), meta

    def _restore(self, tensors: dict, meta: dict) -> None:
        self.points = tensors["points"].to(self.device, torch.float32)
        self.features = tensors["features"].to(self.device, self.feature_dtype)
        self.frame_index = tensors["frame_index"].to(self.device, torch.int32)
        # files written before the cell was stored: no pair of points counts as write neighbours
        self.write_cell = tensors.get("write_cell", torch.full((len(self.points), 2), -1, dtype=torch.int16)
                                      ).to(self.device, torch.int16)
        self.group_sizes = tensors["group_sizes"].to(self.device, torch.int64)
        self.group_bounds = tensors["group_bounds"].to(self.device, torch.float32)
        self.camera_frame = tensors.get("camera_frame", torch.zeros((0,), dtype=torch.int64)).to(self.device)
        self.camera_c2w = tensors.get("camera_c2w", torch.zeros((0, 4, 4), dtype=torch.float64)).to(self.device)
        if int(self.group_sizes.sum()) != len(self.points):
            raise ValueError("memory file is inconsistent: group sizes do not add up to the point count")
        self.voxel_size = json.loads(meta.get("voxel_size", "null"))

    @staticmethod
    def _config_from_meta(meta: dict) -> MemoryConfig:
        return MemoryConfig(**json.loads(meta["config"]))


"""What a generated chunk writes back into the memory: depth and the cells safe to store.

Cameras are known at generation time, so the new latent frames' depth comes from multi-view
plane-sweep stereo over the chunk's decoded frames (``perception.depth``), and the exclusion masks
(moving objects, sky, no depth) from ``perception.masks.static_masks`` -- the functions the data
pipeline uses. Depth is estimated on the memory's own grid: one depth per latent cell for the
latent memory (``cell_depths``: ``cell_sweep_depth`` over the cell), per pixel for the RGB cache
(``pixel_depths``: ``plane_sweep_depth``). Both take the sweep's range from the memory's own points
when enough of them are in view, and both call a frame unobservable by one rule
(``MIN_PARALLAX_PX``). The memory's own depth readout at the same camera is fused in where it is
better:

* cells the memory already covers keep the memory's depth (the geometry already stored: stereo
  noise there would only add near-duplicate points), unless stereo sees a surface clearly in
  front of it (a new occluder), which wins;
* on frames where stereo is unobservable (no baseline, or too little of it for the memory's depths,
  e.g. a pan from a hand-held camera), uncovered cells get
  the median depth of what the memory sees in that view (a fronto-parallel prior, like the first
  frame's fallback) when ``unobserved="memory_median"``, or are not written (``"skip"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from mirage_model.perception.depth import (
    DepthResult,
    cell_sweep_depth,
    check_parallax,
    default_depth_range,
    plane_sweep_depth,
    select_neighbours,
    to_gray,
)
from mirage_model.perception.masks import static_masks
from mirage_model.perception.params import GENERATION_STEREO, WRITEBACK_CELL_STEREO, CellStereoParams, StereoParams

log = logging.getLogger(__name__)

UnobservedPolicy = Literal["memory_median", "skip"]


@dataclass
class WriteBack:
    """Depth (H, W) and valid mask (H, W) of one new frame, and where the depth came from."""

    depth: torch.Tensor
    valid: torch.Tensor
    source: str  # "stereo" | "memory_fill" | "memory_only" | "none"
    memory_cells: float  # fraction of pixels whose depth came from the memory


def upsample_nearest(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) map -> (H, W) by cell-centre nearest sampling (each latent cell fills its pixels)."""
    if tuple(grid.shape) == tuple(size):
        return grid
    out = F.interpolate(grid[None, None].to(torch.float32), size=size, mode="nearest-exact")[0, 0]
    return out.to(grid.dtype) if grid.dtype != torch.bool else out > 0.5


MIN_PARALLAX_PX = 2.0
"""Write-back depth needs the memory's depth range to move a frame pixel by at least this much in
the widest-baseline neighbour; below it (a pure rotation, a short baseline) depth is unobservable
and the frame is filled from the memory (``fuse_depth``). The same rule for both memories."""


RANGE_POINTS = 1 << 17
"""Most memory points a write-back projects per frame for its depth range (percentiles): an RGB
cache at 704x1280 holds millions, and a regular subsample gives the same range."""


def _sweep_setup(K: torch.Tensor, c2w: torch.Tensor, i: int, size: tuple[int, int],
                 points: torch.Tensor | None) -> tuple[list[int], tuple[float, float]]:
    """Neighbours and depth range of frame ``i``'s sweep; ``ValueError`` where depth is unobservable."""
    nb = select_neighbours(c2w, i)
    if not nb:
        raise ValueError(f"frame {i} has no neighbour with a baseline")
    near, far = default_depth_range(K[i], c2w[i], c2w[nb], size, points)
    check_parallax(K, c2w, i, nb, near, far, MIN_PARALLAX_PX, "write-back depth")
    return nb, (near, far)


def _sweep_frames(frames: np.ndarray, K: torch.Tensor, c2w: torch.Tensor, indices: list[int],
                  points: torch.Tensor | None, sweep) -> list[DepthResult | None]:
    """``sweep(gray, K, c2w, i, neighbours, depth_range)`` for each frame ``i`` in ``indices`` with
    the neighbours and range of ``_sweep_setup``; ``None`` where depth is unobservable."""
    gray = to_gray(frames)
    size = tuple(gray.shape[1:])
    K = K if K.ndim == 3 else K.expand(gray.shape[0], 3, 3)  # (3, 3) shared by every frame
    pts = points if points is not None and len(points) else None
    if pts is not None and len(pts) > RANGE_POINTS:  # once per chunk, not once per frame
        pts = pts[::-(-len(pts) // RANGE_POINTS)]
    out: list[DepthResult | None] = []
    for i in indices:
        try:
            nb, rng = _sweep_setup(K, c2w, i, size, pts)
            out.append(sweep(gray, K, c2w, i, nb, rng))
        except ValueError as exc:
            log.debug("no depth for frame %d: %s", i, exc)
            out.append(None)
    return out


def cell_depths(frames: np.ndarray, K: torch.Tensor, c2w: torch.Tensor, indices: list[int], cell: int,
                points: torch.Tensor | None = None, *,
                params: CellStereoParams = WRITEBACK_CELL_STEREO) -> list[DepthResult | None]:
    """One depth per ``cell`` x ``cell`` cell for each frame in ``indices`` of a decoded chunk (the
    latent memory), by ``cell_sweep_depth`` with ``params``.

    The sweep's range comes from ``points`` (the memory's points, when at least 8 are in view;
    ``default_depth_range``), else from the baselines. ``None`` where depth is unobservable: no
    neighbour with a baseline, or less than ``MIN_PARALLAX_PX`` of parallax over the range
    (checked here, in frame pixels: ``WRITEBACK_CELL_STEREO`` does not check it again).
    """
    def sweep(gray, K, c2w, i, nb, rng):
        return cell_sweep_depth(gray, K, c2w, i, cell=cell, neighbours=nb, depth_range=rng, params=params)

    return _sweep_frames(frames, K, c2w, indices, points, sweep)


def pixel_depths(frames: np.ndarray, K: torch.Tensor, c2w: torch.Tensor, indices: list[int],
                 points: torch.Tensor | None = None, *,
                 params: StereoParams = GENERATION_STEREO) -> list[DepthResult | None]:
    """Per-pixel plane-sweep depth for each frame in ``indices`` of a decoded chunk (the RGB cache),
    by ``plane_sweep_depth`` with ``params`` (the generator's: ``GenerationConfig.writeback_stereo()``):
    the same neighbours, range and observability rule as ``cell_depths``. ``None`` where depth is
    unobservable.
    """
    def sweep(gray, K, c2w, i, nb, rng):
        return plane_sweep_depth(gray, K, c2w, i, neighbours=nb, depth_range=rng, params=params)

    return _sweep_frames(frames, K, c2w, indices, points, sweep)


def fuse_depth(stereo: DepthResult | None, memory_depth: torch.Tensor, *,
               occluder_tolerance: float = 0.1, unobserved: UnobservedPolicy = "memory_median") -> WriteBack:
    """Fuse a frame's stereo depth with the memory's depth readout at the same camera.

    Args:
        stereo: plane-sweep result for the frame, or None where it is unobservable.
        memory_depth: (H, W) depth of the memory's z-buffer winners, 0 where the memory is empty.
        occluder_tolerance: stereo wins on a covered pixel when it is closer than
            ``(1 - tol) * memory depth`` (something new in front of stored geometry).
        unobserved: policy for uncovered pixels when ``stereo`` is None.
    """
    if unobserved not in ("memory_median", "skip"):
        raise ValueError(f"unobserved must be 'memory_median' or 'skip', got {unobserved!r}")
    mem = memory_depth.to(torch.float32)
    covered = mem > 0
    if stereo is not None:
        sd = stereo.depth.to(torch.float32)
        if sd.shape != mem.shape:
            raise ValueError(f"stereo depth {tuple(sd.shape)} and memory depth {tuple(mem.shape)} differ")
        sv = stereo.valid.bool() & (sd > 0)
        occluder = sv & (sd < (1.0 - occluder_tolerance) * mem)
        use_mem = covered & ~occluder
        depth = torch.where(use_mem, mem, torch.where(sv, sd, torch.zeros_like(sd)))
        return WriteBack(depth, use_mem | sv, "stereo", float(use_mem.float().mean()))
    if not bool(covered.any()):
        return WriteBack(torch.zeros_like(mem), torch.zeros_like(covered), "none", 0.0)
    if unobserved == "skip":
        return WriteBack(mem, covered, "memory_only", float(covered.float().mean()))
    fill = float(mem[covered].double().quantile(0.5))  # true median (torch.median takes the lower one)
    depth = torch.where(covered, mem, torch.full_like(mem, fill))
    return WriteBack(depth, torch.ones_like(covered), "memory_fill", float(covered.float().mean()))


def chunk_writeback(frames: np.ndarray, K: torch.Tensor, c2w: torch.Tensor, indices: list[int],
                    stereo: list[DepthResult | None], memory_depths: list[torch.Tensor], *,
                    unobserved: UnobservedPolicy = "memory_median", occluder_tolerance: float = 0.1,
                    mask_scale: float = 1.0) -> list[tuple[WriteBack, torch.Tensor]]:
    """Depth and exclusion mask for each frame in ``indices`` of a decoded chunk.

    Args:
        frames: (T, H, W, 3) uint8 decoded chunk. K: (T, 3, 3); c2w: (T, 4, 4) its cameras.
        indices: chunk frames to write (one per new latent frame).
        stereo: plane-sweep result per index (None where unobservable), on the same grid as
            ``memory_depths`` (pixels, or the latent cells).
        memory_depths: the memory's depth readout per index, 0 where empty.
        mask_scale: the moving-object test runs at this fraction of the frame size
            (``static_masks(scale=...)``).
    Returns:
        per index ``(WriteBack, exclude)``: the fused depth on that grid, and ``exclude`` (H, W)
        bool = not static, at the frames' size.
    """
    fused = [fuse_depth(s, m, occluder_tolerance=occluder_tolerance, unobserved=unobserved)
             for s, m in zip(stereo, memory_depths)]
    size = tuple(frames.shape[1:3])
    depths = {i: upsample_nearest(f.depth, size) for i, f in zip(indices, fused)}
    valids = {i: upsample_nearest(f.valid, size) for i, f in zip(indices, fused)}
    # Moving-object tests need a measured geometry: memory-filled planes would flag parallax as motion.
    measured = [i for i, f in zip(indices, fused) if f.source == "stereo"]
    masks = dict(zip(measured, static_masks(frames, depths, valids, K, c2w, measured, scale=mask_scale))) if measured else {}
    out = []
    for i, f in zip(indices, fused):
        static = masks[i][0] if i in masks else valids[i]
        out.append((f, ~static))
    return out

"""The one projector / z-buffer shared by every point memory (latent and RGB).

Points are splatted to the nearest grid cell (``round`` in the pixel-centre convention of
``mirage_model.geometry.camera``) and the nearest point per cell wins. The winner is decided by a
single ``scatter_reduce(amin)`` over a 64-bit key ``(float32 depth bits << 32) | point index``:
positive float32 values order like their bit patterns, so the minimum key is the minimum depth,
and equal depths fall back to the lowest point index (the oldest point). The result is therefore
deterministic on CPU and CUDA, independent of thread scheduling and of the order in which
duplicates are written (unlike ``buf[idx] = val`` with repeated indices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirage_model.geometry.camera import project_points

EMPTY_KEY = torch.iinfo(torch.int64).max
_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1


@dataclass
class ZBuffer:
    """Result of splatting N points into T camera grids of size (h, w).

    index: (T, h, w) int64, the winning point's index, -1 where the cell is empty.
    depth: (T, h, w) float32, the winner's camera z-depth, 0 where empty.
    """

    index: torch.Tensor
    depth: torch.Tensor

    @property
    def visible(self) -> torch.Tensor:
        """(T, h, w) bool: a point landed in the cell."""
        return self.index >= 0


def splat_cells(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, grid_size: tuple[int, int],
                near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cell every point lands in, for T cameras.

    Returns flat cell indices ``t * h * w + row * w + col`` (M,), camera depths (M,) float32 and
    point indices (M,) for the M (camera, point) pairs that fall in front of the camera
    (z > ``near``) and inside the grid.
    """
    h, w = grid_size
    uv, z = project_points(points, K, w2c)
    z = z.to(torch.float32)
    col = torch.floor(uv[..., 0] + 0.5)
    row = torch.floor(uv[..., 1] + 0.5)
    ok = (z > near) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    cam, pid = torch.nonzero(ok, as_tuple=True)
    cell = cam * (h * w) + row[cam, pid].long() * w + col[cam, pid].long()
    return cell, z[cam, pid], pid


def nearest_per_cell(cell: torch.Tensor, z: torch.Tensor, pid: torch.Tensor, n_cells: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``n_cells`` cells, the (index, depth) of its nearest point; (-1, 0) if none.

    Ties in depth go to the lowest point index. ``z`` must be positive.
    """
    key = (z.contiguous().view(torch.int32).to(torch.int64) << _INDEX_BITS) | pid
    buf = torch.full((n_cells,), EMPTY_KEY, dtype=torch.int64, device=cell.device)
    buf.scatter_reduce_(0, cell, key, reduce="amin", include_self=True)
    hit = buf != EMPTY_KEY
    index = torch.where(hit, buf & _INDEX_MASK, torch.full_like(buf, -1))
    bits = torch.where(hit, buf >> _INDEX_BITS, torch.zeros_like(buf)).to(torch.int32)
    return index, bits.view(torch.float32)


def zbuffer(
    points: torch.Tensor,
    K: torch.Tensor,
    w2c: torch.Tensor,
    grid_size: tuple[int, int],
    near: float = 1e-3,
    max_elements: int = 1 << 25,
) -> ZBuffer:
    """Splat world points into T cameras with a deterministic nearest-wins z-buffer.

    Args:
        points: (N, 3) float32 world coordinates, N < 2**31.
        K: (T, 3, 3) intrinsics of the target grid (pixels of that grid).
        w2c: (T, 4, 4) world-to-camera poses (OpenCV axes).
        grid_size: (h, w) of the target grid.
        near: points with camera depth <= ``near`` are dropped.
        max_elements: cameras are processed in groups of about ``max_elements // N`` so that the
            temporary (T, N) tensors stay bounded (pixel-resolution RGB clouds are large).
    """
    h, w = grid_size
    T = K.shape[0]
    n = points.shape[0]
    if n >= (1 << 31):
        raise ValueError(f"points: {n} points exceed the z-buffer's 2**31 index range")
    index = torch.full((T, h, w), -1, dtype=torch.int64, device=points.device)
    depth = torch.zeros((T, h, w), dtype=torch.float32, device=points.device)
    if n == 0 or T == 0:
        return ZBuffer(index, depth)
    group = max(1, max_elements // n)
    for t0 in range(0, T, group):
        t1 = min(T, t0 + group)
        cell, z, pid = splat_cells(points, K[t0:t1], w2c[t0:t1], grid_size, near)
        idx, dep = nearest_per_cell(cell, z, pid, (t1 - t0) * h * w)
        index[t0:t1] = idx.view(t1 - t0, h, w)
        depth[t0:t1] = dep.view(t1 - t0, h, w)
    return ZBuffer(index, depth)


def boxes_in_view(bounds: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, grid_size: tuple[int, int],
                  near: float = 1e-3) -> torch.Tensor:
    """(G,) bool: which axis-aligned boxes (G, 2, 3) may put a point on the grid of any of T cameras.

    Conservative frustum test: a box is culled for a camera only when all 8 corners lie outside
    one of its five planes (near, and the grid's outer edges at -0.5 and size - 0.5).
    """
    h, w = grid_size
    lo, hi = bounds[:, 0], bounds[:, 1]
    sel = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], device=bounds.device, dtype=torch.bool)
    corners = torch.where(sel[None], hi[:, None], lo[:, None])  # (G, 8, 3)
    w2c = w2c.to(bounds.device, torch.float32)
    K = K.to(bounds.device, torch.float32)
    cam = torch.einsum("tij,gkj->tgki", w2c[:, :3, :3], corners) + w2c[:, None, None, :3, 3]
    x, y, z = cam.unbind(-1)
    fx, s, cx = (K[:, 0, i].view(-1, 1, 1) for i in range(3))
    fy, cy = K[:, 1, 1].view(-1, 1, 1), K[:, 1, 2].view(-1, 1, 1)
    planes = torch.stack([
        z - near,
        fx * x + s * y + (cx + 0.5) * z,            # u >= -0.5
        (w - 0.5 - cx) * z - fx * x - s * y,        # u <= w - 0.5
        fy * y + (cy + 0.5) * z,                    # v >= -0.5
        (h - 0.5 - cy) * z - fy * y,                # v <= h - 0.5
    ])  # (5, T, G, 8)
    outside = (planes < 0).all(dim=-1).any(dim=0)  # (T, G)
    return (~outside).any(dim=0)


def gather_features(features: torch.Tensor, zb: ZBuffer) -> torch.Tensor:
    """(T, C, h, w) features of the winning points, zeros where the cell is empty."""
    T, h, w = zb.index.shape
    C = features.shape[1]
    if features.shape[0] == 0:
        return torch.zeros((T, C, h, w), dtype=features.dtype, device=features.device)
    flat = zb.index.reshape(-1)
    cells = torch.nonzero(flat >= 0).squeeze(1)
    out = torch.zeros((T * h * w, C), dtype=features.dtype, device=features.device)
    out.index_copy_(0, cells, features.index_select(0, flat[cells]))
    return out.view(T, h, w, C).permute(0, 3, 1, 2).contiguous()

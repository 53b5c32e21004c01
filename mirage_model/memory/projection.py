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
        points: (N, 3) float32 world coordinates, N < 2**32.
        K: (T, 3, 3) intrinsics of the target grid (pixels of that grid).
        w2c: (T, 4, 4) world-to-camera poses (OpenCV axes).
        grid_size: (h, w) of the target grid.
        near: points with camera depth <= ``near`` are dropped.
        max_elements: cameras are processed in groups of about ``max_elements // N`` so that the
            temporary (T, N) tensors stay bounded (pixel-resolution RGB clouds are large).
    """
    h, w = grid_size
    T = K.shape[0]
    device = points.device
    n = points.shape[0]
    if n >= (1 << 31):
        raise ValueError(f"points: {n} points exceed the z-buffer's 2**31 index range")
    index = torch.full((T, h, w), -1, dtype=torch.int64, device=device)
    depth = torch.zeros((T, h, w), dtype=torch.float32, device=device)
    if n == 0 or T == 0:
        return ZBuffer(index, depth)
    point_ids = torch.arange(n, device=device, dtype=torch.int64)
    group = max(1, max_elements // max(n, 1))
    for t0 in range(0, T, group):
        t1 = min(T, t0 + group)
        uv, z = project_points(points, K[t0:t1], w2c[t0:t1])
        z = z.to(torch.float32)
        col = torch.floor(uv[..., 0] + 0.5)
        row = torch.floor(uv[..., 1] + 0.5)
        ok = (z > near) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        cam = torch.arange(t1 - t0, device=device).unsqueeze(1).expand_as(z)
        cell = (cam * (h * w) + row.long().clamp(0, h - 1) * w + col.long().clamp(0, w - 1))[ok]
        depth_bits = z[ok].contiguous().view(torch.int32).to(torch.int64)
        key = (depth_bits << _INDEX_BITS) | point_ids.unsqueeze(0).expand_as(z)[ok]
        buf = torch.full(((t1 - t0) * h * w,), EMPTY_KEY, dtype=torch.int64, device=device)
        buf.scatter_reduce_(0, cell, key, reduce="amin", include_self=True)
        hit = buf != EMPTY_KEY
        idx = torch.where(hit, buf & _INDEX_MASK, torch.full_like(buf, -1))
        bits = torch.where(hit, buf >> _INDEX_BITS, torch.zeros_like(buf)).to(torch.int32)
        index[t0:t1] = idx.view(t1 - t0, h, w)
        depth[t0:t1] = bits.view(torch.float32).view(t1 - t0, h, w)
    return ZBuffer(index, depth)


def gather_features(features: torch.Tensor, zb: ZBuffer) -> torch.Tensor:
    """(T, C, h, w) features of the winning points, zeros where the cell is empty."""
    T, h, w = zb.index.shape
    C = features.shape[1]
    if features.shape[0] == 0:
        return torch.zeros((T, C, h, w), dtype=features.dtype, device=features.device)
    safe = zb.index.clamp(min=0).reshape(-1)
    out = features.index_select(0, safe).view(T, h, w, C)
    out = torch.where(zb.visible.unsqueeze(-1), out, torch.zeros_like(out))
    return out.permute(0, 3, 1, 2).contiguous()

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


def project_cells(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, grid_size: tuple[int, int],
                  near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell every point lands in, for T cameras, as dense (T, N) tensors.

    Returns flat cell indices ``t * h * w + row * w + col`` (int64; ``T * h * w``, one past the last
    cell, where the point is not in front of the camera (z <= ``near``) or falls off the grid) and
    camera depths (float32). One batched ``K [R | t]`` product per camera: the same projection as
    ``camera.project_points``, in fewer passes over the points.
    """
    h, w = grid_size
    T, n = K.shape[0], points.shape[0]
    P = K.to(points.device, points.dtype) @ w2c[:, :3, :].to(points.device, points.dtype)  # (T, 3, 4)
    hom = torch.baddbmm(P[:, :, 3:], P[:, :, :3], points.T.unsqueeze(0).expand(T, 3, n))  # (T, 3, N)
    x, y, z = hom.unbind(1)
    col = torch.floor(x / z + 0.5)
    row = torch.floor(y / z + 0.5)
    ok = (z > near) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    first = torch.arange(0, T * h * w, h * w, device=points.device, dtype=torch.float64)[:, None]
    cell = torch.where(ok, row.double() * w + col + first, float(T * h * w))  # exact in float64
    return cell.long(), z.to(torch.float32)


def splat_cells(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, grid_size: tuple[int, int],
                near: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (camera, point) pairs that land on the grid, as ``project_cells`` but listed.

    Returns flat cell indices ``t * h * w + row * w + col`` (M,), camera depths (M,) float32 and
    point indices (M,) for the M (camera, point) pairs that fall in front of the camera
    (z > ``near``) and inside the grid.
    """
    cell, z = project_cells(points, K, w2c, grid_size, near)
    cam, pid = torch.nonzero(cell < K.shape[0] * grid_size[0] * grid_size[1], as_tuple=True)
    return cell[cam, pid], z[cam, pid], pid


def nearest_per_cell(cell: torch.Tensor, z: torch.Tensor, pid: torch.Tensor, n_cells: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of ``n_cells`` cells, the (index, depth) of its nearest point; (-1, 0) if none.

    ``cell``, ``z`` and ``pid`` broadcast together (listed pairs, or ``project_cells``' dense (T, N)
    with pid (N,)); a cell index of ``n_cells`` is ignored. Ties in depth go to the lowest point
    index. ``z`` must be positive where the cell is valid.
    """
    key = (z.contiguous().view(torch.int32).to(torch.int64) << _INDEX_BITS) | pid
    cell = cell.expand_as(key).reshape(-1)
    buf = torch.full((n_cells + 1,), EMPTY_KEY, dtype=torch.int64, device=cell.device)
    buf.scatter_reduce_(0, cell, key.reshape(-1), reduce="amin", include_self=True)
    buf = buf[:n_cells]
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
        cell, z = project_cells(points, K[t0:t1], w2c[t0:t1], grid_size, near)
        idx, dep = nearest_per_cell(cell, z, torch.arange(n, device=points.device), (t1 - t0) * h * w)
        index[t0:t1] = idx.view(t1 - t0, h, w)
        depth[t0:t1] = dep.view(t1 - t0, h, w)
    return ZBuffer(index, depth)


def boxes_in_view(bounds: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, grid_size: tuple[int, int],
                  near: float = 1e-3) -> torch.Tensor:
    """(G,) bool: which axis-aligned boxes (G, 2, 3) may put a point on the grid of any of T cameras.

    Conservative frustum test: a box is culled for a camera only when it lies wholly outside one of
    the five planes (near, and the grid's outer edges at -0.5 and size - 0.5). Each plane is taken to
    world coordinates once, ``n . p + d >= 0`` inside; a box with centre ``c`` and half-size ``e`` is
    wholly outside when ``n . c + d + |n| . e < 0`` (the test of its 8 corners, in two products).
    """
    h, w = grid_size
    K = K.to(bounds.device, torch.float32)
    w2c = w2c.to(bounds.device, torch.float32)
    fx, s, cx = K[:, 0, 0], K[:, 0, 1], K[:, 0, 2]
    fy, cy = K[:, 1, 1], K[:, 1, 2]
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    # camera-frame planes (T, 5, 4): n . x_cam + d >= 0 inside
    planes = torch.stack([
        torch.stack([zero, zero, one, -near * one], -1),             # z >= near
        torch.stack([fx, s, cx + 0.5, zero], -1),                    # u >= -0.5
        torch.stack([-fx, -s, w - 0.5 - cx, zero], -1),              # u <= w - 0.5
        torch.stack([zero, fy, cy + 0.5, zero], -1),                 # v >= -0.5
        torch.stack([zero, -fy, h - 0.5 - cy, zero], -1),            # v <= h - 0.5
    ], 1)
    # to world: x_cam = R p + t  =>  n . (R p + t) + d = (R^T n) . p + (n . t + d)
    normal = planes[..., :3] @ w2c[:, :3, :3]                        # (T, 5, 3)
    offset = planes[..., 3] + (planes[..., :3] * w2c[:, None, :3, 3]).sum(-1)
    centre = (bounds[:, 0] + bounds[:, 1]) / 2                       # (G, 3)
    half = (bounds[:, 1] - bounds[:, 0]) / 2
    reach = normal @ centre.T + offset[..., None] + normal.abs() @ half.T  # (T, 5, G): farthest corner
    outside = (reach < 0).any(dim=1)                                 # (T, G)
    return (~outside).any(dim=0)


def gather_features(features: torch.Tensor, zb: ZBuffer) -> torch.Tensor:
    """(T, C, h, w) features of the winning points, zeros where the cell is empty.

    Every cell is gathered (empty ones from point 0, then zeroed): the cost is the readout's size,
    whatever the memory holds or shows."""
    T, h, w = zb.index.shape
    C = features.shape[1]
    if features.shape[0] == 0:
        return torch.zeros((T, C, h, w), dtype=features.dtype, device=features.device)
    flat = zb.index.reshape(-1)
    out = features.index_select(0, flat.clamp(min=0))
    out.masked_fill_((flat < 0)[:, None], 0)
    return out.view(T, h, w, C).permute(0, 3, 1, 2).contiguous()


_GAP_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))
"""Row, column and the two diagonals: the lines along which a pair of points bounds a crack."""


def fill_gaps(zb: ZBuffer, frame_index: torch.Tensor, write_cell: torch.Tensor, max_gap: int,
              tolerance: float, passes: int = 2) -> tuple[ZBuffer, torch.Tensor]:
    """Close the cracks a nearest-wins splat leaves when a surface is seen magnified.

    One point per cell covers a surface only at the resolution it was written at: seen from closer
    (moving forward, orbiting in), its points spread apart and empty cells open between them. An
    empty cell is a *crack* when two visible cells on opposite sides of it, along a row, a column
    or a diagonal, with at most ``max_gap`` empty cells between them, show points that were
    neighbours in the grid that wrote them (same ``frame_index``, ``write_cell`` (row, col) at most
    one apart) and agree on depth within ``tolerance`` (relative): the cells between them show the
    surface that joined them. The crack takes the nearer point of the pair (index and depth), and of
    several such pairs the nearest. A hole at the resolution of the write (no depth, an excluded
    object) is bounded by points that were not neighbours and stays empty; so does a depth edge
    opening up (the pair disagrees) and a region no point reaches. A read at the writing camera is
    therefore unchanged. Each pass reads the previous one's whole result, so the outcome does not
    depend on visiting order; a second pass closes the blocks that rounding leaves where no line
    crosses two points (a pair of filled cells then bounds them). ``max_gap = 0`` returns the
    buffer as it is.

    Returns the filled buffer and a (T, h, w) bool mask of the cells it filled.
    """
    filled = torch.zeros_like(zb.index, dtype=torch.bool)
    if max_gap <= 0 or zb.index.numel() == 0:
        return zb, filled
    todo = zb.index < 0
    if not bool(todo.any()):
        return zb, filled
    # one int64 per point, frame << 32 | row << 16 | col; -1 where the write cell is unknown
    # (negative frame indices count as unknown too)
    wc = write_cell.to(torch.int64)
    packed = (frame_index.to(torch.int64) << 32) | (wc[:, 0] << 16) | wc[:, 1]
    packed = torch.where((wc >= 0).all(-1), packed, torch.full_like(packed, -1))
    for _ in range(passes):
        if not bool(todo.any()):
            break
        zb, new = _fill_pass(zb, packed, max_gap, tolerance, todo)
        filled |= new
        # only a cell near one just filled can find a new pair in the next pass
        near_new = torch.nn.functional.max_pool2d(new[:, None].float(), 2 * max_gap + 1, 1, max_gap)[:, 0] > 0
        todo = (zb.index < 0) & near_new
    return zb, filled


def _gap_offsets(max_gap: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat offsets (P,) of the A and B cell of every pair, on a grid ``width`` cells wide: the
    two sides of a cell along a row, a column or a diagonal, at most ``max_gap`` empty cells apart."""
    pairs = [((-a * dy, -a * dx), (b * dy, b * dx)) for dy, dx in _GAP_DIRECTIONS
             for a in range(1, max_gap + 1) for b in range(1, max_gap + 2 - a)]
    return (torch.tensor([ay * width + ax for (ay, ax), _ in pairs]),
            torch.tensor([by * width + bx for _, (by, bx) in pairs]))


def _fill_pass(zb: ZBuffer, packed: torch.Tensor, max_gap: int, tolerance: float, todo: torch.Tensor,
               max_elements: int = 1 << 22) -> tuple[ZBuffer, torch.Tensor]:
    """One pass of ``fill_gaps`` over the empty cells in ``todo`` (T, h, w), every pair of each at
    once (in groups of cells so that the (pairs, cells) temporaries stay under ``max_elements``);
    ``packed``: each point's frame and write cell as ``fill_gaps`` packs them."""
    index, depth = zb.index, zb.depth
    T, h, w = index.shape
    p = max_gap
    W2, H2 = w + 2 * p, h + 2 * p
    pad_i = torch.nn.functional.pad(index, (p, p, p, p), value=-1).reshape(-1)
    pad_d = torch.nn.functional.pad(depth, (p, p, p, p), value=0.0).reshape(-1)
    # per padded cell, its point's packed frame and cell; -1 where empty or unknown
    pad_k = torch.where(pad_i >= 0, packed[pad_i.clamp(min=0)], torch.full_like(pad_i, -1))
    off_a, off_b = _gap_offsets(max_gap, W2)
    off_a, off_b = off_a.to(index.device)[:, None], off_b.to(index.device)[:, None]
    empty = todo.reshape(-1).nonzero()[:, 0]
    t, rc = empty // (h * w), empty % (h * w)
    centre = t * (H2 * W2) + (rc // w + p) * W2 + rc % w + p  # the empty cells in the padded grid
    out_i, out_d = index.clone().reshape(-1), depth.clone().reshape(-1)
    filled = torch.zeros(T * h * w, dtype=torch.bool, device=index.device)
    step = max(1, max_elements // len(off_a))
    for e0 in range(0, len(empty), step):
        cells, at = empty[e0:e0 + step], centre[e0:e0 + step]
        ia, ib = pad_i[at + off_a], pad_i[at + off_b]  # (P, E)
        da, db = pad_d[at + off_a], pad_d[at + off_b]
        ka, kb = pad_k[at + off_a], pad_k[at + off_b]
        near_d = torch.minimum(da, db)
        ok = ((ka >= 0) & (kb >= 0) & (ia != ib) & ((ka >> 32) == (kb >> 32))
              & (((ka >> 16) & 0xFFFF) - ((kb >> 16) & 0xFFFF)).abs().le(1)
              & ((ka & 0xFFFF) - (kb & 0xFFFF)).abs().le(1)
              & ((da - db).abs() <= tolerance * near_d))
        cand = torch.where(ok, near_d, torch.full_like(near_d, float("inf")))
        k = cand.argmin(0, keepdim=True)  # the nearest pair; ties go to the first pair listed
        hit = ok.gather(0, k)[0]
        nearer = torch.where(da <= db, ia, ib).gather(0, k)[0]
        out_i[cells] = torch.where(hit, nearer, out_i[cells])
        out_d[cells] = torch.where(hit, near_d.gather(0, k)[0], out_d[cells])
        filled[cells] = hit
    return ZBuffer(out_i.view(T, h, w), out_d.view(T, h, w)), filled.view(T, h, w)

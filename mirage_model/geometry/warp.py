"""The relative camera warp: where the pixels of one view land in another.

Conventions are those of ``camera``: OpenCV camera axes (x right, y down, z forward), 4x4
camera-to-world poses (float64 recommended), intrinsics in pixels with the centre of pixel column
``i`` at ``x = i``, depth = camera z (not ray length).

For a source camera ``(K_src, c2w_src)`` and a destination camera ``(K_dst, c2w_dst)`` let
``[R | t] = (inverse(c2w_dst) @ c2w_src)[:3]`` map source-camera to destination-camera coordinates.
A source pixel ``p = (x, y, 1)`` at source depth ``z`` lands at the homogeneous destination point

    q = z * A p + b,   A = K_dst R K_src^-1,   b = K_dst t

i.e. at pixel ``(q_x / q_z, q_y / q_z)`` with destination depth ``q_z``. Dividing by ``z``: every
point of the fronto-parallel source plane at depth ``d`` maps by the plane-induced homography
``H(d) = A + b e3^T / d = K_dst (R + t e3^T / d) K_src^-1``, so a plane sweep over inverse depths
``rho = 1 / d`` costs one multiply-add per plane (``A p + rho b``); ``A`` alone (``rho = 0``) is the
homography of the plane at infinity. ``relative_warp`` returns ``(A, b)``; ``reproject_depth``
applies it to a whole depth map.
"""

from __future__ import annotations

import torch

from .camera import invert_pose, pixel_grid

__all__ = ["relative_warp", "reproject_depth"]


def relative_warp(K_src: torch.Tensor, c2w_src: torch.Tensor, K_dst: torch.Tensor,
                  c2w_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, b)`` of the warp from a source into a destination camera (see the module docstring).

    A source pixel ``p = (x, y, 1)`` at source z-depth ``z`` lands at ``q = z * A @ p + b``
    (destination pixel ``q[:2] / q[2]``, destination z-depth ``q[2]``); the plane at source depth
    ``d`` maps by the homography ``A + outer(b, e3) / d``.

    Args:
        K_src, K_dst: (..., 3, 3) intrinsics in pixels of each view's image.
        c2w_src, c2w_dst: (..., 4, 4) OpenCV camera-to-world poses.
        Leading dimensions broadcast (e.g. one source against V destinations: (3, 3) / (4, 4)
        source, (V, 3, 3) / (V, 4, 4) destinations). All on one device, one float dtype.
    Returns:
        A: (..., 3, 3) ``K_dst R K_src^-1``; b: (..., 3) ``K_dst t``, where ``[R | t]`` maps
        source-camera to destination-camera coordinates.
    """
    rel = invert_pose(c2w_dst) @ c2w_src
    A = K_dst @ rel[..., :3, :3] @ torch.linalg.inv(K_src)
    b = (K_dst @ rel[..., :3, 3:])[..., 0]
    return A, b


def reproject_depth(depth: torch.Tensor, K_src: torch.Tensor, c2w_src: torch.Tensor, K_dst: torch.Tensor,
                    c2w_dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Destination pixel positions and depths of every pixel of a source depth map.

    Args:
        depth: (..., H, W) source z-depth (any value; check the returned depth for validity).
        K_src, c2w_src, K_dst, c2w_dst: as in ``relative_warp``; their leading dimensions must
            broadcast against ``depth``'s (e.g. (V, 4, 4) destinations with a (V, H, W) or an
            (H, W) depth). Computed in float64 on ``depth``'s device.
    Returns:
        uv: (..., H, W, 2) float64 continuous destination pixel coordinates (x, y). Meaningful
            only where the destination depth is positive; the division uses ``1e-12`` where
            ``|depth_dst| <= 1e-12``.
        depth_dst: (..., H, W) float64 destination z-depth (<= 0: behind the destination camera).
    """
    h, w = depth.shape[-2:]
    dev = depth.device
    A, b = relative_warp(K_src, c2w_src, K_dst, c2w_dst)
    A, b = A.to(dev), b.to(dev)
    grid = pixel_grid(h, w, torch.float64, dev)
    p = torch.cat([grid, torch.ones(h, w, 1, dtype=torch.float64, device=dev)], dim=-1)
    if A.ndim == 2:
        Ap = p @ A.T  # (H, W, 3)
    else:
        Ap = (p.reshape(h * w, 3) @ A.mT).reshape(*A.shape[:-2], h, w, 3)
    q = Ap * depth.double()[..., None] + b[..., None, None, :]
    z = q[..., 2]
    uv = q[..., :2] / torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))[..., None]
    return uv, z

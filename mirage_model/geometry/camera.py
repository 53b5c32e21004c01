"""Camera conventions, validation and the pixel <-> latent grid mapping.

The one convention of this project, enforced here and converted at the edges (``formats.py``):

* Axes are OpenCV: x right, y down, z forward (the camera looks along +z).
* Poses are 4x4 matrices. ``c2w`` maps camera coordinates to world coordinates, ``w2c`` is its
  inverse. Batched poses have shape (..., 4, 4).
* Intrinsics ``K`` are 3x3, in pixels of the image they belong to.
* Continuous pixel coordinates put the *centre* of pixel column ``i`` at ``x = i`` (OpenCV), so an
  image of width W spans ``[-0.5, W - 0.5]``.
* A latent cell ``u`` on a grid with stride ``s`` (16 for the Wan2.2 VAE) covers pixels
  ``s*u .. s*u + s - 1``; its centre is at pixel ``s*u + (s - 1) / 2`` (7.5 for s = 16). Hence
  ``scale_intrinsics`` maps ``cx -> (cx + 0.5) * w / W - 0.5`` and the latent grid is then used
  with integer cell indices exactly like an image. (Scaling ``cx`` by ``w / W`` alone, as the
  reference release does, puts every cell half a cell off; ``tests/test_camera.py`` shows it.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ROTATION_TOLERANCE = 1e-3
"""Largest allowed |R^T R - I| entry (and |det R - 1|) before a pose is rejected."""


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def as_tensor(x, dtype: torch.dtype = torch.float64, name: str = "value") -> torch.Tensor:
    """Convert numpy/list/tensor input to a tensor of ``dtype`` (keeps the device of tensors)."""
    try:
        return torch.as_tensor(x, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: cannot convert to a tensor ({exc})") from exc


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ValueError naming ``name`` when ``x`` holds NaN or inf."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: {bad} non-finite value(s) (NaN or inf)")
    return x


def check_shape(x: torch.Tensor, tail: Sequence[int], name: str) -> torch.Tensor:
    """Raise ValueError unless ``x`` has shape (..., *tail)."""
    tail = tuple(tail)
    if x.ndim < len(tail) or tuple(x.shape[x.ndim - len(tail):]) != tail:
        want = "(..., " + ", ".join(map(str, tail)) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    return x


def validate_pose(pose, name: str = "c2w", tol: float = ROTATION_TOLERANCE) -> torch.Tensor:
    """Return ``pose`` as a (..., 4, 4) float64 tensor after checking it is a rigid transform.

    Checks: shape, finiteness, last row ``[0, 0, 0, 1]``, orthonormal rotation with det +1
    (within ``tol``). Errors name ``name`` and the index of the first bad pose.
    """
    pose = as_tensor(pose, torch.float64, name)
    check_shape(pose, (4, 4), name)
    check_finite(pose, name)
    flat = pose.reshape(-1, 4, 4)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=flat.dtype, device=flat.device)
    row_err = (flat[:, 3] - bottom).abs().amax(dim=-1)
    rot = flat[:, :3, :3]
    eye = torch.eye(3, dtype=flat.dtype, device=flat.device)
    ortho_err = (rot.transpose(-1, -2) @ rot - eye).abs().amax(dim=(-1, -2))
    det_err = (torch.linalg.det(rot) - 1.0).abs()
    for label, err in (("last row is not [0, 0, 0, 1]", row_err),
                       ("rotation is not orthonormal", ortho_err),
                       ("rotation determinant is not +1", det_err)):
        bad = torch.nonzero(err > tol).flatten()
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{name}[{i}]: {label} (error {float(err[i]):.3g} > tolerance {tol:g})")
    return pose


def validate_intrinsics(K, name: str = "K") -> torch.Tensor:
    """Return ``K`` as a (..., 3, 3) float64 tensor after checking finite, positive focal lengths."""
    K = as_tensor(K, torch.float64, name)
    check_shape(K, (3, 3), name)
    check_finite(K, name)
    flat = K.reshape(-1, 3, 3)
    bad = torch.nonzero((flat[:, 0, 0] <= 0) | (flat[:, 1, 1] <= 0)).flatten()
    if len(bad):
        raise ValueError(f"{name}[{int(bad[0])}]: focal lengths must be positive")
    if not bool(torch.allclose(flat[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=flat.dtype,
                                                        device=flat.device).expand_as(flat[:, 2]))):
        raise ValueError(f"{name}: last row must be [0, 0, 1]")
    return K


def validate_image_size(hw, name: str = "image_size") -> tuple[int, int]:
    """Return ``(H, W)`` as positive ints."""
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected (height, width), got {hw!r}") from exc
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: height and width must be positive, got {(h, w)}")
    return h, w


# ----------------------------------------------------------------------------------------------
# Poses and intrinsics
# ----------------------------------------------------------------------------------------------
def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """Invert rigid (..., 4, 4) transforms exactly (R^T, -R^T t), c2w <-> w2c."""
    rot = pose[..., :3, :3]
    trans = pose[..., :3, 3:]
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rot.transpose(-1, -2)
    out[..., :3, 3:] = -rot.transpose(-1, -2) @ trans
    out[..., 3, 3] = 1.0
    return out


def make_intrinsics(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """A 3x3 float64 pinhole matrix."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def intrinsics_from_fov(fov_x_deg: float, image_size: tuple[int, int]) -> torch.Tensor:
    """Pinhole K with horizontal field of view ``fov_x_deg`` and the principal point centred."""
    h, w = validate_image_size(image_size)
    fx = 0.5 * w / math.tan(math.radians(fov_x_deg) / 2)
    return make_intrinsics(fx, fx, (w - 1) / 2, (h - 1) / 2)


def scale_intrinsics(K: torch.Tensor, src_size: tuple[int, int], dst_size: tuple[int, int]) -> torch.Tensor:
    """Map intrinsics from an image of ``src_size`` (H, W) to one of ``dst_size`` covering the same view.

    Uses the pixel-centre convention of this module: ``c' = (c + 0.5) * scale - 0.5``.
    """
    sh, sw = validate_image_size(src_size, "src_size")
    dh, dw = validate_image_size(dst_size, "dst_size")
    sx, sy = dw / sw, dh / sh
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


def latent_grid_size(image_size: tuple[int, int], stride: int = 16) -> tuple[int, int]:
    """Latent grid (h, w) for an image (H, W); both must be multiples of ``stride``."""
    h, w = validate_image_size(image_size)
    if h % stride or w % stride:
        raise ValueError(f"image_size {(h, w)} must be a multiple of the latent stride {stride}")
    return h // stride, w // stride


def latent_intrinsics(K: torch.Tensor, image_size: tuple[int, int], stride: int = 16) -> torch.Tensor:
    """Intrinsics of the latent grid: integer cell (u, v) is the centre of its 16x16 pixel block."""
    return scale_intrinsics(K, image_size, latent_grid_size(image_size, stride))


def crop_intrinsics(K: torch.Tensor, top: float, left: float) -> torch.Tensor:
    """Intrinsics after cropping ``top`` rows and ``left`` columns off the image."""
    out = K.clone()
    out[..., 0, 2] = K[..., 0, 2] - left
    out[..., 1, 2] = K[..., 1, 2] - top
    return out


# ----------------------------------------------------------------------------------------------
# Projection and back-projection
# ----------------------------------------------------------------------------------------------
def pixel_grid(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(h, w, 2) pixel-centre coordinates (x, y) = (column, row)."""
    ys = torch.arange(h, dtype=dtype, device=device)
    xs = torch.arange(w, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def backproject_depth(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points (h, w, 3) for every pixel centre of a z-depth map (h, w).

    ``depth`` is the z coordinate in the camera frame (not the ray length); ``K`` belongs to the
    grid of ``depth`` (use ``latent_intrinsics`` for a latent grid).
    """
    h, w = depth.shape
    dtype = depth.dtype if depth.is_floating_point() else torch.float32
    K = K.to(device=depth.device, dtype=torch.float64)
    c2w = c2w.to(device=depth.device, dtype=torch.float64)
    grid = pixel_grid(h, w, torch.float64, depth.device)
    x = (grid[..., 0] - K[0, 2] - K[0, 1] * (grid[..., 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (grid[..., 1] - K[1, 2]) / K[1, 1]
    z = depth.to(torch.float64)
    cam = torch.stack([x * z, y * z, z], dim=-1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    return world.to(dtype)


def project_points(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points (N, 3) into T cameras.

    Args:
        points: (N, 3) world coordinates.
        K: (T, 3, 3) intrinsics of the target grid.
        w2c: (T, 4, 4) world-to-camera poses.
    Returns:
        uv: (T, N, 2) continuous pixel coordinates (x, y) in the module's convention.
        z: (T, N) camera-frame depth (positive in front of the camera).
    """
    dtype = points.dtype
    K = K.to(points.device, dtype)
    w2c = w2c.to(points.device, dtype)
    cam = torch.einsum("tij,nj->tni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    z = cam[..., 2]
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    x = cam[..., 0] / safe_z
    y = cam[..., 1] / safe_z
    u = K[:, None, 0, 0] * x + K[:, None, 0, 1] * y + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * y + K[:, None, 1, 2]
    return torch.stack([u, v], dim=-1), z


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """Convert camera-to-world poses from OpenGL camera axes (y up, z back) to OpenCV axes.

    The world frame is unchanged; only the camera's own y and z axes flip.
    """
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
    return c2w @ flip


opencv_to_opengl = opengl_to_opencv  # the flip is its own inverse


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """OpenCV c2w (4, 4) for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear up in the image; with this project's
    y-down worlds that is -y (the default).
    """
    eye = as_tensor(eye, name="eye")
    target = as_tensor(target, name="target")
    up = as_tensor(up, name="up")
    z = target - eye
    if float(z.norm()) < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = z / z.norm()
    x = torch.linalg.cross(-up, z)  # image x (right) = down x forward (OpenCV: x = y cross z)
    if float(x.norm()) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to up")
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w

"""A rendered test clip with exact ground truth for the perception stage (poses, depth, masks).

The camera path is chosen to be easy for SfM and stereo and still realistic: it moves about 1 m
sideways inside ``synthetic.default_scene`` (8 x 3 x 8 m room, furniture at 1.5-5.7 m) while
looking into the room, with a moderate rotation. See ``synthetic_clip`` for the motions.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mirage_model.geometry.camera import intrinsics_from_fov, look_at, validate_image_size
from mirage_model.geometry.trajectory import Trajectory
from mirage_model.io.images import to_uint8
from mirage_model.synthetic import SyntheticScene, default_scene, render_trajectory

__all__ = ["MOTIONS", "SyntheticClip", "synthetic_clip"]

MOTIONS = ("arc", "arc_down", "line", "rotate", "static", "follow")


@dataclass(eq=False)
class SyntheticClip:
    """N rendered frames and their ground truth.

    frames: (N, H, W, 3) uint8 (what a decoded video gives). c2w: (N, 4, 4) float64 OpenCV.
    K: (3, 3) float64 pixels of ``image_size``. depth: (N, H, W) float32 z-depth (0 for sky).
    dynamic_mask, sky_mask: (N, H, W) bool. Frame ``i`` is rendered at time ``i / fps``.
    """

    frames: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    depth: torch.Tensor
    dynamic_mask: torch.Tensor
    sky_mask: torch.Tensor
    image_size: tuple[int, int]
    fps: float
    motion: str
    scene: SyntheticScene

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def rgb(self) -> torch.Tensor:
        """(N, H, W, 3) float32 frames in [0, 1] (from the uint8 frames)."""
        return self.frames.float() / 255.0

    @property
    def trajectory(self) -> Trajectory:
        """The ground-truth cameras as a ``Trajectory``."""
        return Trajectory(self.c2w, self.K, self.image_size,
                          torch.arange(len(self), dtype=torch.float64) / self.fps)


def _camera_path(motion: str, n: int, scene: SyntheticScene | None = None, fps: float = 16.0) -> torch.Tensor:
    """(n, 4, 4) c2w for the named motion (world y is down; the room centre is the origin)."""
    fr = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    poses = []
    if motion == "follow":
        # The camera follows the rolling ball: it dollies along +x at 0.6 m/s, 3.4 m from the
        # ball's path, and pans to keep the ball centred. The ball barely moves in the image
        # while the room streams past: the case where "what moves in the image" is the wrong test.
        if scene is None or scene.moving is None:
            raise ValueError("motion 'follow' needs a scene with a moving object")
        for i in range(n):
            t = i / fps
            ball = scene.moving.center_at(t).to(torch.float64)
            eye = torch.tensor([-1.2 + 0.6 * t, -0.4, -0.8], dtype=torch.float64)
            poses.append(look_at(eye, ball))
        return torch.stack(poses)
    if motion in ("arc", "arc_down"):
        # An arc of radius 3.2 m around a point 3 m into the room, -10 .. +10 degrees: the camera
        # moves ~1.1 m sideways and turns 20 degrees to keep the point centred. "arc_down" also
        # descends 0.6 m: the ball rolls along +x, and seen from a camera moving only along x it
        # would move along the epipolar lines, like a static ball at another depth.
        target = torch.tensor([0.0, 0.3, 3.0], dtype=torch.float64)
        drop = 0.6 if motion == "arc_down" else 0.0
        for f in fr:
            a = math.radians(-10.0 + 20.0 * f)
            eye = target + torch.tensor([3.2 * math.sin(a), -0.5 - drop / 2 + drop * f, -3.2 * math.cos(a)],
                                        dtype=torch.float64)
            poses.append(look_at(eye, target))
    elif motion == "line":
        # 1 m to the right while looking diagonally into the front-right corner (two walls, the
        # floor and a table: not one dominant plane), yawing from 32 to 38 degrees.
        for f in fr:
            eye = torch.tensor([-0.5 + f, -0.2, -0.2], dtype=torch.float64)
            yaw = math.radians(32.0 + 6.0 * f)
            poses.append(look_at(eye, eye + torch.tensor([math.sin(yaw), 0.15, math.cos(yaw)],
                                                         dtype=torch.float64)))
    elif motion == "rotate":
        # Pure rotation in place (no baseline): 20 degrees of yaw.
        eye = torch.tensor([0.0, -0.2, -0.2], dtype=torch.float64)
        for f in fr:
            yaw = math.radians(-10.0 + 20.0 * f)
            poses.append(look_at(eye, eye + torch.tensor([math.sin(yaw), 0.15, math.cos(yaw)],
                                                         dtype=torch.float64)))
    elif motion == "static":
        pose = look_at((0.0, -0.2, -0.2), (0.0, 0.3, 3.0))
        poses = [pose.clone() for _ in fr]
    else:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    return torch.stack(poses)


@contextmanager
def _torch_threads(n: int):
    """Temporarily limit torch's intra-op threads (restored afterwards).

    The renderer runs many small tensor ops; on a busy 2-core machine intra-op threading made
    them 10-30x slower (threads waiting on each other), on an idle one it saves little.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(min(n, old))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def synthetic_clip(seed: int = 0, n_frames: int = 21, image_size: tuple[int, int] = (240, 320),
                   moving_object: bool = True, motion: str = "arc", *, open_ceiling: bool = False,
                   fov_x_deg: float = 70.0, fps: float = 16.0) -> SyntheticClip:
    """Render a clip of ``default_scene(seed, moving_object, open_ceiling)`` with exact ground truth.

    Motions: "arc" (default; ~1.1 m sideways on an arc while turning 20 degrees towards a point
    3 m ahead: good baseline for SfM and stereo), "line" (1 m sideways translation looking into
    a corner, 6 degrees of yaw), "rotate" (pure rotation in place: no baseline), "static"
    (fixed camera; only the ball moves) and "follow" (the camera dollies along with the ball and
    pans to keep it centred; needs ``moving_object``). With ``open_ceiling`` the upper image rows see sky (non-empty sky masks). The
    principal point is centred and the field of view is ``fov_x_deg`` horizontally.
    """
    size = validate_image_size(image_size)
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    K = intrinsics_from_fov(fov_x_deg, size)
    scene = default_scene(seed, moving_object=moving_object, open_ceiling=open_ceiling)
    c2w = _camera_path(motion, int(n_frames), scene, float(fps))
    with _torch_threads(1):
        out = render_trajectory(scene, K, c2w, size, fps=fps)
    frames = to_uint8(out.rgb)
    return SyntheticClip(frames=frames, c2w=c2w, K=K, depth=out.depth, dynamic_mask=out.dynamic_mask,
                         sky_mask=out.sky_mask, image_size=size, fps=float(fps), motion=motion,
                         scene=scene)

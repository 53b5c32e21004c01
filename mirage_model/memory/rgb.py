"""The RGB twin: what Spatia / GEN3C / Voyager-style peers cache, behind the same interface.

Coloured points at pixel resolution (one per pixel, 8-bit colour). A read renders the points to
the target cameras at full resolution with the *same* z-buffer as the latent memory, fills the
render's holes with the nearest rendered colour (``nearest_fill``; the visibility says which cells
are memory), then VAE-encodes the rendered video to get conditioning latents. Without the fill the
encoder, whose attention spans the whole frame, carries black holes into the latents of the cells
the memory does see. It exists to be compared with
``LatentMemory``: same writes, same reads, very different cost.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mirage_model.io.images import to_uint8
from mirage_model.memory.base import MemoryConfig, PointMemory, Readout
from mirage_model.memory.latent import LATENT_STRIDE, latent_frame_indices
from mirage_model.vae import encode_video


def nearest_fill(pixels: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) rendered frames with each empty pixel (``visible`` (T, H, W) False) given the
    colour of the nearest rendered one (OpenCV's distance transform with labels, 5x5 mask: nearly
    Euclidean); frames with nothing rendered are returned as they are."""
    out = pixels.clone()
    flat = pixels.reshape(*pixels.shape[:2], -1)
    for t in range(pixels.shape[0]):
        vis = visible[t].bool().cpu().numpy()
        if vis.all() or not vis.any():
            continue
        # each empty pixel is labelled with the rendered pixel nearest to it; rendered pixels are
        # labelled 1, 2, ... in raster order
        _, labels = cv2.distanceTransformWithLabels((~vis).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
        source = torch.from_numpy(np.flatnonzero(vis)[labels.ravel() - 1]).to(pixels.device)
        out[t] = flat[t][:, source].reshape(pixels.shape[1:])
    return out


class RGBPointCache(PointMemory):
    """Coloured point cloud at pixel resolution; reads = render + VAE encode."""

    stride = 1
    feature_dtype = torch.uint8

    def __init__(self, vae=None, config: MemoryConfig | None = None, device="cpu", fill_holes: bool = True):
        super().__init__(3, config, device)
        self.vae = vae
        self.fill_holes = fill_holes

    def insert(self, rgb, depth, K, c2w, image_size, exclude=None, frame_index: int = 0,
               counts: dict[str, int] | None = None) -> int:
        """Back-project one frame's pixels; returns the number of points added.

        ``rgb`` is (H, W, 3) or (3, H, W), uint8 or float in [0, 1]; the other arguments are as
        in ``LatentMemory.insert``.
        """
        rgb = torch.as_tensor(rgb)
        if rgb.ndim != 3 or 3 not in (rgb.shape[0], rgb.shape[-1]):
            raise ValueError(f"rgb: expected (H, W, 3) or (3, H, W), got shape {tuple(rgb.shape)}")
        if rgb.shape[-1] != 3:
            rgb = rgb.permute(1, 2, 0)
        if rgb.is_floating_point():
            rgb = to_uint8(rgb)
        return self._insert_grid(rgb, depth, K, c2w, image_size, exclude, frame_index, counts)

    init = insert

    def render(self, K, c2w=None, *, w2c=None, image_size) -> Readout:
        """Full-resolution render: rgb (T, 3, H, W) uint8, coverage (T, H, W), depth (T, H, W)."""
        return self.read_grid(K, c2w, w2c=w2c, image_size=image_size)

    def read(self, K, c2w, image_size) -> Readout:
        """Render the 4n + 1 pixel-frame cameras of a chunk and VAE-encode them (the peers' read).

        Returns n + 1 latent frames: normalised latents (float32), and the visibility / depth of
        the pixel frame each latent frame takes its camera from (frames 0, 4, 8, ...), pooled
        onto the latent grid (a cell is visible when most of its pixels are covered).
        """
        if self.vae is None:
            raise ValueError("RGBPointCache.read needs a VAE: construct it with vae=load_vae(...)")
        c2w = torch.as_tensor(c2w)
        idx = latent_frame_indices(c2w.shape[0])
        rendered = self.render(K, c2w, image_size=image_size)
        pixels = nearest_fill(rendered.features, rendered.visibility) if self.fill_holes else rendered.features
        video = pixels.to(torch.float32).div_(127.5).sub_(1.0)  # (T, 3, H, W) in [-1, 1]
        latents = encode_video(self.vae, video.permute(1, 0, 2, 3).unsqueeze(0))[0]
        s = LATENT_STRIDE
        cover = rendered.visibility[idx].to(torch.float32).unsqueeze(1)
        frac = F.avg_pool2d(cover, s)[:, 0]
        depth_sum = F.avg_pool2d(rendered.depth[idx].unsqueeze(1), s)[:, 0]
        visible = frac > 0.5
        depth = torch.where(visible, depth_sum / frac.clamp(min=1e-6), torch.zeros_like(depth_sum))
        # cells visible only thanks to the pixels the crack fill gave a point
        bare = (rendered.visibility & ~rendered.filled)[idx].to(torch.float32).unsqueeze(1)
        filled = visible & ~(F.avg_pool2d(bare, s)[:, 0] > 0.5)
        return Readout(latents.permute(1, 0, 2, 3).contiguous(), visible, depth, filled)

    read_chunk = read

    @classmethod
    def load(cls, path: str | os.PathLike, vae=None, device="cpu") -> RGBPointCache:
        """Load a cache written by ``save`` (the VAE is not stored)."""
        tensors, meta = cls._load_state(path, device)
        mem = cls(vae, cls._config_from_meta(meta), device)
        mem._restore(tensors, meta)
        return mem

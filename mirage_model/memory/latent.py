"""The latent spatial memory: one point per VAE latent cell, carrying the model's own latent."""

from __future__ import annotations

import os

import torch

from mirage_model.memory.base import MemoryConfig, PointMemory, Readout

LATENT_STRIDE = 16
"""Pixels per latent cell of the Wan2.2 VAE (2x2 patchify, then 8x)."""

TEMPORAL_STRIDE = 4
"""Pixel frames per latent frame of the Wan2.2 VAE (latent j >= 1 takes pixel frame 4j's camera)."""


def latent_frame_indices(n_pixel_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> list[int]:
    """Pixel frame whose camera each latent frame uses: 0, 4, 8, ... (needs 4n + 1 frames)."""
    if n_pixel_frames < 1 or (n_pixel_frames - 1) % temporal_stride:
        raise ValueError(f"a chunk must have {temporal_stride}n + 1 pixel frames, got {n_pixel_frames}")
    return list(range(0, n_pixel_frames, temporal_stride))


class LatentMemory(PointMemory):
    """A 3D point cache whose points hold VAE latents (48 channels for Wan2.2), not colours.

    Written from a latent frame + depth + camera, read for any camera by projecting onto the
    latent grid with a deterministic z-buffer (see ``projection.py``).
    """

    stride = LATENT_STRIDE
    feature_dtype = torch.float16

    def __init__(self, channels: int = 48, config: MemoryConfig | None = None, device="cpu"):
        super().__init__(channels, config, device)

    def insert(self, latent, depth, K, c2w, image_size, exclude=None, frame_index: int = 0,
               counts: dict[str, int] | None = None) -> int:
        """Back-project one latent frame into the memory; returns the number of points added.

        Args:
            latent: (C, h, w) latent of one latent frame, h, w = H/16, W/16.
            depth: (H', W') camera z-depth of the same view at any resolution (pixel or latent);
                resized bilinearly to the latent grid; <= 0 means unknown. NaN/inf raise.
            K: (3, 3) intrinsics in pixels of ``image_size``.
            c2w: (4, 4) camera-to-world (OpenCV).
            image_size: (H, W) of the frame the latent encodes.
            exclude: optional (H'', W'') bool mask of cells never to write (moving objects, sky),
                resized with nearest sampling at cell centres.
            frame_index: pixel frame index recorded with each new point.
        """
        latent = torch.as_tensor(latent)
        if latent.ndim != 3:
            raise ValueError(f"latent: expected (C, h, w), got shape {tuple(latent.shape)}")
        if latent.shape[0] != self.channels:
            raise ValueError(f"latent: expected {self.channels} channels, got {latent.shape[0]}")
        return self._insert_grid(latent.permute(1, 2, 0), depth, K, c2w, image_size, exclude, frame_index, counts)

    init = insert  # initialising from the first frame is an insert into an empty memory

    def read(self, K, c2w=None, *, w2c=None, image_size) -> Readout:
        """Readout at T latent-frame cameras: features (T, C, h, w), visibility, depth."""
        return self.read_grid(K, c2w, w2c=w2c, image_size=image_size)

    def read_chunk(self, K, c2w, image_size) -> Readout:
        """Readout for a chunk given its 4n + 1 pixel-frame cameras (uses frames 0, 4, 8, ...)."""
        K = torch.as_tensor(K)
        c2w = torch.as_tensor(c2w)
        idx = latent_frame_indices(c2w.shape[0])
        K = K if K.ndim == 2 else K[idx]
        return self.read(K, c2w[idx], image_size=image_size)

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> LatentMemory:
        """Load a memory written by ``save``."""
        tensors, meta = cls._load_state(path, device)
        mem = cls(int(meta["channels"]), cls._config_from_meta(meta), device)
        mem._restore(tensors, meta)
        return mem

"""Point memories: the latent spatial memory and its RGB twin, sharing one z-buffer."""

from mirage_model.memory.base import MemoryConfig, PointMemory, Readout, resize_depth, resize_mask
from mirage_model.memory.latent import LATENT_STRIDE, TEMPORAL_STRIDE, LatentMemory, latent_frame_indices
from mirage_model.memory.projection import ZBuffer, gather_features, zbuffer
from mirage_model.memory.rgb import RGBPointCache, nearest_fill

__all__ = [
    "LATENT_STRIDE", "TEMPORAL_STRIDE", "LatentMemory", "MemoryConfig", "PointMemory", "RGBPointCache",
    "Readout", "ZBuffer", "gather_features", "latent_frame_indices", "nearest_fill", "resize_depth", "resize_mask",
    "zbuffer",
]

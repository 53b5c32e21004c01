"""Image value conversions shared by the model layer, the pipeline and the jobs."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["to_uint8"]

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def to_uint8(x: ArrayT) -> ArrayT:
    """Float image values in [0, 1] -> uint8 levels 0..255, as the same kind (numpy or torch).

    The rule, the one used everywhere in the project: clamp to [0, 1], scale by 255, round half
    up, computed as ``uint8(clamp(x, 0, 1) * 255 + 0.5)`` in ``x``'s own float dtype (so float32
    input gives exactly what that expression gives in float32). Shape and device are kept.
    uint8 input is returned unchanged. Anything else that is not a numpy array or a torch tensor
    is converted with ``np.asarray`` first.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.uint8:
            return x
        return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    arr = np.asarray(x)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

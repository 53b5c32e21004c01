"""Building a diffusers model from a preset config with deterministic random weights."""

from __future__ import annotations

import torch


def seeded_model(model_cls, config: dict, seed: int, dtype: torch.dtype = torch.float32):
    """``model_cls(**config)`` initialised from ``seed`` (global RNG untouched), in ``dtype``, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(**config)
    if dtype != torch.float32:  # diffusers warns on casts to float32 itself
        model = model.to(dtype)
    return model.eval()

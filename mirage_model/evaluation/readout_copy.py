"""``ReadoutCopyModel``: a denoiser that reproduces the memory readout wherever the memory sees.

Where the conditioning's visibility channel is 1 and the token is being denoised (timestep > 0),
it returns the flow-matching velocity whose clean estimate *is* the readout:
``x_t = (1 - s) x0 + s e`` and ``v = e - x0`` give ``v = (x_t - readout) / s``. Everywhere else it
defers to the wrapped transformer.

It is the ceiling of a model that trusts its memory completely, and the instrument that checks
the memory loop's wiring with no learning involved: chunk cameras, readout, write-back and the
sampler's clean-latent pinning must all be right for revisits to come back faithful
(tests/test_memory_ablation.py). It is not a world model: it cannot imagine what the memory lacks.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class ReadoutCopyModel(nn.Module):
    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                memory_cond: torch.Tensor | None = None) -> torch.Tensor:
        v = self.transformer(hidden_states, timestep, encoder_hidden_states, memory_cond)
        if memory_cond is None:
            return v
        B, C, T, h, w = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(B, (T // p_t) * (h // p_h) * (w // p_w))
        sigma = (timestep.float() / 1000.0).reshape(B, T // p_t, h // p_h, w // p_w)
        sigma = sigma.repeat_interleave(p_t, 1).repeat_interleave(p_h, 2).repeat_interleave(p_w, 3)[:, None]
        readout, visible = memory_cond[:, :C].float(), memory_cond[:, C:C + 1] > 0.5
        copy = visible & (sigma > 0)
        v_copy = (hidden_states.float() - readout) / sigma.clamp(min=1e-6)
        return torch.where(copy, v_copy, v.float()).to(v.dtype)

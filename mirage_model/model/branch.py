"""The memory branch: a VACE/ControlNet-style side branch that feeds the memory readout to the DiT.

Design (docs/method.md §4, after diffusers' ``WanVACETransformer3DModel``):

* the conditioning (per target latent frame: 48-ch readout + 1-ch visibility = 49 ch) is
  patch-embedded with the backbone's patch size (Conv3d);
* the first branch block adds the backbone's *input* tokens (after the backbone's patch embedding);
* each branch block is diffusers' ``WanTransformerBlock`` (same timestep modulation, text context and
  RoPE as the backbone, all computed once by the backbone) followed by a ZERO-INITIALISED output
  projection; block ``i``'s projected output is added to the backbone hidden states right after
  backbone block ``block_map[i]``. At initialisation the branch is therefore an exact no-op.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_wan import WanTransformerBlock


class MemoryBranchBlock(WanTransformerBlock):
    """A ``WanTransformerBlock`` plus a zero-initialised output projection (the residual "hint").

    Parameter names of the inner block match the backbone's blocks (``attn1.to_q`` ...), so weights can be
    copied from a backbone block with ``load_state_dict(strict=False)``.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str | None = "rms_norm_across_heads",
                 cross_attn_norm: bool = True, eps: float = 1e-6, added_kv_proj_dim: int | None = None):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.proj_out = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, control_hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                temb: torch.Tensor, rotary_emb) -> tuple[torch.Tensor, torch.Tensor]:
        control_hidden_states = super().forward(control_hidden_states, encoder_hidden_states, temb, rotary_emb)
        return self.proj_out(control_hidden_states), control_hidden_states


class MemoryBranch(ModelMixin, ConfigMixin):
    """Side branch producing one residual per entry of ``block_map`` (see module docstring).

    ``block_map[i]`` is the backbone block index after which branch block ``i``'s output is added; it
    must be strictly increasing. Default: one branch block per two backbone blocks, ``[0, 2, 4, ...]``.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["MemoryBranchBlock"]
    _keep_in_fp32_modules = ["scale_shift_table", "norm1", "norm2", "norm3"]

    @register_to_config
    def __init__(
        self,
        cond_channels: int = 49,
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        ffn_dim: int = 14336,
        patch_size: tuple[int, ...] = (1, 2, 2),
        block_map: list[int] | None = None,
        num_backbone_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if block_map is None:
            block_map = list(range(0, num_backbone_layers, 2))
        block_map = [int(i) for i in block_map]
        if not block_map:
            raise ValueError("block_map must name at least one backbone block")
        if any(b <= a for a, b in zip(block_map, block_map[1:])):
            raise ValueError(f"block_map must be strictly increasing, got {block_map}")
        if block_map[0] < 0 or block_map[-1] >= num_backbone_layers:
            raise ValueError(f"block_map {block_map} out of range for {num_backbone_layers} backbone blocks")
        self.register_to_config(block_map=block_map)

        inner_dim = num_attention_heads * attention_head_dim
        self.patch_embedding = nn.Conv3d(cond_channels, inner_dim, kernel_size=tuple(patch_size),
                                         stride=tuple(patch_size))
        self.blocks = nn.ModuleList([
            MemoryBranchBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps)
            for _ in block_map
        ])
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone, block_map: list[int] | None = None, cond_channels: int = 49,
                      copy_weights: bool = False, seed: int | None = None) -> MemoryBranch:
        """A branch whose dimensions match ``backbone`` (a ``WanTransformer3DModel``).

        ``copy_weights``: initialise branch block ``i`` from backbone block ``block_map[i]`` (the output
        projections stay zero, so the branch is still a no-op).
        """
        c = backbone.config
        kwargs = dict(cond_channels=cond_channels, num_attention_heads=c.num_attention_heads,
                      attention_head_dim=c.attention_head_dim, ffn_dim=c.ffn_dim,
                      patch_size=tuple(c.patch_size), block_map=block_map, num_backbone_layers=c.num_layers,
                      cross_attn_norm=c.cross_attn_norm, qk_norm=c.qk_norm, eps=c.eps)
        if seed is None:
            branch = cls(**kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                branch = cls(**kwargs)
        if copy_weights:
            for blk, idx in zip(branch.blocks, branch.config.block_map):
                missing, unexpected = blk.load_state_dict(backbone.blocks[idx].state_dict(), strict=False)
                assert not unexpected and set(missing) == {"proj_out.weight", "proj_out.bias"}, (missing, unexpected)
        p = next(backbone.parameters())
        branch = branch.to(p.device)
        return branch if p.dtype == torch.float32 else branch.to(p.dtype)

    # ------------------------------------------------------------------------------------------
    def forward(self, memory_cond: torch.Tensor, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_proj: torch.Tensor, rotary_emb) -> list[torch.Tensor]:
        """Residuals, one per branch block (``(B, tokens, inner_dim)``), in ``block_map`` order.

        Args:
            memory_cond: ``(B, cond_channels, T, h, w)`` conditioning on the same latent grid as the
                backbone input.
            hidden_states: the backbone's patch-embedded input tokens ``(B, tokens, inner_dim)``.
            encoder_hidden_states, timestep_proj, rotary_emb: as computed by the backbone (text context
                after its text embedder; ``(B, 6, D)`` or per-token ``(B, tokens, 6, D)`` modulation; RoPE).
        """
        control = self.patch_embedding(memory_cond.to(self.patch_embedding.weight.dtype))
        control = control.flatten(2).transpose(1, 2).contiguous()
        if control.shape != hidden_states.shape:
            raise ValueError(f"memory_cond tokens {tuple(control.shape)} do not match the backbone's "
                             f"{tuple(hidden_states.shape)}: give it the same (T, h, w) grid")
        control = control.to(hidden_states.dtype) + hidden_states  # first block: add backbone input tokens
        hints = []
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hint, control = self._gradient_checkpointing_func(
                    block, control, encoder_hidden_states, timestep_proj, rotary_emb)
            else:
                hint, control = block(control, encoder_hidden_states, timestep_proj, rotary_emb)
            hints.append(hint)
        return hints

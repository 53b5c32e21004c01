"""MirageTransformer: a Wan2.2 DiT backbone (``WanTransformer3DModel``, untouched) + a ``MemoryBranch``.

``forward`` composes the backbone's own submodules in the same order as diffusers'
``WanTransformer3DModel.forward`` (rope -> patch embedding -> time/text embedding -> blocks -> output
norm/projection -> unpatchify); the only addition is the branch's residuals after the mapped blocks.
With ``memory_cond=None`` it is exactly the backbone's forward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import WanTransformer3DModel

from .branch import MemoryBranch


class MirageTransformer(nn.Module):
    def __init__(self, backbone: WanTransformer3DModel, branch: MemoryBranch):
        super().__init__()
        bc, rc = backbone.config, branch.config
        if (rc.num_attention_heads * rc.attention_head_dim != bc.num_attention_heads * bc.attention_head_dim
                or tuple(rc.patch_size) != tuple(bc.patch_size) or rc.block_map[-1] >= bc.num_layers):
            raise ValueError("branch config does not match the backbone")
        self.backbone = backbone
        self.branch = branch

    @classmethod
    def from_backbone(cls, backbone: WanTransformer3DModel, block_map: list[int] | None = None,
                      cond_channels: int = 49, copy_weights: bool = False,
                      seed: int | None = None) -> MirageTransformer:
        return cls(backbone, MemoryBranch.from_backbone(backbone, block_map, cond_channels, copy_weights, seed))

    @property
    def config(self):
        return self.backbone.config

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def enable_gradient_checkpointing(self) -> None:
        self.backbone.enable_gradient_checkpointing()
        self.branch.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.backbone.disable_gradient_checkpointing()
        self.branch.disable_gradient_checkpointing()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                memory_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction ``(B, C_out, T, h, w)``.

        Args:
            hidden_states: ``(B, 48, T, h, w)`` noisy latents.
            timestep: ``(B,)`` or per-token ``(B, tokens)`` (TI2V "expand timesteps";
                tokens = T/p_t * h/p_h * w/p_w in frame-major order).
            encoder_hidden_states: ``(B, L, text_dim)`` text encoder states.
            memory_cond: ``(B, 49, T, h, w)`` readout + visibility, or None (plain backbone).
        """
        bb = self.backbone
        batch_size, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = bb.config.patch_size
        post_patch_num_frames, post_patch_height, post_patch_width = num_frames // p_t, height // p_h, width // p_w

        # 1. Rotary position embedding, patch embedding
        rotary_emb = bb.rope(hidden_states)
        hidden_states = bb.patch_embedding(hidden_states)
        hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()

        # 2. Time and text embedding (timestep (B,) or per-token (B, tokens))
        if timestep.ndim == 2:
            ts_seq_len = timestep.shape[1]
            timestep = timestep.flatten()
        else:
            ts_seq_len = None
        temb, timestep_proj, encoder_hidden_states, _ = bb.condition_embedder(
            timestep, encoder_hidden_states, None, timestep_seq_len=ts_seq_len)
        if ts_seq_len is not None:
            timestep_proj = timestep_proj.unflatten(2, (6, -1))  # B, tokens, 6, D
        else:
            timestep_proj = timestep_proj.unflatten(1, (6, -1))  # B, 6, D

        # 3. Memory branch residuals (from the backbone's input tokens)
        hints: dict[int, torch.Tensor] = {}
        if memory_cond is not None:
            residuals = self.branch(memory_cond, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)
            hints = dict(zip(self.branch.config.block_map, residuals))

        # 4. Backbone blocks, adding the branch residuals after the mapped blocks
        checkpoint = torch.is_grad_enabled() and bb.gradient_checkpointing
        for i, block in enumerate(bb.blocks):
            if checkpoint:
                hidden_states = bb._gradient_checkpointing_func(
                    block, hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)
            else:
                hidden_states = block(hidden_states, encoder_hidden_states, timestep_proj, rotary_emb)
            if i in hints:
                hidden_states = hidden_states + hints[i].to(hidden_states.dtype)

        # 5. Output norm, projection & unpatchify
        if temb.ndim == 3:  # B, tokens, D (per-token timesteps)
            shift, scale = (bb.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (bb.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        shift, scale = shift.to(hidden_states.device), scale.to(hidden_states.device)
        hidden_states = (bb.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        hidden_states = bb.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(
            batch_size, post_patch_num_frames, post_patch_height, post_patch_width, p_t, p_h, p_w, -1)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    # ------------------------------------------------------------------------------------------
    def save_branch(self, directory) -> None:
        self.branch.save_pretrained(directory, safe_serialization=True)

    def load_branch(self, directory) -> None:
        p = next(self.backbone.parameters())
        branch = MemoryBranch.from_pretrained(directory, torch_dtype=p.dtype).to(p.device)
        self.branch = branch

"""Flow-matching loss (docs/method.md §4) and the two training stages' parameter selection."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def shift_sigma(sigma: torch.Tensor, shift: float = 5.0) -> torch.Tensor:
    """σ' = shift·σ / (1 + (shift − 1)·σ)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def flow_matching_loss(model: nn.Module, x0: torch.Tensor, text: torch.Tensor, memory_cond: torch.Tensor | None,
                       generator: torch.Generator | None = None, text_dropout: float = 0.1,
                       shift: float = 5.0, null_text: torch.Tensor | None = None,
                       return_aux: bool = False, context: torch.Tensor | None = None,
                       context_cond: torch.Tensor | None = None, covered_weight: float = 1.0):
    """Per-frame flow-matching loss.

    For each target latent frame independently σ ~ U(0,1), σ' = shift·σ/(1+(shift−1)σ), timestep 1000σ';
    x = (1−σ')x0 + σ'ε, target v = ε − x0. Frame 0 is the clean first frame / overlap latent (σ'=0, t=0).
    Timesteps are per token (TI2V "expand timesteps"). MSE in fp32 over frames 1..T−1.

    Args:
        model: ``model(x, timestep (B, tokens), text, memory_cond) -> v`` (a ``MirageTransformer``).
        x0: ``(B, 48, T, h, w)`` clean latents, T >= 2.
        text: ``(B, L, D)`` text encoder states; each sample's is replaced by ``null_text`` (default zeros)
            with probability ``text_dropout``.
        generator: draws σ, ε and the text dropout (its device must match ``x0``'s).
        context: optional ``(B, 48, P, h, w)`` clean latents appended after the target (docs/method.md §4 layout
            ``[target | preceding clean | references]``): timestep 0, never noised, not in the loss.
        context_cond: their ``(B, 49, P, h, w)`` memory conditioning (default: zeros = nothing seen).
        covered_weight: weight of the target cells the memory covers (``memory_cond``'s visibility
            channel) against 1 for the others; the loss stays a weighted mean, so its scale does not
            change with the coverage. 1: the plain MSE.
    """
    B, _, T, h, w = x0.shape
    if T < 2:
        raise ValueError("need at least 2 latent frames (frame 0 is the clean conditioning frame)")
    core = getattr(model, "module", model)  # a DistributedDataParallel wrapper keeps the config on .module
    p_t, p_h, p_w = core.config.patch_size
    device = x0.device
    x0f = x0.float()

    sigma = torch.rand(B, T, generator=generator, device=device)
    sigma[:, 0] = 0.0
    sigma = shift_sigma(sigma, shift)
    sigma[:, 0] = 0.0
    noise = torch.randn(x0f.shape, generator=generator, device=device)
    s = sigma[:, None, :, None, None]
    x = (1.0 - s) * x0f + s * noise
    x[:, :, 0] = x0f[:, :, 0]  # frame 0 exactly clean
    target = noise - x0f

    # per-token timesteps, frame-major token order (as the backbone's flatten(2) of (B, D, F, H, W))
    t_frame = 1000.0 * sigma[:, ::p_t]
    timestep = t_frame.repeat_interleave((h // p_h) * (w // p_w), dim=1)

    if text_dropout > 0:
        drop = torch.rand(B, generator=generator, device=device) < text_dropout
        if bool(drop.any()):
            null = torch.zeros_like(text) if null_text is None else null_text.to(text).expand_as(text)
            text = torch.where(drop[:, None, None], null, text)

    weight = None
    if covered_weight != 1.0 and memory_cond is not None:
        seen = memory_cond[:, -1:, 1:T].float() > 0.5  # (B, 1, T - 1, h, w)
        weight = 1.0 + (covered_weight - 1.0) * seen.float()
    if context is not None:
        x, timestep, memory_cond = append_clean_context(x, timestep, memory_cond, context, context_cond,
                                                        core.config.patch_size)

    dtype = core.dtype if hasattr(core, "dtype") else x0.dtype
    pred = model(x.to(dtype), timestep, text.to(dtype),
                 None if memory_cond is None else memory_cond.to(dtype))
    if weight is None:
        loss = F.mse_loss(pred[:, :, 1:T].float(), target[:, :, 1:])
    else:
        err = (pred[:, :, 1:T].float() - target[:, :, 1:]) ** 2
        loss = (err * weight).mean() / weight.mean()
    if return_aux:
        return loss, {"sigma": sigma, "timestep": timestep, "pred": pred, "target": target, "x": x}
    return loss


def append_clean_context(x: torch.Tensor, timestep: torch.Tensor, memory_cond: torch.Tensor | None,
                         context: torch.Tensor, context_cond: torch.Tensor | None, patch_size
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The DiT input ``[target | clean context]``: context frames get timestep 0 on every token.

    ``x`` (B, C, T, h, w), per-token ``timestep`` (B, tokens); returns the three extended along time.
    Used by the loss and by the sampler, so training and inference see the same layout.
    """
    B, _, P, h, w = context.shape
    p_t, p_h, p_w = patch_size
    x = torch.cat([x, context.to(x)], dim=2)
    zeros = torch.zeros((B, (P // p_t) * (h // p_h) * (w // p_w)), dtype=timestep.dtype, device=timestep.device)
    timestep = torch.cat([timestep, zeros], dim=1)
    if memory_cond is not None:
        if context_cond is None:
            context_cond = torch.zeros((B, memory_cond.shape[1], P, h, w), dtype=memory_cond.dtype,
                                       device=memory_cond.device)
        memory_cond = torch.cat([memory_cond, context_cond.to(memory_cond)], dim=2)
    return x, timestep, memory_cond


def set_trainable(model: nn.Module, stage: str) -> list[nn.Parameter]:
    """Freeze/unfreeze for a training stage; returns the trainable parameters.

    * ``"branch"``: only the memory branch (``model.branch``) trains; backbone (and any LoRA) frozen.
    * ``"lora"``: only LoRA parameters (names containing ``lora_``) train; branch and backbone frozen.
    * ``"full"``: everything trains (a world learnt from scratch; tests / overfits).
    """
    if stage not in ("branch", "lora", "full"):
        raise ValueError(f"unknown stage {stage!r}: 'branch', 'lora' or 'full'")
    branch_ids = {id(p) for p in model.branch.parameters()} if stage == "branch" else set()
    trainable = []
    for name, p in model.named_parameters():
        if stage == "full":
            on = True
        elif stage == "branch":
            on = id(p) in branch_ids
        else:
            on = "lora_" in name
        p.requires_grad_(on)
        if on:
            trainable.append(p)
    if not trainable:
        raise ValueError(f"stage {stage!r} leaves no trainable parameters (did you call add_lora?)")
    return trainable

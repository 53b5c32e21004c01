"""A memory and compute plan for training, per GPU, from the model built on the meta device.

Nothing is allocated: the model (backbone + memory branch + LoRA) is built with ``torch.device("meta")``
and one forward runs on meta tensors of the training shapes. Two things are measured on it:

* activations: the bytes of every tensor autograd saves for the backward pass
  (``torch.autograd.graph.saved_tensors_hooks``), parameters and their views excluded, at the
  stage's trainable set (a frozen backbone still saves what the branch's gradients flow through).
  Attention score matrices (tokens x tokens, tokens x text tokens) are left out: on the meta device
  attention runs as the math kernel, while on GPUs the fused kernels save only their inputs, the
  output and a log-sum-exp per row;
  with gradient checkpointing, each block keeps only its input, and one block's internals at a time;
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the forward. A training step costs about
  three forwards when every weight trains, two with a frozen backbone (the backward still computes
  the activations' gradients, not the frozen weights').

The rest is bookkeeping of the parameters (``plan_memory``): weights in their dtype, float32
gradients and AdamW moments for the trainable ones, DDP's gradient buckets, FSDP's shards plus the
blocks gathered for compute, the text encoder when it sits on the GPU. ``docs/training.md`` has the
table for TI2V-5B; ``benchmarks/plan_bench.py`` checks the estimate against measured peaks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn as nn

__all__ = ["ModelShape", "StepShape", "Plan", "measure_model", "plan_memory", "GIB"]

GIB = 2**30
Parallel = Literal["ddp", "fsdp"]


@dataclass
class StepShape:
    """One training step's tensors: ``batch`` samples of ``target + context`` latent frames at
    ``height x width`` pixels (latents at 1/16), ``text_tokens`` prompt tokens."""

    height: int = 704
    width: int = 1280
    target_latents: int = 9
    context_latents: int = 2
    batch: int = 1
    text_tokens: int = 512

    @property
    def latent_frames(self) -> int:
        return self.target_latents + self.context_latents


@dataclass
class ModelShape:
    """What the meta model says: parameter counts, the largest block, activations and FLOPs of one
    forward at a ``StepShape`` (activations in the compute dtype)."""

    backbone: int
    branch: int
    lora: int
    text_encoder: int
    largest_block: int
    blocks: int
    tokens: int
    activations_bytes: int  # all saved tensors of one forward, no checkpointing
    checkpointed_bytes: int  # with per-block activation checkpointing
    forward_flops: int
    stage: str = "branch"


@dataclass
class Plan:
    """Bytes per GPU (and host bytes per worker at load) for one stage and parallel strategy."""

    parallel: str
    workers: int
    stage: str
    rows: dict[str, int] = field(default_factory=dict)
    host_load_bytes: int = 0
    step_flops: int = 0

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def fits(self, gpu_bytes: float, headroom: float = 0.9) -> bool:
        return self.total <= headroom * gpu_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _trainable_names(stage: str, names: list[str]) -> set[str]:
    if stage == "branch":
        return {n for n in names if n.startswith("branch.")}
    if stage == "lora":
        return {n for n in names if "lora_" in n}
    if stage == "full":
        return set(names)
    raise ValueError(f"unknown stage {stage!r}: branch | lora | full")


def measure_model(model: nn.Module, shape: StepShape, stage: str = "branch", dtype: torch.dtype = torch.bfloat16,
                  text_encoder_params: int = 0) -> ModelShape:
    """Counts, activations and forward FLOPs of a ``MirageTransformer`` on the meta device at ``shape``
    for ``stage`` (its trainable parameters require grad, the others not). ``model`` must live on
    the meta device; its parameters are cast to ``dtype`` (the compute dtype) for the measurement."""
    from torch.utils.flop_counter import FlopCounterMode

    if next(model.parameters()).device.type != "meta":
        raise ValueError("measure_model runs on the meta device: build the model under torch.device('meta')")
    model = model.to(dtype)
    names = [n for n, _ in model.named_parameters()]
    train = _trainable_names(stage, names)
    for n, p in model.named_parameters():
        p.requires_grad_(n in train)
    params = {id(p) for p in model.parameters()}
    cfg = model.config
    p_t, p_h, p_w = cfg.patch_size
    h, w, t = shape.height // 16, shape.width // 16, shape.latent_frames
    tokens = (t // p_t) * (h // p_h) * (w // p_w)
    dev = torch.device("meta")
    x = torch.empty(shape.batch, cfg.in_channels, t, h, w, device=dev, dtype=dtype)
    cond = torch.empty(shape.batch, model.branch.config.cond_channels, t, h, w, device=dev, dtype=dtype)
    text = torch.empty(shape.batch, shape.text_tokens, cfg.text_dim, device=dev, dtype=dtype)
    timestep = torch.empty(shape.batch, tokens, device=dev, dtype=dtype)

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t._base if t._base is not None else t
        scores = t.ndim >= 3 and t.shape[-2] == tokens and t.shape[-1] in (tokens, shape.text_tokens)
        if id(t) not in params and id(base) not in params and not scores:
            saved[id(t)] = t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), counter:
        model(x, timestep, text, memory_cond=cond)
    blocks = [*model.backbone.blocks, *model.branch.blocks]
    largest = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    activations = sum(saved.values())
    hidden = shape.batch * tokens * cfg.num_attention_heads * cfg.attention_head_dim * torch.finfo(dtype).bits // 8
    # checkpointed: every block keeps its input; one block's internals (the largest share) live at a time
    checkpointed = len(blocks) * hidden + activations // len(blocks)
    count = lambda pred: sum(p.numel() for n, p in model.named_parameters() if pred(n))  # noqa: E731
    return ModelShape(backbone=count(lambda n: n.startswith("backbone.") and "lora_" not in n),
                      branch=count(lambda n: n.startswith("branch.")), lora=count(lambda n: "lora_" in n),
                      text_encoder=text_encoder_params, largest_block=largest, blocks=len(blocks), tokens=tokens,
                      activations_bytes=activations, checkpointed_bytes=checkpointed,
                      forward_flops=int(counter.get_total_flops()), stage=stage)


def plan_memory(m: ModelShape, parallel: Parallel = "ddp", workers: int = 1, weights_bytes: int = 4,
                compute_bytes: int = 2, checkpointing: bool = True, text_on_gpu: bool = True,
                text_bytes: int = 2, master_bytes: int = 4, grad_accum: int = 1) -> Plan:
    """Bytes per GPU of training stage ``m.stage``.

    ``weights_bytes``: the frozen backbone's storage (4 fp32, 2 bf16); the branch and the LoRA are
    float32 master weights in every stage, and what trains has float32 gradients and two float32
    AdamW moments. DDP: every GPU holds all of
    it, plus gradient buckets the size of the gradients. FSDP: everything divided by ``workers``,
    plus the blocks gathered for compute (two of the largest: the one running and the one
    prefetched) and their unsharded gradients. ``text_on_gpu``: the run loads the text encoder, which
    stays on the training GPU (``mirage train`` without precomputed text states in the shards); with
    them it is neither on the GPU nor in host memory at load. ``master_bytes``:
    the storage of the trained parameters, their gradients and AdamW moments (4: float32).
    ``grad_accum`` > 1 under FSDP: the micro-batches before the last accumulate unsharded float32
    gradients on every rank (FSDP2 reduces only on the last), a full copy of the trainable ones."""
    trainable = {"branch": m.branch, "lora": m.lora, "full": m.backbone + m.branch + m.lora}[m.stage]
    # the branch and the LoRA are float32 master weights in every stage (they train in one of them);
    # the backbone keeps the frozen dtype unless a full stage trains it
    backbone_bytes = master_bytes if m.stage == "full" else weights_bytes
    weights = m.backbone * backbone_bytes + (m.branch + m.lora) * master_bytes
    rows: dict[str, int] = {}
    shards = workers if parallel == "fsdp" else 1
    rows["weights"] = weights // shards
    rows["gradients"] = trainable * master_bytes // shards
    rows["optimizer (AdamW)"] = trainable * 2 * master_bytes // shards
    if parallel == "ddp" and workers > 1:
        rows["DDP gradient buckets"] = trainable * master_bytes
    if parallel == "fsdp":
        rows["gathered blocks (FSDP)"] = 2 * m.largest_block * compute_bytes
        rows["gathered block gradients"] = m.largest_block * 4 if trainable else 0
        if grad_accum > 1:
            rows["accumulated gradients (FSDP)"] = trainable * 4
    rows["activations"] = m.checkpointed_bytes if checkpointing else m.activations_bytes
    if text_on_gpu and m.text_encoder:
        rows["text encoder"] = m.text_encoder * text_bytes
    text = m.text_encoder if text_on_gpu else 0
    host = (m.backbone + m.branch + m.lora + text) * weights_bytes  # each worker's copy at load
    step = m.forward_flops * (3 if m.stage == "full" else 2)
    return Plan(parallel=parallel, workers=workers, stage=m.stage, rows=rows, host_load_bytes=host, step_flops=step)

"""``mirage plan``: will a training config fit its GPUs? Per stage, per GPU, DDP against FSDP.

The model of the config (a preset, or ``model.model_dir``'s ``transformer/config.json`` and
``text_encoder/config.json``, never its weights) is built on the meta device, with its memory
branch and LoRA, and measured at the config's training shapes (``mirage_model.training.plan``).
The weights are counted as ``mirage train`` holds them: the frozen ones (backbone, text encoder)
in ``model.dtype`` (bfloat16 on GPUs by default, loaded straight in it), what trains as float32
master weights with float32 gradients and AdamW moments, the text encoder on the GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from jobs.config import TrainConfig
from mirage_model.training.plan import GIB, StepShape, measure_model, plan_memory

UMT5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=256384)
"""Wan2.2's text encoder (google/umt5-xxl's encoder), for the ``ti2v-5b`` preset's plan."""


def _meta_model(cfg: TrainConfig):
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from mirage_model.model.branch import MemoryBranch
    from mirage_model.model.lora import add_lora
    from mirage_model.model.mirage_transformer import MirageTransformer
    from mirage_model.model.presets import TRANSFORMER_PRESETS
    from mirage_model.model.text import TEXT_PRESETS

    m = cfg.model
    root = Path(m.model_dir) if m.model_dir else None
    note = None
    if root is not None and (root / "transformer" / "config.json").is_file():
        transformer_cfg = WanTransformer3DModel.load_config(root / "transformer")
        text_cfg = UMT5Config.from_pretrained(root / "text_encoder")
    elif root is not None:  # planned before the weights reach this machine: the architecture is known
        note = (f"model.model_dir {root} is not on this machine: planned with Wan2.2-TI2V-5B's architecture "
                "(the ti2v-5b preset of mirage_model/model/presets.py and UMT5-XXL)")
        transformer_cfg, text_cfg = TRANSFORMER_PRESETS["ti2v-5b"], UMT5Config(**UMT5_XXL)
    else:
        transformer_cfg = TRANSFORMER_PRESETS[m.preset]
        text_cfg = UMT5Config(**TEXT_PRESETS[m.preset], vocab_size=256384, d_model=transformer_cfg["text_dim"])
    with torch.device("meta"):
        backbone = WanTransformer3DModel.from_config(transformer_cfg)
        model = MirageTransformer(backbone, MemoryBranch.from_backbone(backbone))
        add_lora(model, rank=m.lora.rank, alpha=m.lora.alpha, dropout=0.0)
        text_params = sum(p.numel() for p in UMT5EncoderModel(text_cfg).parameters())
    return model, text_params, note


def plan_config(cfg: TrainConfig, workers: int | None = None, height: int = 704, width: int = 1280,
                gpu_memory_gib: float = 80.0) -> dict[str, Any]:
    """The plan of every stage of ``cfg`` for DDP and FSDP on ``workers`` GPUs (default: the config's)."""
    model, text_params, note = _meta_model(cfg)
    workers = workers or cfg.scaling.num_workers
    shape = StepShape(height=height, width=width, target_latents=cfg.data.target_latents,
                      context_latents=cfg.data.preceding + cfg.data.references, batch=cfg.optim.batch_size,
                      text_tokens=cfg.model.text_tokens())
    bf16 = cfg.model.bf16 if cfg.model.bf16 is not None else cfg.scaling.use_gpu
    compute = torch.bfloat16 if bf16 else torch.float32
    stages = []
    for stage in dict.fromkeys(s.name for s in cfg.stages):
        measured = measure_model(model, shape, stage, dtype=compute, text_encoder_params=text_params)
        full_stage = any(s.name == "full" for s in cfg.stages)  # then the whole model is float32 throughout
        frozen = 2 if cfg.model.frozen_dtype(cfg.scaling.use_gpu) == "bfloat16" and not full_stage else 4
        plans = {par: plan_memory(measured, par, workers, weights_bytes=frozen, compute_bytes=compute.itemsize,
                                  checkpointing=cfg.model.gradient_checkpointing, text_bytes=frozen,
                                  text_on_gpu=cfg.data.text_embeddings != "shards",
                                  grad_accum=cfg.optim.grad_accum)
                 for par in ("ddp", "fsdp")}
        stages.append({"stage": stage, "tokens": measured.tokens, "forward_flops": measured.forward_flops,
                       "parameters": {"backbone": measured.backbone, "branch": measured.branch,
                                      "lora": measured.lora, "text_encoder": text_params},
                       "plans": {k: {**p.as_dict(), "fits": p.fits(gpu_memory_gib * GIB)} for k, p in plans.items()}})
    return {"config": cfg.name, "workers": workers, "gpu_memory_gib": gpu_memory_gib,
            "shape": vars(shape), "compute_dtype": str(compute).replace("torch.", ""), "note": note,
            "stages": stages}


def format_plan(plan: dict[str, Any]) -> str:
    gib = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    s = plan["shape"]
    lines = [f"{plan['config']}: {plan['workers']} GPU workers of {plan['gpu_memory_gib']:g} GiB, "
             f"{s['height']}x{s['width']}, {s['target_latents']} target + {s['context_latents']} context latents, "
             f"batch {s['batch']}, {s['text_tokens']} text tokens, compute {plan['compute_dtype']}"]
    if plan["note"]:
        lines.append(plan["note"])
    for st in plan["stages"]:
        p = st["parameters"]
        lines += ["", f"stage {st['stage']}: {st['tokens']} tokens; parameters: backbone {p['backbone'] / 1e9:.2f} B, "
                      f"branch {p['branch'] / 1e9:.2f} B, LoRA {p['lora'] / 1e6:.1f} M, text encoder "
                      f"{p['text_encoder'] / 1e9:.2f} B; forward {st['forward_flops'] / 1e12:.1f} TFLOP",
                  "| GiB per GPU | DDP | FSDP |", "|---|---|---|"]
        ddp, fsdp = st["plans"]["ddp"], st["plans"]["fsdp"]
        for row in dict.fromkeys([*ddp["rows"], *fsdp["rows"]]):
            lines.append(f"| {row} | {gib(ddp['rows'].get(row, 0))} | {gib(fsdp['rows'].get(row, 0))} |")
        lines.append(f"| **total** | **{gib(ddp['total'])}** | **{gib(fsdp['total'])}** |")
        lines.append(f"| fits in {plan['gpu_memory_gib']:g} GiB (90 %) | {'yes' if ddp['fits'] else 'no'} | "
                     f"{'yes' if fsdp['fits'] else 'no'} |")
        lines.append(f"| host memory per worker at load | {gib(ddp['host_load_bytes'])} | "
                     f"{gib(fsdp['host_load_bytes'])} |")
        lines.append(f"| TFLOP per sample per step | {ddp['step_flops'] / 1e12:.0f} | {fsdp['step_flops'] / 1e12:.0f} |")
    return "\n".join(lines)


def run_plan(cfg: TrainConfig, workers: int | None, height: int, width: int, gpu_memory_gib: float,
             as_json: bool = False) -> str:
    plan = plan_config(cfg, workers, height, width, gpu_memory_gib)
    return json.dumps(plan, indent=1) if as_json else format_plan(plan)

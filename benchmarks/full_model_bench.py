"""The whole TI2V-5B stack on this CPU, in bf16: one LoRA-stage training step, peak memory vs the plan.

    python -m benchmarks.full_model_bench [--write-docs]

The 30-block Wan2.2-TI2V-5B transformer, its memory branch and rank-32 LoRA are built on the meta
device, cast to bf16 and given CPU storage (``to_empty``; values drawn afterwards, no float32 copy
ever exists), about 15 GiB. One training step of the LoRA stage (forward, backward, AdamW; all in
bf16, the trained LoRA too, so that it fits a 24 GiB machine) runs at a tiny latent (2 latents of
64x64 pixels, 512 text tokens). The process's peak resident memory above what it held before
building is set next to ``mirage plan``'s estimate of the same step (``plan_memory`` with bf16
weights and bf16 trained parameters). Not a test: it needs about 16 GiB and a few minutes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from benchmarks._measure import command_line, machine_line

TITLE = "The whole TI2V-5B stack in bf16 on this CPU: peak memory against the plan"
HEADLINE = [{"figure": "TI2V-5B (30 blocks + branch + LoRA, bf16), one LoRA training step on this CPU: peak / plan",
             "measured": "{measured_gib:.1f} / {planned_gib:.1f} GiB ({ratio:.2f})", "target": "within 20 %"}]
READING = ("The full-size model is built from its architecture on the meta device and given bf16 storage "
           "directly, so the host never holds a float32 copy ({params_b:.2f} B parameters, {weights_gib:.1f} GiB). "
           "One LoRA-stage step at a tiny latent (activations stay small, so the step measures mostly the "
           "parameter bookkeeping) peaks at {measured_gib:.1f} GiB above the process's starting memory, against "
           "{planned_gib:.1f} GiB planned: weights, LoRA gradients and AdamW moments, activations. The step took "
           "{step_s:.0f} s, the build {build_s:.0f} s.")


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.full_model_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--write-docs", action="store_true", help="publish to benchmarks/results/full-model.json")
    args = p.parse_args(argv)

    from diffusers import WanTransformer3DModel

    from mirage_model.model.branch import MemoryBranch
    from mirage_model.model.lora import add_lora
    from mirage_model.model.loss import set_trainable
    from mirage_model.model.mirage_transformer import MirageTransformer
    from mirage_model.model.presets import TRANSFORMER_PRESETS
    from mirage_model.training.plan import GIB, StepShape, measure_model, plan_memory

    shape = StepShape(height=64, width=64, target_latents=1, context_latents=1, batch=1, text_tokens=512)

    def meta_model():
        with torch.device("meta"):
            backbone = WanTransformer3DModel(**TRANSFORMER_PRESETS["ti2v-5b"])
            model = MirageTransformer(backbone, MemoryBranch.from_backbone(backbone))
            add_lora(model, rank=32, alpha=32, dropout=0.0)
        return model.to(torch.bfloat16)

    planned = plan_memory(measure_model(meta_model(), shape, "lora", dtype=torch.bfloat16), "ddp", 1,
                          weights_bytes=2, compute_bytes=2, checkpointing=False, text_on_gpu=False, master_bytes=2)

    base = current_rss_bytes()
    t0 = time.perf_counter()
    model = meta_model().to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.normal_(0.0, 0.02, generator=g) if t.is_floating_point() else t.zero_()
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"built {params / 1e9:.2f} B parameters ({weights / GIB:.1f} GiB bf16) in {build_s:.0f} s")

    trainable = set_trainable(model, "lora")
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    h, w, t = shape.height // 16, shape.width // 16, shape.latent_frames
    x = torch.randn(1, 48, t, h, w, dtype=torch.bfloat16)
    cond = torch.randn(1, 49, t, h, w, dtype=torch.bfloat16)
    text = torch.randn(1, shape.text_tokens, 4096, dtype=torch.bfloat16)
    timestep = torch.full((1, t * (h // 2) * (w // 2)), 500.0)
    t0 = time.perf_counter()
    model(x, timestep, text, memory_cond=cond).float().pow(2).mean().backward()
    opt.step()
    step_s = time.perf_counter() - t0
    measured = rss_peak_bytes() - base
    figures = {"measured_gib": round(measured / GIB, 2), "planned_gib": round(planned.total / GIB, 2),
               "ratio": round(planned.total / measured, 3), "params_b": round(params / 1e9, 3),
               "weights_gib": round(weights / GIB, 2), "step_s": round(step_s, 1), "build_s": round(build_s, 1)}
    rows = [[k, f"{v / GIB:.2f}"] for k, v in planned.rows.items()] + [
        ["**planned total**", f"{planned.total / GIB:.2f}"], ["**measured peak above start**", f"{measured / GIB:.2f}"]]
    for r in rows:
        print(" | ".join(r))

    from benchmarks.reference import Section, report

    section = Section(key="full-model", title=TITLE, order=34, command=command_line("full_model_bench", argv),
                      machine=machine_line(torch.device("cpu")), figures=figures, headline=HEADLINE,
                      reading=READING).table(["GiB", "value"], rows)
    report(section, args.write_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

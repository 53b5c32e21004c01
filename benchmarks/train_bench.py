"""Training throughput: Ray Train step time with 1 vs 2 CPU workers, and the memory branch's overhead.

    python -m benchmarks.train_bench [--preset tiny,small --workers 1,2 --steps 12] [--write-docs]
    python -m benchmarks.train_bench --device cuda --preset ti2v-5b [--write-docs]   # GPU, bf16, MFU

Part ``train`` (CPU presets only): ``jobs.train.run_train`` on ground-truth synthetic shards (33-frame
clips, 5 target + 2 preceding latents), both stages (branch, then LoRA) of ``--steps`` optimizer
steps each, once per worker count on one local Ray (``cpus_per_worker`` 0.5: a CPU stays free for
Ray Data). Step times are rank 0's ``step_time_s`` MLflow metric (read back from a throwaway sqlite
store): a step includes decoding and building its sample(s) on the worker, forward, backward, the
DDP all-reduce and the optimizer step. Median over each stage's steps after the first ``--warmup``;
samples/s = batch * grad_accum * workers / median step time.

Part ``overhead`` (direct torch, no Ray, no optimizer): forward + backward of the flow-matching loss
on one fixed batch and fixed noise, LoRA stage trainable set, with the memory branch
(``memory_cond`` given) vs the backbone alone (``memory_cond=None``), plus the branch stage;
interleaved repetitions, medians. tiny/small use a real training sample from the shards;
``ti2v-5b`` (GPU only, bf16 weights) uses random tensors of the 704x1280 shapes (9 target + 2
context latents of 44x80, 512 text tokens of width 4096) and reports MFU from the 6 * N * tokens
approximation. Random weights: the figures measure cost, not quality.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._measure import command_line, machine_line, timed
from benchmarks.reference import Section, publish

ROOT = Path(__file__).resolve().parent.parent
BASE_CONFIG = ROOT / "configs" / "train" / "tiny.yaml"
FRAMES = 33
TARGET_LATENTS = 5  # 33-frame clips (configs/train/tiny.yaml)
PRECEDING = 2
SIZES = {"tiny": (64, 96), "small": (128, 224)}  # frames per preset (latent grid 4x6 / 8x14)
CPU_PRESETS = tuple(SIZES)
GPU_SHAPES = dict(target=(1, 48, 9, 44, 80), context=2, text=(1, 512, 4096))  # 704x1280, 33 frames
H100_BF16_DENSE_TFLOPS = 989.0


# ----------------------------------------------------------------------------------------------
# Shared: shards
# ----------------------------------------------------------------------------------------------
def make_shards(root: Path, preset: str, clips: int, seed: int) -> str:
    """Ground-truth training shards for ``preset``'s frame size under ``root``; returns the directory."""
    from pipeline.synth_data import make_ground_truth_shards

    out = root / f"shards-{preset}-{clips}"
    if not out.exists():
        make_ground_truth_shards(str(out), clips, seed=seed, frames=FRAMES, size=SIZES[preset], per_shard=2,
                                 vae="tiny")
    return str(out)


# ----------------------------------------------------------------------------------------------
# Part 1: Ray Train, 1 vs 2 workers
# ----------------------------------------------------------------------------------------------
def _omp_probe(cpus: float) -> tuple[str | None, int]:
    """(OMP_NUM_THREADS, torch threads) inside a Ray actor asking for ``cpus`` CPUs, like a Train worker."""
    import ray

    @ray.remote(num_cpus=cpus)
    class _Probe:
        def info(self):
            import os

            import torch as t

            return os.environ.get("OMP_NUM_THREADS"), t.get_num_threads()

    actor = _Probe.remote()
    try:
        return ray.get(actor.info.remote())
    finally:
        ray.kill(actor)


def train_part(presets: list[str], workers: list[int], args, tmp: Path) -> tuple[list[dict], dict]:
    from mlflow.tracking import MlflowClient

    from jobs.config import TrainConfig
    from jobs.ray_runtime import init_ray
    from jobs.train import run_train
    from mirage_model.config import load_config

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    # artifacts (the final LoRA / branch) into the temp dir, not ./mlruns
    client.create_experiment("train-bench", artifact_location=(tmp / "artifacts").as_uri())
    init_ray(None)
    omp, threads = _omp_probe(args.cpus_per_worker)
    rows = []
    for preset in presets:
        shards = make_shards(tmp, preset, args.clips, args.seed)
        for nw in workers:
            stages = [{"name": s, "steps": args.steps, "lr": 1e-3, "warmup_steps": 2} for s in ("branch", "lora")]
            cfg = load_config(
                TrainConfig, BASE_CONFIG, {
                    "name": f"bench-{preset}-{nw}w", "storage_path": str(tmp / "runs"), "data.shards": shards,
                    "data.target_latents": TARGET_LATENTS, "data.preceding": PRECEDING,
                    "data.drop_preceding_p": 0.0,  # every step the same shapes
                    "model.preset": preset, "stages": stages,
                    "optim.batch_size": args.batch_size, "optim.grad_accum": 1,
                    "scaling.num_workers": nw, "scaling.cpus_per_worker": args.cpus_per_worker,
                    "checkpoint.every": 10**6, "validation.every": 10**6, "validation.video": False,
                    "mlflow.tracking_uri": uri, "mlflow.experiment": "train-bench", "seed": args.seed})
            t0 = time.perf_counter()
            summary = run_train(cfg)
            wall = time.perf_counter() - t0
            hist = sorted(client.get_metric_history(summary["run_id"], "step_time_s"), key=lambda m: m.step)
            by_step = {m.step: m.value for m in hist}
            for i, stage in enumerate(("branch", "lora")):
                steps = range(i * args.steps + 1, (i + 1) * args.steps + 1)  # global steps of this stage
                times = [by_step[s] for s in steps if s in by_step][args.warmup:]
                if not times:
                    raise RuntimeError(f"{preset} {nw}w {stage}: no step_time_s after warm-up (steps {args.steps})")
                med = statistics.median(times)
                rows.append({"preset": preset, "workers": nw, "stage": stage, "step_s": med, "n": len(times),
                             "samples_s": args.batch_size * nw / med, "wall_s": wall})
    return rows, {"omp": omp, "threads": threads}


def train_table(rows: list[dict], workers: list[int]) -> list[str]:
    lines = ["| preset | frames | workers | stage | median step s | samples/s (all workers) | "
             f"scaling {max(workers)}w/{min(workers)}w |", "|---|---|---|---|---|---|---|"]
    base = {(r["preset"], r["stage"]): r["samples_s"] for r in rows if r["workers"] == min(workers)}
    for r in rows:
        h, w = SIZES[r["preset"]]
        scale = (f"{r['samples_s'] / base[(r['preset'], r['stage'])]:.2f}"
                 if r["workers"] == max(workers) and len(workers) > 1 else "")
        lines.append(f"| {r['preset']} | {FRAMES}x{h}x{w} | {r['workers']} | {r['stage']} | {r['step_s']:.3f} | "
                     f"{r['samples_s']:.2f} | {scale} |")
    return lines


# ----------------------------------------------------------------------------------------------
# Part 2: branch overhead (direct torch)
# ----------------------------------------------------------------------------------------------
def _real_batch(shards: str, device: torch.device, seed: int):
    """One collated training sample from the shards (+ seconds to decode and build it on the CPU)."""
    from mirage_model.io.sample_format import decode_sample
    from mirage_model.training import SampleConfig, build_training_sample, collate
    from pipeline.shards import read_shard_samples

    raw = read_shard_samples(sorted(str(p) for p in Path(shards).glob("*.tar")), decode=False)[0]
    cfg = SampleConfig(target_latents=TARGET_LATENTS, preceding=PRECEDING, drop_preceding_p=0.0, text_dropout=0.0)
    builds = []
    for _ in range(3):  # the first decode also opens PyAV: take the median
        t0 = time.perf_counter()
        sample = build_training_sample(decode_sample(raw), cfg, seed=seed, device="cpu")
        builds.append(time.perf_counter() - t0)
    build_s = statistics.median(builds)
    b = collate([sample])
    ctx = torch.cat([b.context, b.references], dim=2)
    ctx_cond = torch.cat([b.context_cond, b.reference_cond], dim=2)
    return (b.target.to(device), b.cond.to(device), ctx.to(device), ctx_cond.to(device)), build_s


def _random_batch(device: torch.device, seed: int):
    g = torch.Generator(device).manual_seed(seed)
    B, C, T, h, w = GPU_SHAPES["target"]
    P = GPU_SHAPES["context"]
    target = torch.randn((B, C, T, h, w), generator=g, device=device)
    cond = torch.rand((B, C + 1, T, h, w), generator=g, device=device)
    context = torch.randn((B, C, P, h, w), generator=g, device=device)
    context_cond = torch.rand((B, C + 1, P, h, w), generator=g, device=device)
    return target, cond, context, context_cond


def overhead_part(preset: str, args, tmp: Path, device: torch.device) -> dict:
    from mirage_model.generation import MirageGenerator
    from mirage_model.model.loss import flow_matching_loss, set_trainable
    from mirage_model.training.trainer import LoraSpec, prepare_model

    big = preset == "ti2v-5b"
    dtype = torch.bfloat16 if (big or args.dtype == "bf16") else torch.float32
    gen = MirageGenerator.from_preset(preset, seed=args.seed, device=device, dtype=dtype)
    model = gen.transformer
    del gen  # the VAE and text encoder are not needed (latents and text states are given)
    rank = args.lora_rank or (32 if big else 8)  # configs/train/tiny.yaml: rank 8 for the CPU presets
    prepare_model(model, LoraSpec(rank=rank, alpha=float(rank), dropout=0.05))
    ckpt = args.gradient_checkpointing == "on" or (args.gradient_checkpointing == "auto" and big)
    if ckpt:
        model.enable_gradient_checkpointing()
    model.train()

    if big:
        target, cond, context, context_cond = _random_batch(device, args.seed)
        build_s = None
        text_len = args.text_len or GPU_SHAPES["text"][1]
    else:
        (target, cond, context, context_cond), build_s = _real_batch(make_shards(tmp, preset, 1, args.seed),
                                                                     device, args.seed)
        text_len = args.text_len or 64  # model.max_text_length default
    c = model.config
    g = torch.Generator(device).manual_seed(args.seed)
    text = torch.randn((target.shape[0], text_len, c.text_dim), generator=g, device=device)

    def step(net, with_branch: bool) -> None:
        gen_ = torch.Generator(device).manual_seed(args.seed)  # the same sigma / noise for every variant
        loss = flow_matching_loss(net, target, text, cond if with_branch else None, generator=gen_,
                                  text_dropout=0.0, context=context,
                                  context_cond=context_cond if with_branch else None)
        loss.backward()

    variants = {  # name: (trainable set, memory branch in the forward)
        "lora stage, backbone alone": ("lora", False),
        "lora stage, backbone + branch": ("lora", True),
        "branch stage, backbone + branch": ("branch", True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for rep in range(args.overhead_warmup + args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no variant always first
        for name in order:
            stage, with_branch = variants[name]
            set_trainable(model, stage)
            model.zero_grad(set_to_none=True)
            _, t = timed(functools.partial(step, model, with_branch), device)
            if rep >= args.overhead_warmup:
                times[name].append(t)
    model.zero_grad(set_to_none=True)

    p_t, p_h, p_w = c.patch_size
    B, _, T, h, w = target.shape
    frames = T + context.shape[2]
    tokens = B * (frames // p_t) * (h // p_h) * (w // p_w)
    n_backbone = sum(p.numel() for p in model.backbone.parameters())
    n_branch = sum(p.numel() for p in model.branch.parameters())
    inner = c.num_attention_heads * c.attention_head_dim
    seq = tokens // B
    rows = []
    for name, (stage, with_branch) in variants.items():
        med = statistics.median(times[name])
        n = n_backbone + (n_branch if with_branch else 0)
        layers = c.num_layers + (len(model.branch.blocks) if with_branch else 0)
        flops = 6.0 * n * tokens  # 2 N per token forward + 4 N per token backward (standard approximation)
        # attention scores / values (not in 6 N): self 4 S^2 D + cross 4 S L D per layer forward, x3 for training
        attn = 3.0 * layers * B * (4.0 * seq * seq * inner + 4.0 * seq * text_len * inner)
        rows.append({"variant": name, "stage": stage, "step_s": med, "samples_s": B / med,
                     "tflops": flops / med / 1e12, "tflops_attn": (flops + attn) / med / 1e12,
                     "n_params": n, "reps": len(times[name])})
    ratio = rows[1]["step_s"] / rows[0]["step_s"]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"preset": preset, "rows": rows, "ratio": ratio, "tokens": tokens, "frames": frames,
            "context": int(context.shape[2]),
            "latent": (h, w), "text_len": text_len, "dtype": "bf16" if dtype == torch.bfloat16 else "fp32",
            "build_s": build_s, "lora_rank": rank, "ckpt": ckpt, "n_backbone": n_backbone, "n_branch": n_branch}


def overhead_lines(res: dict, device: torch.device, peak: float) -> list[str]:
    gpu = device.type == "cuda"
    unit, scale = ("TFLOP/s", 1.0) if gpu else ("GFLOP/s", 1e3)
    head = f"| variant | params in forward | median fwd+bwd s | samples/s | model {unit} (6N) |"
    sep = "|---|---|---|---|---|"
    if gpu:
        head += " MFU (6N) | MFU (6N + attention) |"
        sep += "---|---|"
    h, w = res["latent"]
    size = f"{FRAMES}x{SIZES[res['preset']][0]}x{SIZES[res['preset']][1]}" if res["preset"] in SIZES \
        else "33x704x1280"
    lines = [f"**{res['preset']}** ({res['dtype']}, {size} frames: {res['frames']} latent frames of {h}x{w} "
             f"incl. {res['context']} clean context, {res['tokens']} video tokens, {res['text_len']} text tokens; LoRA rank "
             f"{res['lora_rank']}; gradient checkpointing {'on' if res['ckpt'] else 'off'}; "
             f"backbone {res['n_backbone'] / 1e6:.2f} M + branch {res['n_branch'] / 1e6:.2f} M params)", "",
             head, sep]
    for r in res["rows"]:
        line = (f"| {r['variant']} | {r['n_params'] / 1e6:.2f} M | {r['step_s']:.4f} | {r['samples_s']:.2f} | "
                f"{r['tflops'] * scale:.3g} |")
        if gpu:
            line += f" {r['tflops'] / peak:.1%} | {r['tflops_attn'] / peak:.1%} |"
        lines.append(line)
    lines += ["", f"Branch overhead (lora stage, backbone + branch / backbone alone): **{res['ratio']:.2f}x**."]
    if res["build_s"] is not None:
        lines[-1] += (f" Decoding + building one training sample on the CPU (done per sample inside a "
                      f"worker's step; median of 3): {res['build_s']:.3f} s.")
    return lines


def report(args, device: torch.device, workers: list[int], train_rows: list[dict], probe: dict,
           overheads: list[dict]) -> str:
    """The run's tables in Markdown (without the command and machine lines)."""
    lines: list[str] = []
    if train_rows:
        lines += ["", f"**Ray Train, {'/'.join(map(str, workers))} CPU workers** (`jobs.train.run_train`, "
                  f"{args.cpus_per_worker} CPU per worker; Ray set OMP_NUM_THREADS={probe['omp']} and torch "
                  f"runs {probe['threads']} thread(s) in an actor with that CPU request). {args.clips} synthetic "
                  f"{FRAMES}-frame clips, {TARGET_LATENTS} target + {PRECEDING} preceding latents, batch "
                  f"{args.batch_size} per worker, {args.steps} steps per stage, median of rank 0's "
                  f"`step_time_s` over steps {args.warmup + 1}-{args.steps} of each stage. A step includes "
                  "decoding and building the sample on the worker, forward, backward, all-reduce and AdamW.",
                  ""]
        lines += train_table(train_rows, workers)
        walls = {(r["preset"], r["workers"]): r["wall_s"] for r in train_rows}
        lines += ["", "Whole `run_train` wall time (Ray Data index, worker start, model build, both stages, "
                  "checkpoints): " + ", ".join(f"{p} {w}w {s:.0f} s" for (p, w), s in walls.items()) + "."]
    if overheads:
        lines += ["", "**Memory-branch overhead** (direct torch, no Ray: forward + backward of the flow-matching "
                  f"loss on one fixed batch, median of {args.reps} interleaved repetitions after "
                  f"{args.overhead_warmup} warm-up; model FLOP/s = 6 * N * video tokens / time, N = the "
                  "parameters the tokens pass through, attention-score FLOPs and text-token projections not "
                  "counted" + (f"; MFU against {args.peak_tflops:g} TFLOP/s peak" if device.type == "cuda" else "")
                  + ").", ""]
        for res in overheads:
            lines += overhead_lines(res, device, args.peak_tflops) + [""]
    return "\n".join(lines).strip()


# ----------------------------------------------------------------------------------------------
# The published section: benchmarks/results/train.json (CPU, tiny and small, both parts), else
# train-<device>-<presets>[-<parts>].json next to it, without a headline
# ----------------------------------------------------------------------------------------------
TITLE = "Training throughput and memory-branch overhead"
HEADLINE = [{"figure": "training step, small preset 128x224, 1 -> 2 Ray Train CPU workers",
             "measured": "{small_1w:.1f} -> {small_2w:.1f} samples/s (branch stage)", "target": "-"},
            {"figure": "memory-branch overhead per training step (small / tiny)",
             "measured": "{overhead_small}x / {overhead_tiny}x", "target": "-"}]
FIGURES = ("small_1w", "small_2w", "overhead_small", "overhead_tiny")
READING = ("The memory branch costs {overhead_small}x the backbone alone per forward and backward pass of the "
           "small preset. Two Ray Train workers on two cores give {small_1w:.1f} -> {small_2w:.1f} samples/s "
           "on the branch stage: the workers share the cores with Ray Data's reads and the sample building "
           "done inside each step. The GPU command is `python -m benchmarks.train_bench --device cuda --preset "
           "ti2v-5b --write-docs`.")


def _name(preset: str) -> str:
    return preset.replace("-", "_")  # a figure name is a format field: ti2v-5b -> ti2v_5b


def figures(train_rows: list[dict], overheads: list[dict], peak_tflops: float | None = None) -> dict:
    """Branch-stage samples/s per preset and worker count (``small_1w``), branch overhead per preset
    (``overhead_small``), and on a GPU the MFU (6N) of the LoRA stage with the branch (``mfu_ti2v_5b``, %)."""
    out: dict = {}
    for r in train_rows:
        if r["stage"] == "branch":
            out[f"{_name(r['preset'])}_{r['workers']}w"] = round(r["samples_s"], 2)
    for res in overheads:
        out[f"overhead_{_name(res['preset'])}"] = round(res["ratio"], 2)
        if peak_tflops:
            out[f"mfu_{_name(res['preset'])}"] = round(100 * res["rows"][1]["tflops"] / peak_tflops, 1)
    return out


def build_section(device: torch.device, presets: list[str], parts: list[str], command: str, machine: str,
                  body: str, train_rows: list[dict], overheads: list[dict], peak_tflops: float | None = None
                  ) -> Section:
    if device.type == "cpu" and presets == ["tiny", "small"] and sorted(parts) == ["overhead", "train"]:
        figs = figures(train_rows, overheads)
        return Section(key="train", title=TITLE, order=31, command=command, machine=machine,
                       figures={k: figs[k] for k in FIGURES}, headline=[dict(h) for h in HEADLINE],
                       reading=READING).markdown(body)
    default_parts = ["overhead"] if device.type == "cuda" else ["train", "overhead"]
    key = "-".join(["train", device.type, *presets, *([] if sorted(parts) == sorted(default_parts) else parts)])
    where = "GPU" if device.type == "cuda" else device.type
    figs = figures(train_rows, overheads, peak_tflops if device.type == "cuda" else None)
    said = []
    for p in presets:
        n = _name(p)
        if f"{n}_1w" in figs and f"{n}_2w" in figs:
            said.append(f"{p}: {{{n}_1w}} -> {{{n}_2w}} samples/s with 1 -> 2 workers (branch stage)")
        if f"overhead_{n}" in figs:
            said.append(f"{p}: the memory branch costs {{overhead_{n}}}x the backbone alone per forward and backward "
                        "pass" + (f", MFU (6N) {{mfu_{n}}} %" if f"mfu_{n}" in figs else ""))
    reading = "Random weights: only time is measured. " + "; ".join(said) + "."
    return Section(key=key, title=f"{TITLE} ({where}, {', '.join(presets)})", order=31, command=command,
                   machine=machine, figures=figs, reading=reading).markdown(body)


# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="train_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None,
                        help="comma-separated presets (default: tiny,small on CPU, ti2v-5b on CUDA)")
    parser.add_argument("--parts", default=None,
                        help="comma-separated: train, overhead (default: both on CPU; overhead on CUDA)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (train part)")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per stage (train part)")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of each stage")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per worker per step (train part)")
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--clips", type=int, default=4, help="synthetic clips in the training shards")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per variant (overhead part)")
    parser.add_argument("--overhead-warmup", type=int, default=2, help="untimed repetitions per variant")
    parser.add_argument("--lora-rank", type=int, default=None, help="default: 8 (tiny/small), 32 (ti2v-5b)")
    parser.add_argument("--text-len", type=int, default=None, help="text tokens (default 64; 512 for ti2v-5b)")
    parser.add_argument("--gradient-checkpointing", choices=["auto", "on", "off"], default="auto",
                        help="overhead part; auto: on for ti2v-5b only")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="weights of tiny/small in the overhead part (ti2v-5b is always bf16)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                        help="MFU denominator (default: H100 SXM dense bf16, 989)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-docs", action="store_true",
                        help="publish benchmarks/results/train[-DEVICE-PRESETS].json (docs/benchmarks.md)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    presets = [p.strip() for p in (args.preset or ("ti2v-5b" if device.type == "cuda" else "tiny,small")).split(",")
               if p.strip()]
    parts = [p.strip() for p in (args.parts or ("overhead" if device.type == "cuda" else "train,overhead")).split(",")
             if p.strip()]
    workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    if not presets or any(p not in (*CPU_PRESETS, "ti2v-5b") for p in presets):
        parser.error(f"--preset: choose from {(*CPU_PRESETS, 'ti2v-5b')}")
    if not parts or any(p not in ("train", "overhead") for p in parts):
        parser.error("--parts: choose from train, overhead")
    if "ti2v-5b" in presets and device.type != "cuda":
        parser.error("--preset ti2v-5b needs --device cuda (7.6 B params with the branch)")
    if "train" in parts and (device.type != "cpu" or any(p not in CPU_PRESETS for p in presets)):
        parser.error("--parts train runs the CPU presets (tiny, small) on Ray CPU workers only")
    if not workers or min(workers) < 1 or args.steps <= args.warmup:
        parser.error("--workers must be >= 1 and --steps > --warmup")
    if args.reps < 1:
        parser.error("--reps must be >= 1")

    train_rows, probe, overheads = [], {}, []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as d:
        tmp = Path(d)
        if "overhead" in parts:  # first: before a Ray cluster sits on the machine
            for preset in presets:
                overheads.append(overhead_part(preset, args, tmp, device))
        if "train" in parts:
            import ray

            started = not ray.is_initialized()
            try:
                train_rows, probe = train_part(presets, workers, args, tmp)
            finally:
                if started and ray.is_initialized():
                    ray.shutdown()

    body = report(args, device, workers, train_rows, probe, overheads)
    command = command_line("train_bench", argv, write_docs=args.write_docs)
    print(f"Command: `{command}`  \nMachine: {machine_line(device)}.\n\n{body}")
    if args.write_docs:
        section = build_section(device, presets, parts, command, machine_line(device), body, train_rows, overheads,
                                args.peak_tflops)
        print(f"\nrecorded in {publish(section)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

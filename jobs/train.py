"""``mirage train``: two-stage fine-tuning (branch, then LoRA) on Ray Train, fed from the shards.

Driver (``run_train``):
  1. list the shards (local or ``s3://``) and check each tar's headers read (a truncated one is
     skipped with its reason); nothing is decoded here (``jobs.train_ingest``);
  2. open (or, for a resumed run, reopen) one MLflow run and log the flattened config, git commit
     and package versions;
  3. ``TorchTrainer(train_func, ScalingConfig(num_workers, use_gpu), RunConfig(name, storage_path,
     storage_filesystem, CheckpointConfig(num_to_keep), FailureConfig(max_failures)))``: gloo on
     CPU, NCCL on GPU, DDP. A run whose name already exists in ``storage_path`` resumes from its
     latest checkpoint (Ray Train restores its checkpoint manager from storage);
  4. log the final LoRA (diffusers format) and branch weights as MLflow artifacts.

Workers (``train_func``, shaped like Ray Train's own examples: setup, resume, data, then per stage
the parallel wrapper and the step loop with ``ray.train.report`` and a checkpoint): every worker
streams its own shards (``train_ingest.ShardSplit``, Ray Train's split of the ``train`` dataset)
through a seeded shuffle buffer (``trainer.SampleStream``, in ``BatchSource``), so the data order
-- and with the per-step seeds of ``trainer.derive_seed`` the whole run -- is reproducible and
resumes exactly. A sample with a corrupt or missing member, or too short for the sample config, is
skipped, logged once and counted by the worker that meets it. Checkpoints hold the trainable
weights, optimizer and scheduler state, stage, step and every worker's data position. The model is
shared between the workers in one place: ``shard_model`` (FSDP2, ``scaling.parallel: fsdp``) or
``wrap_for_training`` (DDP). The prompts' text states come from the shards when preprocessing
stored them (``choose_text``; the text encoder is then never loaded), else from the model's text
encoder through a bounded cache; see docs/training.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from jobs.accounting import SUMMARY_FILE, job_summary, write_summary
from jobs.config import TrainConfig
from jobs.tracking import Tracker
from jobs.train_ingest import (
    ShardSplit,
    check_shards,
    first_sample,
    list_shards,
    read_shards,
    sample_from_row,
    shards_for_rank,
)
from mirage_model.training import TrainingBatch, build_training_sample, collate
from mirage_model.training.samples import SampleConfig
from mirage_model.training.trainer import (
    PromptEncoder,
    SampleStream,
    ShardTextStates,
    TrainState,
    batch_loss,
    checkpoint_has_backbone,
    clip_and_step,
    derive_seed,
    load_optimizer,
    load_state,
    load_weights,
    start_stage,
)
from pipeline import storage
from pipeline.stages import peak_rss_mib
from pipeline.storage import StorageOptions

log = logging.getLogger(__name__)
RUN_INFO = "mirage_run.json"


# ----------------------------------------------------------------------------------------------
# Driver: run metadata, MLflow
# ----------------------------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "ray", "diffusers", "peft", "transformers", "mlflow", "mirage-worldmodel"):
        try:
            out[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def open_tracker(cfg: TrainConfig, run_info_uri: str, options: StorageOptions) -> Tracker:
    """This training run's MLflow run: reopened when the run is resumed (its id is kept next to the
    checkpoints in ``run_info_uri``), else a new run with the config, git commit and versions."""
    previous = None
    if storage.exists(run_info_uri, options):
        previous = json.loads(storage.read_bytes(run_info_uri, options))["mlflow_run_id"]
    tracker = Tracker.start(cfg.mlflow, "train", run_name=cfg.name, tags={"mirage.run_name": cfg.name},
                            resume_run_id=previous)
    if tracker.enabled and tracker.run_id == previous:
        log.info("resuming MLflow run %s", previous)
        return tracker
    if previous:
        log.warning("MLflow run %s not found on %s: started %s", previous, cfg.mlflow.uri(), tracker.run_id)
    tracker.log_params({**cfg.model_dump(mode="json"), "git_commit": _git_commit(), **_versions()})
    if tracker.enabled:
        storage.atomic_write_bytes(run_info_uri, json.dumps({"mlflow_run_id": tracker.run_id}).encode(), options)
    return tracker


def _storage_root(cfg: TrainConfig) -> tuple[str, Any, str]:
    """(storage_path for RunConfig, pyarrow filesystem, URI of this run's directory)."""
    fs, path = storage.pyarrow_filesystem(cfg.storage_path, cfg.storage.options())
    return path, fs, storage.join_uri(cfg.storage_path, cfg.name)


# ----------------------------------------------------------------------------------------------
# Worker
# ----------------------------------------------------------------------------------------------
def _build_model(cfg: TrainConfig, device):
    from mirage_model.generation import MirageGenerator
    from mirage_model.training.trainer import prepare_model

    m = cfg.model
    frozen = getattr(torch, m.frozen_dtype(cfg.scaling.use_gpu))
    if m.model_dir:  # an s3:// model is downloaded once per node (storage.local_copy)
        model_dir = storage.local_copy(m.model_dir, cfg.storage.options())
        gen = MirageGenerator.from_pretrained(model_dir, branch_dir=m.branch_dir, device=str(device), lazy_vae=True,
                                              lazy_text=True, dtype=frozen)  # in that dtype: no float32 copy first
    else:
        gen = MirageGenerator.from_preset(m.preset, seed=cfg.seed, device=device, lazy_vae=True, lazy_text=True,
                                          dtype=frozen)
        if m.vae:  # built the first time it is needed, like the preset's
            from mirage_model.vae import load_vae

            gen.vae = functools.partial(load_vae, m.vae)
        if m.branch_dir:
            gen.transformer.load_branch(m.branch_dir)
    prepare_model(gen.transformer, m.lora)  # the VAE and the text encoder load (frozen) only when first used
    master_weights_float32(gen.transformer, full=any(s.name == "full" for s in cfg.stages))
    if m.init:  # a warm start (a resumed run then loads its own checkpoint over it)
        load_weights(m.init, gen.transformer)
    if m.gradient_checkpointing:
        gen.transformer.enable_gradient_checkpointing()
    gen.record = {**gen.record, "memory": cfg.memory.model_dump(mode="json")}  # rollouts read the trained memory
    return gen


def master_weights_float32(model, full: bool = False) -> None:
    """What trains is kept in float32 (the optimizer's master weights): the branch and the LoRA, and
    with a ``full`` stage the whole model; the frozen backbone keeps its storage dtype."""
    for name, p in model.named_parameters():
        if full or name.startswith("branch.") or "lora_" in name:
            p.data = p.data.float()


ENCODER_TEXT: dict[str, Any] = {"source": "encoder"}
"""The run's text path when it encodes the captions itself (``choose_text``)."""


def choose_text(cfg: TrainConfig, shards: list[str], options: StorageOptions) -> dict[str, Any]:
    """The run's text path: ``{"source": "shards", "encoder", "tokens"}`` when the shards carry the
    text states preprocessing computed (``data.text_embeddings``: auto or shards), checked on the first
    sample against the model's text encoder and prompt length (a mismatch is an error naming both);
    else ``ENCODER_TEXT``. Workers then check each sample the same way (``check_text``)."""
    from mirage_model.model.text import preset_text_id
    from pipeline.text import text_stack_id_at

    mode = cfg.data.text_embeddings
    if mode == "encoder":
        return ENCODER_TEXT
    key, members, meta = first_sample(shards[0], options)
    stored = meta.get("text") if "text.safetensors" in members else None
    if stored is None:
        if mode == "shards":
            raise ValueError(f"data.text_embeddings=shards, but sample {key} of {shards[0]} has no text states "
                             "(text.safetensors): preprocess with text_embeddings.model set")
        return ENCODER_TEXT
    m = cfg.model
    want = {"encoder": text_stack_id_at(m.model_dir, options=options) if m.model_dir else preset_text_id(m.preset, cfg.seed),
            "tokens": m.text_tokens()}
    for k, what in (("encoder", "text encoder"), ("tokens", "prompt length")):
        if stored.get(k) != want[k]:
            raise ValueError(f"data.shards {cfg.data.shards}: sample {key} holds text states of {what} {stored.get(k)!r}, "
                             f"but the model's is {want[k]!r} (preprocess with the model's text encoder and "
                             "max_length, or set data.text_embeddings=encoder to encode the captions here)")
    log.info("text: the shards' precomputed states (%s, %d tokens); no text encoder is loaded", want["encoder"],
             want["tokens"])
    return {"source": "shards", **want}


def check_text(sample: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """``sample`` when the run reads its text from it (``text["source"] == "shards"``) and it holds
    states of the run's encoder and prompt length; ValueError (the sample is skipped) otherwise."""
    if text["source"] != "shards":
        return sample
    stored = (sample.get("meta") or {}).get("text") or {}
    if "text" not in sample:
        raise ValueError("no precomputed text states (text.safetensors), and the run reads them from the shards")
    got, want = (stored.get("encoder"), stored.get("tokens")), (text["encoder"], text["tokens"])
    if got != want:
        raise ValueError(f"text states of encoder {got[0]} at {got[1]} tokens; the run's are {want[0]} at {want[1]}")
    return sample


def _vae_if_needed(gen, sample):
    """The generator's VAE for a sample without cached latents; None (never loading it) otherwise."""
    return None if sample.get("latents") is not None else gen.vae


def _validation_batch(dataset, cfg: TrainConfig, gen, text: dict[str, Any]):
    """The fixed validation batch: the first ``validation.samples`` samples of the shards that build
    (fixed draws, no dropout), read by rank 0 from the ``validation`` dataset (all shards in order,
    read only as far as needed) -- never from a training stream."""
    fixed = cfg.data.model_copy(update={"text_dropout": 0.0, "drop_preceding_p": 0.0, "drop_references_p": 0.0})
    seed = derive_seed(cfg.seed, "validation") % 2**31  # draws of its own, never a training epoch's
    built = []
    for row in dataset.iter_rows():
        try:
            sample = check_text(sample_from_row(row), text)
            built.append(build_training_sample(sample, fixed, seed=seed, epoch=0, vae=_vae_if_needed(gen, sample),
                                               device="cpu", memory_config=cfg.memory))
        except Exception:  # noqa: BLE001 - as in training: a bad sample is skipped (the training stream counts it)
            continue
        if len(built) == cfg.validation.samples:
            break
    if not built:
        raise ValueError(f"data.shards {cfg.data.shards}: no sample builds (see the skipped samples)")
    groups = Counter(_layout(s) for s in built)  # short clips have shorter layouts: one layout per batch
    common = max(groups, key=lambda g: (groups[g], g))
    return collate([s for s in built if _layout(s) == common])


def _layout(sample) -> tuple[int, int]:
    """(target latents, context latents) of a built sample: what must agree within a batch."""
    return int(sample.target.shape[1]), int(sample.context.shape[1])


def _rollout_video(gen, cfg: TrainConfig, step: int, out_dir: Path, prompt: str | torch.Tensor) -> str:
    """A short generation with the current weights (pan-and-return, synthetic first frame) for
    ``prompt`` (a text, or its precomputed states)."""
    from mirage_model.generation import GenerationConfig, save_outputs
    from mirage_model.geometry.trajectory import pan_and_return
    from mirage_model.io.images import to_uint8
    from mirage_model.synthetic import default_scene, render

    size = (64, 96)
    traj = pan_and_return(33, yaw_degrees=30.0, translation=(0.2, 0.0, 0.0), image_size=size)
    view = render(default_scene(cfg.seed), traj.K[0], traj.c2w[0], size)
    image = to_uint8(view.rgb.numpy())
    was = gen.transformer.training
    gen.transformer.eval()
    settings = GenerationConfig(steps=cfg.validation.video_steps, memory="latent", seed=cfg.seed, progress=False,
                                preceding=cfg.data.preceding, max_text_length=cfg.model.text_tokens())
    result = gen.generate(image, prompt, traj, settings, first_depth=view.depth)
    gen.transformer.train(was)
    paths = save_outputs(result, traj, out_dir / f"step_{step:06d}")
    return paths["video"]


class BatchSource:
    """One worker's training batches, at an exact and resumable data position.

    It holds the worker's shard stream (``SampleStream``: its own shards through a seeded shuffle
    buffer), the samples that failed to build (key -> reason; each is logged once and counted,
    never fatal), built samples waiting for a batch of their layout (short clips have shorter
    layouts and a batch holds one), and this worker's accounting since the run started. A resumed
    worker carries on from its record in the checkpoint (``state.ranks[rank]``); if the checkpoint
    was written by another number of workers, the shards are split anew and every worker starts a
    new epoch."""

    ACCOUNTING = ("data_s", "step_s", "samples", "uncaptioned", "bytes_in", "covered_cells", "target_cells")

    def __init__(self, rows, cfg: TrainConfig, gen, state: TrainState, rank: int, world: int,
                 text: dict[str, Any] | None = None):
        mine = state.ranks[rank] if len(state.ranks) == world else None
        if state.ranks and mine is None:
            log.warning("rank %d: the checkpoint was written by %d workers, not %d: the shards are split anew and "
                        "every worker starts a new epoch", rank, len(state.ranks), world)
        start = mine or {"epoch": max([r["epoch"] + 1 for r in state.ranks], default=0), "position": 0}
        self.cfg, self.gen, self.rank, self.text = cfg, gen, rank, text or ENCODER_TEXT
        self.stream = SampleStream(rows, seed=cfg.seed, rank=rank, buffer_size=cfg.data.shuffle_buffer,
                                   epoch=start["epoch"], position=start["position"], name=f"training worker {rank}")
        self.resumed: dict[str, Any] = mine or {}  # this worker's record in the checkpoint
        self.skipped: dict[str, str] = dict(self.resumed.get("skipped", {}))
        self.acct = {k: self.resumed.get(k, 0) for k in self.ACCOUNTING}
        self.deferred: list = []  # built samples of another layout than the batch being filled

    def next_batch(self) -> TrainingBatch:
        """``batch_size`` samples of one layout from the current data position (a deferred sample of
        the batch's layout first)."""
        t0 = time.perf_counter()
        size, built = self.cfg.optim.batch_size, []
        for s in list(self.deferred):
            if len(built) < size and (not built or _layout(s) == _layout(built[0])):
                built.append(s)
                self.deferred.remove(s)
        since = self.stream.epoch  # a whole epoch without one sample that builds is an error, not a hang
        while len(built) < size:
            sample = self._build(next(self.stream))
            if sample is not None:
                since = self.stream.epoch
                (built if not built or _layout(sample) == _layout(built[0]) else self.deferred).append(sample)
            elif self.stream.epoch > since + 1:
                reasons = "; ".join(f"{k}: {v}" for k, v in list(self.skipped.items())[:3])
                raise ValueError(f"training worker {self.rank}: no sample of a whole epoch of its shards builds "
                                 f"({len(self.skipped)} skipped, e.g. {reasons})")
        batch = collate(built)
        self.acct["data_s"] += time.perf_counter() - t0
        self.acct["samples"] += len(batch.prompts)
        self.acct["uncaptioned"] += sum(not s.prompt and not s.dropped_text for s in built)  # no caption at all
        return batch

    def _build(self, row: dict):
        """The training sample of a row (its draws seeded by the run's seed and the epoch), or None
        for a sample that fails to build: skipped, logged once, counted."""
        key = str(row.get("__key__"))
        self.acct["bytes_in"] += sum(len(v) for v in row.values() if isinstance(v, (bytes, bytearray)))
        try:
            sample = check_text(sample_from_row(row), self.text)
            return build_training_sample(sample, self.cfg.data, seed=self.cfg.seed, epoch=self.stream.epoch,
                                         vae=_vae_if_needed(self.gen, sample), device="cpu",
                                         memory_config=self.cfg.memory)
        except Exception as exc:  # noqa: BLE001 - a bad sample is skipped and counted, never fatal
            if key not in self.skipped:
                log.warning("rank %d: skipping sample %s: %s", self.rank, key, exc)
            self.skipped[key] = str(exc)
            return None

    def count_cells(self, covered: int, cells: int) -> None:
        """Add an optimizer step's memory coverage (target cells the memory covered, target cells)."""
        self.acct["covered_cells"] += covered
        self.acct["target_cells"] += cells

    def position(self) -> dict[str, Any]:
        """This worker's record for a checkpoint: data position, skipped samples, accounting."""
        stream = self.stream
        return {"epoch": stream.epoch, "position": stream.position, "skipped": self.skipped,
                "epoch_rows": next(iter(stream.epoch_sizes.values()), self.resumed.get("epoch_rows")),
                **self.acct, "rss_mib": max(peak_rss_mib(), self.resumed.get("rss_mib", 0.0)),
                "vae_loaded": self.gen.vae_loaded, "text_encoder_loaded": self.gen.text_encoder_loaded}


class Validator:
    """Rank 0's validation: the loss on a fixed batch (``_validation_batch``; fixed draws, no
    dropout) and, for the tiny/small presets, a short rollout video."""

    def __init__(self, dataset, cfg: TrainConfig, gen, prompts, device, autocast: bool, tracker: Tracker,
                 text: dict[str, Any]):
        self.cfg, self.gen, self.prompts, self.device, self.autocast = cfg, gen, prompts, device, autocast
        self.tracker = tracker
        self.batch = _validation_batch(dataset, cfg, gen, text)
        self.video_dir = Path(tempfile.mkdtemp(prefix="mirage-val-"))

    def loss(self) -> float:
        model = self.gen.transformer
        was = model.training
        model.eval()
        with torch.no_grad():
            g = torch.Generator(self.device).manual_seed(derive_seed(self.cfg.seed, "validation"))
            loss = float(batch_loss(model, self.batch, self.prompts.for_batch(self.batch), g,
                                    shift=self.cfg.optim.shift, autocast=self.autocast))
        model.train(was)
        return loss

    def log(self, step: int, last: bool = False) -> None:
        """``val_loss`` at ``step``; the video when ``validation.video_every`` is due or at the run's
        ``last`` step."""
        v = self.cfg.validation
        self.tracker.log_metrics({"val_loss": self.loss()}, step)
        if is_sharded(self.gen.transformer):  # FSDP keeps the root gathered after a forward without backward
            self.gen.transformer.reshard()
        video_due = v.video_every and step % v.video_every == 0
        if v.video and self.cfg.model.model_dir is None and (video_due or last):
            b = self.batch  # the first validation sample's prompt, as the run reads prompts
            prompt = b.texts[0] if isinstance(self.prompts, ShardTextStates) else b.prompts[0]
            self.tracker.log_artifact(_rollout_video(self.gen, self.cfg, step, self.video_dir, prompt),
                                      f"validation/step_{step:06d}")
            if is_sharded(self.gen.transformer):
                self.gen.transformer.reshard()


def _restore(checkpoint, model, rank: int) -> tuple[TrainState, Path | None]:
    """The run's state: a new one, or the Ray Train checkpoint's (one resume more), its weights
    loaded into ``model`` and the checkpoint copied to a local directory (returned; the optimizer
    state in it is loaded when its stage starts)."""
    if checkpoint is None:
        return TrainState(), None
    resume_dir = Path(tempfile.mkdtemp(prefix="mirage-resume-"))
    with checkpoint.as_directory() as d:
        shutil.copytree(d, resume_dir, dirs_exist_ok=True)
    load_weights(resume_dir, model)
    state = load_state(resume_dir)
    state.resumes += 1
    log.info("rank %d: resumed at stage %d step %d (global %d)", rank, state.stage_index, state.step,
             state.global_step)
    return state, resume_dir


def _forward_backward(wrapped, data: BatchSource, prompts, cfg: TrainConfig, seed_parts: tuple, device,
                      autocast: bool) -> tuple[float, int, int]:
    """The ``grad_accum`` micro-batches of one optimizer step: forward and backward of each (every
    random draw seeded by ``derive_seed(seed, *seed_parts, micro)``; gradients averaged, reduced
    across workers on the last micro-batch only). Returns this worker's (mean loss, target cells
    the memory covered, target cells)."""
    accum = cfg.optim.grad_accum
    loss_sum, covered, cells = 0.0, 0, 0
    for micro in range(accum):
        batch = data.next_batch()
        c, n = batch.memory_cells()
        covered, cells = covered + c, cells + n
        seed = derive_seed(cfg.seed, *seed_parts, micro)
        torch.manual_seed(seed)  # LoRA dropout
        g = torch.Generator(device).manual_seed(seed)
        with grad_sync(wrapped, micro == accum - 1):
            loss = batch_loss(wrapped, batch, prompts.for_batch(batch), g, shift=cfg.optim.shift, autocast=autocast,
                              covered_weight=cfg.optim.covered_weight)
            (loss / accum).backward()
        loss_sum += float(loss.detach()) / accum
    return loss_sum, covered, cells


def _mean_over_workers(loss: float, covered: int, cells: int, world: int, device) -> tuple[float, float]:
    """(loss averaged over the workers, memory coverage over all their target cells). The sum runs on
    ``device``: NCCL reduces GPU tensors only."""
    t = torch.tensor([loss, covered, cells], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return float(t[0] / world), float(t[1] / t[2])


# ----------------------------------------------------------------------------------------------
# Worker: the parallel wrapper (the one place a parallel strategy is chosen)
# ----------------------------------------------------------------------------------------------
def shard_model(model, cfg: TrainConfig, bf16: bool):
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): each transformer block of the backbone and of
    the branch is its own unit (its parameters are gathered for its forward and backward only),
    then the root holds the rest (embeddings, norms, heads). Mixed precision: bf16 parameters for
    compute and fp32 gradient reduction when ``bf16``; the master weights and the optimizer state
    stay in the model's dtype. Frozen and trainable parameters share the blocks (the LoRA sits in
    the backbone's linears), which FSDP2 shards parameter by parameter. Done once, before the
    stages: each stage only changes which parameters require grad. In place; returns ``model``."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    policy = dict(
        mp_policy=(MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
                   else MixedPrecisionPolicy()),
        offload_policy=CPUOffloadPolicy() if cfg.scaling.cpu_offload else OffloadPolicy())
    for block in [*model.backbone.blocks, *model.branch.blocks]:
        fully_shard(block, **policy)
    fully_shard(model, **policy)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_for_training(model, device):
    """``model`` as the step loop calls it. Sharded (``scaling.parallel: fsdp``, ``shard_model``):
    the model itself. One worker: the model itself. Several: DistributedDataParallel through Ray
    Train's ``prepare_model`` (gloo on CPU, NCCL on GPU with ``device_ids``; the model is already on
    ``device``). Building it broadcasts rank 0's parameters and buffers, which every rank already
    holds (same seed, same checkpoint).

    Called once per stage, after ``start_stage`` has set which parameters train: DDP registers its
    gradient hooks and buckets for the parameters that require grad when it is built, and the
    branch stage and the LoRA stage train different ones. The step loop calls the wrapper (forward,
    backward); validation, rollouts and checkpoints use ``model`` itself."""
    import ray.train.torch

    if is_sharded(model):
        return model
    return ray.train.torch.prepare_model(model, move_to_device=device, parallel_strategy="ddp")


def grad_sync(wrapped, sync: bool):
    """The context of one micro-batch's forward and backward: gradients are reduced across workers
    only when ``sync`` (the last micro-batch of an optimizer step), else they accumulate locally
    (DDP's ``no_sync``; FSDP's ``set_requires_gradient_sync``, which keeps unsharded gradients)."""
    from torch.nn.parallel import DistributedDataParallel

    if is_sharded(wrapped):
        wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not isinstance(wrapped, DistributedDataParallel):
        return contextlib.nullcontext()
    return wrapped.no_sync()


# ----------------------------------------------------------------------------------------------
# Worker: the training function
# ----------------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    """Each worker of ``TorchTrainer``: both stages, resumable from the run's latest checkpoint.

    ``config``: ``cfg`` (the ``TrainConfig`` as a dict), ``tracking_uri`` and ``mlflow_run_id``
    (rank 0 logs to that MLflow run), and the test hooks ``fail_after_step`` / ``fail_marker``."""
    import ray.train.torch

    from jobs.ray_runtime import ray_data_info_to_files_only

    ray_data_info_to_files_only()  # this worker's shard stream runs once per epoch

    # setup
    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.scaling.use_gpu else torch.device("cpu")
    autocast = (cfg.model.bf16 if cfg.model.bf16 is not None
                else device.type == "cuda" or cfg.model.frozen_dtype(cfg.scaling.use_gpu) == "bfloat16")
    torch.manual_seed(cfg.seed)
    sharded = cfg.scaling.parallel == "fsdp"
    # sharded: built in host memory; fully_shard then moves each block's shard to the GPU, so no GPU
    # ever holds the whole model
    gen = _build_model(cfg, torch.device("cpu") if sharded else device)
    model = gen.transformer
    text = config.get("text") or ENCODER_TEXT
    if text["source"] == "shards":  # precomputed by preprocessing: the text encoder is never loaded
        prompts = ShardTextStates(cfg.model.text_tokens(), device)
    else:
        prompts = PromptEncoder(gen.tokenizer, gen.text_encoder, cfg.model.text_tokens(), device,
                                cache_size=cfg.model.text_cache_size)
    tracker = Tracker.attach(config.get("tracking_uri"), config.get("mlflow_run_id"), enabled=rank == 0)
    # the checkpoints carry the backbone when it trains, or when it came trained from model.init
    keep_backbone = (any(s.name == "full" for s in cfg.stages)
                     or bool(cfg.model.init and checkpoint_has_backbone(cfg.model.init)))

    # resume, sharding, data, validation
    state, resume_dir = _restore(ray.train.get_checkpoint(), model, rank)
    if sharded:
        shard_model(model, cfg, autocast)
        gen.to(device, transformer=False)  # the text encoder and the (lazy) VAE; the shards are there already
    data = BatchSource(ray.train.get_dataset_shard("train").iter_rows, cfg, gen, state, rank, world, text)
    validator = None
    if rank == 0 or sharded:  # a sharded model's forward needs every rank (rank 0 alone logs)
        validator = Validator(ray.train.get_dataset_shard("validation"), cfg, gen, prompts, device, autocast, tracker,
                              text)
        if resume_dir is None:
            validator.log(0)

    for stage_index in range(state.stage_index, len(cfg.stages)):
        stage = cfg.stages[stage_index]
        if stage_index != state.stage_index:
            state.stage_index, state.step = stage_index, 0
        params, optimizer, scheduler = start_stage(model, stage, cfg.optim)
        if resume_dir is not None and state.step > 0:
            load_optimizer(resume_dir, optimizer, scheduler, model)
        model.train()
        wrapped = wrap_for_training(model, device)  # after start_stage: this stage's trainable parameters

        while state.step < stage.steps:
            t0 = time.perf_counter()
            loss, covered, cells = _forward_backward(wrapped, data, prompts, cfg, (stage.name, state.step, rank),
                                                     device, autocast)
            lr = optimizer.param_groups[0]["lr"]  # this step's (the scheduler then moves to the next)
            grad_norm = clip_and_step(params, optimizer, scheduler, cfg.optim.grad_clip)
            state.step += 1
            state.global_step += 1
            data.count_cells(covered, cells)
            loss, coverage = _mean_over_workers(loss, covered, cells, world, device)
            dt = time.perf_counter() - t0
            data.acct["step_s"] += dt
            done = state.step == stage.steps

            if state.global_step % cfg.log_every == 0 or done:
                tracker.log_metrics({"loss": loss, f"loss_{stage.name}": loss, "lr": lr, "grad_norm": grad_norm,
                                     "step_time_s": dt,
                                     "samples_per_s": cfg.optim.batch_size * cfg.optim.grad_accum * world / dt,
                                     "memory_coverage": coverage, "stage": stage_index}, state.global_step)
            if validator is not None and (state.global_step % cfg.validation.every == 0 or done):
                validator.log(state.global_step, last=done and stage_index == len(cfg.stages) - 1)
            if state.global_step % cfg.checkpoint.every == 0 or done:
                _report(model, optimizer, scheduler, state, data.position(), rank, world, loss, stage.name,
                        backbone=keep_backbone, record=model_record(cfg))
                if config.get("fail_after_step") == state.global_step:
                    _maybe_fail(config.get("fail_marker"))


def model_record(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's weights were trained as and with (its ``model.json``): the base model,
    the LoRA shape, the training-sample layout, the latent memory's settings, the prompt length
    and the VAE whose latents it learnt (a preset's own when null); generation checks its own
    ``preceding`` and ``max_text_length`` against it, builds its latent memory with those
    settings and loads that VAE unless given another."""
    return {"preset": None if cfg.model.model_dir else cfg.model.preset, "model_dir": cfg.model.model_dir,
            "seed": cfg.seed, "lora": cfg.model.lora.model_dump(mode="json"),
            "max_text_length": cfg.model.text_tokens(), "sample": cfg.data.layout(), "memory": cfg.memory.model_dump(mode="json"),
            "vae": cfg.model.vae}


def _report(model, optimizer, scheduler, state, position: dict, rank: int, world: int, loss: float, stage: str,
            backbone: bool = False, record: dict | None = None) -> None:
    """Every rank reports (a barrier); rank 0 attaches the checkpoint directory (with the backbone's
    weights when a stage trains them) holding every rank's data position. Sharded (FSDP): the
    weights are gathered to rank 0's host memory one parameter at a time, and every rank attaches
    its own directory with its optimizer shard; Ray Train merges them into one checkpoint."""
    import ray.train

    from mirage_model.training.trainer import save_checkpoint

    ranks = [position]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, position)
    state.ranks = ranks
    state.epoch, state.position = ranks[0]["epoch"], ranks[0]["position"]
    state.skipped = len({k for r in ranks for k in r["skipped"]})
    metrics = {"loss": loss, "global_step": state.global_step, "stage": stage, "skipped": state.skipped}
    if is_sharded(model):  # every rank writes its optimizer shard; the weights are gathered on rank 0
        from mirage_model.training.trainer import save_sharded_optimizer

        model.reshard()  # the root keeps its gathered parameters after a no-grad forward (validation)
        full = gather_weights(model, backbone, rank)
        with tempfile.TemporaryDirectory(prefix="mirage-ckpt-") as d:
            save_sharded_optimizer(d, model, optimizer)
            if rank == 0:
                save_checkpoint(d, model, None, scheduler, TrainState(**vars(state)), backbone=backbone,
                                record=record, weights=full)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    elif rank == 0:
        with tempfile.TemporaryDirectory(prefix="mirage-ckpt-") as d:
            save_checkpoint(d, model, optimizer, scheduler, TrainState(**vars(state)), backbone=backbone,
                            record=record)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics, checkpoint=None)


def gather_weights(model, backbone: bool, rank: int) -> dict[str, torch.Tensor]:
    """What a checkpoint writes of a sharded model, gathered to rank 0's host memory one parameter
    at a time (each ``full_tensor`` is a collective: every rank walks the same names): the trainable
    weights (``trainable_names``) and the whole branch with its buffers (``branch/``); never the
    frozen backbone, unless a stage trains it. Other ranks get an empty dict."""
    from mirage_model.model.checkpoint import trainable_names

    names = set(trainable_names(model, backbone))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names or name.startswith("branch."):
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                if rank == 0:
                    out[name] = full.detach().cpu()
        if rank == 0:
            out.update({n: b.detach().cpu() for n, b in model.named_buffers() if n.startswith("branch.")})
    return out


def _maybe_fail(marker: str | None) -> None:
    """Test hook: fail once (the marker file records that the failure happened)."""
    if marker and not os.path.exists(marker):
        Path(marker).write_text("failed once\n")
        raise RuntimeError("injected failure (run_train's fail_after_step)")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def _local_model_paths_absolute(cfg: TrainConfig) -> TrainConfig:
    """The config with the model's local directories made absolute: Ray Train workers run in their
    own working directory, where a path relative to the driver's names nothing."""
    m = cfg.model
    paths = {k: os.path.abspath(os.path.expanduser(v)) for k in ("model_dir", "branch_dir", "init", "vae")
             if (v := getattr(m, k)) and not storage.is_s3(v)}
    return cfg.model_copy(update={"model": m.model_copy(update=paths)})


def run_train(cfg: TrainConfig, *, fail_after_step: int | None = None, fail_marker: str | None = None
              ) -> dict[str, Any]:
    """Run (or resume) a training job; returns a summary dict.

    ``fail_after_step`` / ``fail_marker``: fault injection for tests only (never in a config): the
    worker loop raises once right after that step's checkpoint, and the marker file records it."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from jobs.ray_runtime import init_ray
    from mirage_model.training.trainer import TRAINABLE_FILE

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if cfg.model.init and not (Path(cfg.model.init) / TRAINABLE_FILE).is_file():
        raise FileNotFoundError(f"model.init {cfg.model.init}: not a `mirage train` checkpoint directory "
                                f"(no {TRAINABLE_FILE})")
    options = cfg.storage.options()
    t_start = time.perf_counter()
    init_ray(cfg.ray_address)
    ray.data.DataContext.get_current().enable_progress_bars = False  # a worker stream per epoch: bars would flood the log

    shards = list_shards(cfg.data.shards, options)
    good_shards, bad_shards = check_shards(shards, options)
    if not good_shards:
        raise ValueError(f"data.shards {cfg.data.shards}: none of the {len(shards)} shards is readable")
    shards_for_rank(good_shards, 0, cfg.scaling.num_workers)  # enough shards for the workers, or a clear error
    log.info("training on %d shards (%d skipped), %d per worker", len(good_shards), len(bad_shards),
             -(-len(good_shards) // cfg.scaling.num_workers))

    text = choose_text(cfg, good_shards, options)
    storage_path, fs, run_uri = _storage_root(cfg)
    tracker = open_tracker(cfg, storage.join_uri(cfg.storage_path, f"{cfg.name}.{RUN_INFO}"), options)
    tracker.log_metrics({"data.shards": len(good_shards), "data.skipped_shards": len(bad_shards)})

    # GPUs: NCCL, with gloo beside it for CPU tensors (FSDP's CPU offload keeps shards and norms there)
    backend = TorchConfig(backend="cpu:gloo,cuda:nccl" if cfg.scaling.use_gpu else "gloo")
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": _local_model_paths_absolute(cfg).model_dump(), "tracking_uri": tracker.tracking_uri,
                           "mlflow_run_id": tracker.run_id, "fail_marker": fail_marker, "text": text,
                           "fail_after_step": fail_after_step},
        torch_config=backend,
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
                                     placement_strategy=cfg.scaling.placement_strategy),
        run_config=RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=fs,
                             checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
                             failure_config=FailureConfig(max_failures=cfg.checkpoint.max_failures)),
        datasets={"train": read_shards(good_shards, options), "validation": read_shards(good_shards, options)},
        dataset_config=ShardSplit(good_shards, options, cfg.scaling.num_workers),
    )
    try:
        result = trainer.fit()
    except Exception:
        tracker.finish("FAILED")
        raise
    summary: dict[str, Any] = {"name": cfg.name, "stages": len(cfg.stages), "run_id": tracker.run_id,
                               "tracking_uri": tracker.tracking_uri, "shards": len(good_shards),
                               "skipped_shards": bad_shards, "samples": None, "skipped_samples": [], "text": text,
                               "seconds": time.perf_counter() - t_start}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            for sub in ("lora", "branch"):
                if (Path(d) / sub).is_dir():
                    tracker.log_artifacts(str(Path(d) / sub), sub)
            summary["state"] = json.loads((Path(d) / "train_state.json").read_text())
        summary["checkpoint"] = result.checkpoint.path
        summary.update(data_accounting(summary["state"].get("ranks", [])))
        ranks = summary["state"].get("ranks", [])
        trained = sum(r.get("samples", 0) for r in ranks)
        summary["uncaptioned_share"] = sum(r.get("uncaptioned", 0) for r in ranks) / trained if trained else None
        if summary["uncaptioned_share"]:
            log.warning("%.0f %% of the samples trained on had no caption (an empty prompt): caption them in "
                        "`mirage preprocess` (captions.*)", 100 * summary["uncaptioned_share"])
        tracker.log_metrics({"data.skipped_samples": len(summary["skipped_samples"]),
                             **({"data.uncaptioned_share": summary["uncaptioned_share"]} if trained else {}),
                             **({"data.samples": summary["samples"]} if summary["samples"] is not None else {})})
    summary["seconds"] = time.perf_counter() - t_start
    summary["summary"] = write_summary(_job_summary(summary), storage.join_uri(run_uri, SUMMARY_FILE), options,
                                       tracker)
    tracker.finish()
    return summary


def _job_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary.json`` of a training run: shards in, samples used, skips, and per worker its busy
    seconds (building samples vs the optimizer step, which includes them), bytes read, peak RSS and
    whether it had to load the VAE (only to encode samples without cached latents, or for rollouts)
    and the text encoder (not when the shards carry the prompts' states: ``text``);
    ``memory_coverage``: the fraction of the target cells trained on that the memory covered."""
    ranks = summary.get("state", {}).get("ranks", [])
    trained = sum(r.get("samples", 0) for r in ranks)
    rejected = {"unreadable_shard": len(summary["skipped_shards"]), "bad_sample": len(summary["skipped_samples"])}
    return job_summary(
        "train", summary["seconds"], inputs=summary["shards"] + len(summary["skipped_shards"]),
        accepted=summary["shards"], rejected={k: v for k, v in rejected.items() if v},
        bytes_in=sum(r.get("bytes_in", 0) for r in ranks) or None,
        stage_seconds={"build_samples": sum(r.get("data_s", 0.0) for r in ranks),
                       "train_steps": sum(r.get("step_s", 0.0) for r in ranks)},
        stage_items={"build_samples": trained, "train_steps": trained},
        peak_rss={f"worker{i}": r["rss_mib"] for i, r in enumerate(ranks) if "rss_mib" in r},
        details={"samples_trained": trained, "samples_per_epoch": summary["samples"],
                 "uncaptioned_share": summary.get("uncaptioned_share"),
                 "steps": summary.get("state", {}).get("global_step"), "workers": len(ranks),
                 "vae_loaded_on": [f"worker{i}" for i, r in enumerate(ranks) if r.get("vae_loaded")],
                 "text": summary.get("text", ENCODER_TEXT)["source"],
                 "text_encoder_loaded_on": [f"worker{i}" for i, r in enumerate(ranks) if r.get("text_encoder_loaded")],
                 "memory_coverage": (sum(r.get("covered_cells", 0) for r in ranks)
                                     / max(1, sum(r.get("target_cells", 0) for r in ranks))),
                 "run_id": summary["run_id"], "checkpoint": summary.get("checkpoint")})


def data_accounting(ranks: list[dict]) -> dict[str, Any]:
    """What the workers met, from the checkpoint's per-rank positions: the skipped samples with their
    reasons, and the usable samples per epoch (``None`` until every worker has finished an epoch)."""
    skipped = {k: v for r in ranks for k, v in r.get("skipped", {}).items()}
    rows = [r.get("epoch_rows") for r in ranks]
    samples = sum(rows) - len(skipped) if ranks and all(n is not None for n in rows) else None
    return {"samples": samples, "skipped_samples": [{"key": k, "reason": v} for k, v in sorted(skipped.items())]}


def format_summary(summary: dict[str, Any]) -> str:
    state = summary.get("state", {})
    lines = [f"trained {summary['name']}: {state.get('global_step', 0)} steps over {summary['stages']} stage(s) on "
             f"{summary['samples'] if summary['samples'] is not None else '?'} samples "
             f"({len(summary['skipped_samples'])} samples and "
             f"{len(summary['skipped_shards'])} shards skipped) in {summary['seconds']:.0f} s",
             f"checkpoint: {summary.get('checkpoint')}"]
    if summary.get("run_id"):
        uri = summary["tracking_uri"]
        lines.append(f"MLflow run {summary['run_id']} at {uri}  (open: mlflow ui --backend-store-uri {uri})")
    return "\n".join(lines)


def latest_checkpoint(run_uri: str, options: StorageOptions | None = None) -> str:
    """URI of the checkpoint with the highest global step under a run directory (or the dir itself)."""
    fs, path = storage.filesystem(run_uri, options)
    if fs.exists(f"{path}/train_state.json"):
        return run_uri
    if not fs.isdir(path):
        raise FileNotFoundError(f"run {run_uri} does not exist")
    best, best_step = None, -1
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        state_file = f"{entry.rstrip('/')}/train_state.json"
        if name.startswith("checkpoint_") and fs.exists(state_file):
            step = json.loads(fs.cat_file(state_file))["global_step"]
            if step > best_step:
                best, best_step = storage.join_uri(run_uri, name), step
    if best is None:
        raise FileNotFoundError(f"run {run_uri}: no checkpoint with a train_state.json")
    return best


def local_checkpoint(uri: str, options: StorageOptions | None = None) -> str:
    """A local directory holding the checkpoint ``uri`` names: a checkpoint directory (or a world's
    ``model/``) as it is, a run directory's latest checkpoint; an ``s3://`` one is downloaded once
    into ``$MIRAGE_CACHE`` (default ``~/.cache/mirage``)/checkpoints/, keyed by its URI (what loading
    needs: weights, record, LoRA; not the optimizer state). A checkpoint URI names one checkpoint
    (``checkpoint_<time>``), so the key does not go stale; an export rewritten under the same URI
    needs the cache entry removed."""
    from mirage_model.model.checkpoint import MODEL_FILE, TRAINABLE_FILE
    from mirage_model.model.lora import LORA_WEIGHT_NAME

    if not storage.is_s3(uri):
        path = storage.local_path(uri).expanduser()
        if (path / TRAINABLE_FILE).is_file():
            return str(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {uri} does not exist")
        return latest_checkpoint(str(path), options)
    ckpt = latest_checkpoint(uri, options) if not storage.exists(storage.join_uri(uri, TRAINABLE_FILE), options) \
        else uri
    names = [TRAINABLE_FILE, MODEL_FILE, f"lora/{LORA_WEIGHT_NAME}", LORA_WEIGHT_NAME]  # not optimizer.pt
    local = storage.local_copy(ckpt, options, names=names, kind="checkpoints")
    if not (local / TRAINABLE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt}: no {TRAINABLE_FILE}")
    return str(local)


def _ls(uri: str, options: StorageOptions | None) -> list[str]:
    """The entries of a directory (nothing when it does not exist)."""
    fs, path = storage.filesystem(uri, options)
    return fs.ls(path, detail=False) if fs.isdir(path) else []


def export_model(run: str, out_dir: str, options: StorageOptions | None = None) -> list[str]:
    """The latest checkpoint of ``run`` as a model bundle in ``out_dir`` (local or ``s3://``), without
    optimizer state: ``pytorch_lora_weights.safetensors`` (the LoRA alone, which stock diffusers
    loads: ``WanPipeline.load_lora_weights(out_dir)``), ``branch/`` (the memory branch, a diffusers
    model directory), ``trainable.safetensors`` and ``model.json`` (what the weights were trained as
    and with). ``mirage generate --checkpoint out_dir`` (``model.checkpoint``) loads all of it in one
    call. Returns the files written."""
    from mirage_model.model.checkpoint import MODEL_FILE, TRAINABLE_FILE
    from mirage_model.model.lora import LORA_WEIGHT_NAME

    ckpt = latest_checkpoint(run, options)
    names = {f"lora/{LORA_WEIGHT_NAME}": LORA_WEIGHT_NAME, TRAINABLE_FILE: TRAINABLE_FILE, MODEL_FILE: MODEL_FILE}
    names.update({f"branch/{n}": f"branch/{n}" for n in
                  (p.rstrip("/").rsplit("/", 1)[-1] for p in _ls(storage.join_uri(ckpt, "branch"), options))})
    if not storage.exists(storage.join_uri(ckpt, TRAINABLE_FILE), options):
        raise FileNotFoundError(f"checkpoint {ckpt}: no {TRAINABLE_FILE}")
    for stale in [LORA_WEIGHT_NAME, TRAINABLE_FILE, MODEL_FILE] + [
            "branch/" + p.rstrip("/").rsplit("/", 1)[-1] for p in _ls(storage.join_uri(out_dir, "branch"), options)]:
        target = storage.join_uri(out_dir, *stale.split("/"))
        if storage.exists(target, options):  # a previous export's: never mixed with this one
            storage.remove(target, options)
    written = []
    for src, dst in names.items():
        uri = storage.join_uri(ckpt, *src.split("/"))
        if storage.exists(uri, options):  # no LoRA after branch / full stages; no model.json in old checkpoints
            target = storage.join_uri(out_dir, *dst.split("/"))
            with tempfile.NamedTemporaryFile(prefix="mirage-export-") as tmp:
                with storage.open_uri(uri, "rb", options) as f:
                    shutil.copyfileobj(f, tmp, 16 << 20)  # streamed: a 5B backbone does not fit in memory twice
                tmp.flush()
                storage.atomic_write_file(tmp.name, target, options)
            written.append(target)
    return written


WORLD_FILE = "world.json"
"""What ``export_world`` writes last into its directory: the sources, the files and their SHA-256."""


def export_world(run: str, vae: str, out_dir: str, note: dict[str, Any] | None = None,
                 sample: SampleConfig | None = None, options: StorageOptions | None = None) -> dict[str, Any]:
    """A trained world as one small local directory that ``mirage demo`` and the generation jobs load:

    * ``model/``: the latest checkpoint of ``run`` (a run or checkpoint directory, local or
      ``s3://``, read with ``options``) without its optimizer state --
      ``trainable.safetensors`` (branch, LoRA and, after a ``full`` stage, the backbone) and
      ``lora/`` (whose adapter metadata gives the LoRA rank); load it with ``model.checkpoint``
      (generation) or start a run from it with ``model.init`` (training);
    * ``vae/``: the diffusers VAE ``vae`` with its weights stored in float16 (half the bytes; they
      load back as float32 on the CPU, see ``mirage_model.vae.load_vae``);
    * ``world.json``: the sources, ``sample`` (the layout of the run's training samples, which
      ``mirage demo`` fine-tunes on again), ``note`` (e.g. the recipe and its figures) and each
      file's SHA-256 and size.

    The directory is built beside ``out_dir`` and swapped in whole, so a failed export leaves the
    previous one as it was. Returns the ``world.json`` record."""
    import hashlib

    from mirage_model.model.checkpoint import MODEL_FILE, TRAINABLE_FILE
    from mirage_model.model.lora import LORA_WEIGHT_NAME
    from mirage_model.vae import load_vae

    ckpt = latest_checkpoint(run, options)
    if not storage.exists(storage.join_uri(ckpt, TRAINABLE_FILE), options):
        raise FileNotFoundError(f"checkpoint {ckpt}: no {TRAINABLE_FILE}")
    out = Path(out_dir)
    tmp = out.with_name(f".tmp-{out.name}")  # built beside it, then swapped in: a failure keeps the old one
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "model" / "lora").mkdir(parents=True)
        for name in (TRAINABLE_FILE, MODEL_FILE, f"lora/{LORA_WEIGHT_NAME}"):
            src = storage.join_uri(ckpt, *name.split("/"))
            if storage.exists(src, options):  # no LoRA after branch or full stages only; no model.json before it existed
                with storage.open_uri(src, "rb", options) as f, open(tmp / "model" / name, "wb") as g:
                    shutil.copyfileobj(f, g, 16 << 20)  # streamed: a 5B backbone does not fit in memory twice
        load_vae(vae, dtype=torch.float16).save_pretrained(tmp / "vae", safe_serialization=True)
        files = {}
        for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            files[p.relative_to(tmp).as_posix()] = {"bytes": p.stat().st_size, "sha256": digest}
        record = {"checkpoint": ckpt,
                  "state": json.loads(storage.read_bytes(storage.join_uri(ckpt, "train_state.json"), options)),
                  "vae": str(vae), "note": note or {}, "files": files,
                  "sample": None if sample is None else sample.layout(),
                  "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        (tmp / WORLD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".old-{out.name}")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return record

"""The training step and its state (docs/method.md §4): pure torch, used inside Ray Train workers by ``jobs.train``.

Two stages run one after the other from one config: ``branch`` (only the memory branch trains, the
backbone is frozen) then ``lora`` (only the LoRA adapters train, the branch is frozen). The LoRA
adapters exist from the start (``B = 0``: a no-op) so both stages share one model layout and one
checkpoint format.

Determinism: every random draw of a step (σ, ε, LoRA dropout) comes from a seed derived from
``(seed, stage, step, rank)``, and the data order from ``(seed, epoch)``; nothing else needs to be
saved for a resumed run to reproduce the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator
from safetensors.torch import save_file

from mirage_model.config import StrictConfig
from mirage_model.model.checkpoint import (  # noqa: F401 - re-exported: the format training writes
    TRAINABLE_FILE,
    LoraSpec,
    checkpoint_has_backbone,
    load_weights,
    prepare_model,
    trainable_names,
    write_model_record,
)
from mirage_model.model.lora import save_lora
from mirage_model.model.loss import flow_matching_loss, set_trainable

Stage = Literal["full", "branch", "lora"]
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "train_state.json"


class StageConfig(StrictConfig):
    """One training stage: what trains, for how many optimizer steps, at which learning rate."""

    name: Stage = Field(description="branch (memory branch only, backbone frozen), lora (LoRA only, branch "
                        "frozen) or full (every weight: a world learnt from scratch, docs/method.md §13)")
    steps: int = Field(ge=1, description="optimizer steps in this stage")
    lr: float = Field(gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps (from min_lr_ratio of the peak)")
    decay_steps: int = Field(0, ge=0, description="cosine decay to min_lr_ratio over the stage's last decay_steps "
                             "(0: constant to the end)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="learning rate at the end of the decay / peak")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if self.decay_steps and self.warmup_steps + self.decay_steps > self.steps:
            raise ValueError(f"stage {self.name}: warmup_steps ({self.warmup_steps}) + decay_steps "
                             f"({self.decay_steps}) exceed its {self.steps} steps")
        return self


class OptimConfig(StrictConfig):
    """Batching and the optimizer settings shared by the stages."""

    batch_size: int = Field(1, ge=1, description="samples per worker per micro-step")
    grad_accum: int = Field(1, ge=1, description="micro-steps per optimizer step")
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clip (0: off)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    shift: float = Field(5.0, gt=0, description="flow-matching sigma shift (docs/method.md §4)")
    covered_weight: float = Field(1.0, gt=0, description="loss weight of the target cells the memory covers, "
                                  "against 1 elsewhere (a weighted mean; the validation loss stays unweighted)")


@dataclass
class TrainState:
    """Where a run is: which stage, how many optimizer steps in it, and the data position."""

    stage_index: int = 0
    step: int = 0  # optimizer steps done in the current stage
    global_step: int = 0  # optimizer steps done over all stages
    epoch: int = 0  # rank 0's data position (every rank's is in ``ranks``)
    position: int = 0  # samples consumed in the current epoch
    skipped: int = 0  # samples that failed to build, summed over ranks
    ranks: list = field(default_factory=list)  # per rank: {epoch, position, epoch_rows, skipped: {key: reason}, ...}
    resumes: int = 0  # times the run was restarted from a checkpoint (a lost worker or node, a re-run)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainState:
        return cls(**json.loads(text))


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (``hash()`` is salted per process; this is not)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def start_stage(model: nn.Module, stage: StageConfig, optim: OptimConfig):
    """Freeze/unfreeze for ``stage``; returns (trainable params, AdamW, LR schedule).

    The schedule is transformers' warm-up/stable/decay: linear warm-up, constant, then a cosine to
    ``min_lr_ratio`` over the stage's last ``decay_steps`` (none by default). The plateau does not
    depend on the stage's length, so a run stopped on it and resumed with more steps and a decay
    continues exactly as if it had been configured so from the start."""
    from transformers import get_wsd_schedule

    params = set_trainable(model, stage.name)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=optim.betas, eps=optim.eps,
                                  weight_decay=stage.weight_decay)
    scheduler = get_wsd_schedule(optimizer, num_warmup_steps=stage.warmup_steps, num_decay_steps=stage.decay_steps,
                                 num_training_steps=stage.steps, min_lr_ratio=stage.min_lr_ratio)
    return params, optimizer, scheduler


class PromptEncoder:
    """Text encoder states per prompt, cached in host memory (prompts repeat; the encoder is frozen).

    The cache holds at most ``cache_size`` prompts, least recently used evicted first, so a dataset
    of many distinct captions keeps the worker's memory flat; states move to ``device`` per batch."""

    def __init__(self, tokenizer, text_encoder, max_length: int = 64, device="cpu", cache_size: int = 256):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.requires_grad_(False)
        self.max_length, self.device, self.cache_size = max_length, device, cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        from mirage_model.model.text import encode_prompt

        states = {p: self._cache[p] for p in prompts if p in self._cache}
        missing = [p for p in dict.fromkeys(prompts) if p not in states]
        if missing:
            encoded = encode_prompt(self.tokenizer, self.text_encoder, missing, self.max_length)
            states.update({p: s.float().cpu() for p, s in zip(missing, encoded)})
        for p in dict.fromkeys(prompts):  # most recently used last
            self._cache[p] = states[p]
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([states[p] for p in prompts]).to(self.device)

    def for_batch(self, batch) -> torch.Tensor:
        """(B, max_length, D) states of a ``TrainingBatch``'s prompts."""
        return self(batch.prompts)


class ShardTextStates:
    """The prompts' encoder states as preprocessing stored them in the shards (``text.safetensors``),
    padded with zeros to ``max_length`` as the encoder's own output is: training from such shards
    never loads a text encoder."""

    def __init__(self, max_length: int, device="cpu"):
        self.max_length, self.device = max_length, device

    def for_batch(self, batch) -> torch.Tensor:
        """(B, max_length, D) states of a ``TrainingBatch`` whose samples all carry them."""
        from mirage_model.model.text import pad_states

        if batch.texts is None:
            raise ValueError(f"samples {batch.keys}: not every one carries precomputed text states (text.safetensors)")
        return pad_states(batch.texts, self.max_length).to(self.device)


def batch_loss(model: nn.Module, batch, text: torch.Tensor, generator: torch.Generator, shift: float = 5.0,
               autocast: bool = False, covered_weight: float = 1.0) -> torch.Tensor:
    """Flow-matching loss of one collated batch (``samples.collate``), docs/method.md §4 input layout."""
    device = text.device
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    # docs/method.md §4 layout [target | preceding clean | references]: both kinds are clean context (t = 0)
    context = torch.cat([batch.context, batch.references], dim=2).to(device)
    context_cond = torch.cat([batch.context_cond, batch.reference_cond], dim=2).to(device)
    if context.shape[2] == 0:
        context = context_cond = None
    with ctx:
        return flow_matching_loss(model, batch.target.to(device), text, batch.cond.to(device),
                                  generator=generator, text_dropout=0.0, shift=shift,
                                  context=context, context_cond=context_cond, covered_weight=covered_weight)


def clip_and_step(params: Iterable[nn.Parameter], optimizer, scheduler, grad_clip: float) -> float:
    """Clip the global grad norm, step optimizer and schedule; returns the pre-clip norm."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP: the norm over every rank's shards, a DTensor
        norm = norm.full_tensor()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ----------------------------------------------------------------------------------------------
# Checkpoint files (a directory; jobs.train wraps it in a ray.train.Checkpoint)
# ----------------------------------------------------------------------------------------------
def save_checkpoint(directory: str | os.PathLike, model: nn.Module, optimizer, scheduler, state: TrainState,
                    extra: dict | None = None, export: bool = True, backbone: bool = False,
                    record: dict | None = None, weights: Mapping[str, torch.Tensor] | None = None) -> None:
    """Trainable weights (safetensors; with ``backbone`` the whole model), optimizer + scheduler state,
    the train state; with ``export`` also the branch as a diffusers model dir (``branch/``) and the
    LoRA in diffusers' format (``lora/``); with ``record`` the model record generation checks
    (``model.json``, ``mirage_model.model.checkpoint``).

    ``weights``: the model's full state dict when the module's own tensors are shards (FSDP gathers
    it on rank 0); by default the module's. ``optimizer=None``: the optimizer state is saved
    elsewhere (FSDP: sharded, ``save_sharded_optimizer``); the scheduler's is still written here."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    full = dict(weights) if weights is not None else model.state_dict()
    save_file({n: full[n].detach().contiguous().cpu() for n in trainable_names(model, backbone)},
              str(d / TRAINABLE_FILE))
    torch.save({"optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": _scheduler_state(scheduler)}, d / OPTIMIZER_FILE)
    (d / STATE_FILE).write_text(json.dumps({**asdict(state), **(extra or {})}))
    if record is not None:
        write_model_record(d, record)
    if export:
        branch = {n[len("branch."):]: v.detach().contiguous().cpu() for n, v in full.items() if n.startswith("branch.")}
        (d / "branch").mkdir(exist_ok=True)
        model.branch.save_config(d / "branch")  # what diffusers' save_pretrained writes, from these tensors
        save_file(branch, str(d / "branch" / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        if any("lora_" in n for n in full):
            save_lora(model, d / "lora", state_dict={n[len("backbone."):]: v for n, v in full.items()
                                                     if n.startswith("backbone.")})


SHARDED_OPTIMIZER_DIR = "optimizer_dcp"
"""A sharded checkpoint's optimizer state (``torch.distributed.checkpoint``; one file per rank)."""


def save_sharded_optimizer(directory: str | os.PathLike, model: nn.Module, optimizer) -> None:
    """Every rank writes its shard of the optimizer state into ``directory/optimizer_dcp`` (rank 0
    also the metadata); Ray Train merges the ranks' directories into one checkpoint. A collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=str(Path(directory) / SHARDED_OPTIMIZER_DIR))


def load_state(directory: str | os.PathLike) -> TrainState:
    data = json.loads((Path(directory) / STATE_FILE).read_text())
    names = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in data.items() if k in names})


def _scheduler_state(scheduler) -> dict:
    """The LR scheduler's state without its schedule functions (``start_stage`` rebuilds those from the
    config), so that ``optimizer.pt`` holds only tensors and plain values and loads with ``weights_only``."""
    state = dict(scheduler.state_dict())
    if "lr_lambdas" in state:  # LambdaLR: None = "nothing to restore" for ``load_state_dict``
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


def load_optimizer(directory: str | os.PathLike, optimizer, scheduler, model: nn.Module | None = None) -> None:
    """Restore the optimizer and scheduler state of a checkpoint. The file may come from shared
    storage, so it is read with ``weights_only=True`` (tensors and plain containers, no pickled code).
    A sharded optimizer state (``optimizer_dcp``) is loaded into ``model``'s shards, resharded to
    this run's number of workers (a collective)."""
    blob = torch.load(Path(directory) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    sharded = Path(directory) / SHARDED_OPTIMIZER_DIR
    if blob["optimizer"] is not None:
        if model is not None and any(hasattr(p, "full_tensor") for p in model.parameters()):
            raise ValueError(f"checkpoint {directory} holds a whole (DDP) optimizer state, and this run shards the "
                             "model (scaling.parallel: fsdp): resume it with scaling.parallel: ddp, or start a new "
                             "run from its weights (model.init)")
        optimizer.load_state_dict(blob["optimizer"])
    elif sharded.is_dir():
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        if model is None:
            raise ValueError(f"{directory}: a sharded optimizer state loads into a model's shards: pass model=")
        state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=str(sharded))
        set_optimizer_state_dict(model, optimizer, state["optimizer"])
    else:
        raise FileNotFoundError(f"{directory}: no optimizer state ({OPTIMIZER_FILE} holds none, no {SHARDED_OPTIMIZER_DIR}/)")
    scheduler.load_state_dict(blob["scheduler"])


class SampleStream:
    """One worker's endless, deterministic stream of raw samples (docs/method.md §6).

    An epoch is one pass over ``rows()`` (the worker's own shards, always in the same order), put
    through a shuffle buffer of ``buffer_size`` samples seeded by (seed, epoch, rank): a different
    order every epoch, the same one on every run. ``(epoch, position)`` -- samples handed out in
    the current epoch -- is the exact data position: a resumed stream replays its epoch up to
    ``position`` without handing those samples out (they are not decoded), then carries on with the
    very samples the interrupted run would have used. Memory is bounded by the buffer, whatever the
    dataset size. Workers whose shards hold different numbers of samples simply start their next
    epoch at different steps.
    """

    def __init__(self, rows, *, seed: int = 0, rank: int = 0, buffer_size: int = 1, epoch: int = 0,
                 position: int = 0, name: str = "stream"):
        if buffer_size < 1:
            raise ValueError(f"{name}: buffer_size must be >= 1, got {buffer_size}")
        self.rows, self.seed, self.rank, self.buffer_size, self.name = rows, seed, rank, buffer_size, name
        self.epoch, self.position = epoch, position
        self.epoch_sizes: dict[int, int] = {}  # samples per finished epoch
        self._iter = None

    def _epoch(self, epoch: int):
        import numpy as np

        rng = np.random.default_rng(derive_seed(self.seed, "shuffle", epoch, self.rank))
        buffer: list = []
        for row in self.rows():
            buffer.append(row)
            if len(buffer) >= self.buffer_size:
                i = int(rng.integers(len(buffer)))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                yield buffer.pop()
        while buffer:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._iter is None:
                self._iter = self._epoch(self.epoch)
                for skipped in range(self.position):  # a resumed epoch: replay what was already used
                    if next(self._iter, None) is None:
                        raise ValueError(f"{self.name}: epoch {self.epoch} holds {skipped} samples, but the "
                                         f"checkpoint is at position {self.position} (did the shards change?)")
            row = next(self._iter, None)
            if row is not None:
                self.position += 1
                return row
            if self.position == 0:
                raise ValueError(f"{self.name}: no samples to read (its shards are empty)")
            self.epoch_sizes[self.epoch] = self.position
            self.epoch, self.position, self._iter = self.epoch + 1, 0, None

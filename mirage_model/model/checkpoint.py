"""A trained model on disk: what ``mirage train`` checkpoints, ``mirage export-world`` copies and
generation loads. Loading lives here, with the model, so that inference never imports training.

A checkpoint directory holds

* ``trainable.safetensors``: the branch and the LoRA adapters (and, after a ``full`` stage, every
  backbone weight), by parameter name of ``MirageTransformer``;
* ``lora/pytorch_lora_weights.safetensors``: the LoRA alone in diffusers' format (stock
  ``WanPipeline.load_lora_weights`` loads it), whose metadata gives the rank and alpha;
* ``model.json`` (:data:`MODEL_FILE`): what the weights were trained as and with -- the preset or
  base model, the LoRA shape, the training-sample layout (``preceding``, ...) and the prompt
  length -- which generation must agree with (``MirageGenerator.settings``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pydantic import Field

from mirage_model.config import StrictConfig
from mirage_model.model.lora import LORA_WEIGHT_NAME, add_lora

__all__ = ["MODEL_FILE", "TRAINABLE_FILE", "LoraSpec", "checkpoint_has_backbone", "load_checkpoint",
           "load_weights", "lora_spec_of", "prepare_model", "read_model_record", "trainable_names",
           "write_model_record"]

TRAINABLE_FILE = "trainable.safetensors"
MODEL_FILE = "model.json"


class LoraSpec(StrictConfig):
    """The LoRA adapters added to the backbone's attention and FFN linears (peft)."""

    rank: int = Field(32, ge=1, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha (scale alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")


def trainable_names(model: nn.Module, backbone: bool = False) -> list[str]:
    """Names of the parameters a checkpoint holds: the branch and the LoRA adapters, plus every
    backbone weight when ``backbone`` (a run with a ``full`` stage)."""
    return [n for n, _ in model.named_parameters() if backbone or n.startswith("branch.") or "lora_" in n]


def prepare_model(model: nn.Module, lora: LoraSpec | None) -> nn.Module:
    """Add the (zero-initialised) LoRA adapters once, before any stage or any load."""
    if lora is not None and not any("lora_" in n for n, _ in model.named_parameters()):
        add_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout)
    return model


def _holds_backbone(names) -> bool:
    return any(n.startswith("backbone.") and "lora_" not in n for n in names)


def checkpoint_has_backbone(directory: str | os.PathLike) -> bool:
    """Whether a checkpoint holds the backbone's weights (a run with a ``full`` stage, or one
    started from such a checkpoint), read from the safetensors header only."""
    from safetensors import safe_open

    with safe_open(str(Path(directory) / TRAINABLE_FILE), "pt") as f:
        return _holds_backbone(f.keys())


def load_weights(directory: str | os.PathLike, model: nn.Module) -> None:
    """Load the trainable weights of a checkpoint; every trainable name must be present (and the
    backbone's, when the checkpoint holds any of them: a run with a ``full`` stage)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(directory) / TRAINABLE_FILE))
    expected = set(trainable_names(model, backbone=_holds_backbone(tensors)))
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory}: {len(missing)} missing and {len(unexpected)} unexpected "
                         f"trainable tensors (e.g. {sorted(missing or unexpected)[:3]}): different model config?")
    named = dict(model.named_parameters())
    wrong = [n for n, t in tensors.items() if tuple(t.shape) != tuple(named[n].shape)]
    if wrong:
        n = wrong[0]
        raise ValueError(f"checkpoint {directory}: {len(wrong)} tensors of the wrong shape (e.g. {n}: "
                         f"{tuple(tensors[n].shape)} vs {tuple(named[n].shape)}): different model config?")
    with torch.no_grad():
        for n, t in tensors.items():
            named[n].copy_(t.to(named[n]))


def lora_spec_of(directory: str | os.PathLike) -> LoraSpec | None:
    """The LoRA shape of a checkpoint (its ``lora/``) or of an exported model (the file at its top),
    from the adapter metadata (None: no LoRA)."""
    path = next((p for p in (Path(directory) / "lora" / LORA_WEIGHT_NAME, Path(directory) / LORA_WEIGHT_NAME)
                 if p.is_file()), None)
    if path is None:
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}") or "{}")
    meta = {k.removeprefix("transformer."): v for k, v in meta.items()}  # diffusers prefixes the keys
    return LoraSpec(rank=int(meta.get("r", 32)), alpha=float(meta.get("lora_alpha", meta.get("r", 32))), dropout=0.0)


def write_model_record(directory: str | os.PathLike, record: dict[str, Any]) -> None:
    """Write ``model.json``: what the checkpoint's weights were trained as and with."""
    (Path(directory) / MODEL_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_model_record(directory: str | os.PathLike) -> dict[str, Any]:
    """``model.json`` of a checkpoint ({} for one written before it existed)."""
    path = Path(directory) / MODEL_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint(transformer: nn.Module, directory: str | os.PathLike) -> dict[str, Any]:
    """Load a local checkpoint directory (a ``mirage train`` checkpoint, ``mirage export-model``'s
    output, or a world's ``model/``)
    into ``transformer`` (LoRA adapters added with the checkpoint's shape); returns its record."""
    d = Path(directory)
    if not (d / TRAINABLE_FILE).is_file():
        raise FileNotFoundError(f"{d}: not a training checkpoint (no {TRAINABLE_FILE})")
    prepare_model(transformer, lora_spec_of(d))
    load_weights(d, transformer)
    return read_model_record(d)

"""LoRA on the backbone (peft through diffusers), saved in diffusers' Wan LoRA format.

The saved directory (``pytorch_lora_weights.safetensors``, keys ``transformer.blocks.N....lora_A.weight``,
with the adapter config as metadata) loads into a stock ``WanTransformer3DModel`` with
``transformer.load_lora_adapter(dir, prefix="transformer")`` or into a ``WanPipeline`` with
``pipe.load_lora_weights(dir)``.
"""

from __future__ import annotations

import os

import torch.nn as nn
from diffusers import WanPipeline, WanTransformer3DModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

LORA_TARGET_MODULES = [
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ffn.net.0.proj", "ffn.net.2",
]
ADAPTER_NAME = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _backbone(transformer: nn.Module) -> WanTransformer3DModel:
    """The Wan backbone of a ``MirageTransformer`` (or the model itself when it is one)."""
    return transformer.backbone if hasattr(transformer, "backbone") else transformer


def add_lora(transformer: nn.Module, rank: int = 32, alpha: float = 32, dropout: float = 0.05,
             adapter_name: str = ADAPTER_NAME) -> LoraConfig:
    """Inject LoRA layers into the BACKBONE's attention (self + cross q/k/v/out) and FFN linears.

    The memory branch, when ``transformer`` is a ``MirageTransformer``, is left untouched. LoRA ``B``
    matrices start at zero, so the model output is unchanged.
    """
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGET_MODULES),
                        init_lora_weights=True)
    backbone = _backbone(transformer)
    training = backbone.training
    backbone.add_adapter(config, adapter_name=adapter_name)
    backbone.train(training)  # new LoRA dropout modules follow the model's train/eval mode
    return config


def lora_state_dict(transformer: nn.Module, adapter_name: str = ADAPTER_NAME, state_dict: dict | None = None) -> dict:
    """The LoRA weights in peft's naming; from ``state_dict`` (the backbone's full state dict, e.g.
    gathered from FSDP shards) instead of the module's own tensors when given."""
    return get_peft_model_state_dict(_backbone(transformer), state_dict=state_dict, adapter_name=adapter_name)


def save_lora(transformer: nn.Module, directory: str | os.PathLike, adapter_name: str = ADAPTER_NAME,
              is_main_process: bool = True, state_dict: dict | None = None) -> str:
    """Write the backbone's LoRA in diffusers' format (from ``state_dict``, the backbone's full state
    dict, when given); returns the weight file path."""
    backbone = _backbone(transformer)
    metadata = backbone.peft_config[adapter_name].to_dict()
    WanPipeline.save_lora_weights(
        os.fspath(directory), transformer_lora_layers=lora_state_dict(backbone, adapter_name, state_dict),
        is_main_process=is_main_process, weight_name=LORA_WEIGHT_NAME, safe_serialization=True,
        transformer_lora_adapter_metadata=metadata)
    return os.path.join(os.fspath(directory), LORA_WEIGHT_NAME)


def load_lora(transformer: nn.Module, path: str | os.PathLike, adapter_name: str = ADAPTER_NAME) -> None:
    """Load a LoRA saved by :func:`save_lora` (or any diffusers Wan LoRA) into the backbone: a
    directory holding ``pytorch_lora_weights.safetensors``, or a ``.safetensors`` file."""
    path = os.fspath(path)
    directory, name = ((os.path.dirname(path) or ".", os.path.basename(path)) if os.path.isfile(path)
                       else (path, LORA_WEIGHT_NAME))
    _backbone(transformer).load_lora_adapter(directory, weight_name=name, prefix="transformer",
                                             adapter_name=adapter_name)

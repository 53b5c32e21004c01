"""The generator: Wan2.2 DiT backbone + memory branch, LoRA, flow-matching loss (docs/method.md §4)."""

from .branch import MemoryBranch, MemoryBranchBlock
from .lora import LORA_TARGET_MODULES, add_lora, load_lora, lora_state_dict, save_lora
from .loss import flow_matching_loss, set_trainable, shift_sigma
from .mirage_transformer import MirageTransformer
from .presets import TRANSFORMER_PRESETS, build_transformer

__all__ = [
    "TRANSFORMER_PRESETS", "build_transformer", "MemoryBranch", "MemoryBranchBlock", "MirageTransformer",
    "add_lora", "save_lora", "load_lora", "lora_state_dict", "LORA_TARGET_MODULES",
    "flow_matching_loss", "set_trainable", "shift_sigma",
]

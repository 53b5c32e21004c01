"""WanTransformer3DModel presets (Wan2.2 latent space: 48 channels, patch (1, 2, 2)).

* ``tiny``: 2 layers, 2 heads x 16, for CPU unit tests (builds in milliseconds).
* ``small``: 4 layers, 4 heads x 32, for CPU smoke runs / quick overfits.
* ``ti2v-5b``: the real Wan2.2-TI2V-5B architecture (~5.0 B params, 20 GB fp32). Never build it on
  CPU in tests.
"""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel

from mirage_model.seeded import seeded_model

_COMMON = dict(
    patch_size=(1, 2, 2), in_channels=48, out_channels=48, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None,
    rope_max_seq_len=1024, pos_embed_seq_len=None,
)

TRANSFORMER_PRESETS: dict[str, dict] = {
    "tiny": dict(_COMMON, num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32,
                 ffn_dim=64, num_layers=2),
    "small": dict(_COMMON, num_attention_heads=4, attention_head_dim=32, text_dim=64, freq_dim=64,
                  ffn_dim=256, num_layers=4),
    "ti2v-5b": dict(_COMMON, num_attention_heads=24, attention_head_dim=128, text_dim=4096,
                    freq_dim=256, ffn_dim=14336, num_layers=30),
}


FULL_MODEL_TEXT_TOKENS = 512
"""Prompt tokens of Wan2.2-TI2V-5B (its pipeline's ``max_sequence_length``): a ``model_dir`` model's."""
TEXT_TOKENS: dict[str, int] = {"tiny": 64, "small": 64, "ti2v-5b": FULL_MODEL_TEXT_TOKENS}
"""Each preset's default prompt tokens (padding tokens take part in cross-attention, so training and
generation must use one number: ``model.json`` records it)."""


def is_full_model(text_dim: int) -> bool:
    """Whether a transformer reads UMT5-XXL's 4096-wide states, as Wan2.2-TI2V-5B does (a model
    directory of a CPU preset, saved for tests, reads narrower ones)."""
    return text_dim == TRANSFORMER_PRESETS["ti2v-5b"]["text_dim"]


def default_text_tokens(preset: str | None, model_dir: str | None = None) -> int:
    """The prompt tokens of a model built from ``model_dir`` or ``preset``: 512 for the full model
    (a directory whose ``transformer/config.json`` is not on this machine counts as the full model),
    64 for the CPU presets."""
    if model_dir:
        import json
        import os

        config = os.path.join(os.fspath(model_dir), "transformer", "config.json")
        if os.path.isfile(config):
            with open(config) as f:
                return FULL_MODEL_TEXT_TOKENS if is_full_model(json.load(f).get("text_dim", 4096)) else TEXT_TOKENS["tiny"]
        return FULL_MODEL_TEXT_TOKENS
    return TEXT_TOKENS[preset or "tiny"]


def build_transformer(preset: str = "tiny", seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> WanTransformer3DModel:
    """A WanTransformer3DModel of ``preset`` with random weights drawn deterministically from ``seed``."""
    if preset not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; choose from {sorted(TRANSFORMER_PRESETS)}")
    return seeded_model(WanTransformer3DModel, TRANSFORMER_PRESETS[preset], seed, dtype)

"""The text stack: a UMT5 encoder + tokenizer (Wan's), or a tiny random one built offline for tests.

``build_text_stack("tiny"|"small")`` builds, without any download, a word-level tokenizer (a small
fixed vocabulary; unknown words map to ``<unk>``) wrapped in ``PreTrainedTokenizerFast`` and a
``UMT5EncoderModel`` with random weights whose ``d_model`` equals the transformer preset's
``text_dim``. ``load_text_stack(path)`` reads ``tokenizer/`` and ``text_encoder/`` from a local
diffusers-format pipeline directory (e.g. Wan2.2-TI2V-5B-Diffusers).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer, PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from mirage_model.model.presets import TRANSFORMER_PRESETS

_WORDS = (
    "a an the of in on at to and with from by for is are room wall floor ceiling window door table chair "
    "box sphere red green blue yellow white black grey gray bright dark light camera moving slowly fast "
    "left right up down turn pan orbit dolly forward backward scene indoor outdoor house street tree sky "
    "city car person walking view wide close video photo realistic"
).split()
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

TEXT_PRESETS: dict[str, dict] = {
    "tiny": dict(d_kv=8, d_ff=64, num_layers=2, num_heads=2),
    "small": dict(d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "ti2v-5b": dict(d_kv=64, d_ff=512, num_layers=1, num_heads=8),  # real width (4096), benchmark only
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """An offline word-level tokenizer (lower-cased, whitespace/punctuation split, ``</s>`` appended)."""
    from tokenizers.processors import TemplateProcessing

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(set(_WORDS)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def build_text_stack(preset: str = "tiny", seed: int = 0) -> tuple[PreTrainedTokenizerFast, UMT5EncoderModel]:
    """(tokenizer, encoder) with random weights; ``d_model`` = the transformer preset's ``text_dim``."""
    if preset not in TEXT_PRESETS:
        raise ValueError(f"unknown text preset {preset!r}; choose from {sorted(TEXT_PRESETS)}")
    tokenizer = build_tokenizer()
    config = UMT5Config(vocab_size=len(tokenizer), d_model=TRANSFORMER_PRESETS[preset]["text_dim"],
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=0.0,
                        **TEXT_PRESETS[preset])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = UMT5EncoderModel(config)
    return tokenizer, encoder.eval().requires_grad_(False)


def _component(path: str | os.PathLike, sub: str) -> Path:
    root = Path(path)
    if not (root / sub).is_dir():
        raise FileNotFoundError(f"{root}: missing component {sub!r} (expected {root / sub}/)")
    return root / sub


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local diffusers pipeline directory (``tokenizer/``)."""
    return AutoTokenizer.from_pretrained(_component(path, "tokenizer"), local_files_only=True)


def load_text_encoder(path: str | os.PathLike, dtype: torch.dtype | None = None) -> UMT5EncoderModel:
    """The (frozen) UMT5 encoder of a local diffusers pipeline directory (``text_encoder/``), in ``dtype``."""
    encoder = UMT5EncoderModel.from_pretrained(_component(path, "text_encoder"), torch_dtype=dtype,
                                               local_files_only=True)
    return encoder.eval().requires_grad_(False)


def load_text_stack(path: str | os.PathLike, dtype: torch.dtype | None = None
                    ) -> tuple[PreTrainedTokenizerFast, UMT5EncoderModel]:
    """Tokenizer + UMT5 encoder from a local diffusers pipeline directory (``tokenizer/``, ``text_encoder/``)."""
    _component(path, "text_encoder")  # both missing components are named before anything loads
    return load_tokenizer(path), load_text_encoder(path, dtype)


@torch.no_grad()
def encode_prompt(tokenizer, encoder, prompts: str | list[str], max_length: int = 512) -> torch.Tensor:
    """(B, max_length, D) encoder states; positions past each prompt's length are zero (as in Wan)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    inputs = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    param = next(encoder.parameters())
    ids = inputs.input_ids.to(param.device)
    mask = inputs.attention_mask.to(param.device)
    states = encoder(ids, attention_mask=mask).last_hidden_state
    return states * mask.unsqueeze(-1).to(states.dtype)


# ----------------------------------------------------------------------------------------------
# Precomputed text states (the shards' ``text.safetensors``)
# ----------------------------------------------------------------------------------------------
TEXT_STATE_KEYS = ("caption", "empty")
"""The two states a sample stores: its caption's and the empty prompt's (training drops the
caption for a share of the samples and then needs the empty prompt's states)."""


def preset_text_id(preset: str, seed: int) -> str:
    """The identity of a preset's random text encoder (``build_text_stack(preset, seed)``)."""
    return f"preset:{preset}:seed={seed}"


def text_stack_id(config_json: bytes, files: Mapping[str, int]) -> str:
    """The identity of a saved text stack: a hash of ``text_encoder/config.json`` and of the names
    and sizes of every file of ``text_encoder/`` and ``tokenizer/`` (``files``: relative path ->
    bytes). Cheap to compute on any storage (no weights are read), and different for another
    checkpoint of the same architecture, whose weight files differ in size or name only rarely --
    which is why the config's own bytes count too."""
    digest = hashlib.sha256(config_json)
    for name in sorted(files):
        digest.update(f"\n{name}\t{int(files[name])}".encode())
    return f"umt5:{digest.hexdigest()[:16]}"


@torch.no_grad()
def encode_prompt_states(tokenizer, encoder, prompts: list[str], max_length: int) -> list[torch.Tensor]:
    """Each prompt's encoder states without the padding: (n_tokens, D) per prompt, ``n_tokens`` <=
    ``max_length`` (the prompt is truncated there, as ``encode_prompt`` does). ``pad_states`` turns
    them back into ``encode_prompt``'s zero-padded (B, max_length, D), bit for bit."""
    inputs = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                       add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    padded = encode_prompt(tokenizer, encoder, list(prompts), max_length)
    return [padded[i, : int(n)].cpu() for i, n in enumerate(inputs.attention_mask.sum(1))]


def pad_states(states: Sequence[torch.Tensor], max_length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, max_length, D): each (n, D) state followed by zeros -- the encoder's padded output, which
    the transformer's cross-attention reads whole. A state longer than ``max_length`` is an error (it
    was encoded for a longer prompt length; truncating it would not give the shorter encoding)."""
    if not states:
        raise ValueError("pad_states: no states")
    dim = int(states[0].shape[-1])
    out = torch.zeros((len(states), max_length, dim), dtype=dtype)
    for i, s in enumerate(states):
        if s.ndim != 2 or s.shape[1] != dim:
            raise ValueError(f"pad_states: state {i} has shape {tuple(s.shape)}, expected (n, {dim})")
        if s.shape[0] > max_length:
            raise ValueError(f"pad_states: state {i} has {s.shape[0]} tokens, more than max_length={max_length}")
        out[i, : s.shape[0]] = s.to(dtype)
    return out

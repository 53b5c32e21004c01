"""The text stack: a UMT5 encoder + tokenizer (Wan's), or a tiny random one built offline for tests.

``build_text_stack("tiny"|"small")`` builds, without any download, a word-level tokenizer (a small
fixed vocabulary; unknown words map to ``<unk>``) wrapped in ``PreTrainedTokenizerFast`` and a
``UMT5EncoderModel`` with random weights whose ``d_model`` equals the transformer preset's
``text_dim``. ``load_text_stack(path)`` reads ``tokenizer/`` and ``text_encoder/`` from a local
diffusers-format pipeline directory (e.g. Wan2.2-TI2V-5B-Diffusers).
"""

from __future__ import annotations

import os
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


def load_text_stack(path: str | os.PathLike, dtype: torch.dtype | None = None
                    ) -> tuple[PreTrainedTokenizerFast, UMT5EncoderModel]:
    """Tokenizer + UMT5 encoder from a local diffusers pipeline directory (``tokenizer/``, ``text_encoder/``)."""
    root = Path(path)
    for sub in ("tokenizer", "text_encoder"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root}: missing component {sub!r} (expected {root / sub}/)")
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype, local_files_only=True)
    return tokenizer, encoder.eval().requires_grad_(False)


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

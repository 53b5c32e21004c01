"""The text path: training's prompt cache (host memory, bounded, least recently used evicted, exact
states) and one prompt length per model."""

from __future__ import annotations

import torch

from mirage_model.model.text import build_text_stack, encode_prompt
from mirage_model.training.trainer import PromptEncoder


def test_ten_thousand_distinct_captions_keep_the_cache_bounded():
    tokenizer, encoder = build_text_stack("tiny")
    prompts = PromptEncoder(tokenizer, encoder, max_length=16, cache_size=64)
    sizes = []
    for start in range(0, 10_000, 100):
        batch = [f"caption number {i}: a room seen from camera {i % 7}" for i in range(start, start + 100)]
        out = prompts(batch[:4] + batch)  # repeats inside a batch: one state each, in order
        assert out.shape[:2] == (104, 16)
        sizes.append(sum(t.numel() * t.element_size() for t in prompts._cache.values()))
    assert len(prompts._cache) == 64 and max(sizes) == sizes[0]  # flat from the first batch on
    assert all(t.device.type == "cpu" for t in prompts._cache.values())


def test_cached_states_equal_fresh_ones_and_recent_prompts_stay():
    tokenizer, encoder = build_text_stack("tiny")
    prompts = PromptEncoder(tokenizer, encoder, max_length=16, cache_size=2)
    a, b, c = "a red chair", "a blue sofa", "a green lamp"
    first = prompts([a, b])
    prompts([a])  # a is now the most recent
    prompts([c])  # evicts b, the least recent
    assert list(prompts._cache) == [a, c]
    fresh = encode_prompt(tokenizer, encoder, [a, b], 16).float()
    assert torch.equal(first, fresh) and torch.equal(prompts([a, b]), fresh)
    none = PromptEncoder(tokenizer, encoder, max_length=16, cache_size=0)
    assert torch.equal(none([a, b]), fresh) and not none._cache


def test_one_prompt_length_per_model_shared_by_training_and_generation():
    """512 tokens for the full model (its pipeline's), 64 for the CPU presets; training records what
    it used and generation takes it from there (test_generation checks the refusal of another)."""
    from jobs.config import TrainModelConfig
    from mirage_model.model.presets import default_text_tokens

    assert default_text_tokens("ti2v-5b") == default_text_tokens(None, "/models/Wan2.2") == 512
    assert default_text_tokens("tiny") == default_text_tokens("small") == 64
    assert TrainModelConfig(model_dir="/models/Wan2.2").text_tokens() == 512
    assert TrainModelConfig(preset="small").text_tokens() == 64
    assert TrainModelConfig(max_text_length=128).text_tokens() == 128

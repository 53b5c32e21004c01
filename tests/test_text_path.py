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


def test_states_without_padding_pad_back_bit_for_bit():
    from mirage_model.model.text import encode_prompt_states, pad_states

    tokenizer, encoder = build_text_stack("tiny")
    prompts = ["a red chair in a bright room", "", "camera moving " * 20]  # the last one is truncated
    states = encode_prompt_states(tokenizer, encoder, prompts, 16)
    assert [s.shape[0] for s in states] == [8, 1, 16]  # seven words and </s>; </s> alone; cut at 16
    assert torch.equal(pad_states(states, 16), encode_prompt(tokenizer, encoder, prompts, 16))


def test_a_text_stack_is_known_by_its_files_not_its_path(tmp_path):
    """The identity the shards record: a copy of the directory (another node's cache) has the same,
    another encoder (other config or weights) another."""
    import shutil

    from mirage_model.model.text import preset_text_id
    from pipeline.text import text_stack_id_at

    tokenizer, encoder = build_text_stack("tiny")
    encoder.save_pretrained(tmp_path / "a" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "a" / "tokenizer")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    _, wider = build_text_stack("small")
    wider.save_pretrained(tmp_path / "b" / "text_encoder")
    tokenizer.save_pretrained(tmp_path / "b" / "tokenizer")
    a = text_stack_id_at(str(tmp_path / "a"))
    assert a.startswith("umt5:") and a == text_stack_id_at(str(tmp_path / "copy"))
    assert a != text_stack_id_at(str(tmp_path / "b"))
    assert text_stack_id_at("tiny", seed=3) == preset_text_id("tiny", 3) != preset_text_id("tiny", 0)
    try:
        text_stack_id_at(str(tmp_path / "nothing"))
    except FileNotFoundError as exc:
        assert "text_encoder" in str(exc) and "nothing" in str(exc)
    else:
        raise AssertionError("a directory without a text encoder has no identity")


def test_captions_come_from_the_manifest_row_then_a_sidecar_file(tmp_path):
    import pytest

    from pipeline import storage
    from pipeline.config import PreprocessConfig
    from pipeline.text import CaptionError, find_caption

    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "a.txt").write_text("ignored: the manifest's wins\n")
    (tmp_path / "b.txt").write_text("  a blue sofa by the window \n")
    (tmp_path / "d.txt").write_bytes(b"\xff\xfe not utf-8")
    manifest = tmp_path / "videos.jsonl"
    manifest.write_text('{"path": "a.mp4", "caption": "a red chair"}\n{"uri": "b.mp4"}\n{"path": "c.mp4", "caption": ""}\n')
    cfg = PreprocessConfig(source=str(manifest), output=str(tmp_path / "out"))
    fields = storage.manifest_fields(str(manifest))
    assert storage.list_files(str(manifest)) == list(fields)
    got = {storage.basename(u): find_caption({"uri": u, "caption": f.get("caption")}, cfg) for u, f in fields.items()}
    assert got == {"a.mp4": {"text": "a red chair", "source": "manifest"},
                   "b.mp4": {"text": "a blue sofa by the window", "source": "sidecar"},
                   "c.mp4": {"text": "", "source": ""}}
    with pytest.raises(CaptionError, match="d.txt: not UTF-8"):
        find_caption({"uri": str(tmp_path / "d.mp4")}, cfg)
    off = cfg.model_copy(update={"captions": cfg.captions.model_copy(update={"method": "none"})})
    assert find_caption({"uri": str(tmp_path / "b.mp4"), "caption": "x"}, off) == {"text": "", "source": ""}
    assert storage.manifest_fields(str(tmp_path)) == {}  # a directory source has no rows

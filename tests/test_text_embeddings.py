"""Captions and precomputed text states, end to end: ``mirage preprocess`` takes each clip's caption
from a ``.jsonl`` manifest row, a sidecar file or a captioning model (a tiny random LLaVA) and stores
the text encoder's states with it; training from those shards reads them and never loads the text
encoder (its weights here cannot load)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pipeline import shards, storage
from pipeline.config import PreprocessConfig
from pipeline.synth_data import make_synthetic_dataset

pytestmark = pytest.mark.slow

CAPTIONS = {"synth_0000.mp4": ("a red chair in a bright room", "manifest"),
            "synth_0001.mp4": ("a camera moving slowly along a grey wall", "sidecar"),
            "synth_0002.mp4": (None, "model")}  # the model's words


@pytest.fixture(scope="module", autouse=True)
def _no_ray_left():
    """The training run starts a local Ray in this process: it goes with the module."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny model in the Wan2.2-TI2V-5B-Diffusers layout, as a user would point at one."""
    from mirage_model.generation import MirageGenerator

    root = tmp_path_factory.mktemp("model")
    gen = MirageGenerator.from_preset("tiny", seed=0)
    gen.transformer.backbone.save_pretrained(root / "transformer")
    gen.vae.save_pretrained(root / "vae")
    gen.text_encoder.save_pretrained(root / "text_encoder")
    gen.tokenizer.save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def preprocessed(model_dir, tmp_path_factory):
    """Three 33-frame videos (cameras from their files): one captioned in the manifest, one by a
    sidecar file, one by the captioning model."""
    import ray
    from tiny_models import tiny_llava

    from jobs.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("text")
    videos = root / "videos"
    make_synthetic_dataset(videos, 3, seed=1, frames=33, size=(128, 160), moving_fraction=0.0)
    (videos / "synth_0000.txt").write_text("a sidecar the manifest's caption overrides\n")
    (videos / "synth_0001.txt").write_text(CAPTIONS["synth_0001.mp4"][0] + "\n")
    manifest = videos / "videos.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": name, **({"caption": text} if src == "manifest" else {})})
                                  for name, (text, src) in CAPTIONS.items()) + "\n")
    cfg = PreprocessConfig.model_validate({
        "source": str(manifest), "output": str(root / "shards"), "inputs_per_shard": 2,
        "clip": {"frames": 33, "max_clips": 1, "min_side": 64}, "poses": {"method": "file"},
        "depth": {"stereo": {"num_depths": 32}}, "budget": {"base_s": 600},
        "text_embeddings": {"model": str(model_dir), "batch_size": 2, "num_gpus": 1},  # none here: runs on the CPU
        "captions": {"method": "model", "model_dir": str(tiny_llava(root / "captioner")), "frames": 2},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}})
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        summary = run_preprocess(cfg)
    finally:
        ray.shutdown()
    return root, cfg, summary


def test_preprocess_stores_each_caption_its_source_and_its_text_states(preprocessed, model_dir):
    from mirage_model.model.text import build_text_stack, encode_prompt_states
    from pipeline.text import text_stack_id_at

    root, cfg, summary = preprocessed
    assert summary["manifest"]["status"] == {"ok": 3} and summary["clips_uncaptioned"] == 0
    acct = json.loads((root / "shards" / "summary.json").read_text())
    assert acct["details"]["clips_uncaptioned"] == 0
    assert acct["stages"]["text"]["busy_s"] > 0 and acct["stages"]["caption"]["busy_s"] > 0
    manifest = {storage.basename(r["uri"]): r for r in map(json.loads, (root / "shards" / "manifest.jsonl").open())}
    tokenizer, encoder = build_text_stack("tiny", seed=0)  # the model directory's text stack
    encoder_id = text_stack_id_at(str(model_dir))
    samples = list(shards.read_shard_samples(shards.list_shards(str(root / "shards"))))
    assert len(samples) == 3
    for sample in samples:
        name = storage.basename(sample["meta"]["source_uri"])
        text, source = CAPTIONS[name]
        if source == "model":  # greedy words of the tiny model's vocabulary, from the clip's own frames
            from tiny_models import CAPTION_WORDS

            text = sample["meta"]["caption"]
            assert text and set(text.split()) <= set(CAPTION_WORDS), text
            assert sample["meta"]["caption_model"] == str(root / "captioner")
        assert (sample["meta"]["caption"], sample["meta"]["caption_source"]) == (text, source)
        clip = manifest[name]["clips"][0]
        assert (clip["caption"], clip["caption_source"]) == (text, source)
        assert sample["meta"]["text"] == {"encoder": encoder_id, "model": str(model_dir), "tokens": 64,
                                          "dtype": "float32"}
        want, empty = encode_prompt_states(tokenizer, encoder, [text, ""], 64)
        torch.testing.assert_close(sample["text"]["caption"], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(sample["text"]["empty"], empty, rtol=0, atol=1e-6)


def test_training_from_the_shards_never_loads_the_text_encoder(preprocessed, model_dir, tmp_path):
    """The training model's text encoder weights are garbage of the same size (the same identity):
    loading them would fail the run. It trains, reads the states from the shards and says so; a run
    with another prompt length is refused before it starts, naming both."""
    from jobs.config import TrainConfig
    from jobs.train import run_train
    from mirage_model.config import load_config

    root, _, _ = preprocessed
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    for weights in (broken / "text_encoder").glob("*.safetensors"):
        weights.write_bytes(b"\0" * weights.stat().st_size)
    over = {"data.shards": str(root / "shards"), "model.preset": None, "model.model_dir": str(broken),
            "storage_path": str(tmp_path / "ckpt"), "name": "text", "scaling.num_workers": 1,
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "data.text_dropout": 0.5,
            "stages": [{"name": "branch", "steps": 2, "lr": 1e-3}], "checkpoint.every": 2,
            "validation.every": 2, "validation.video": False}
    config = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"
    cfg = load_config(TrainConfig, config, over)
    summary = run_train(cfg)
    details = json.loads(Path(summary["summary"]).read_text())["details"]
    assert summary["state"]["global_step"] == 2 and not summary["skipped_samples"]
    assert details["text"] == "shards" and details["text_encoder_loaded_on"] == []
    assert details["uncaptioned_share"] == 0.0  # every clip had a caption (dropped ones do not count)
    with pytest.raises(ValueError, match=r"prompt length 64.*model's is 32"):
        run_train(load_config(TrainConfig, config, {**over, "name": "short", "model.max_text_length": 32}))
    from mirage_model.model.text import load_text_encoder

    assert os.path.isdir(broken / "text_encoder")
    with pytest.raises(Exception, match="header"):  # what the run above avoided: this text encoder cannot load
        load_text_encoder(broken)

"""``mirage train-vae``: a Wan2.2-family VAE trained on the project's own renders."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.cli import main as cli_main
from jobs.config import TrainVAEConfig
from mirage_model.config import load_config
from mirage_model.training.vae_trainer import (
    VAETrainSettings,
    VAEWidths,
    build_trainable_vae,
    decoder_parameters,
    psnr_db,
    raw_latent_statistics,
    reconstruction_psnr,
    train_vae,
)
from mirage_model.vae import encode_video, load_vae
from pipeline.synth_data import make_synthetic_dataset

WIDTHS = {"base_dim": 8, "decoder_base_dim": 8, "num_res_blocks": 1}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae-videos")
    make_synthetic_dataset(out, 4, seed=3, frames=9, size=(64, 64), moving_fraction=0.0)
    return out


def _clips(n=3, t=5, size=32, seed=0):
    """Smooth random clips in [-1, 1] (learnable in a few dozen steps)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 1, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(t, size, size), mode="trilinear", align_corners=True)


def test_training_lowers_the_reconstruction_error_and_the_stats_normalise_the_latents():
    clips = _clips()
    vae = build_trainable_vae(VAEWidths(**WIDTHS), seed=0)
    before, _ = reconstruction_psnr(vae, clips)
    history = train_vae(vae, clips, VAETrainSettings(steps=60, batch_size=2, lr=3e-3, crop=(32, 32),
                                                     warmup_steps=5, log_every=20))
    after, recon = reconstruction_psnr(vae, clips)
    assert recon.shape == clips.shape
    assert after > before + 3.0, (before, after)
    assert [r["step"] for r in history] == [0, 20, 40, 59]
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    # the recorded statistics normalise this VAE's latents to zero mean, unit variance per channel
    mean, std = raw_latent_statistics(vae, clips)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    z = encode_video(vae, clips)
    per_channel = z.transpose(0, 1).reshape(48, -1)
    assert per_channel.mean(1).abs().max() < 1e-3
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(48), atol=1e-3)


def test_a_decoder_only_fine_tune_keeps_every_latent():
    clips = _clips(seed=1)
    vae = build_trainable_vae(VAEWidths(**WIDTHS), seed=0).eval()
    latents = encode_video(vae, clips)
    decoder = [p.detach().clone() for p in decoder_parameters(vae)]
    before, _ = reconstruction_psnr(vae, clips)
    train_vae(vae, clips, VAETrainSettings(steps=30, batch_size=2, lr=3e-3, warmup_steps=2, log_every=10),
              decoder_only=True)
    after, _ = reconstruction_psnr(vae, clips)
    assert after > before + 1.0, (before, after)  # the decoder learnt ...
    assert not torch.equal(decoder[-1], decoder_parameters(vae)[-1])
    assert torch.equal(encode_video(vae, clips), latents)  # ... and the latents are those it was trained on
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    with pytest.raises(ValueError, match="init"):
        TrainVAEConfig(videos="x", decoder_only=True)
    # latent_noise: the decoder learns from perturbed latents; only for a decoder (the encoder would learn to
    # outgrow the noise)
    noisy = VAETrainSettings(steps=2, batch_size=2, warmup_steps=0, latent_noise=1.0)
    with pytest.raises(ValueError, match="decoder_only"):
        train_vae(vae, clips, noisy)
    with pytest.raises(ValueError, match="decoder_only"):
        TrainVAEConfig(videos="x", init="v", train={"latent_noise": 0.5})
    plain = [p.detach().clone() for p in decoder_parameters(vae)]
    assert train_vae(vae, clips, noisy, decoder_only=True)[-1]["psnr"] < after  # its batches decoded from noisy latents
    assert torch.equal(encode_video(vae, clips), latents) and not torch.equal(plain[-1], decoder_parameters(vae)[-1])


def test_batches_are_whole_frames_unless_a_crop_is_given():
    from mirage_model.training.vae_trainer import _random_batch

    clips = _clips(n=2, t=5, size=48)
    gen = torch.Generator().manual_seed(0)
    whole = _random_batch(clips, VAETrainSettings(batch_size=3), gen)
    assert whole.shape == (3, 3, 5, 48, 48)
    assert all(any(torch.equal(b, c) or torch.equal(b, c.flip(-1)) for c in clips) for b in whole)
    assert _random_batch(clips, VAETrainSettings(batch_size=2, crop=(32, 16)), gen).shape == (2, 3, 5, 32, 16)


def test_psnr_and_settings_are_checked():
    a = torch.zeros(1, 3, 1, 4, 4)
    assert psnr_db(a, a) == float("inf")
    assert psnr_db(a, a + 0.2) == pytest.approx(10 * torch.log10(torch.tensor(4 / 0.04)).item())
    with pytest.raises(ValueError, match="multiples of 16"):
        VAETrainSettings(crop=(40, 64))
    with pytest.raises(ValueError, match="4n"):
        train_vae(build_trainable_vae(VAEWidths(**WIDTHS)), torch.zeros(1, 3, 4, 32, 32), VAETrainSettings(crop=(32, 32)))
    with pytest.raises(ValueError, match="4n \\+ 1"):
        TrainVAEConfig(videos="x", clip_frames=4)
    with pytest.raises(ValueError, match="local directory"):
        TrainVAEConfig(videos="x", output="s3://bucket/vae")


@pytest.mark.slow
def test_train_vae_job_saves_a_loadable_vae_scored_on_held_out_videos(videos, tmp_path, capsys):
    out = tmp_path / "world"
    db = tmp_path / "mlflow.db"
    argv = ["train-vae", "--videos", str(videos), "--output", str(out), "--steps", "40",
            "--set", f"mlflow.tracking_uri=sqlite:///{db}", "--set", "held_out=1", "--set", "eval_frames=9",
            "--set", "clips_per_video=2", "--set", "train.crop=[32,32]", "--set", "train.batch_size=2",
            "--set", "train.lr=3e-3", "--set", "train.log_every=20"]
    argv += [x for k, v in WIDTHS.items() for x in ("--set", f"widths.{k}={v}")]
    # a first phase on single frames (image_train), then the clips
    argv += ["--set", "image_train.steps=6", "--set", "image_train.batch_size=4", "--set", "image_train.log_every=3",
             "--set", "image_train.crop=[32,32]", "--set", "image_frames_per_video=3"]
    assert cli_main(argv) == 0
    assert "held-out videos" in capsys.readouterr().out
    summary = json.loads((out / "vae_summary.json").read_text())
    assert summary["train_videos"] == 3 and summary["held_out_videos"][0].endswith("synth_0003.mp4")
    assert summary["train_clips"] == 6 and summary["clip_shape"] == [3, 5, 64, 64]
    assert summary["phases"] == {"frames": {"steps": 6, "items": 9, "frames": 1},
                                 "clips": {"steps": 40, "items": 6, "frames": 5}}
    assert [(r["phase"], r["step"]) for r in summary["history"]] == [
        ("frames", 0), ("frames", 3), ("frames", 5), ("clips", 6), ("clips", 26), ("clips", 45)]
    assert summary["history"][-1]["seconds"] == pytest.approx(summary["train_seconds"], abs=0.1)
    assert (out / "vae_reconstructions.png").stat().st_size > 0
    acct = json.loads((out / "summary.json").read_text())
    assert (acct["job"], acct["inputs"], acct["clips"]) == ("train-vae", 4, 7) and acct["bytes_in"] > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    # the saved folder is a Wan2.2 VAE that load_vae takes wherever a VAE is named; its scores
    # are those of the summary, and better than the same architecture untrained
    vae = load_vae(out / "vae")
    assert vae.config.z_dim == 48 and vae.config.latents_mean != load_vae("tiny").config.latents_mean
    cfg = load_config(TrainVAEConfig, None, {"videos": str(videos), "held_out": 1, "eval_frames": 9})
    from jobs.train_vae import _clips as read_clips

    held = read_clips([summary["held_out_videos"][0]], 9, 1, None, cfg.storage.options())
    trained, _ = reconstruction_psnr(vae, held)
    assert trained == pytest.approx(summary["held_out_psnr_db"], abs=0.01)
    untrained, _ = reconstruction_psnr(build_trainable_vae(VAEWidths(**WIDTHS), seed=0).eval(), held)
    assert trained > untrained + 0.75, (untrained, trained)  # 40 steps: +1.2 to +2.5 dB (threads vary it)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("mirage-train-vae").experiment_id])[0]
    assert run.data.metrics["held_out_psnr_db"] == pytest.approx(summary["held_out_psnr_db"], abs=1e-3)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 3, 5, 6, 26, 45]

    from benchmarks.vae_bench import main as bench

    assert bench(["--from-summary", str(out / "vae_summary.json")]) == 0
    assert f"{summary['held_out_psnr_db']:.2f} dB" in capsys.readouterr().out

    # init: fine-tune the saved VAE instead of starting from random weights (it keeps its widths)
    again = tmp_path / "again"
    argv2 = [a if a != str(out) else str(again) for a in argv]
    argv2 = [a if a != "40" else "2" for a in argv2] + ["--set", f"init={out / 'vae'}", "--set", "train.lr=1e-5",
                                                       "--set", "widths.base_dim=12"]
    assert cli_main(argv2) == 0
    tuned = json.loads((again / "vae_summary.json").read_text())
    assert tuned["parameters"] == summary["parameters"]  # its own widths, not widths.base_dim=12
    # started from the trained weights: it keeps what they learnt (its 6 single-frame steps may add to it)
    assert tuned["held_out_psnr_db"] > untrained + 0.5 and tuned["held_out_psnr_db"] > trained - 1.0

    # decoder_only: the saved encoder and latent statistics are those of init, the decoder is new
    dec = tmp_path / "decoder"
    # (on other clips than init's: statistics recomputed over them would differ)
    argv3 = [a if a != str(again) else str(dec) for a in argv2] + ["--set", "decoder_only=true",
                                                                   "--set", "clips_per_video=1"]
    assert cli_main(argv3) == 0
    sharpened = load_vae(dec / "vae")
    assert sharpened.config.latents_mean == vae.config.latents_mean
    assert sharpened.config.latents_std == vae.config.latents_std
    assert torch.equal(encode_video(sharpened, held), encode_video(vae, held))
    assert not torch.equal(sharpened.decoder.conv_out.weight, vae.decoder.conv_out.weight)

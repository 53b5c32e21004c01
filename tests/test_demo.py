"""``mirage demo --quick`` end to end: synthetic videos -> Ray Data -> Ray Train -> generation -> report + MLflow."""

import html
import json
import math
from pathlib import Path

import pytest

from jobs.demo import DemoConfig, run_demo


def test_demo_config_variants_and_validation():
    full, quick = DemoConfig.for_variant(), DemoConfig.for_variant(quick=True, steps_per_stage=3)
    assert full.preset == "small" and full.modes == ("latent", "rgb", "none") and full.gen_frames == 97
    assert quick.quick and quick.preset == "tiny" and quick.steps_per_stage == 3 and quick.gen_frames == 33
    with pytest.raises(ValueError, match="33 \\+ 32k"):
        DemoConfig(gen_frames=40)
    with pytest.raises(ValueError, match="multiples of 32"):
        DemoConfig(gen_size=(100, 96))


def test_demo_refuses_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not written by `mirage demo`"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_names_a_missing_vae_before_any_stage(tmp_path):
    cfg = DemoConfig.for_variant(quick=True, out=str(tmp_path / "demo"), vae=str(tmp_path / "no-vae"))
    with pytest.raises(FileNotFoundError, match="no-vae does not exist"):
        run_demo(config=cfg)
    assert not (tmp_path / "demo").exists()  # nothing started, nothing written


def test_the_default_demo_starts_from_the_shipped_world_from_any_directory(tmp_path, monkeypatch, caplog):
    from jobs.demo import World, recipe_sample
    from jobs.resources import RESOURCE_ROOT

    monkeypatch.chdir(tmp_path)  # `assets/world` is not here: it is looked up among the shipped resources
    world = World.of(DemoConfig())
    assert world.init == str(RESOURCE_ROOT / "assets" / "world" / "model")
    assert world.vae == str(RESOURCE_ROOT / "assets" / "world" / "vae")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    assert World.of(DemoConfig(vae="vae")).vae == str(tmp_path / "vae")  # another VAE, with the world's model
    # the demo fine-tunes on the samples the world was trained on, unless its config says otherwise
    layout = world.sample_layout(DemoConfig())
    assert layout == world.sample == recipe_sample() and layout["memory_from"] == "history"
    assert layout["drop_memory_p"] > 0 and "shards" not in layout
    assert world.sample_layout(DemoConfig(t0_range=(24, 28))) == {**world.sample, "t0_min": 24, "t0_max": 28}
    # the quick demo: random weights, the recipe's samples with its own layout over them
    quick = DemoConfig.for_variant(quick=True)
    assert World.of(quick) == World(sample=recipe_sample())
    assert World.of(quick).sample_layout(quick) == {**recipe_sample(), "target_latents": 5, "memory_from": "t0",
                                                    "t0_min": 8, "t0_max": 48}
    # a world exported without its training config records no layout: the recipe's, with a warning
    (tmp_path / "old" / "vae").mkdir(parents=True)
    (tmp_path / "old" / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    (tmp_path / "old" / "world.json").write_text('{"sample": null, "files": {}}')
    with caplog.at_level("WARNING", logger="jobs.demo"):
        assert World.of(DemoConfig(world=str(tmp_path / "old"))).sample == recipe_sample()
    assert "records no training-sample layout" in caplog.text
    with pytest.raises(FileNotFoundError, match="world nowhere: no world.json"):
        run_demo(config=DemoConfig(out=str(tmp_path / "demo"), world="nowhere"))
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    from mlflow.tracking import MlflowClient

    from mirage_model.io.video import decode, probe

    out = tmp_path / "demo"
    lines: list[str] = []
    result = run_demo(out, quick=True, echo=lines.append)

    assert result["status"] == "finished"
    assert [s[:5] for s in lines if s.startswith("[")] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]
    assert any("mlflow ui --backend-store-uri sqlite:///" in s for s in lines)

    # the report: written, self-contained (no remote resources), the three modes and the numbers in it
    report = Path(result["report"])
    assert report == out / "report.html" and report.is_file()
    text = report.read_text()
    assert "http://" not in text.replace("http://127.0.0.1:5000", "") and "https://" not in text
    for label in ("latent memory (Mirage)", "RGB point cache", "no memory"):
        assert label in text
    for name in ("loss", "trajectory", "memory", "frames"):
        img = out / "report_assets" / f"{name}.png"
        assert img.is_file() and img.read_bytes()[:4] == b"\x89PNG" and f'src="report_assets/{name}.png"' in text
    gen = result["generate"]
    assert set(gen["modes"]) == {"latent", "rgb", "none"}
    for mode, v in gen["modes"].items():
        r = v["revisit"]
        assert r["pairs"] > 0 and math.isfinite(r["psnr"]) and 0 < r["ssim"] <= 1
        assert f"{r['psnr']:.2f}" in text and f"{r['ssim']:.3f}" in text
        assert v["revisit_consistency_psnr"] == r["psnr"] and 0 < v["revisit_psnr_gt"] < 100
        chunks = v["chunks"]
        assert len(chunks) == 1  # 33 frames: one chunk
        if mode == "none":
            assert chunks[-1]["cache_bytes"] == 0
        else:
            assert chunks[-1]["cache_points"] > 0 and f"{chunks[-1]['cache_bytes'] / 1024:.1f}" in text
        # the video the report points at (relative path) exists next to it and decodes to every frame
        rel = Path(v["video"]).relative_to(out).as_posix()
        assert f'src="{html.escape(rel)}"' in text
        info = probe(v["video"])
        assert (info.height, info.width) == (64, 96) and info.n_frames == 33
        assert decode(v["video"]).frames.shape == (33, 64, 96, 3)
    lat, rgb = gen["modes"]["latent"]["chunks"][-1], gen["modes"]["rgb"]["chunks"][-1]
    assert lat["cache_bytes"] < rgb["cache_bytes"]
    assert decode(gen["reference"]).frames.shape == (33, 64, 96, 3)

    # timings: every stage, each in the report
    keys = [t["key"] for t in result["timings"]]
    for key in ("synthesise", "preprocess", "train", "generate_latent", "generate_rgb", "generate_none"):
        assert key in keys
    for t in result["timings"]:
        assert t["seconds"] > 0 and html.escape(t["stage"]) in text
    assert result["total_s"] >= sum(t["seconds"] for t in result["timings"])

    # preprocessing and training really ran
    pre = result["preprocess"]
    # SfM may reject a clip (the demo then trains on what is left, and the report says why)
    assert pre["inputs"] == 2 and pre["samples"] >= 1 and Path(pre["manifest"]).is_file()
    assert pre["samples"] + sum(v for k, v in pre["status"].items() if k != "ok") == 2
    assert f"{pre['samples']} training clips" in text
    tr = result["train"]
    assert tr["steps"] == 20 and Path(tr["checkpoint"], "trainable.safetensors").is_file()
    assert len(tr["loss"]) == 20 and [s for s, _ in tr["loss"]] == list(range(1, 21))
    assert tr["val_loss"] and f"{tr['loss_start']:.3f}" in text and f"{tr['loss_end']:.3f}" in text

    # MLflow: the demo run (finished, with metrics and the report) and the training run, same demo tag
    ml = result["mlflow"]
    client = MlflowClient(ml["tracking_uri"])
    run = client.get_run(ml["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["mirage.demo"] == result["demo_id"]
    m = run.data.metrics
    for mode in ("latent", "rgb", "none"):
        assert m[f"revisit.{mode}.psnr"] == pytest.approx(gen["modes"][mode]["revisit"]["psnr"])
        assert m[f"revisit.{mode}.ssim"] == pytest.approx(gen["modes"][mode]["revisit"]["ssim"])
    for key in ("time.synthesise_s", "time.preprocess_s", "time.train_s", "time.total_s", "loss_end"):
        assert key in m
    assert run.data.params["preset"] == "tiny"
    artifacts = {a.path for a in client.list_artifacts(ml["run_id"])}
    assert {"report.html", "report_assets", "generate"} <= artifacts
    assert {a.path for a in client.list_artifacts(ml["run_id"], "generate/latent")} >= {"generate/latent/video.mp4"}
    train_run = client.get_run(ml["train_run_id"])
    assert train_run.data.tags["mirage.demo"] == result["demo_id"]
    assert [x.step for x in client.get_metric_history(ml["train_run_id"], "loss")][-1] == 20

    assert json.loads((out / "demo.json").read_text())["demo_id"] == result["demo_id"]
    acct = json.loads((out / "summary.json").read_text())  # and each job's own: shards/, train/demo/
    assert acct["job"] == "demo" and acct["clips"] == result["preprocess"]["samples"]
    assert {"preprocess", "train"} <= set(acct["stages"]) and (out / "shards" / "summary.json").is_file()
    assert json.loads(Path(acct["details"]["train"]).read_text())["job"] == "train"

"""``mirage demo --quick`` end to end: synthetic videos -> Ray Data -> Ray Train -> generation -> report + MLflow."""


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

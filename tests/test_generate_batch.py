"""``mirage generate-batch``: item validation (fast, no Ray) and end to end on a local Ray
(127.0.0.1, 2 CPUs) with the tiny preset: local disk + MLflow sqlite store + re-run skip, and S3 (moto)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from jobs.config import GenerateBatchConfig
from jobs.generate_batch import (
    ItemError,
    build_trajectory,
    list_done,
    load_first_frame,
    read_prompt_set,
    run_generate_batch,
)
from mirage_model.config import load_config
from mirage_model.geometry import formats, trajectory
from pipeline import storage

ROOT = Path(__file__).resolve().parents[1]
GEN = {"steps": 2, "fps": 16, "device": "cpu"}

# id -> expected failure reason (None: ok)
EXPECTED = {
    "pan": None, "re10k": None,
    "no-image": "missing_image", "garbage-cams": "bad_camera_file", "nan-cams": "nan_cameras",
    "short": "too_few_frames", "odd-count": "bad_frames_count",
    "line-9": "bad_item", "pan#2": "duplicate_id",
}


def _write_inputs(root: Path) -> Path:
    """Prompt set with 2 good items and every kind of bad one; item paths are relative to it."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / "first.png")
    orbit = trajectory.orbit(17, radius=0.5, degrees=40.0, image_size=(360, 480))
    formats.write_re10k(root / "orbit.txt", orbit)
    lines = (root / "orbit.txt").read_text().splitlines()
    fields = lines[3].split()
    fields[9] = "nan"
    lines[3] = " ".join(fields)
    (root / "nan.txt").write_text("\n".join(lines) + "\n")
    (root / "garbage.txt").write_text("not a url\nthis is not a camera line\n")
    items = [
        {"id": "pan", "image": "synthetic", "prompt": "a room", "trajectory": "pan-and-return", "frames": 65,
         "trajectory_params": {"yaw_degrees": 40.0}},
        {"id": "re10k", "image": "first.png", "prompt": "orbit", "trajectory": "orbit.txt", "frames": 33, "seed": 3},
        {"id": "no-image", "image": "missing.png", "trajectory": "pan-and-return"},
        {"id": "garbage-cams", "image": "synthetic", "trajectory": "garbage.txt"},
        {"id": "nan-cams", "image": "synthetic", "trajectory": "nan.txt"},
        {"id": "short", "image": "synthetic", "frames": 17},
        {"id": "odd-count", "image": "synthetic", "frames": 40},
    ]
    text = "".join(json.dumps(it) + "\n" for it in items)
    text += json.dumps({"image": "synthetic"}) + "\n"  # line 9: no id -> bad_item
    text += json.dumps({"id": "pan", "image": "synthetic"}) + "\n"  # duplicate id
    (root / "prompts.jsonl").write_text("# test prompt set\n" + text)  # comment = line 1
    return root / "prompts.jsonl"


def _config(prompts: str, output: str, tmp: Path, **extra) -> GenerateBatchConfig:
    data = {"prompts": prompts, "output": output, "model": {"preset": "tiny"}, "generation": GEN,
            "height": 64, "width": 96, "frames": 33,
            "resources": {"concurrency": 1, "num_cpus": 1},
            "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow/mlflow.db", "experiment": "gb-test",
                       "log_videos": 1}}
    data.update(extra)
    return GenerateBatchConfig.model_validate(data)


def _manifest(output: str, options=None) -> list[dict]:
    text = storage.read_bytes(storage.join_uri(output, "manifest.jsonl"), options).decode()
    return [json.loads(line) for line in text.splitlines()]


def _by_id(rows: list[dict]) -> dict[str, dict]:
    out = {}
    for r in rows:
        key = r["id"] if r["reason"] != "duplicate_id" else r["id"] + "#2"
        out[key] = r
    return out


# ----------------------------------------------------------------------------------------------
# Fast: config, prompt set and item validation without Ray
# ----------------------------------------------------------------------------------------------
def test_example_config_and_prompt_set_validate():
    cfg = load_config(GenerateBatchConfig, ROOT / "configs/generate_batch/default.yaml", {"output": "/tmp/x"})
    assert cfg.model.preset is None and cfg.output == "/tmp/x"  # the checkpoint's preset, else tiny
    assert cfg.height % 32 == 0 and cfg.width % 32 == 0
    items, rejected = read_prompt_set(str(ROOT / cfg.prompts))
    assert 2 <= len(items) <= 3 and not rejected
    assert all(it["image"] == "synthetic" for it in items)
    with pytest.raises(ValueError, match="multiple of 32"):
        GenerateBatchConfig.model_validate({"prompts": "p.jsonl", "output": "o", "height": 50})
    with pytest.raises(ValueError, match="model_dir"):
        GenerateBatchConfig.model_validate({"prompts": "p.jsonl", "output": "o", "model": {"lora": "x"}})
    with pytest.raises(ValueError, match="extra"):
        GenerateBatchConfig.model_validate({"prompts": "p.jsonl", "output": "o", "typo": 1})


def test_cli_parser_has_generate_batch():
    from jobs.cli import _generate_batch, build_parser, job_config

    config = str(ROOT / "configs/generate_batch/default.yaml")
    args = build_parser().parse_args(["generate-batch", "--config", config, "--output", "o", "--address", "a"])
    cfg = job_config(args)
    assert args.func is _generate_batch and cfg.output == "o" and cfg.ray_address == "a"
    assert cfg.prompts == "configs/generate_batch/prompts.jsonl"  # the file's value: --prompts not given


def test_prompt_set_parsing_and_item_validation(tmp_path):
    prompts = _write_inputs(tmp_path / "in")
    items, rejected = read_prompt_set(str(prompts))
    by_id = {it["id"]: it for it in items}
    assert set(by_id) == {k for k, v in EXPECTED.items() if v not in ("bad_item", "duplicate_id") and "#" not in k}
    assert {r["reason"] for r in rejected} == {"bad_item", "duplicate_id"}
    assert by_id["re10k"]["image"] == str(tmp_path / "in" / "first.png")  # relative to the prompt file
    assert by_id["pan"]["trajectory"] == "pan-and-return"
    cfg = _config(str(prompts), str(tmp_path / "out"), tmp_path)
    for item_id in ("no-image", "garbage-cams", "nan-cams", "short", "odd-count"):
        with pytest.raises(ItemError) as err:
            traj = build_trajectory(by_id[item_id], cfg, str(tmp_path))
            load_first_frame(by_id[item_id], traj, cfg)
        assert err.value.reason == EXPECTED[item_id], (item_id, err.value.message)
    # messages name the input
    with pytest.raises(ItemError, match="garbage.txt"):
        build_trajectory(by_id["garbage-cams"], cfg, str(tmp_path))
    with pytest.raises(ItemError, match="missing.png"):
        load_first_frame(by_id["no-image"], None, cfg)
    # more reasons
    bad = {**by_id["pan"], "trajectory_params": {"wobble": 1}}
    with pytest.raises(ItemError) as err:
        build_trajectory(bad, cfg, str(tmp_path))
    assert err.value.reason == "bad_trajectory_params"
    bad = {**by_id["re10k"], "trajectory": str(tmp_path / "nope.txt")}
    with pytest.raises(ItemError) as err:
        build_trajectory(bad, cfg, str(tmp_path))
    assert err.value.reason == "missing_camera_file"
    # the good ones load: camera file resampled to the item's frames at the generation size
    traj = build_trajectory(by_id["re10k"], cfg, str(tmp_path))
    assert len(traj) == 33 and traj.image_size == (64, 96)
    image, depth = load_first_frame(by_id["re10k"], traj, cfg)
    assert image.shape == (64, 96, 3) and image.dtype == np.uint8 and depth is None
    traj = build_trajectory(by_id["pan"], cfg, str(tmp_path))
    image, depth = load_first_frame(by_id["pan"], traj, cfg)
    assert len(traj) == 65 and depth is not None and tuple(depth.shape) == (64, 96)


def test_csv_prompt_set(tmp_path):
    (tmp_path / "p.csv").write_text(
        "id,image,prompt,trajectory,trajectory_params,frames,seed\n"
        'a,synthetic,hello,orbit,"{""degrees"": 30}",33,1\n'
        "b,img.png,,dolly,,,\n")
    items, rejected = read_prompt_set(str(tmp_path / "p.csv"))
    assert not rejected
    assert items[0]["trajectory_params"] == {"degrees": 30} and items[0]["frames"] == 33 and items[0]["seed"] == 1
    assert items[1]["frames"] is None and items[1]["seed"] == 0
    assert items[1]["image"] == str(tmp_path / "img.png")


# ----------------------------------------------------------------------------------------------
# End to end on Ray
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local(moto_s3):
    import ray

    # Workers inherit the driver's environment: moto's fake credentials for the S3 test.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = moto_s3["key"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = moto_s3["secret"]
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _check_item_outputs(row: dict, frames: int, options=None) -> None:
    from pipeline.stages import decode_uri

    out = row["outputs"]
    assert set(out) == {"video", "cameras", "chunks", "metrics"}
    for uri in out.values():
        assert storage.exists(uri, options), uri
    video = decode_uri(out["video"], options)
    assert video.frames.shape == (frames, 64, 96, 3)
    metrics = json.loads(storage.read_bytes(out["metrics"], options))
    assert metrics["status"] == "ok" and metrics["frames"] == frames
    chunks = json.loads(storage.read_bytes(out["chunks"], options))
    assert len(chunks["chunks"]) == (frames - 1) // 32
    assert len(row["metrics"]["cache_bytes"]) == len(chunks["chunks"])


@pytest.mark.slow
def test_local_end_to_end_rerun_and_mlflow(ray_local, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.cli import main as cli_main

    prompts = _write_inputs(tmp_path / "in")
    output = str(tmp_path / "out")
    cfg = _config(str(prompts), output, tmp_path)
    summary = run_generate_batch(cfg)

    rows = _by_id(_manifest(output))
    assert {k: r["reason"] for k, r in rows.items() if r["status"] == "failed"} == \
        {k: v for k, v in EXPECTED.items() if v}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"pan", "re10k"}
    assert "missing.png" in rows["no-image"]["message"] and "nan.txt" in rows["nan-cams"]["message"]
    assert summary["status"] == {"ok": 2, "failed": 7} and summary["generated"] == 7
    assert summary["actors"] and all(n == 1 for n in summary["actors"].values())  # model loaded once
    _check_item_outputs(rows["pan"], 65)
    _check_item_outputs(rows["re10k"], 33)
    assert rows["pan"]["metrics"]["revisit_pairs"] > 0  # pan-and-return comes back to its poses
    assert np.isfinite(rows["pan"]["metrics"]["revisit_psnr"]) and 0 < rows["pan"]["metrics"]["revisit_ssim"] <= 1
    cams = formats.read_re10k(rows["pan"]["outputs"]["cameras"], (64, 96))
    assert len(cams) == 65
    assert not list((tmp_path / "out").rglob(".tmp-*"))
    assert set(list_done(output)) == {"pan", "re10k"}
    assert not (tmp_path / "out" / "no-image").exists()
    acct = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (acct["job"], acct["inputs"], acct["accepted"]) == ("generate-batch", 9, 2)
    assert sum(acct["rejected"].values()) == 7 and acct["frames"] == 65 + 33
    assert acct["stages"]["generate"]["busy_s"] > 0 and len(acct["peak_rss_mib"]) == 1 + len(summary["actors"])

    # MLflow: one run with params, aggregated metrics, the results table and one sample video
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name("gb-test")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.preset"] == "tiny" and run.data.params["generation.steps"] == "2"
    m = run.data.metrics
    assert m["n_ok"] == 2 and m["n_failed"] == 7 and m["summary.accepted"] == 2
    assert {"revisit_psnr", "revisit_ssim", "s_per_frame", "cache_mib_last"} <= set(m)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.csv", "results.jsonl", "summary.json", "videos"} <= arts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "videos")] == ["videos/pan.mp4"]

    # Re-run through the CLI: done items are skipped (nothing rewritten), failed ones retried
    stamps = {p: p.stat().st_mtime_ns for d in ("pan", "re10k") for p in (tmp_path / "out" / d).iterdir()}
    cfg_path = tmp_path / "batch.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capsys.readouterr()
    assert cli_main(["generate-batch", "--config", str(cfg_path)]) == 0
    text = capsys.readouterr().out
    assert "2 done before this run, 5 generated now" in text
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rows2 = _by_id(_manifest(output))
    assert {k: r["status"] for k, r in rows2.items()} == {k: r["status"] for k, r in rows.items()}
    assert not rows2["pan"]["generated_this_run"] and rows2["short"]["generated_this_run"]
    assert len(client.search_runs([exp.experiment_id])) == 2


@pytest.mark.slow
def test_s3_end_to_end(ray_local, moto_s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"],
                           client_kwargs={"endpoint_url": moto_s3["endpoint_url"],
                                          "region_name": moto_s3["region"]})
    fs.mkdir("gen-batch")
    local = _write_inputs(tmp_path / "in").parent
    fs.put_file(str(local / "orbit.txt"), "gen-batch/in/cams/orbit.txt")
    items = [{"id": "s3-cams", "image": "synthetic", "trajectory": "cams/orbit.txt", "frames": 33},
             {"id": "s3-missing", "image": "s3://gen-batch/in/none.png", "trajectory": "dolly", "frames": 33}]
    fs.pipe_file("gen-batch/in/prompts.jsonl", "".join(json.dumps(i) + "\n" for i in items).encode())
    storage_cfg = {"endpoint_url": moto_s3["endpoint_url"], "region": moto_s3["region"]}
    output = "s3://gen-batch/out"
    cfg = _config("s3://gen-batch/in/prompts.jsonl", output, tmp_path, storage=storage_cfg,
                  mlflow={"enabled": False})
    options = cfg.storage.options()
    summary = run_generate_batch(cfg)
    assert summary["status"] == {"ok": 1, "failed": 1}
    rows = {r["id"]: r for r in _manifest(output, options)}
    assert rows["s3-missing"]["reason"] == "missing_image"
    assert rows["s3-cams"]["outputs"]["video"] == "s3://gen-batch/out/s3-cams/video.mp4"
    _check_item_outputs(rows["s3-cams"], 33, options)
    assert not [k for k in fs.find("gen-batch/out") if "/.tmp-" in k]
    again = run_generate_batch(cfg)
    assert again["done_before"] == 1 and again["generated"] == 1


def test_a_checkpoint_brings_the_vae_it_was_trained_on(tmp_path):
    """model.json names the VAE whose latents the run learnt: generation loads it unless told
    otherwise, and a VAE that is not on this machine is an error naming it."""
    import torch
    from safetensors.torch import save_file

    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator
    from mirage_model.generation import MirageGenerator
    from mirage_model.model.checkpoint import TRAINABLE_FILE, trainable_names, write_model_record
    from mirage_model.vae import build_vae

    trained = MirageGenerator.from_preset("tiny", seed=0)
    named = dict(trained.transformer.named_parameters())
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_file({n: named[n].detach().contiguous() for n in trainable_names(trained.transformer)},
              str(ckpt / TRAINABLE_FILE))
    vae = build_vae("tiny", seed=7)
    vae.save_pretrained(tmp_path / "vae")
    write_model_record(ckpt, {"preset": "tiny", "vae": str(tmp_path / "missing-vae")})
    with pytest.raises(ValueError, match=r"trained on the latents of the VAE in .*missing-vae.*give model.vae"):
        load_generator(GeneratorModelConfig(checkpoint=str(ckpt)), "cpu")
    write_model_record(ckpt, {"preset": "tiny", "vae": str(tmp_path / "vae")})
    gen = load_generator(GeneratorModelConfig(checkpoint=str(ckpt)), "cpu")
    ref = dict(vae.named_parameters())
    assert all(torch.equal(p, ref[n]) for n, p in gen.vae.named_parameters())
    assert gen.memory_config.view_radius is None  # the record has no memory: the defaults
    gen = load_generator(GeneratorModelConfig.model_validate(
        {"checkpoint": str(ckpt), "memory": {"view_radius": 0.5}}), "cpu")
    assert gen.memory_config.view_radius == 0.5  # the job's setting overrides the record's

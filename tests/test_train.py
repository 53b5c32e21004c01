"""Two-stage training on Ray Train from shards (issue: distributed fine-tuning, resumable, MLflow)."""

import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from servers import free_port, wait_for_http

from jobs.config import TrainConfig
from jobs.tracking import flatten
from mirage_model.config import load_config
from mirage_model.training.samples import SampleConfig
from mirage_model.training.trainer import (
    LoraSpec,
    OptimConfig,
    SampleStream,
    StageConfig,
    TrainState,
    derive_seed,
    load_state,
    load_weights,
    prepare_model,
    save_checkpoint,
    start_stage,
    trainable_names,
)

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "train" / "tiny.yaml"


# ----------------------------------------------------------------------------------------------
# Fast: config, plan, checkpoint files
# ----------------------------------------------------------------------------------------------
def test_config_validation_and_overrides(tmp_path):
    cfg = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "scaling.num_workers": 3, "name": None})
    assert cfg.data.shards == "/x" and cfg.scaling.num_workers == 3 and cfg.name == "tiny"
    assert [s.name for s in cfg.stages] == ["branch", "lora"] and cfg.total_steps == 40
    flat = flatten(cfg.model_dump())
    assert flat["stages.1.name"] == "lora" and flat["model.lora.rank"] == 8
    bad = {"data": {"shards": "/x"}, "stages": [{"name": "branch", "steps": 1, "lr": 1e-3}] * 2}
    with pytest.raises(ValueError, match="each stage at most once"):
        TrainConfig.model_validate(bad)
    with pytest.raises(ValueError, match="extra"):
        TrainConfig.model_validate({"data": {"shards": "/x"}, "stages": [{"name": "lora", "steps": 1, "lr": 1}],
                                    "optimiser": {}})
    with pytest.raises(ValueError, match="not a path"):
        TrainConfig.model_validate({"name": "a/b", "data": {"shards": "/x"},
                                    "stages": [{"name": "lora", "steps": 1, "lr": 1}]})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(TrainConfig, tmp_path / "nope.yaml")



def test_model_vae_replaces_the_presets_vae_when_first_needed(tmp_path):
    """``model.vae``: a trained VAE directory stands in for the preset's random one (for samples
    without cached latents and rollout videos), built only when first used."""
    from jobs.train import _build_model
    from mirage_model.vae import build_vae

    saved = build_vae("tiny", seed=7)
    saved.save_pretrained(tmp_path / "vae")
    cfg = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.vae": str(tmp_path / "vae")})
    gen = _build_model(cfg, torch.device("cpu"))
    assert not gen.vae_loaded
    ours, theirs = gen.vae.state_dict(), build_vae("tiny", seed=cfg.seed).state_dict()
    assert all(torch.equal(ours[k], v) for k, v in saved.state_dict().items())
    assert not all(torch.equal(ours[k], v) for k, v in theirs.items())  # not the preset's random weights
    with pytest.raises(ValueError, match="model_dir brings its own"):
        load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.vae": "v", "model.model_dir": "m"})
    # Ray Train workers run in their own directory: the driver hands them absolute paths
    from jobs.train import _local_model_paths_absolute

    rel = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.vae": "runs/v", "model.branch_dir": "b"})
    sent = _local_model_paths_absolute(rel).model
    assert sent.vae == os.path.abspath("runs/v") and sent.branch_dir == os.path.abspath("b")
    assert sent.model_dir is None and rel.model.vae == "runs/v"


def test_sample_stream_shuffles_per_epoch_and_resumes_exactly():
    rows = [f"k{i:02d}" for i in range(11)]
    reads = []

    def source():  # one pass over a worker's shards; counts the passes
        reads.append(1)
        return iter(rows)

    stream = SampleStream(source, seed=5, rank=1, buffer_size=4)
    seen = [next(stream) for _ in range(30)]
    e0, e1 = seen[:11], seen[11:22]
    assert sorted(e0) == sorted(e1) == rows and e0 != e1 != rows  # every sample once per epoch, new order
    assert stream.epoch_sizes == {0: 11, 1: 11} and (stream.epoch, stream.position) == (2, 8)
    assert len(reads) == 3  # one pass per epoch, nothing held beyond the buffer
    # the same seed and rank give the same order; another rank another one
    again = SampleStream(source, seed=5, rank=1, buffer_size=4)
    assert [next(again) for _ in range(11)] == e0
    other = SampleStream(source, seed=5, rank=0, buffer_size=4)
    assert [next(other) for _ in range(11)] != e0
    # resume anywhere (mid-epoch, at an epoch's end): the same samples follow
    for epoch, position in ((0, 5), (1, 0), (1, 10), (2, 3)):
        resumed = SampleStream(source, seed=5, rank=1, buffer_size=4, epoch=epoch, position=position)
        at = 11 * epoch + position
        assert [next(resumed) for _ in range(30 - at)] == seen[at:], (epoch, position)
    # buffer 1 keeps the shard order; a position beyond the epoch or an empty source is an error
    in_order = SampleStream(source, buffer_size=1)
    assert [next(in_order) for _ in range(3)] == rows[:3]
    with pytest.raises(ValueError, match="position 12"):
        next(SampleStream(source, epoch=0, position=12, name="w1"))
    with pytest.raises(ValueError, match="w2: no samples"):
        next(SampleStream(lambda: iter([]), name="w2"))
    assert derive_seed(1, "x", 2) == derive_seed(1, "x", 2) != derive_seed(1, "x", 3)


def test_batch_source_keeps_one_layout_per_batch_counts_skips_and_resumes(monkeypatch):
    """A worker's batches (``jobs.train.BatchSource``): a sample of another layout waits for the
    next batch, a sample that fails to build is skipped and counted, the position resumes."""
    from types import SimpleNamespace

    import jobs.train as train

    rows = [{"__key__": k, "mp4": b"xy"} for k in ("a3", "bad", "b2", "c3", "d2", "e3")]

    def build(sample, cfg, seed, epoch, vae, device, memory_config):  # the digit stands for the sample's layout
        assert memory_config == cfg_memory  # the run's memory: section
        if sample["__key__"] == "bad":
            raise ValueError("corrupt")
        return SimpleNamespace(key=sample["__key__"], target=torch.zeros(1, int(sample["__key__"][1])),
                               context=torch.zeros(1, 0), prompt="" if sample["__key__"] == "b2" else "a room",
                               dropped_text=False)

    monkeypatch.setattr(train, "sample_from_row", lambda row: row)
    monkeypatch.setattr(train, "build_training_sample", build)
    monkeypatch.setattr(train, "collate", lambda built: SimpleNamespace(prompts=[s.key for s in built]))
    cfg = load_config(TrainConfig, CONFIG, {"optim.batch_size": 2, "data.shuffle_buffer": 1,
                                            "memory.view_radius": 0.5})
    cfg_memory = cfg.memory
    gen = SimpleNamespace(vae=None, vae_loaded=False, text_encoder_loaded=False)
    source = train.BatchSource(lambda: iter(rows), cfg, gen, TrainState(), rank=0, world=1)
    assert source.next_batch().prompts == ["a3", "c3"]  # b2 waits for a batch of its layout
    assert source.next_batch().prompts == ["b2", "d2"]
    pos = source.position()
    assert (pos["epoch"], pos["position"], pos["samples"], pos["bytes_in"]) == (0, 5, 4, 10)
    assert pos["uncaptioned"] == 1  # b2 has no caption
    assert pos["skipped"] == {"bad": "corrupt"} and pos["epoch_rows"] is None and pos["vae_loaded"] is False
    # resumed from that record: the same samples follow, the skips and the accounting carry over
    resumed = train.BatchSource(lambda: iter(rows), cfg, gen, TrainState(ranks=[pos]), rank=0, world=1)
    assert resumed.next_batch().prompts == ["e3", "a3"]  # the next epoch starts after e3
    assert resumed.position()["samples"] == 6 and resumed.position()["skipped"] == {"bad": "corrupt"}
    assert resumed.position()["epoch_rows"] == 6
    # shards none of whose samples build: an error naming the worker and a reason, not an endless loop
    broken = train.BatchSource(lambda: iter([{"__key__": "bad", "mp4": b"xy"}]), cfg, gen, TrainState(), rank=0,
                               world=1)
    with pytest.raises(ValueError, match=r"training worker 0: no sample of a whole epoch .* bad: corrupt"):
        broken.next_batch()


def test_shards_are_split_by_file_and_need_one_per_worker():
    from jobs.train_ingest import shards_for_rank

    uris = [f"s3://b/shard-{i}.tar" for i in (3, 0, 2, 1, 4)]
    split = [shards_for_rank(uris, r, 2) for r in range(2)]
    assert split == [["s3://b/shard-0.tar", "s3://b/shard-2.tar", "s3://b/shard-4.tar"],
                     ["s3://b/shard-1.tar", "s3://b/shard-3.tar"]]
    with pytest.raises(ValueError, match="2 readable shards for 3 training workers"):
        shards_for_rank(uris[:2], 0, 3)


def test_shard_check_keeps_the_order_and_names_each_bad_shard(tmp_path):
    from jobs.train_ingest import check_shards
    from pipeline.storage import StorageOptions

    def tar_bytes(n: int) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for i in range(n):
                info = tarfile.TarInfo(f"k{i}.video.mp4")
                info.size = 4096
                tar.addfile(info, io.BytesIO(bytes(4096)))
        return buf.getvalue()

    good = tar_bytes(3)
    # cut in a header (tarfile itself reads it as a 1-member archive), in member data, after the last
    # member; not a tar; empty
    files = {"a.tar": good, "b.tar": good[:5000], "c.tar": good[:6000], "d.tar": good[:3 * 4608],
             "e.tar": b"not a tar" * 100, "f.tar": tar_bytes(0), "g.tar": good}
    uris = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        uris.append(str(tmp_path / name))
    ok, bad = check_shards(uris, StorageOptions(), threads=3)
    assert ok == [uris[0], uris[6]]
    assert [b["shard"] for b in bad] == uris[1:6] and all(b["reason"].startswith("unreadable shard: ") for b in bad)
    assert "truncated after 1 members" in bad[0]["reason"] and "truncated after 3 members" in bad[2]["reason"]


def test_stage_schedule_warms_up_holds_then_decays_and_a_plateau_run_can_be_lengthened():
    """The learning rate of a stage: linear warm-up, constant, then a cosine to ``min_lr_ratio``
    over the last ``decay_steps`` (transformers' WSD schedule). A run stopped on the plateau and
    resumed with more steps and a decay (how the CPU world's recipe was extended) sees, after the
    warm-up, exactly the rates of that longer run."""
    from pydantic import ValidationError

    from mirage_model.generation import MirageGenerator

    model = MirageGenerator.from_preset("tiny").transformer
    prepare_model(model, LoraSpec(rank=4, alpha=4, dropout=0.0))

    def rates(stage: StageConfig, start_from=None, steps=None) -> tuple[list[float], dict]:
        _, opt, sched = start_stage(model, stage, OptimConfig())
        if start_from is not None:  # as a resume does (trainer.load_optimizer)
            opt.load_state_dict(start_from[0]), sched.load_state_dict(start_from[1])
        out = []
        for _ in range(steps or stage.steps - sched.last_epoch):
            out.append(opt.param_groups[0]["lr"])
            opt.step(), sched.step()
        return out, (opt.state_dict(), sched.state_dict())

    long = StageConfig(name="full", steps=20, lr=1e-3, warmup_steps=4, decay_steps=10, min_lr_ratio=0.1)
    lr, _ = rates(long)
    assert lr[:4] == pytest.approx([1e-4, 3.25e-4, 5.5e-4, 7.75e-4]) and lr[4:11] == pytest.approx([1e-3] * 7)
    assert all(a > b for a, b in zip(lr[10:], lr[11:])) and 1e-4 < lr[-1] < 1.3e-4  # towards min_lr_ratio
    plateau, state = rates(StageConfig(name="full", steps=12, lr=1e-3, warmup_steps=4), steps=8)  # stopped at 8
    rest, _ = rates(long, start_from=state)
    assert (plateau + rest)[4:] == pytest.approx(lr[4:])  # the warm-ups differ: without a decay, it starts at 0
    with pytest.raises(ValidationError, match="warmup_steps .* decay_steps"):
        StageConfig(name="full", steps=10, lr=1e-3, warmup_steps=4, decay_steps=7)
    StageConfig(name="full", steps=5, lr=1e-3, warmup_steps=10)  # no decay: a warm-up longer than the stage is allowed


def test_checkpoint_roundtrip_and_stage_parameters(tmp_path):
    from mirage_model.generation import MirageGenerator

    model = MirageGenerator.from_preset("tiny").transformer
    prepare_model(model, LoraSpec(rank=4, alpha=4, dropout=0.0))
    names = trainable_names(model)
    assert any(n.startswith("branch.") for n in names) and any("lora_" in n for n in names)
    params, opt, sched = start_stage(model, StageConfig(name="branch", steps=5, lr=1e-3, warmup_steps=2), OptimConfig())
    assert {id(p) for p in params} == {id(p) for p in model.branch.parameters()}
    x = next(iter(params))
    x.grad = torch.ones_like(x)
    opt.step(), sched.step()
    state = TrainState(stage_index=0, step=1, global_step=1, epoch=2, position=3)
    save_checkpoint(tmp_path, model, opt, sched, state)
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "branch" / "config.json").is_file()
    assert load_state(tmp_path) == state
    other = MirageGenerator.from_preset("tiny", seed=1).transformer
    prepare_model(other, LoraSpec(rank=4, alpha=4, dropout=0.0))
    load_weights(tmp_path, other)
    mine, theirs = dict(model.named_parameters()), dict(other.named_parameters())
    assert all(torch.equal(mine[n], theirs[n]) for n in names)
    wrong = MirageGenerator.from_preset("tiny").transformer
    prepare_model(wrong, LoraSpec(rank=2, alpha=2))
    with pytest.raises(ValueError, match="different model config"):
        load_weights(tmp_path, wrong)


_UNPICKLED: list[str] = []


def _record_unpickle() -> str:
    _UNPICKLED.append("code ran")
    return "payload"


class _CodeOnLoad:
    """Pickles as a call of ``_record_unpickle``: what a tampered checkpoint could smuggle in."""

    def __reduce__(self):
        return (_record_unpickle, ())


def test_resume_from_optimizer_file_loads_with_weights_only(tmp_path):
    """optimizer.pt holds only tensors and plain values: it loads with ``torch.load(weights_only=True)``,
    a resumed optimizer + scheduler continue exactly like the uninterrupted ones, and a file carrying
    pickled code is refused without running it."""
    import pickle

    from mirage_model.generation import MirageGenerator
    from mirage_model.training.trainer import OPTIMIZER_FILE, load_optimizer

    def setup(seed: int):
        model = MirageGenerator.from_preset("tiny", seed=seed).transformer
        prepare_model(model, LoraSpec(rank=4, alpha=4, dropout=0.0))
        params, opt, sched = start_stage(model, StageConfig(name="branch", steps=5, lr=1e-3, warmup_steps=3),
                                         OptimConfig())
        return model, params, opt, sched

    def step(params, opt, sched, k: int) -> None:
        g = torch.Generator().manual_seed(k)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step(), sched.step()
        opt.zero_grad(set_to_none=True)

    model, params, opt, sched = setup(0)
    for k in range(2):  # still inside the warm-up: the LR schedule position matters
        step(params, opt, sched, k)
    save_checkpoint(tmp_path, model, opt, sched, TrainState(step=2, global_step=2), export=False)
    blob = torch.load(tmp_path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    assert set(blob) == {"optimizer", "scheduler"} and blob["optimizer"]["state"]

    resumed, r_params, r_opt, r_sched = setup(1)
    load_weights(tmp_path, resumed)
    load_optimizer(tmp_path, r_opt, r_sched)
    assert r_sched.last_epoch == sched.last_epoch == 2 and r_sched.get_last_lr() == sched.get_last_lr()
    step(params, opt, sched, 2)
    step(r_params, r_opt, r_sched, 2)
    assert r_sched.get_last_lr() == sched.get_last_lr()
    mine, theirs = dict(model.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(mine[n], theirs[n]) for n in trainable_names(model))

    torch.save({"optimizer": _CodeOnLoad(), "scheduler": {}}, tmp_path / OPTIMIZER_FILE)
    with pytest.raises(pickle.UnpicklingError):
        load_optimizer(tmp_path, r_opt, r_sched)
    assert _UNPICKLED == []


# ----------------------------------------------------------------------------------------------
# End to end on a local Ray cluster (slow)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    from pipeline.synth_data import make_ground_truth_shards

    out = tmp_path_factory.mktemp("shards")
    make_ground_truth_shards(str(out), 4, seed=3, frames=33, size=(64, 96), per_shard=2)
    return out


def _corrupt_copy(src: Path, dst: Path) -> None:
    """Copy the shards and add: a truncated shard, a shard whose samples miss a member or hold a
    corrupt video."""
    shutil.copytree(src, dst)
    good = sorted(dst.glob("shard-*.tar"))[0]
    data = good.read_bytes()
    (dst / "shard-truncated.tar").write_bytes(data[: len(data) // 3])
    with tarfile.open(good) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    first = members[0][0].name.split(".", 1)[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as out:
        for m, payload in members:
            key, ext = m.name.split(".", 1)
            if ext == "depth.npy" and key == first:
                continue  # sample A misses its depth
            if ext == "video.mp4" and key != first:
                payload = b"\x00not a video" * 10  # sample B: a corrupt member
            info = tarfile.TarInfo(f"bad{key}.{ext}")
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    (dst / "shard-badsamples.tar").write_bytes(buf.getvalue())


def _cfg(shards, tmp_path, name, **over):
    base = {"data.shards": str(shards), "storage_path": str(tmp_path / "ckpt"), "name": name,
            "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "stages": [{"name": "branch", "steps": 4, "lr": 3e-3}, {"name": "lora", "steps": 4, "lr": 3e-3}],
            "checkpoint.every": 2, "checkpoint.keep": 10, "validation.every": 4, "validation.video": False}
    base.update(over)
    return load_config(TrainConfig, CONFIG, base)


def _history(cfg, run_id, metric):
    from mlflow.tracking import MlflowClient

    hist = MlflowClient(cfg.mlflow.uri()).get_metric_history(run_id, metric)
    return {m.step: m.value for m in sorted(hist, key=lambda m: m.timestamp)}  # last value per step wins


def _checkpoints(run_dir: Path) -> dict[int, Path]:
    return {json.loads((d / "train_state.json").read_text())["global_step"]: d
            for d in run_dir.glob("checkpoint_*") if (d / "train_state.json").exists()}


@pytest.mark.slow
def test_two_stages_two_workers_bad_shards_and_export(shards_dir, tmp_path, capsys):
    from jobs.cli import main
    from jobs.train import run_train
    from mirage_model.generation import MirageGenerator

    data = tmp_path / "data"
    _corrupt_copy(shards_dir, data)
    cfg = _cfg(data, tmp_path, "two", **{"validation.video": True, "stages": [
        {"name": "branch", "steps": 4, "lr": 3e-3, "warmup_steps": 2},
        {"name": "lora", "steps": 4, "lr": 3e-3, "decay_steps": 4, "min_lr_ratio": 0.1}]})
    summary = run_train(cfg)
    assert summary["samples"] == 4 and summary["state"]["global_step"] == 8
    assert len(summary["skipped_shards"]) == 1 and "truncated" in summary["skipped_shards"][0]["shard"]
    reasons = {s["key"]: s["reason"] for s in summary["skipped_samples"]}
    assert len(reasons) == 2
    assert any("missing member" in r and "depth.npy" in r for r in reasons.values())
    assert any("not a video" in r or "VideoError" in r or "decode" in r.lower() for r in reasons.values())
    # summary.json in the run directory: what every worker did
    acct = json.loads((tmp_path / "ckpt" / "two" / "summary.json").read_text())
    assert acct["job"] == "train" and acct["inputs"] == 4 and acct["accepted"] == 3
    assert acct["rejected"] == {"unreadable_shard": 1, "bad_sample": 2}
    assert acct["details"]["samples_trained"] == 8 * 2 and acct["details"]["workers"] == 2  # 8 steps x 2 workers
    assert acct["stages"]["train_steps"]["busy_s"] > acct["stages"]["build_samples"]["busy_s"] > 0
    assert acct["bytes_in"] > 0 and {"driver", "worker0", "worker1"} <= set(acct["peak_rss_mib"])
    # the shards carry latents: only rank 0 loads the VAE, to decode its validation rollout
    assert acct["details"]["vae_loaded_on"] == ["worker0"]
    assert 0 < acct["details"]["memory_coverage"] < 1  # one-way paths: the memory of frame t0 covers part

    # Only the right parameters change in each stage (weights compared to the initial model).
    torch.manual_seed(cfg.seed)
    init = MirageGenerator.from_preset("tiny", seed=cfg.seed).transformer
    prepare_model(init, cfg.model.lora)
    init = {n: p.detach().clone() for n, p in init.named_parameters()}
    ckpts = _checkpoints(tmp_path / "ckpt" / "two")
    after_branch = load_file(str(ckpts[4] / "trainable.safetensors"))
    after_lora = load_file(str(ckpts[8] / "trainable.safetensors"))
    branch = [n for n in after_branch if n.startswith("branch.")]
    lora = [n for n in after_branch if "lora_" in n]
    assert any(not torch.equal(after_branch[n], init[n]) for n in branch)
    assert all(torch.equal(after_branch[n], init[n]) for n in lora)  # LoRA frozen in stage 1
    assert all(torch.equal(after_lora[n], after_branch[n]) for n in branch)  # branch frozen in stage 2
    assert any(not torch.equal(after_lora[n], after_branch[n]) for n in lora if "lora_B" in n)

    # The loss on the fixed validation batch drops; metrics, params and artifacts are in MLflow.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.mlflow.uri())
    run = client.get_run(summary["run_id"])
    val = _history(cfg, run.info.run_id, "val_loss")
    assert val[8] < val[0]
    assert set(_history(cfg, run.info.run_id, "loss")) == set(range(1, 9))
    assert {"grad_norm", "lr", "samples_per_s", "step_time_s"} <= set(run.data.metrics)
    # the rate each step used: a warm-up from 0 in the first stage, a cosine to 10 % in the second
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    lr = _history(cfg, run.info.run_id, "lr")
    assert [lr[step] for step in range(1, 9)] == pytest.approx(
        [0.0, 1.5e-3, 3e-3, 3e-3] + [3e-3 * c for c in cosine])
    assert run.data.metrics["data.skipped_samples"] == 2 and run.data.metrics["data.skipped_shards"] == 1
    assert run.data.params["stages.0.name"] == "branch" and "git_commit" in run.data.params
    assert "version.torch" in run.data.params and run.info.status == "FINISHED"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lora", "branch", "validation"} <= top

    # export-lora: the file stock diffusers loads.
    assert main(["export-lora", str(tmp_path / "ckpt" / "two"), "--out", str(tmp_path / "export")]) == 0
    from diffusers import WanTransformer3DModel

    stock = MirageGenerator.from_preset("tiny").transformer.backbone
    assert isinstance(stock, WanTransformer3DModel)
    stock.load_lora_adapter(str(tmp_path / "export"), weight_name="pytorch_lora_weights.safetensors",
                            prefix="transformer")
    loaded = {n: p for n, p in stock.named_parameters() if "lora_B" in n}
    assert loaded and any(float(p.detach().abs().sum()) > 0 for p in loaded.values())
    # ... and the whole model (branch + LoRA + what it was trained as) in one call, as the run has it
    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator

    assert (tmp_path / "export" / "branch" / "config.json").is_file()
    bundle = load_generator(GeneratorModelConfig(checkpoint=str(tmp_path / "export")), "cpu")
    run = load_generator(GeneratorModelConfig(preset="tiny", checkpoint=str(tmp_path / "ckpt" / "two")), "cpu")
    assert bundle.record == run.record and bundle.record["preset"] == "tiny"
    ours, theirs = dict(bundle.transformer.named_parameters()), dict(run.transformer.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    assert any(float(ours[n].detach().abs().sum()) > 0 for n in ours if n.startswith("branch.") and "proj_out" in n)


@pytest.mark.slow
def test_fsdp_matches_ddp_is_killed_resumes_exactly_and_onto_one_worker(shards_dir, tmp_path):
    """Two gloo workers, fp32, 10 + 10 steps. FSDP2 (every block sharded, then the root) gives DDP's
    losses over both stages (the LoRA stage trains parameters that were frozen when the model was
    sharded). Killed mid-epoch at step 13 (each worker streams one 2-sample shard: sample 2 of its
    seventh epoch) and resumed from its sharded checkpoint, it carries on with the same samples and
    the same losses. The checkpoint holds one optimizer shard per worker, and resumes onto 1 worker."""
    from safetensors.torch import load_file

    from jobs.train import run_train

    steps = {"stages": [{"name": "branch", "steps": 10, "lr": 3e-3}, {"name": "lora", "steps": 10, "lr": 3e-3}],
             "checkpoint.every": 13, "validation.every": 10}
    straight = run_train(_cfg(shards_dir, tmp_path, "ddp", **steps))
    fsdp = {**steps, "scaling.parallel": "fsdp"}
    with pytest.raises(Exception, match="injected failure"):
        run_train(_cfg(shards_dir, tmp_path, "fsdp", **fsdp), fail_after_step=13,
                  fail_marker=str(tmp_path / "failed-once"))
    ckpts = _checkpoints(tmp_path / "ckpt" / "fsdp")
    assert max(ckpts) == 13
    ranks = json.loads((ckpts[13] / "train_state.json").read_text())["ranks"]
    assert [(r["epoch"], r["position"]) for r in ranks] == [(6, 1), (6, 1)]
    shards = sorted(p.name for p in (ckpts[13] / "optimizer_dcp").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], shards
    resumed = run_train(_cfg(shards_dir, tmp_path, "fsdp", **fsdp))  # same name: picks up at step 13
    a = _history(_cfg(shards_dir, tmp_path, "x"), straight["run_id"], "loss")
    b = _history(_cfg(shards_dir, tmp_path, "x"), resumed["run_id"], "loss")  # the killed run's, reopened
    assert sorted(a) == sorted(b) == list(range(1, 21))
    for step in range(1, 21):
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
    assert resumed["state"]["global_step"] == 20 and resumed["samples"] == straight["samples"] == 4

    # the gathered weights equal DDP's: the same model, whichever way it was split
    last_ddp, last_fsdp = _checkpoints(tmp_path / "ckpt" / "ddp")[20], _checkpoints(tmp_path / "ckpt" / "fsdp")[20]
    wa, wb = load_file(str(last_ddp / "trainable.safetensors")), load_file(str(last_fsdp / "trainable.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert (last_fsdp / "branch" / "config.json").is_file() and (last_fsdp / "lora").is_dir()

    # onto one worker: two more LoRA steps from the 2-worker sharded checkpoint
    more = _cfg(shards_dir, tmp_path, "fsdp", **{**fsdp, "scaling.num_workers": 1, "stages": [
        {"name": "branch", "steps": 10, "lr": 3e-3}, {"name": "lora", "steps": 12, "lr": 3e-3}]})
    one = run_train(more)
    c = _history(more, one["run_id"], "loss")
    assert sorted(c) == list(range(1, 23)) and math.isfinite(c[21]) and math.isfinite(c[22])
    assert one["state"]["global_step"] == 22


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts), stopped by PID."""
    exe = Path(sys.executable).with_name("mlflow")
    port = free_port()
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", proc, "mlflow server")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=20)


@pytest.mark.slow
def test_s3_storage_and_mlflow_server(shards_dir, tmp_path, moto_s3, mlflow_server, monkeypatch):
    import s3fs

    from jobs.cli import main
    from jobs.train import run_train

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3["secret"])
    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"], endpoint_url=moto_s3["endpoint_url"],
                           client_kwargs={"region_name": moto_s3["region"]})
    fs.mkdir("train-bucket", region_name=moto_s3["region"])
    for tar in sorted(shards_dir.glob("shard-*.tar")):
        fs.put(str(tar), f"train-bucket/shards/{tar.name}")
    cfg = _cfg("s3://train-bucket/shards", tmp_path, "s3run", storage_path="s3://train-bucket/ckpt",
               **{"storage.endpoint_url": moto_s3["endpoint_url"], "storage.region": moto_s3["region"],
                  "mlflow.tracking_uri": mlflow_server, "scaling.num_workers": 1,
                  "stages": [{"name": "branch", "steps": 2, "lr": 3e-3}, {"name": "lora", "steps": 2, "lr": 3e-3}]})
    summary = run_train(cfg)
    assert summary["state"]["global_step"] == 4
    assert [r["vae_loaded"] for r in summary["state"]["ranks"]] == [False]  # cached latents, no rollout
    ckpts = [p for p in fs.ls("train-bucket/ckpt/s3run") if "checkpoint_" in p and fs.isdir(p)]
    assert ckpts and all(fs.exists(f"{c}/trainable.safetensors") for c in ckpts)

    # generation loads the run straight from S3 (its latest checkpoint, downloaded once), and the
    # checkpoint says what it was trained with
    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator

    monkeypatch.setenv("MIRAGE_CACHE", str(tmp_path / "cache"))
    gen = load_generator(GeneratorModelConfig(preset="tiny", checkpoint="s3://train-bucket/ckpt/s3run"), "cpu",
                         cfg.storage.options())
    assert gen.record["sample"]["preceding"] == cfg.data.preceding and gen.record["preset"] == "tiny"
    assert gen.record["max_text_length"] == cfg.model.text_tokens() == 64
    assert gen.settings().preceding == cfg.data.preceding
    assert len(list((tmp_path / "cache" / "checkpoints").glob("*/trainable.safetensors"))) == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["run_id"])
    assert run.data.params["data.shards"] == "s3://train-bucket/shards"
    assert set(_history(cfg, run.info.run_id, "loss")) == {1, 2, 3, 4}
    assert {"lora", "branch"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    lora_files = {a.path for a in client.list_artifacts(run.info.run_id, "lora")}
    assert "lora/pytorch_lora_weights.safetensors" in lora_files

    rc = main(["export-lora", "s3://train-bucket/ckpt/s3run", "--out", str(tmp_path / "exp"),
               "--endpoint-url", moto_s3["endpoint_url"], "--region", moto_s3["region"]])
    assert rc == 0 and (tmp_path / "exp" / "pytorch_lora_weights.safetensors").stat().st_size > 0
    # a world exported from the run on S3: the latest checkpoint's weights, byte for byte
    from jobs.train import WORLD_FILE

    rc = main(["export-world", "s3://train-bucket/ckpt/s3run", "--vae", "tiny", "--out", str(tmp_path / "world"),
               "--endpoint-url", moto_s3["endpoint_url"], "--region", moto_s3["region"]])
    record = json.loads((tmp_path / "world" / WORLD_FILE).read_text())
    assert rc == 0 and record["state"]["global_step"] == 4
    assert record["checkpoint"].startswith("s3://train-bucket/ckpt/s3run/checkpoint_")
    assert (tmp_path / "world" / "model" / "trainable.safetensors").read_bytes() == fs.cat_file(
        record["checkpoint"][len("s3://"):] + "/trainable.safetensors")
    assert (tmp_path / "world" / "model" / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.slow
def test_revisit_shards_give_the_memory_the_way_back(tmp_path):
    """Shards of paths that come back over their own views, trained with the memory of the way out
    (`data.memory_from=history`): the memory covers nearly every target cell the model trains on,
    reported per step in MLflow and for the run in summary.json."""
    from jobs.train import run_train
    from pipeline.synth_data import make_ground_truth_shards

    make_ground_truth_shards(str(tmp_path / "revisit"), 2, seed=4, frames=33, size=(64, 96), per_shard=1,
                             revisit=True)
    cfg = _cfg(tmp_path / "revisit", tmp_path, "revisit",
               **{"scaling.num_workers": 1, "data.memory_from": "history", "data.target_latents": 2,
                  "data.t0_min": 24, "data.t0_max": 24, "data.drop_preceding_p": 0.0,
                  "stages": [{"name": "branch", "steps": 2, "lr": 3e-3}]})
    summary = run_train(cfg)
    assert summary["skipped_samples"] == [] and summary["state"]["global_step"] == 2
    acct = json.loads((tmp_path / "ckpt" / "revisit" / "summary.json").read_text())
    assert acct["details"]["memory_coverage"] >= 0.9
    coverage = _history(cfg, summary["run_id"], "memory_coverage")
    assert set(coverage) == {1, 2} and min(coverage.values()) >= 0.9


def test_a_full_stage_checkpoint_carries_the_backbone(tmp_path):
    from mirage_model.generation import MirageGenerator

    model = MirageGenerator.from_preset("tiny").transformer
    prepare_model(model, LoraSpec(rank=4, alpha=4, dropout=0.0))
    params, opt, sched = start_stage(model, StageConfig(name="full", steps=2, lr=1e-3), OptimConfig())
    assert len(params) == len(list(model.parameters()))
    with torch.no_grad():
        model.backbone.proj_out.weight.add_(1.0)
    save_checkpoint(tmp_path / "full", model, opt, sched, TrainState(), export=False, backbone=True)
    save_checkpoint(tmp_path / "adapters", model, opt, sched, TrainState(), export=False)
    fresh = MirageGenerator.from_preset("tiny").transformer
    prepare_model(fresh, LoraSpec(rank=4, alpha=4, dropout=0.0))
    load_weights(tmp_path / "adapters", fresh)  # branch + LoRA only: the backbone stays as built
    assert not torch.equal(fresh.backbone.proj_out.weight, model.backbone.proj_out.weight)
    load_weights(tmp_path / "full", fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))


def test_model_init_starts_from_a_checkpoint_and_export_world_ships_it(tmp_path):
    """``model.init``: a run starts from another run's checkpoint (here one with the backbone, as
    `make world` writes); ``export_world`` packs such a checkpoint and a VAE into the directory the
    demo starts from, and what it packs loads back as it was trained."""
    from jobs.config import GeneratorModelConfig
    from jobs.generate_batch import load_generator
    from jobs.train import WORLD_FILE, _build_model, _local_model_paths_absolute, export_world, run_train
    from mirage_model.generation import MirageGenerator
    from mirage_model.training.trainer import checkpoint_has_backbone
    from mirage_model.vae import build_vae, decode_latents, load_vae

    model = MirageGenerator.from_preset("tiny", seed=3).transformer
    prepare_model(model, LoraSpec(rank=8, alpha=8, dropout=0.0))
    _, opt, sched = start_stage(model, StageConfig(name="full", steps=2, lr=1e-3), OptimConfig())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained: differs from every preset draw, LoRA B included
    ckpt = tmp_path / "run" / "checkpoint_000002"
    save_checkpoint(ckpt, model, opt, sched, TrainState(global_step=2), backbone=True)
    save_checkpoint(tmp_path / "adapters", model, opt, sched, TrainState(), export=False)
    assert checkpoint_has_backbone(ckpt) and not checkpoint_has_backbone(tmp_path / "adapters")

    cfg = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.init": str(ckpt)})
    started = _build_model(cfg, torch.device("cpu")).transformer
    assert all(torch.equal(a, b) for a, b in zip(started.parameters(), model.parameters(), strict=True))
    rel = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.init": "runs/world/model"})
    assert _local_model_paths_absolute(rel).model.init == os.path.abspath("runs/world/model")
    missing = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "model.init": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match=r"model.init .*nope.*trainable.safetensors"):
        run_train(missing)

    vae = build_vae("tiny", seed=5)
    vae.save_pretrained(tmp_path / "vae")
    trained = load_config(TrainConfig, CONFIG, {"data.shards": "/x", "data.memory_from": "history",
                                                "data.t0_min": 12, "data.t0_max": 16})
    record = export_world(str(tmp_path / "run"), str(tmp_path / "vae"), str(tmp_path / "world"), note={"recipe": "t"},
                          sample=trained.data)
    world = tmp_path / "world"
    assert record["state"]["global_step"] == 2 and record["note"] == {"recipe": "t"}
    # the layout of the run's samples, without where they were read from: the demo fine-tunes on it
    assert record["sample"] == SampleConfig(**trained.data.model_dump(include=set(SampleConfig.model_fields))).model_dump(
        mode="json") and record["sample"]["memory_from"] == "history" and "shards" not in record["sample"]
    assert json.loads((world / WORLD_FILE).read_text())["files"] == record["files"]
    assert {"model/trainable.safetensors", "model/lora/pytorch_lora_weights.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors"} == set(record["files"])
    assert all(t.dtype == torch.float16 for t in load_file(str(world / "vae/diffusion_pytorch_model.safetensors")).values()
               if t.is_floating_point())
    shipped = load_vae(world / "vae")
    assert next(shipped.parameters()).dtype == torch.float32
    z = torch.randn(1, 48, 2, 2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(decode_latents(shipped, z), decode_latents(vae, z), atol=2e-2)
    gen = load_generator(GeneratorModelConfig(preset="tiny", checkpoint=str(world / "model"), vae=str(world / "vae")),
                         "cpu")
    assert all(torch.equal(a, b) for a, b in zip(gen.transformer.parameters(), model.parameters(), strict=True))
    # `mirage export-world --config`: the run, its VAE and its sample layout from the run's own config
    import yaml

    from jobs.cli import main

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(CONFIG.read_text()), "storage_path": str(tmp_path),
                                      "name": "run", "model": {"preset": "tiny", "vae": str(tmp_path / "vae")},
                                      "data": {"shards": "/x", "memory_from": "history"}}))
    assert main(["export-world", "--config", str(recipe), "--out", str(tmp_path / "cli-world")]) == 0
    exported = json.loads((tmp_path / "cli-world" / WORLD_FILE).read_text())
    assert exported["files"] == record["files"] and exported["sample"]["memory_from"] == "history"
    shutil.rmtree(tmp_path / "cli-world")
    # a second export replaces the first whole; a failed one leaves it as it was
    export_world(str(tmp_path / "run"), str(tmp_path / "vae"), str(world))
    assert sorted(p.name for p in tmp_path.iterdir() if "world" in p.name) == ["world"]
    with pytest.raises(FileNotFoundError):
        export_world(str(tmp_path / "run"), str(tmp_path / "no-vae"), str(world))
    assert json.loads((world / WORLD_FILE).read_text())["note"] == {} and (world / "vae" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "world" in p.name) == ["world"]


def test_a_training_worker_keeps_ray_data_info_lines_out_of_the_console(tmp_path):
    """Each epoch's "Starting execution" / plan / "finished" lines of a worker's shard stream go to
    Ray's log file only; a warning still reaches the console. Ray Data's two handlers (a console
    stream and its session file) are stood in for by a stream and a file of this test."""
    import io
    import logging

    import ray.data  # noqa: F401 - configures the logger

    from jobs.ray_runtime import ray_data_info_to_files_only

    logger = logging.getLogger("ray.data")
    console, log_file = io.StringIO(), tmp_path / "ray-data.log"
    handlers = [logging.StreamHandler(console), logging.FileHandler(log_file)]
    saved_level = logger.level
    logger.setLevel(logging.DEBUG)
    for h in handlers:
        logger.addHandler(h)
    try:
        logger.info("Starting execution of Dataset probe_1")
        assert "probe_1" in console.getvalue()  # the premise: by default it prints
        ray_data_info_to_files_only()
        logger.info("Starting execution of Dataset probe_2")
        logger.warning("probe_3 is slow")
        handlers[1].flush()
        assert "probe_2" not in console.getvalue() and "probe_3" in console.getvalue()
        assert "probe_2" in log_file.read_text()  # still in the log file
    finally:
        logger.setLevel(saved_level)
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def test_frozen_weights_in_bf16_trained_ones_in_float32(tmp_path):
    """`model.dtype: bfloat16`: the backbone is built in bf16 (no float32 copy), the branch and the LoRA
    are float32 master weights; a training step runs under bf16 autocast and only they get gradients;
    the generator's rollout runs on the mixed model."""
    import numpy as np

    from jobs.train import _build_model
    from mirage_model.generation import GenerationConfig
    from mirage_model.geometry import dolly
    from mirage_model.model.loss import set_trainable

    cfg = _cfg(tmp_path, tmp_path, "bf16", **{"model.dtype": "bfloat16", "model.bf16": True})
    gen = _build_model(cfg, torch.device("cpu"))
    model = gen.transformer
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if n.startswith("branch.") or "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if n.startswith("backbone.") and "lora_" not in n} == {torch.bfloat16}
    assert next(gen.text_encoder.parameters()).dtype == torch.bfloat16
    set_trainable(model, "branch")
    x = torch.randn(1, 48, 3, 4, 6)
    t = torch.tensor([[0.0] * 6 + [500.0] * 12])
    text = torch.randn(1, 8, model.config.text_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x, t, text, torch.randn(1, 49, 3, 4, 6)).float().pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("branch.") for n in grads)
    assert all(model.get_parameter(n).grad.dtype == torch.float32 for n in grads)
    traj = dolly(33, distance=0.5, image_size=(64, 96))
    res = gen.generate(np.full((64, 96, 3), 100, np.uint8), "a room", traj,
                       GenerationConfig(steps=1, progress=False))
    assert res.frames.shape == (33, 64, 96, 3)
    with pytest.raises(ValueError, match="needs bf16 compute"):
        _cfg(tmp_path, tmp_path, "x", **{"model.dtype": "bfloat16", "model.bf16": False})


def test_s3_model_paths_stay_uris_and_a_ddp_optimizer_state_does_not_load_into_shards(tmp_path, monkeypatch):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from jobs.train import _local_model_paths_absolute
    from mirage_model.training.trainer import OPTIMIZER_FILE, load_optimizer

    cfg = _cfg(tmp_path, tmp_path, "uris", **{"model.model_dir": "s3://models/Wan2.2", "model.branch_dir": "branch"})
    fixed = _local_model_paths_absolute(cfg).model
    assert fixed.model_dir == "s3://models/Wan2.2" and fixed.branch_dir == os.path.abspath("branch")

    linear = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(linear.parameters())
    linear(torch.ones(1, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp_path / OPTIMIZER_FILE)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        sharded = fully_shard(torch.nn.Linear(4, 4))
        opt2 = torch.optim.AdamW(sharded.parameters())
        with pytest.raises(ValueError, match="whole \\(DDP\\) optimizer state.*scaling.parallel: ddp"):
            load_optimizer(tmp_path, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0), sharded)
    finally:
        dist.destroy_process_group()

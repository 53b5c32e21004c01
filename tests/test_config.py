"""The one configuration system: strict models, one loader, dotted overrides, described fields."""

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from jobs.config import JOB_CONFIGS, DemoConfig, TrainConfig
from mirage_model.config import StrictConfig, apply_overrides, load_config, parse_override, to_yaml
from mirage_model.training.samples import SampleConfig
from pipeline.config import JobConfig, MlflowConfig, PreprocessConfig

ROOT = Path(__file__).resolve().parent.parent


def _models(cls: type[BaseModel], seen: set | None = None):
    """``cls`` and every config model nested in its fields (lists, optionals, tuples included)."""
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    yield cls
    for field in cls.model_fields.values():
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            if isinstance(t, type) and issubclass(t, BaseModel):
                yield from _models(t, seen)
            stack.extend(typing.get_args(t))


def test_every_job_config_field_is_described_and_strict():
    missing = []
    for job, cls in JOB_CONFIGS.items():
        assert issubclass(cls, JobConfig)
        for model in _models(cls):
            assert issubclass(model, StrictConfig), f"{job}: {model.__name__} is not a StrictConfig"
            missing += [f"{model.__name__}.{name}" for name, f in model.model_fields.items() if not f.description]
    assert not missing, f"fields without a description: {missing}"


def test_shared_sections_are_one_model_in_every_job():
    for cls in JOB_CONFIGS.values():
        for section in ("storage", "mlflow"):
            assert cls.model_fields[section].annotation is JobConfig.model_fields[section].annotation


def test_a_jobs_section_defaults_sit_under_what_the_yaml_gives():
    cfg = PreprocessConfig.model_validate({"source": "s", "output": "o", "mlflow": {"tracking_uri": "sqlite:///x.db"},
                                           "resources": {"num_gpus": 1}})
    assert cfg.mlflow.experiment == "mirage-preprocess" and cfg.mlflow.tracking_uri == "sqlite:///x.db"
    assert cfg.resources.concurrency == 2 and cfg.resources.num_gpus == 1
    assert TrainConfig.model_validate({"data": {"shards": "x"}, "stages": [{"name": "lora", "steps": 1, "lr": 1}]}
                                      ).mlflow.experiment == "mirage-train"
    explicit = PreprocessConfig.model_validate({"source": "s", "output": "o", "mlflow": {"experiment": "mine"}})
    assert explicit.mlflow.experiment == "mine"


def test_training_nests_the_model_layers_configs_instead_of_copying_them():
    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny.yaml")
    assert isinstance(cfg.data, SampleConfig)  # the sample builder takes cfg.data itself
    assert set(SampleConfig.model_fields) <= set(type(cfg.data).model_fields)


def test_training_records_the_memory_it_reads_samples_from():
    """``memory:`` is the model layer's MemoryConfig, and a run's model.json carries it (generation
    builds the same memory for the checkpoint)."""
    from jobs.train import model_record
    from mirage_model.memory import MemoryConfig

    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny.yaml", {}, ["memory.view_radius=0.25"])
    assert isinstance(cfg.memory, MemoryConfig) and cfg.memory.view_radius == 0.25
    assert MemoryConfig(**model_record(cfg)["memory"]) == cfg.memory
    with pytest.raises(ValueError, match="view_radius needs dedup='view'"):
        load_config(TrainConfig, ROOT / "configs/train/tiny.yaml", {}, ["memory.dedup=none", "memory.view_radius=0.1"])


def test_overrides_parse_yaml_values_and_reach_list_items():
    assert parse_override("a.b=1e-4") == ("a.b", 1e-4)
    assert parse_override("x=null") == ("x", None) and parse_override("x=[1, 2]") == ("x", [1, 2])
    assert parse_override("path=s3://b/p") == ("path", "s3://b/p")
    data = {"stages": [{"lr": 1}, {"lr": 2}], "a": {"b": 1}}
    apply_overrides(data, ["stages.1.lr=0.5", "a.c=true", "new.deep.key=3"])
    assert data == {"stages": [{"lr": 1}, {"lr": 0.5}], "a": {"b": 1, "c": True}, "new": {"deep": {"key": 3}}}
    apply_overrides(data, {"a.b": None, "a.c": False})  # a mapping's None means "flag not given"
    assert data["a"] == {"b": 1, "c": False}
    for bad, msg in (("novalue", "KEY=VALUE"), ("stages.9.lr=1", "not an index"), ("a.b.c=1", "is a value")):
        with pytest.raises(ValueError, match=msg):
            apply_overrides(data, [bad])


def test_load_config_errors_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="list.yaml.*mapping"):
        load_config(TrainConfig, bad)
    with pytest.raises(ValueError, match="typo"):
        load_config(DemoConfig, None, ["typo=1"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    for cls, path in ((TrainConfig, "configs/train/tiny.yaml"), (DemoConfig, "configs/demo/quick.yaml")):
        cfg = load_config(cls, ROOT / path)
        f = tmp_path / "resolved.yaml"
        f.write_text(to_yaml(cfg))
        assert load_config(cls, f) == cfg


def test_demo_yaml_holds_the_defaults_and_quick_shortens_them():
    assert load_config(DemoConfig, ROOT / "configs/demo/default.yaml") == DemoConfig()
    quick = DemoConfig.for_variant(quick=True, steps_per_stage=3)
    assert quick.quick and quick.preset == "tiny" and quick.steps_per_stage == 3 and quick.gen_frames == 33


def test_mlflow_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert MlflowConfig().uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"  # absolute: workers agree
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert MlflowConfig().uri() == "http://127.0.0.1:5000"
    assert MlflowConfig(tracking_uri="sqlite:////abs/m.db").uri() == "sqlite:////abs/m.db"


def test_no_shipped_config_overrides_the_clusters_tracking_uri():
    """A job submitted to a cluster logs where the cluster's $MLFLOW_TRACKING_URI says unless its
    config sets a URI on purpose: no shipped YAML does."""
    import yaml

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        mlflow = (yaml.safe_load(path.read_text()) or {}).get("mlflow") or {}
        assert mlflow.get("tracking_uri") is None, path


def test_tracker_reopens_an_active_run_and_replaces_a_deleted_one(tmp_path):
    import numpy as np
    from mlflow.tracking import MlflowClient

    from jobs.tracking import Tracker

    cfg = MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="t", run_name="mine")
    first = Tracker.start(cfg, "train", run_name="job-default", params={"a": {"b": 1}, "long": "x" * 900})
    first.log_metrics({"np": np.float32(1.5), "int": np.int64(3), "nan": float("nan"), "flag": True}, step=1)
    first.finish("FAILED")
    client = MlflowClient(cfg.uri())
    run = client.get_run(first.run_id)
    assert run.info.run_name == "mine"  # the user's run name wins over the job's default
    assert run.data.params["a.b"] == "1" and len(run.data.params["long"]) == 500
    assert run.data.metrics == {"np": 1.5, "int": 3.0}  # numpy numbers kept; NaN and bools dropped
    again = Tracker.start(cfg, "train", resume_run_id=first.run_id)
    assert again.run_id == first.run_id and client.get_run(first.run_id).info.status == "RUNNING"
    client.delete_run(first.run_id)
    fresh = Tracker.start(cfg, "train", resume_run_id=first.run_id)
    assert fresh.run_id != first.run_id
    fresh.log_metrics({"x": 1.0})  # a deleted run would refuse this


def test_the_demo_needs_its_mlflow_run():
    with pytest.raises(ValueError, match="mlflow.enabled"):
        DemoConfig.for_variant(quick=True, **{}).model_validate({"mlflow": {"enabled": False}})


def test_numbers_for_text_fields_are_text():
    cfg = load_config(TrainConfig, ROOT / "configs/train/tiny.yaml", ["name=2024", "mlflow.experiment=7"])
    assert cfg.name == "2024" and cfg.mlflow.experiment == "7"

"""``mirage train`` configuration: YAML -> validated pydantic model (the only place config is parsed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageCfg(_Strict):
    endpoint_url: str | None = None  # S3-compatible endpoint; credentials from AWS_* env vars
    region: str | None = None


class LoraCfg(_Strict):
    rank: int = Field(32, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)


class ModelCfg(_Strict):
    preset: Literal["tiny", "small"] | None = "tiny"  # random-weight presets (CPU)
    model_dir: str | None = None  # a local Wan2.2-TI2V-5B-Diffusers-layout directory (wins over preset)
    branch_dir: str | None = None  # start the branch from saved weights
    lora: LoraCfg = LoraCfg()
    gradient_checkpointing: bool = False
    bf16: bool | None = None  # bf16 autocast; default: on when training on GPUs
    max_text_length: int = 64


class DataCfg(_Strict):
    shards: str  # directory / s3:// prefix written by `mirage preprocess`, or a glob of .tar files
    target_latents: int = Field(9, ge=2)
    preceding: int = Field(2, ge=0)
    t0_min: int = 8
    t0_max: int = 48
    text_dropout: float = Field(0.1, ge=0, le=1)
    drop_preceding_p: float = Field(0.1, ge=0, le=1)
    references: int = Field(0, ge=0)
    cache_gb: float = Field(2.0, ge=0)  # per worker: keep the raw samples in memory when they fit


class StageCfg(_Strict):
    name: Literal["branch", "lora"]
    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)


class OptimCfg(_Strict):
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, ge=0)


class ScalingCfg(_Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)


class CheckpointCfg(_Strict):
    every: int = Field(50, ge=1)  # optimizer steps between checkpoints (and at each stage's end)
    keep: int = Field(2, ge=1)  # keep the last K checkpoints
    max_failures: int = Field(0, ge=-1)  # worker-group restarts from the last checkpoint (-1: forever)


class MlflowCfg(_Strict):
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db
    experiment: str = "mirage-train"
    log_every: int = Field(1, ge=1)


class ValidationCfg(_Strict):
    samples: int = Field(2, ge=1)  # a fixed validation batch (first keys, fixed draws)
    every: int = Field(50, ge=1)  # steps between validation losses
    video_every: int = Field(0, ge=0)  # steps between rollout videos (0: only at the end; tiny/small only)
    video: bool = True
    video_steps: int = Field(2, ge=1)


class TrainConfig(_Strict):
    name: str = "mirage-train"  # run name: a run with this name in storage_path is resumed
    storage_path: str = "runs/train"  # local directory or s3://bucket/prefix (checkpoints)
    storage: StorageCfg = StorageCfg()
    model: ModelCfg = ModelCfg()
    data: DataCfg
    stages: list[StageCfg] = Field(min_length=1)
    optim: OptimCfg = OptimCfg()
    scaling: ScalingCfg = ScalingCfg()
    checkpoint: CheckpointCfg = CheckpointCfg()
    mlflow: MlflowCfg = MlflowCfg()
    validation: ValidationCfg = ValidationCfg()
    seed: int = 0
    ray_address: str | None = None
    debug_fail_after_step: int | None = None  # tests: raise once right after this step's checkpoint

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name {v!r}: a run name, not a path")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: each stage at most once, got {names}")
        if self.model.model_dir is None and self.model.preset is None:
            raise ValueError("model: give a preset or a model_dir")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def tracking_uri(self) -> str:
        uri = self.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or "sqlite:///" + str(Path("runs/mlflow.db").resolve())


def load_train_config(path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Read a YAML config (or none) and apply dotted-key overrides such as ``data.shards=...``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"train config {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"train config {p}: expected a mapping at the top level")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrainConfig.model_validate(data)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists of dicts get their index: ``stages.0.lr``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(flatten(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out

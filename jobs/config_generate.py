"""``mirage generate-batch`` configuration: YAML -> validated pydantic models.

Two schemas live here: ``GenerateBatchConfig`` (the job, read from YAML) and ``PromptItem`` (one
line of the prompt set, JSONL or CSV). Item validation that depends on files (images, camera files)
happens later, per item, in the job's actors, so one bad item never stops the batch.
"""

from __future__ import annotations

import os

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config import StorageConfig

PRESET_TRAJECTORIES = ("orbit", "dolly", "pan-and-return")
"""Trajectory names built in code; anything else in an item's ``trajectory`` is a camera file."""

SYNTHETIC_IMAGE = "synthetic"
"""``image`` value for a first frame rendered from ``mirage_model.synthetic`` (with its true depth)."""

RESERVED_IDS = frozenset({"manifest.jsonl"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """Which generator each actor loads (once): a random-weight preset or a local model directory."""

    preset: Literal["tiny", "small"] = Field("tiny", description="used when model_dir is not set")
    model_dir: str | None = Field(None, description="local Wan2.2-TI2V-5B-Diffusers-layout directory")
    branch_dir: str | None = Field(None, description="saved memory branch (with model_dir)")
    lora: str | None = Field(None, description="LoRA directory or .safetensors file (with model_dir)")
    checkpoint: str | None = Field(None, description="a local `mirage train` checkpoint directory: its branch + "
                                   "LoRA are loaded on top of the preset / model_dir")
    seed: int = Field(0, description="weight seed of the random presets")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="model_dir weights dtype (None: as stored); e.g. bfloat16 on GPU")

    @model_validator(mode="after")
    def _needs_model_dir(self) -> "ModelConfig":
        if (self.branch_dir or self.lora) and not self.model_dir:
            raise ValueError("model.branch_dir / model.lora need model.model_dir")
        return self


class GenerationSettings(_Strict):
    """Sampling settings shared by all items (an item only chooses frames, seed, prompt, cameras)."""

    steps: int = Field(8, ge=1)
    memory: Literal["latent", "rgb", "none"] = "latent"
    height: int = Field(64, gt=0, description="multiple of 32")
    width: int = Field(96, gt=0, description="multiple of 32")
    fps: int = Field(16, gt=0)
    frames: int = Field(65, description="default frame count of items that give none (33 + 32k)")
    device: str = Field("auto", description="'auto' (cuda when the actor has a GPU), 'cpu', 'cuda', ...")
    shift: float = Field(5.0, gt=0)

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32, got {v}")
        return v


class ResourceConfig(_Strict):
    concurrency: int = Field(1, ge=1, description="generator actors (each loads the model once)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor")


class MLflowConfig(_Strict):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="sqlite:///path, a server URL, ...; default "
                                     "$MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db")
    experiment: str = "mirage-generate-batch"
    run_name: str | None = None
    artifact_location: str | None = Field(
        None, description="for a new experiment; default: <db dir>/mlartifacts for sqlite stores")
    log_videos: int = Field(2, ge=0, description="sample videos logged as artifacts (first K ok items)")

    @model_validator(mode="after")
    def _default_uri(self) -> "MLflowConfig":
        if not self.tracking_uri:
            self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///runs/mlflow.db"
        return self


class GenerateBatchConfig(_Strict):
    """``mirage generate-batch --config batch.yaml``: a prompt set -> videos + metrics + manifest."""

    prompts: str = Field(description="prompt set: .jsonl or .csv, local path or s3:// URI")
    output: str = Field(description="output directory or s3:// prefix (one folder per item)")
    storage: StorageConfig = StorageConfig()
    model: ModelConfig = ModelConfig()
    generation: GenerationSettings = GenerationSettings()
    resources: ResourceConfig = ResourceConfig()
    mlflow: MLflowConfig = MLflowConfig()
    ray_address: str | None = Field(None, description="None starts a local Ray on 127.0.0.1")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "GenerateBatchConfig":
        """Load ``path``; top-level ``overrides`` that are not None replace the file's values."""
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)


class PromptItem(BaseModel):
    """One prompt-set entry. Unknown keys are ignored (prompt sets often carry extra columns)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="unique; names the output folder <output>/<id>/")
    image: str = Field(description="first frame path/URI (relative: to the prompt file) or 'synthetic'")
    prompt: str = ""
    trajectory: str = Field("pan-and-return", description="orbit | dolly | pan-and-return | camera file")
    trajectory_params: dict[str, Any] = Field(default_factory=dict, description="preset keyword arguments")
    frames: int | None = Field(None, description="33 + 32k; default generation.frames")
    seed: int = 0

    @field_validator("id", mode="before")
    @classmethod
    def _safe_id(cls, v: Any) -> str:
        v = str(v).strip() if isinstance(v, (str, int)) else v
        if not isinstance(v, str) or not _ID_RE.match(v):
            raise ValueError(f"id must be 1-128 characters [A-Za-z0-9._-] starting with a letter or digit, got {v!r}")
        if v in RESERVED_IDS:
            raise ValueError(f"id {v!r} is reserved (it names a file in the output root)")
        return v

    @field_validator("frames", mode="before")
    @classmethod
    def _empty_frames(cls, v: Any) -> Any:
        return None if v == "" else v  # CSV cells

    @field_validator("seed", mode="before")
    @classmethod
    def _empty_seed(cls, v: Any) -> Any:
        return 0 if v in ("", None) else v

    @field_validator("trajectory_params", mode="before")
    @classmethod
    def _params_from_text(cls, v: Any) -> Any:
        if v is None or v == "":
            return {}
        if isinstance(v, str):  # CSV: a JSON object in a cell
            import json

            try:
                return json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"trajectory_params: not a JSON object ({exc})") from exc
        return v

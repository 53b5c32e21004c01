"""Preprocessing configuration: YAML -> a validated pydantic model (the only place YAML is read)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .storage import StorageOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Strict):
    """Where S3 lives; credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from YAML."""

    endpoint_url: str | None = None
    region: str | None = None

    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region)


class ClipConfig(_Strict):
    fps: float = Field(16.0, gt=0, description="frames per second clips are resampled to")
    frames: int = Field(81, description="frames per clip, 4n + 1")
    max_clips: int | None = Field(1, ge=1, description="clips per video (spread over its length)")
    stride: int | None = Field(None, ge=1, description="frames between clip starts (default: no overlap)")
    size_multiple: int = Field(32, ge=1)
    target_size: tuple[int, int] | None = Field(None, description="(H, W) after resize + centre crop")

    @field_validator("frames")
    @classmethod
    def _four_n_plus_one(cls, v: int) -> int:
        if v < 5 or (v - 1) % 4:
            raise ValueError(f"clip.frames must be 4n + 1 (e.g. 33, 81), got {v}")
        return v


class PoseConfig(_Strict):
    method: Literal["sfm", "file"] = "sfm"
    camera_suffix: str = Field(".cameras.txt", description="method=file: camera file next to each video")
    matcher: Literal["sequential", "exhaustive"] = "sequential"
    min_registered: float = Field(0.6, gt=0, le=1)
    max_side: int | None = Field(320, description="SfM runs on frames downscaled to this longer side")


class DepthConfig(_Strict):
    method: Literal["plane_sweep", "model"] = "plane_sweep"
    model_dir: str | None = None
    num_depths: int = Field(48, ge=8)
    scale: float = Field(0.5, gt=0, le=1, description="stereo runs at this fraction of the clip size")
    every: int = Field(4, ge=1, description="depth for every k-th frame (latent-frame cameras), others skipped")


class MaskConfig(_Strict):
    method: Literal["flow", "model"] = "flow"
    model_dir: str | None = None


class LatentConfig(_Strict):
    vae: str | None = Field(None, description="None (no latents), 'tiny', 'full' or a local diffusers dir")


class ResourceConfig(_Strict):
    concurrency: int = Field(2, ge=1, description="actors / tasks per stage")
    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0, description="for the depth and latent stages")


class PreprocessConfig(_Strict):
    """``mirage preprocess --config preprocess.yaml``: raw videos -> WebDataset shards."""

    source: str = Field(description="directory, glob, manifest (.txt/.jsonl) or s3:// prefix of videos")
    output: str = Field(description="output directory or s3:// prefix for shards and manifest.jsonl")
    storage: StorageConfig = StorageConfig()
    clip: ClipConfig = ClipConfig()
    poses: PoseConfig = PoseConfig()
    depth: DepthConfig = DepthConfig()
    masks: MaskConfig = MaskConfig()
    latents: LatentConfig = LatentConfig()
    resources: ResourceConfig = ResourceConfig()
    aux_size: tuple[int, int] | None = Field(None, description="(h, w) of stored depth/masks; default clip/4")
    inputs_per_shard: int = Field(4, ge=1)
    ray_address: str | None = Field(None, description="None starts a local Ray on 127.0.0.1")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "PreprocessConfig":
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(data)

"""Settings every job shares (storage, MLflow, Ray resources) and the preprocessing job's config.

All of them are :class:`mirage_model.config.StrictConfig` models loaded by
:func:`mirage_model.config.load_config` (YAML + dotted ``--set key=value`` overrides): the same
``storage``, ``mlflow`` and ``ray_address`` keys mean the same thing in every job's YAML.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mirage_model.config import PathField, StrictConfig
from mirage_model.perception.params import PREPROCESS_STEREO, MotionMaskParams, StereoParams

from .storage import StorageOptions

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


class StorageConfig(StrictConfig):
    """Where S3 lives; credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from YAML."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint URL (default: AWS, or $AWS_ENDPOINT_URL)")
    region: str | None = Field(None, description="S3 region (default: $AWS_DEFAULT_REGION)")

    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region)


class MlflowConfig(StrictConfig):
    """Where a job's MLflow run goes (jobs.tracking.Tracker)."""

    enabled: bool = Field(True, description="log a run for this job")
    tracking_uri: str | None = Field(
        None, description="sqlite:///path or a server URL; default $MLFLOW_TRACKING_URI, else "
        f"{DEFAULT_TRACKING_URI} (made absolute, so Ray workers in other directories agree)")
    experiment: str = Field("mirage", description="experiment name (created on first use)")
    run_name: str | None = Field(None, description="run name (default: the job's own choice)")
    artifact_location: str | None = Field(
        None, description="artifact root of a new experiment; default <db dir>/mlartifacts for sqlite stores")
    log_videos: int = Field(2, ge=0, description="sample videos logged as artifacts (generate-batch: the first K ok items)")

    def uri(self) -> str:
        """The tracking URI in force: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the local
        default; a relative sqlite path is made absolute (Ray workers run in other directories)."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
        return uri


class ResourcesConfig(StrictConfig):
    """Ray resources of a job's model stages / actors."""

    concurrency: int = Field(1, ge=1, description="actors (each loads its model once) or tasks per stage")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per task / actor")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model actor (preprocess: the VAE; generate-batch: "
                            "the generator); preprocessing's other model stages set their own (depth.num_gpus, "
                            "text_embeddings.num_gpus)")


class JobConfig(StrictConfig):
    """The keys every job has: storage, MLflow and the Ray cluster to run on.

    A job's own defaults for a shared section (its MLflow experiment, its actor count) are given in
    ``SECTION_DEFAULTS`` and sit *under* whatever the YAML gives for that section, so a file that
    sets only ``mlflow.tracking_uri`` still logs to the job's own experiment."""

    SECTION_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}

    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 endpoint and region")
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig, description="the job's MLflow run")
    ray_address: str | None = Field(None, description="Ray cluster address; null starts a local Ray on 127.0.0.1")

    @model_validator(mode="before")
    @classmethod
    def _section_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for section, defaults in cls.SECTION_DEFAULTS.items():
                given = data.get(section)
                if given is None or isinstance(given, dict):
                    data = {**data, section: {**defaults, **(given or {})}}
        return data


class ClipConfig(StrictConfig):
    fps: float = Field(16.0, gt=0, description="highest frame rate: faster videos are resampled down to it, "
                       "slower ones keep their own rate (frames are never repeated; the rate is recorded)")
    frames: int = Field(81, description="frames per clip, 4n + 1")
    min_frames: int = Field(17, description="shortest clip (4n + 1): a shot shorter than `frames` (or the rest "
                            "of one) still gives a clip of the largest 4n + 1 frames it holds, down to this")
    max_clips: int | None = Field(None, ge=1, description="clips per video at most (spread over its length); "
                                  "null: every clip")
    stride: int | None = Field(None, ge=1, description="frames between clip starts (default: no overlap)")
    size_multiple: int = Field(32, ge=1, description="clip height and width are cropped to multiples of this")
    min_side: int = Field(128, ge=32, description="inputs whose clip (after resize and crop) has a shorter side "
                          "below this are rejected (too_small)")
    target_size: tuple[int, int] | None = Field(None, description="(H, W) after resize + centre crop")

    @field_validator("frames", "min_frames")
    @classmethod
    def _four_n_plus_one(cls, v: int) -> int:
        if v < 5 or (v - 1) % 4:
            raise ValueError(f"must be 4n + 1 (e.g. 17, 33, 81), got {v}")
        return v

    @model_validator(mode="after")
    def _min_le_max(self) -> ClipConfig:
        self.min_frames = min(self.min_frames, self.frames)  # clips of `frames` frames or fewer
        return self


class ShotConfig(StrictConfig):
    """Shot boundaries (PySceneDetect, pipeline/shots.py): clips and SfM never span a cut or a fade."""

    enabled: bool = Field(True, description="split videos into shots before planning clips")
    adaptive_threshold: float = Field(3.0, gt=0, description="a cut: content change this many times the "
                                      "neighbours' average (AdaptiveDetector)")
    min_content_val: float = Field(15.0, ge=0, description="smallest content change (HSV distance) that can be a cut")
    dark_threshold: float = Field(12.0, ge=0, description="mean 8-bit intensity below which a frame is black "
                                  "(fades; black frames belong to no shot)")
    min_shot_s: float = Field(0.5, gt=0, description="shortest shot, seconds (closer cuts are merged)")


class PoseConfig(StrictConfig):
    method: Literal["sfm", "file"] = Field("sfm", description="sfm (pycolmap) or file (a camera file next to each video)")
    camera_suffix: str = Field(".cameras.txt", description="method=file: camera file next to each video")
    matcher: Literal["sequential", "exhaustive"] = Field("sequential", description="SfM feature matching")
    min_registered: float = Field(0.6, gt=0, le=1, description="fraction of frames SfM must register")
    max_side: int | None = Field(320, description="SfM runs on frames downscaled to this longer side")
    camera_model: Literal["SIMPLE_RADIAL", "RADIAL", "OPENCV", "PINHOLE", "SIMPLE_PINHOLE"] | None = Field(
        None, description="COLMAP camera model SfM estimates (default SIMPLE_RADIAL: one focal length); OPENCV "
        "estimates fx != fy (squeezed / anamorphic pixels) and k1, k2, p1, p2, which are undistorted")
    retry_native: bool = Field(True, description="when SfM fails on downscaled frames, try once more at the "
                               "clip's own size before rejecting (small parallax can vanish when downscaled)")
    max_reprojection_px: float = Field(2.0, gt=0, description="reject clips whose mean reprojection error is above")
    attempts: int = Field(2, ge=1, description="independent SfM runs (different seeds) that must agree on the "
                          "cameras; a third decides when two disagree; no two agreeing: unstable_poses. 1: unchecked")
    check_motion: bool = Field(True, description="before SfM, reject in about a second a clip whose camera is "
                               "static (static), only rotates (no_parallax) or whose frames do not match "
                               "(too_few_matches), from the matches of a few frames")
    keyframes: bool = Field(True, description="map every 2nd or 4th frame and register the others to that model "
                            "(2-5x faster than mapping every frame, as accurate); false maps every frame")
    features: Literal["colmap", "opencv"] = Field(
        "colmap", description="SIFT features: colmap (COLMAP's extractor, on resources.num_cpus threads) or opencv "
        "(4-7x faster on one core, as accurate on clean footage, weaker on real film)")


class BudgetConfig(StrictConfig):
    """Time each clip may spend in its stages; a clip over it is rejected as ``timeout`` (pipeline/budget.py)."""

    enabled: bool = Field(True, description="enforce the budget (SfM runs in a child process killed at the limit)")
    base_s: float = Field(30.0, gt=0, description="seconds every clip gets")
    per_frame_s: float = Field(1.0, gt=0, description="seconds per frame for a clip whose longer side is 320 px "
                               "or less; proportionally more for larger clips")
    max_s: float = Field(900.0, gt=0, description="no clip gets more than this; Ray Data's no-progress guard is "
                         "set from it")


class DepthConfig(StrictConfig):
    method: Literal["plane_sweep", "model"] = Field(
        "plane_sweep", description="plane_sweep (weight-free multi-view stereo) or model (a transformers depth "
        "model, e.g. Depth Anything V2, aligned per frame to the clip's SfM points, or to the stereo depth when "
        "the cameras came from a file)")
    model_dir: str | None = PathField(None, description="method=model: DPT / Depth Anything directory (local, "
                                      "shared or s3://)")
    stereo: StereoParams = Field(
        PREPROCESS_STEREO, description="method=plane_sweep: the sweep's settings (mirage_model.perception.params."
        "StereoParams); keys not given keep PREPROCESS_STEREO's values (48 planes)")
    scale: float = Field(0.5, gt=0, le=1, description="stereo runs at this fraction of the clip size")
    every: int = Field(4, ge=1, description="depth for every k-th frame (latent-frame cameras), others skipped")
    complete: bool = Field(True, description="fill the holes of the confident multi-view depth (image-guided), "
                           "keep a per-pixel confidence (depth_conf.npy) and mark sky explicitly")
    batch_size: int = Field(16, ge=1, description="method=model: frames per model call (of several clips)")
    clips_per_batch: int = Field(4, ge=1, description="method=model: clips one actor takes at a time")
    num_gpus: float = Field(0.0, ge=0, description="method=model: GPU share of each depth-model actor (0: the CPU)")
    max_fit_residual: float | None = Field(
        0.15, gt=0, description="method=model: a clip whose median relative residual of the model's alignment to "
        "the SfM points (inverse depth) is above this is rejected (depth_fit); null: no gate")
    min_fit_explained: float | None = Field(
        0.5, le=1, description="method=model: ... or whose fit explains less of the points' depth than this (1 - "
        "its residual / a constant depth's; 0: no better than a flat depth) (depth_fit); null: no gate")

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "num_depths" in data:
            raise ValueError("depth.num_depths is now depth.stereo.num_depths")
        return data

    @model_validator(mode="after")
    def _model_needs_dir(self) -> DepthConfig:
        if self.method == "model" and not self.model_dir:
            raise ValueError("depth.method=model needs depth.model_dir")
        return self

    @field_validator("stereo", mode="before")
    @classmethod
    def _over_preprocess_defaults(cls, v: Any) -> Any:
        """A partial ``stereo`` section sits over ``PREPROCESS_STEREO``, not over the class defaults."""
        return {**PREPROCESS_STEREO.model_dump(), **v} if isinstance(v, dict) else v

    @field_validator("stereo")
    @classmethod
    def _scale_is_depth_scale(cls, v: StereoParams) -> StereoParams:
        if v.scale != 1.0:
            raise ValueError(f"stereo.scale must stay 1 (got {v.scale}): the sweep runs on frames already "
                             "resized to depth.scale; set depth.scale instead")
        return v


class MaskConfig(StrictConfig):
    method: Literal["flow", "model"] = Field(
        "flow", description="flow (optical vs rigid flow) or model (a local segmentation model)")
    model_dir: str | None = PathField(None, description="method=model: local segmentation model directory")
    flow: MotionMaskParams = Field(
        default_factory=MotionMaskParams, description="method=flow: the moving-object test's settings "
        "(mirage_model.perception.params.MotionMaskParams)")
    video_model_dir: str | None = PathField(
        None, description="a SAM2 video model (transformers Sam2VideoModel; local, shared or s3://): the objects "
        "the flow test finds on the depth frame where they are largest are propagated through the whole clip and "
        "added to the moving masks (PropagateMasks); null: the flow test's masks alone")
    min_object_area: float = Field(0.002, gt=0, lt=1, description="video_model_dir: smallest object to propagate, "
                                   "a fraction of the frame")
    num_gpus: float = Field(0.0, ge=0, description="video_model_dir: GPU share of each propagation actor")
    clips_per_batch: int = Field(2, ge=1, description="video_model_dir: clips an actor takes at a time")


class LatentConfig(StrictConfig):
    vae: str | None = PathField(None, description="None (no latents), 'tiny', 'full' or a local diffusers dir",
                                keywords=("tiny", "full"))


DEFAULT_CAPTION_PROMPT = ("Describe this video in one sentence: the place, what is in it, and how the camera "
                          "moves.")


class CaptionConfig(StrictConfig):
    """Where each clip's caption comes from (it goes into the shard's ``meta.json`` and the manifest)."""

    method: Literal["none", "manifest", "model"] = Field(
        "manifest", description="manifest: a `caption` field of the source's .jsonl row, else a sidecar text file "
        "next to the video (<stem><sidecar_suffix>), else none; model: the same, and a captioning model for the "
        "clips still without one; none: no captions")
    sidecar_suffix: str = Field(".txt", min_length=1, description="the sidecar caption file's ending, after the "
                                "video's stem (clip.mp4 -> clip.txt)")
    model_dir: str | None = PathField(None, description="method=model: a transformers image-text-to-text model "
                                      "(Qwen2.5-VL, Qwen3-VL, LLaVA, ...; local, shared or s3://)")
    prompt: str = Field(DEFAULT_CAPTION_PROMPT, min_length=1, description="method=model: the instruction")
    frames: int = Field(3, ge=1, description="method=model: frames of each clip shown to the model, evenly spaced")
    max_new_tokens: int = Field(64, ge=1, description="method=model: longest caption, in tokens")
    batch_size: int = Field(8, ge=1, description="method=model: clips per generate call")
    num_gpus: float = Field(0.0, ge=0, description="method=model: GPU share of each captioning actor (0: the CPU)")
    dtype: Literal["float32", "bfloat16"] | None = Field(None, description="method=model: the model's weights; "
                                                         "null: bfloat16 on GPUs, float32 on the CPU")

    @model_validator(mode="after")
    def _model_needs_dir(self) -> CaptionConfig:
        if self.method == "model" and not self.model_dir:
            raise ValueError("captions.method=model needs captions.model_dir")
        return self


TEXT_PRESETS = ("tiny", "small")
"""The random text encoders of the CPU model presets (``mirage_model.model.text.build_text_stack``)."""


class TextEmbeddingConfig(StrictConfig):
    """Precomputed text-encoder states of each clip's caption (``text.safetensors`` in the shards):
    training from such shards never loads the text encoder."""

    model: str | None = PathField(
        None, keywords=TEXT_PRESETS, description="the text encoder: a Wan2.2 diffusers directory (its "
        "tokenizer/ and text_encoder/; local, shared or s3://, downloaded once per node), or a CPU preset's "
        "('tiny', 'small', with seed); null: none stored (training encodes the captions itself)")
    seed: int = Field(0, description="a preset's seed (the training run's seed must be the same)")
    max_length: int | None = Field(None, ge=1, description="prompt tokens (training must use the same); null: the "
                                   "base model's (512 for a directory of the full model, 64 for the presets)")
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="the encoder's weights and the stored states; null: bfloat16 on GPUs, float32 on the CPU")
    batch_size: int = Field(32, ge=1, description="clips per encoder call")
    num_gpus: float = Field(0.0, ge=0, description="GPU share of each text-encoder actor (0: the CPU)")

    def tokens(self) -> int:
        """``max_length``, or the base model's when unset."""
        from mirage_model.model.presets import default_text_tokens

        if self.model in TEXT_PRESETS:
            return self.max_length or default_text_tokens(self.model)
        return self.max_length or default_text_tokens(None, self.model)


class PreprocessConfig(JobConfig):
    """``mirage preprocess --config preprocess.yaml``: raw videos -> WebDataset shards."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-preprocess"}, "resources": {"concurrency": 2}}

    source: str = PathField(description="directory, glob, manifest (.txt/.jsonl) or s3:// prefix of videos")
    output: str = PathField(description="output directory or s3:// prefix for shards and manifest.jsonl", output=True)
    shots: ShotConfig = Field(default_factory=ShotConfig, description="shot boundaries (cuts, fades)")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="clip planning: rate, length, size")
    poses: PoseConfig = Field(default_factory=PoseConfig, description="camera poses")
    depth: DepthConfig = Field(default_factory=DepthConfig, description="per-frame depth")
    masks: MaskConfig = Field(default_factory=MaskConfig, description="moving-object and sky masks")
    latents: LatentConfig = Field(default_factory=LatentConfig, description="optional VAE latents")
    captions: CaptionConfig = Field(default_factory=CaptionConfig, description="each clip's caption")
    text_embeddings: TextEmbeddingConfig = Field(default_factory=TextEmbeddingConfig,
                                                 description="optional precomputed text-encoder states")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Ray resources of the stages")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="time budget per clip")
    aux_size: tuple[int, int] | None = Field(None, description="(h, w) of stored depth/masks; default clip/4")
    inputs_per_shard: int = Field(4, ge=1, description="input videos per WebDataset shard")

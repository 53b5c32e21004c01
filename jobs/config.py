"""The job configurations: ``mirage train``, ``mirage train-vae``, ``mirage generate-batch`` and ``mirage demo``.

Each is a :class:`pipeline.config.JobConfig` (shared ``storage``, ``mlflow``, ``ray_address``),
loaded by :func:`mirage_model.config.load_config` from YAML plus dotted ``--set key=value``
overrides. The training job nests the model layer's own configs (``SampleConfig``,
``StageConfig``, ``OptimConfig``, ``LoraSpec``) rather than copying their fields.
:data:`JOB_CONFIGS` maps each command to its model (``mirage <job> --print-config``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.resources import RESOURCE_ROOT
from mirage_model.config import PathField, StrictConfig, load_config
from mirage_model.generation.config import GenerationConfig
from mirage_model.geometry.trajectory import PRESETS
from mirage_model.memory.base import MemoryConfig
from mirage_model.training.samples import SampleConfig
from mirage_model.training.trainer import LoraSpec, OptimConfig, StageConfig
from mirage_model.training.vae_trainer import VAETrainSettings, VAEWidths
from pipeline import storage
from pipeline.config import JobConfig, PreprocessConfig, ResourcesConfig

CONFIG_DIR = RESOURCE_ROOT / "configs"
"""The repository's configs/ folder (job YAMLs; the demo's variants live in configs/demo/)."""

# ----------------------------------------------------------------------------------------------
# mirage train
# ----------------------------------------------------------------------------------------------


class TrainModelConfig(StrictConfig):
    """What is trained: a random-weight preset or a local diffusers directory, plus the adapters."""

    preset: Literal["tiny", "small"] | None = Field("tiny", description="random-weight preset (CPU work)")
    model_dir: str | None = PathField(None, description="Wan2.2-TI2V-5B-Diffusers directory (wins over preset): "
                                      "local, shared, or s3:// (downloaded once per node into $MIRAGE_CACHE)")
    branch_dir: str | None = PathField(None, description="start the memory branch from saved weights")
    init: str | None = PathField(None, description="start from a local `mirage train` checkpoint directory: its "
                                 "branch + LoRA (+ backbone, if it holds one) at the same preset and LoRA rank; a "
                             "resumed run starts from its own checkpoint instead")
    vae: str | None = PathField(None, description="with a preset: a local diffusers VAE directory (e.g. `mirage "
                                "train-vae` output) for samples without cached latents and the rollout videos")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA adapters added to the backbone")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass")
    bf16: bool | None = Field(None, description="bf16 autocast; null: on when training on GPUs")
    dtype: Literal["float32", "bfloat16"] | None = Field(
        None, description="storage dtype of the frozen weights (the backbone without its LoRA, the text encoder), "
        "loaded straight in it; what trains (the branch, the LoRA; everything in a `full` stage) stays float32 "
        "master weights. bfloat16 needs bf16 compute (model.bf16). null: bfloat16 on GPUs, float32 on the CPU")
    max_text_length: int | None = Field(None, ge=1, description="prompt tokens, recorded with the checkpoint "
                                        "(generation must use the same); null: the base model's (512 for "
                                        "model_dir and ti2v-5b, 64 for tiny and small)")
    text_cache_size: int = Field(256, ge=0, description="encoded prompts kept in host memory, least recently "
                                 "used evicted first (a 512-token prompt of the 5B model's UMT5 is 8 MiB); 0: none")

    def text_tokens(self) -> int:
        """``max_text_length``, or the base model's when unset."""
        from mirage_model.model.presets import default_text_tokens

        return self.max_text_length or default_text_tokens(self.preset, self.model_dir)

    def frozen_dtype(self, use_gpu: bool) -> str:
        """``dtype``, or bfloat16 on GPUs and float32 on the CPU when unset."""
        return self.dtype or ("bfloat16" if use_gpu and self.bf16 is not False else "float32")

    @model_validator(mode="after")
    def _vae_with_preset(self) -> TrainModelConfig:
        if self.dtype == "bfloat16" and self.bf16 is False:
            raise ValueError("model.dtype: bfloat16 stores weights in bf16, which needs bf16 compute: set model.bf16 "
                             "to true or null")
        if self.vae and self.model_dir:
            raise ValueError("model.vae replaces a preset's VAE; a model_dir brings its own (model_dir/vae)")
        return self


class DataConfig(SampleConfig):
    """The shards to read and how a clip becomes a sample (all of :class:`SampleConfig`)."""

    shards: str = PathField(description="directory / s3:// prefix written by `mirage preprocess`, or a glob of .tar files")
    shuffle_buffer: int = Field(16, ge=1, description="per worker: raw samples held to shuffle the shard stream (1: shard order)")
    text_embeddings: Literal["auto", "shards", "encoder"] = Field(
        "auto", description="where the prompts' text states come from: shards (precomputed by `mirage preprocess` "
        "with text_embeddings.model; the text encoder is never loaded), encoder (the model's text encoder encodes "
        "each caption, cached by model.text_cache_size), auto (shards when their first sample has them)")


class ScalingConfig(StrictConfig):
    """Ray Train workers (``ray.train.ScalingConfig``)."""

    num_workers: int = Field(2, ge=1, description="data-parallel workers")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); otherwise CPU (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers land on nodes (STRICT_SPREAD: one per node)")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: every worker holds the whole model (DistributedDataParallel); fsdp: each "
        "transformer and branch block, then the whole model, sharded over the workers (FSDP2 fully_shard; "
        "bf16 parameters with fp32 gradient reduction when model.bf16 is on), with sharded optimizer "
        "checkpoints that resume onto any number of workers (docs/training.md)")
    cpu_offload: bool = Field(False, description="fsdp: keep the parameter shards and optimizer state in host "
                              "memory, moving each block to the GPU for its forward and backward")

    @model_validator(mode="after")
    def _check_parallel(self) -> ScalingConfig:
        if self.cpu_offload and self.parallel != "fsdp":
            raise ValueError("scaling.cpu_offload needs scaling.parallel: fsdp")
        return self


class CheckpointConfig(StrictConfig):
    """Ray Train checkpoints (trainable weights + optimizer + data position)."""

    every: int = Field(50, ge=1, description="optimizer steps between checkpoints (and at each stage's end)")
    keep: int = Field(2, ge=1, description="keep the last K checkpoints")
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last checkpoint (-1: forever)")


class ValidationConfig(StrictConfig):
    """A fixed validation batch and optional rollout videos."""

    samples: int = Field(2, ge=1, description="validation samples (first keys, fixed draws)")
    every: int = Field(50, ge=1, description="optimizer steps between validation losses")
    video_every: int = Field(0, ge=0, description="steps between rollout videos (0: only at the end; presets only)")
    video: bool = Field(True, description="log rollout videos")
    video_steps: int = Field(2, ge=1, description="denoising steps of a rollout video")


class TrainConfig(JobConfig):
    """``mirage train``: two-stage fine-tuning (memory branch, then LoRA) on Ray Train."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-train"}}

    name: str = Field("mirage-train", description="run name: a run with this name in storage_path is resumed")
    storage_path: str = PathField("runs/train", description="checkpoints: local directory or s3://bucket/prefix", output=True)
    model: TrainModelConfig = Field(default_factory=TrainModelConfig, description="what is trained")
    data: DataConfig = Field(description="shards and sample construction")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, description=(
        "the latent memory the samples are read from; recorded in the checkpoint (model.json), so that "
        "generation builds the same memory for the model"))
    stages: list[StageConfig] = Field(min_length=1, description="stages in order (branch, then lora)")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="batching and AdamW")
    scaling: ScalingConfig = Field(default_factory=ScalingConfig, description="Ray Train workers")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="checkpoints and retries")
    validation: ValidationConfig = Field(default_factory=ValidationConfig, description="validation loss and videos")
    log_every: int = Field(1, ge=1, description="optimizer steps between training-metric logs")
    seed: int = Field(0, description="seeds the weights of presets, the data order and every draw")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"name {v!r}: a run name, not a path")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: each stage at most once, got {names}")
        if self.model.model_dir is None and self.model.preset is None:
            raise ValueError("model: give a preset or a model_dir")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


# ----------------------------------------------------------------------------------------------
# mirage train-vae
# ----------------------------------------------------------------------------------------------
class TrainVAEConfig(JobConfig):
    """``mirage train-vae``: a Wan2.2-family VAE (reduced widths) trained on video clips."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-train-vae"}}

    videos: str = PathField(description="training videos: directory, glob, manifest or s3:// prefix")
    output: str = PathField("runs/vae", description="local directory: vae/ (diffusers format), preview PNG, summary",
                             output=True)
    held_out: int = Field(2, ge=1, description="the last K videos (by name) are held out: never trained on, scored")
    clip_frames: int = Field(5, description="frames per training clip (4n + 1: 5 trains the causal temporal path)")
    clips_per_video: int = Field(8, ge=1, description="training clips per video, spread over its length")
    eval_frames: int = Field(17, description="frames per held-out clip scored (4n + 1)")
    max_size: tuple[int, int] | None = Field(None, description="(H, W) centre crop of every frame (multiples of 16); "
                                             "null: the largest multiple of 16 of the videos' size")
    widths: VAEWidths = Field(default_factory=VAEWidths, description="the VAE's reduced widths")
    init: str | None = PathField(None, description="a local diffusers VAE directory to fine-tune (e.g. an earlier "
                                 "train-vae output) instead of random weights; its own widths are kept")
    decoder_only: bool = Field(False, description="fine-tune the decoder of `init` only: its encoder and latent "
                               "statistics are kept, so shards and a world trained on its latents stay valid")
    image_train: VAETrainSettings | None = Field(
        None, description="a first phase on single frames, before `train` on clips: the first-frame path holds "
        "every spatial weight and a frame costs a ninth of a 9-frame clip, so the spatial code learns many times "
        "faster per second; null: clips only")
    image_frames_per_video: int = Field(24, ge=1, description="frames per training video for image_train, "
                                        "spread over its length")
    train: VAETrainSettings = Field(default_factory=VAETrainSettings, description="the optimiser and crops, on clips")
    target_psnr: float = Field(25.0, description="held-out PSNR (dB) the run is expected to reach (reported)")

    @model_validator(mode="after")
    def _check(self) -> TrainVAEConfig:
        for name in ("clip_frames", "eval_frames"):
            v = getattr(self, name)
            if v < 1 or (v - 1) % 4:
                raise ValueError(f"{name} must be 4n + 1 (the VAE's temporal stride), got {v}")
        if self.max_size is not None and (self.max_size[0] % 16 or self.max_size[1] % 16):
            raise ValueError(f"max_size must be multiples of 16, got {self.max_size}")
        if storage.is_s3(self.output):
            raise ValueError(f"output {self.output!r}: a local directory (the VAE is saved as a diffusers folder)")
        if self.decoder_only and not self.init:
            raise ValueError("decoder_only fine-tunes the decoder of a trained VAE: give its directory as init")
        if not self.decoder_only and any(s is not None and s.latent_noise > 0 for s in (self.train, self.image_train)):
            raise ValueError("latent_noise trains a decoder for given latents: set decoder_only (and init)")
        return self


# ----------------------------------------------------------------------------------------------
# mirage generate-batch
# ----------------------------------------------------------------------------------------------
PRESET_TRAJECTORIES = tuple(PRESETS)
"""Trajectory names built in code (``mirage_model.geometry.trajectory.PRESETS``); anything else in an
item's ``trajectory`` is a camera file."""

SYNTHETIC_IMAGE = "synthetic"
"""``image`` value for a first frame rendered from ``mirage_model.synthetic`` (with its true depth)."""

RESERVED_IDS = frozenset({"manifest.jsonl"})

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class GeneratorModelConfig(StrictConfig):
    """Which generator each actor loads (once): a random-weight preset or a local model directory."""

    preset: Literal["tiny", "small", "ti2v-5b"] | None = Field(
        None, description="random-weight preset, used when model_dir is not set (ti2v-5b: the full-size shapes, "
        "GPU only); null: the checkpoint's (its model.json), else tiny")
    model_dir: str | None = PathField(None, description="Wan2.2-TI2V-5B-Diffusers-layout directory: local, shared, "
                                      "or s3:// (downloaded once per node into $MIRAGE_CACHE)")
    branch_dir: str | None = PathField(None, description="saved memory branch (with model_dir)")
    lora: str | None = PathField(None, description="LoRA directory or .safetensors file (with model_dir)")
    checkpoint: str | None = PathField(None, description="a `mirage train` run or checkpoint directory (local or "
                                       "s3://; a run: its latest checkpoint), or a world's model/: its branch, "
                                       "LoRA (and backbone, if it holds one) on top of the preset / model_dir")
    world: str | None = PathField(None, description="a trained world (`mirage export-world`, e.g. assets/world): "
                                  "its preset, model/ and vae/; a relative path is looked up from the working "
                                  "directory, then among the shipped resources")
    seed: int = Field(0, description="weight seed of the random presets")
    vae: str | None = PathField(None, description="with a preset: a local diffusers VAE directory (e.g. `mirage "
                                "train-vae` output) instead of the preset's random-weight VAE")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="model_dir weights dtype (None: as stored); e.g. bfloat16 on GPU")
    memory: MemoryConfig | None = Field(None, description="the latent memory's settings; null: those the "
                                        "checkpoint was trained with (its model.json), else the defaults")

    @model_validator(mode="after")
    def _needs_model_dir(self) -> GeneratorModelConfig:
        if self.vae and self.model_dir:
            raise ValueError("model.vae replaces a preset's VAE; a model_dir brings its own (model_dir/vae)")
        if (self.branch_dir or self.lora) and not self.model_dir:
            raise ValueError("model.branch_dir / model.lora need model.model_dir")
        if self.world and (self.model_dir or self.checkpoint or self.vae):
            raise ValueError("model.world brings its own model, checkpoint and VAE: give either world or "
                             "model_dir / checkpoint / vae")
        return self


class GenerateBatchConfig(JobConfig):
    """``mirage generate-batch --config batch.yaml``: a prompt set -> videos + metrics + manifest."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-generate-batch"},
                        "generation": {"device": "auto", "progress": False}}

    prompts: str = PathField(description="prompt set: .jsonl or .csv, local path or s3:// URI")
    output: str = PathField(description="output directory or s3:// prefix (one folder per item)", output=True)
    model: GeneratorModelConfig = Field(default_factory=GeneratorModelConfig, description="the generator")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="sampling settings shared by all items (an item chooses "
                                         "its frames, seed, prompt and cameras)")
    height: int = Field(64, gt=0, description="video height, a multiple of 32")
    width: int = Field(96, gt=0, description="video width, a multiple of 32")
    frames: int = Field(65, description="frame count of items that give none (33 + 32k)")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="generator actors")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"must be a multiple of 32, got {v}")
        return v


class PromptItem(BaseModel):
    """One prompt-set entry. Unknown keys are ignored (prompt sets often carry extra columns)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="unique; names the output folder <output>/<id>/")
    image: str = Field(description="first frame path/URI (relative: to the prompt file) or 'synthetic'")
    prompt: str = Field("", description="text prompt")
    trajectory: str = Field("pan-and-return", description="a preset name (mirage_model.geometry.trajectory.PRESETS) "
                            "or a camera file")
    trajectory_params: dict[str, Any] = Field(default_factory=dict, description="preset keyword arguments")
    frames: int | None = Field(None, description="33 + 32k; default: the job's frames")
    seed: int = Field(0, description="sampling seed")

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
            try:
                return json.loads(v)
            except json.JSONDecodeError as exc:
                raise ValueError(f"trajectory_params: not a JSON object ({exc})") from exc
        return v


# ----------------------------------------------------------------------------------------------
# mirage eval-memory
# ----------------------------------------------------------------------------------------------
MEMORY_MODES = ("latent", "rgb", "none", "latent-unfiltered")
"""The ablation's generations: the latent memory, its RGB twin, no memory, and the latent memory
without the moving-object / sky filter on its writes."""

ABLATION_PATHS = ("pan-and-return", "orbit-and-back", "forward-and-back")
"""``mirage_model.evaluation.memory_ablation.closed_path`` names."""


def _check_evaluation(cfg, items: str) -> None:
    """The checks eval-memory and eval share: frames 33 + 32k, a size of multiples of 32, a local
    output, and no repeated mode or ``items`` (paths / variants)."""
    if cfg.frames < 33 or (cfg.frames - 33) % 32:
        raise ValueError(f"frames must be 33 + 32k, got {cfg.frames}")
    for name in ("height", "width"):
        if getattr(cfg, name) % 32:
            raise ValueError(f"{name} must be a multiple of 32, got {getattr(cfg, name)}")
    if storage.is_s3(cfg.output):
        raise ValueError(f"output {cfg.output!r}: a local directory")
    listed = getattr(cfg, items)
    if len(set(cfg.modes)) != len(cfg.modes) or len(set(listed)) != len(listed):
        raise ValueError(f"modes and {items} must not repeat")


class EvalMemoryConfig(JobConfig):
    """``mirage eval-memory``: the memory ablation on held-out synthetic scenes (docs/method.md §12)."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-eval-memory"},
                        "generation": {"steps": 4, "device": "auto", "progress": False}}

    output: str = PathField("runs/eval_memory", description="local directory: eval_memory.json, eval_memory.md",
                             output=True)
    model: GeneratorModelConfig = Field(default_factory=GeneratorModelConfig,
                                        description="the generator (preset, model_dir, checkpoint)")
    copy_readout: bool = Field(False, description="wrap the transformer in ReadoutCopyModel: the ceiling of a "
                               "model that copies its memory exactly, and the loop's wiring check")
    scenes: int = Field(2, ge=1, description="held-out scenes (texture seeds scene_seed, scene_seed + 1, ...)")
    scene_seed: int = Field(5000, ge=0, description="first scene seed (training data uses other seeds)")
    texture_scale: float = Field(1.0, gt=0, description="scene texture feature size (3: what a small VAE learns)")
    paths: list[Literal["pan-and-return", "orbit-and-back", "forward-and-back"]] = Field(
        default_factory=lambda: list(ABLATION_PATHS), min_length=1, description="closed camera paths")
    modes: list[Literal["latent", "rgb", "none", "latent-unfiltered"]] = Field(
        default_factory=lambda: list(MEMORY_MODES), min_length=1, description="memory modes generated per item")
    frames: int = Field(65, description="frames per path (33 + 32k, odd)")
    height: int = Field(64, gt=0, description="multiple of 32")
    width: int = Field(96, gt=0, description="multiple of 32")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="sampling settings (each mode sets memory and filter_writes)")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="generator actors")

    @model_validator(mode="after")
    def _check(self) -> EvalMemoryConfig:
        _check_evaluation(self, "paths")
        return self


# ----------------------------------------------------------------------------------------------
# mirage eval
# ----------------------------------------------------------------------------------------------
EVAL_VARIANTS = ("open", "closed")


class EvalConfig(JobConfig):
    """``mirage eval``: generate from each test clip's first frame along its real cameras and score the
    video against the clip's real frames (RealEstate10K-format test sets; docs/method.md §14)."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-eval"},
                        "generation": {"steps": 8, "device": "auto", "progress": False}}

    data: str = PathField(description="test set: directory or s3:// prefix holding <clip>.txt (RealEstate10K "
                          "cameras) and <clip>/ (its frames) per clip")
    output: str = PathField("runs/eval", description="local directory: eval.json, eval.md", output=True)
    model: GeneratorModelConfig = Field(default_factory=GeneratorModelConfig,
                                        description="the generator (preset, model_dir, checkpoint)")
    copy_readout: bool = Field(False, description="wrap the transformer in ReadoutCopyModel (see eval-memory)")
    clips: int | None = Field(None, ge=1, description="evaluate the first N clips (natural order); null: all")
    variants: list[Literal["open", "closed"]] = Field(
        default_factory=lambda: list(EVAL_VARIANTS), min_length=1,
        description="open: the clip's first `frames` frames; closed: the first (frames + 1) / 2 out and the same "
                    "cameras back (the real frames reversed are the way back's ground truth)")
    modes: list[Literal["latent", "rgb", "none", "latent-unfiltered"]] = Field(
        default_factory=lambda: ["latent", "none"], min_length=1, description="memory modes generated per item")
    frames: int = Field(65, description="generated frames per item (33 + 32k)")
    stride: int = Field(1, ge=1, description="take every stride-th camera line of a clip (RealEstate10K is 30 fps)")
    height: int = Field(128, gt=0, description="multiple of 32 (frames are resized; intrinsics follow)")
    width: int = Field(224, gt=0, description="multiple of 32")
    first_depth: Literal["stereo", "plane", "model"] = Field(
        "stereo", description="first frame's depth: plane-sweep stereo over the clip's first frames at their "
        "cameras (pose units); a plane at 2 units; or a monocular model (generation.depth_model)")
    prompt: str = Field("", description="text prompt for every clip")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="sampling settings (each mode sets memory and filter_writes)")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="generator actors")

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        _check_evaluation(self, "variants")
        if (self.first_depth == "model") != bool(self.generation.depth_model):
            raise ValueError("first_depth: model needs generation.depth_model (a local directory), and "
                             "generation.depth_model needs first_depth: model")
        return self


# ----------------------------------------------------------------------------------------------
# mirage demo
# ----------------------------------------------------------------------------------------------
WORLD_TEXTURE_SCALE = 3.0
"""The synthetic scenes' texture scale the shipped world (and its VAE) was trained on."""


class DemoConfig(JobConfig):
    """``mirage demo``: synthetic videos -> shards -> two-stage training -> generation -> report.

    The defaults are the full demo (configs/demo/default.yaml; about 4 minutes on 2 idle cores,
    starting from the shipped world, docs/method.md §15);
    configs/demo/quick.yaml is the shortened variant the end-to-end test runs."""

    SECTION_DEFAULTS = {"mlflow": {"experiment": "mirage-demo"}, "generation": {"steps": 10}}

    out: str = PathField("runs/demo", description="output directory (report.html, videos, shards, mlflow.db)",
                       output=True)
    quick: bool = Field(False, description="the shortened variant (labels the run; sizes come from the config)")
    seed: int = Field(0, description="seed of the data, the training run and the preset weights (the noise of the generation is generation.seed)")
    world: str | None = PathField("assets/world", description="a trained world (`make world`, written by `mirage "
                                  "export-world`; a relative path is looked up from the working directory, then "
                                  "among the shipped resources, jobs/resources.py): its VAE codes the shards and decodes the frames and training "
                                  "starts from its model; null: the preset's random weights and VAE")
    # 1. synthetic videos
    n_videos: int = Field(4, ge=1, description="synthetic videos rendered")
    video_frames: int = Field(49, ge=5, description="frames per synthetic video")
    video_size: tuple[int, int] = Field((128, 160), description="(H, W) of the synthetic videos")
    data_seed: int = Field(1, description="scene seed of the videos (1: every track video registers in SfM at "
                           "this size and texture scale 1)")
    texture_scale: float = Field(WORLD_TEXTURE_SCALE, gt=0, description="texture feature size of the videos and the generation's "
                                 "scene (3: what the world's VAE was trained on; 1: detailed, for SfM)")
    camera_paths: Literal["track", "fast"] = Field("fast", description="track: sideways tracks SfM registers; "
                                                   "fast: pans, orbits and dollies (poses from their camera files)")
    revisit: bool = Field(True, description="the videos' cameras come back the same way (what the memory is for)")
    # 2. preprocessing
    clip_frames: int = Field(49, description="frames per clip (4n + 1; one clip per video)")
    poses: Literal["sfm", "file"] = Field("file", description="camera poses: pycolmap SfM, or the videos' camera "
                                          "files (fast paths turn on the spot, which SfM cannot register)")
    # 3. training
    preset: Literal["tiny", "small"] = Field("small", description="preset trained (the world's, when it is set)")
    steps_per_stage: int = Field(100, ge=1, description="optimizer steps of each stage (branch, then LoRA)")
    lr: float = Field(2e-4, gt=0, description="learning rate of both stages")
    warmup_steps: int = Field(10, ge=0, description="warm-up steps of each stage")
    # the training samples' layout: null keeps the world's (the `sample` its world.json records from its
    # training config); without a world, or for one exported without it, configs/train/world.yaml's
    target_latents: int | None = Field(None, ge=2, description="target latents of a training sample (5 = 17 "
                                       "frames); null: the world's")
    memory_from: Literal["t0", "history"] | None = Field(None, description="a training sample's memory: frame t0, "
                                                         "or the clip's latents before its context (docs/method.md "
                                                         "§6); null: the world's")
    t0_range: tuple[int, int] | None = Field(None, description="first pixel frame of a training target (multiples "
                                             "of 4); null: the world's")
    lora_rank: int = Field(8, ge=1, description="LoRA rank (alpha = rank)")
    workers: int = Field(2, ge=1, description="Ray Train workers")
    cpus_per_worker: float = Field(0.5, gt=0, description="CPUs per worker (leaves a CPU for Ray Data on 2 cores)")
    val_every: int = Field(25, ge=1, description="steps between validation losses")
    checkpoint_every: int = Field(100, ge=1, description="steps between checkpoints")
    rollout_video: bool = Field(True, description="the training job's own validation rollout video")
    vae: str | None = PathField(None, description="a local diffusers VAE directory (`mirage train-vae` output) used "
                                "for the shards' latents, training and generation; null: the world's (without a "
                            "world, the preset's random VAE)")
    # 4. generation
    gen_frames: int = Field(97, description="frames generated (33 + 32k)")
    gen_size: tuple[int, int] = Field((128, 160), description="(H, W) generated, multiples of 32")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="sampling settings of every memory mode (each mode sets "
                                         "generation.memory)")
    yaw_degrees: float = Field(60.0, description="pan-and-return: how far the camera turns")
    translation: tuple[float, float, float] = Field((0.3, 0.0, 0.0), description="pan-and-return: camera shift")
    modes: tuple[Literal["latent", "rgb", "none"], ...] = Field(("latent", "rgb", "none"), min_length=1,
                                                                 description="memories compared")
    prompt: str = Field("a room with furniture, the camera turns right and comes back", description="text prompt")
    progress: bool = Field(True, description="progress bars")
    budget_s: float = Field(900.0, gt=0, description="expected wall time on 2 cores (reported, not enforced)")

    @classmethod
    def for_variant(cls, quick: bool = False, **overrides: Any) -> DemoConfig:
        """configs/demo/quick.yaml (``quick``) or the defaults, with keyword ``overrides`` (None values
        ignored; ``steps_per_stage=3``)."""
        return load_config(cls, CONFIG_DIR / "demo" / "quick.yaml" if quick else None, overrides)

    @model_validator(mode="after")
    def _check(self) -> DemoConfig:
        if not self.mlflow.enabled:
            raise ValueError("mlflow.enabled: the demo's report is drawn from its MLflow runs; it cannot be off")
        if self.gen_frames < 33 or (self.gen_frames - 33) % 32:
            raise ValueError(f"gen_frames must be 33 + 32k, got {self.gen_frames}")
        if self.gen_size[0] % 32 or self.gen_size[1] % 32:
            raise ValueError(f"gen_size must be multiples of 32, got {self.gen_size}")
        if self.clip_frames < 5 or (self.clip_frames - 1) % 4:
            raise ValueError(f"clip_frames must be 4n + 1, got {self.clip_frames}")
        if self.t0_range is not None and (self.t0_range[0] > self.t0_range[1] or self.t0_range[0] % 4
                                          or self.t0_range[1] % 4):
            raise ValueError(f"t0_range must be two multiples of 4, low to high, got {self.t0_range}")
        if self.video_frames < self.clip_frames:
            raise ValueError(f"video_frames ({self.video_frames}) must be >= clip_frames ({self.clip_frames})")
        return self


JOB_CONFIGS: dict[str, type[JobConfig]] = {
    "preprocess": PreprocessConfig,
    "train": TrainConfig,
    "train-vae": TrainVAEConfig,
    "generate-batch": GenerateBatchConfig,
    "eval-memory": EvalMemoryConfig,
    "eval": EvalConfig,
    "demo": DemoConfig,
}
"""``mirage <job>`` -> its configuration model."""

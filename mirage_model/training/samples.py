"""Training samples from the data pipeline's shards (docs/method.md §6), laid out exactly as generation uses them.

One shard sample (a whole clip, e.g. 81 frames = 21 latents) gives one training sample per epoch:

* ``t0 = 4m`` is drawn deterministically from ``(seed, epoch, key)`` (a SHA-256 of the key, never
  Python's salted ``hash``) among the depth frames with ``m >= preceding``,
  ``m + target_latents - 1 <= T_lat - 1`` and ``t0_min <= t0 <= t0_max`` (docs/method.md §6: [8, 48]).
* The whole clip's latents (from ``latents.npy``, else one ``encode_video`` call over the whole
  clip) are cut into ``target = latents[:, m : m + target_latents]`` (its latent 0, the camera of
  frame t0, plays the clean first / overlap latent) and ``context = latents[:, m - P : m]`` (the
  two latents before it, whose cameras are frames t0 - 8 and t0 - 4) -- the layout of a later
  chunk in ``generation/generator.py``.
* A ``LatentMemory`` is built from frame t0 only (latent m + depth of frame t0, excluding
  non-static and depth-0 pixels; the aux-resolution depth/mask are resized onto the latent grid
  by the memory itself) and read at the target cameras (frames t0 + 4j) and the preceding ones
  (frames t0 - 4P + 4i) -> ``cond`` (49, Tt, h, w) and ``context_cond`` (49, P, h, w).
  With ``memory_from="history"`` it is built instead from the clip's latents *before* the
  context window (latents 0 .. m - P - 1 that have a depth map): what neither the clean latent
  nor the context shows, as when generation comes back to a view seen chunks ago (docs/method.md
  §13, experiment 3; clips that revisit their own views make such samples).
* Per-sample dropout drawn from the same generator: preceding context (P -> 0), prompt (-> ""),
  references. The random draws are made in a fixed order whatever the probabilities, so changing
  a dropout rate never changes ``t0``.
* Optional references (``references > 0``): earlier latent frames, before the context window, whose
  back-projected static depth voxelised at ``reference_voxel`` (0.1 m) overlaps the target
  frames' voxels with IoU >= ``reference_min_iou`` (0.04); best ``references`` by IoU, in time
  order; their conditioning is the memory read at their cameras, like the context's.

Text dropout here replaces the prompt by ""; ``model.loss.flow_matching_loss`` has its own
``text_dropout`` on the encoded text -- use one of the two, not both.

Batches (``collate``): every sample of a batch must share the target's shape; the context length
of a batch is the *minimum* P of its samples (each keeps its last P latents, those nearest the
target; ``context_mode="strict"`` raises instead). Because a single dropped sample would then
drop the context of the whole batch, ``batch_samples`` buckets a stream by (shapes, P, R) so each
batch is uniform and the per-sample dropout rate is what the config says.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from mirage_model.config import StrictConfig
from mirage_model.geometry.camera import backproject_depth, scale_intrinsics
from mirage_model.memory.base import MemoryConfig
from mirage_model.memory.latent import LATENT_STRIDE, TEMPORAL_STRIDE, LatentMemory

log = logging.getLogger(__name__)

LATENT_CHANNELS = 48
COND_CHANNELS = LATENT_CHANNELS + 1  # readout + visibility

__all__ = [
    "SampleChoices",
    "SampleConfig",
    "TrainingBatch",
    "TrainingSample",
    "batch_samples",
    "build_training_sample",
    "clip_latents",
    "collate",
    "draw_choices",
    "fit_to_clip",
    "frame_voxels",
    "layout_name",
    "make_samples",
    "sample_rng",
    "select_references",
    "valid_latent_starts",
]


# ----------------------------------------------------------------------------------------------
# Configuration and per-sample random choices
# ----------------------------------------------------------------------------------------------
class SampleConfig(StrictConfig):
    """How a clip becomes a training sample (defaults: docs/method.md §6 for 81-frame clips)."""

    target_latents: int = Field(9, ge=2, description="target latents (9 = 33 pixel frames); latent 0 is the clean one")
    preceding: int = Field(2, ge=0, le=7, description="clean context latents before the target (2 = 8 frames; "
                           "at most 7, as in generation, where they come from the previous chunk's 9)")
    t0_min: int = Field(8, ge=0, description="earliest first pixel frame of the target (a multiple of 4)")
    t0_max: int = Field(48, ge=0, description="latest first pixel frame of the target (a multiple of 4)")
    drop_preceding_p: float = Field(0.1, ge=0, le=1, description="probability of dropping the preceding context")
    text_dropout: float = Field(0.1, ge=0, le=1, description="probability of replacing the prompt by ''")
    references: int = Field(0, ge=0, description="max reference latents retrieved by view overlap (0: off)")
    reference_voxel: float = Field(0.1, gt=0, allow_inf_nan=False,
                                   description="voxel size of the reference overlap test, scene units")
    reference_min_iou: float = Field(0.04, ge=0, le=1, description="voxel IoU a reference needs with the target")
    drop_references_p: float = Field(0.1, ge=0, le=1, description="probability of no references for a sample")
    drop_memory_p: float = Field(0.0, ge=0, le=1, description="probability of zeroing the memory conditioning "
                                 "(target, context and references): teaches a model trained from scratch to "
                                 "generate without memory too")
    memory_from: Literal["t0", "history"] = Field(
        "t0", description="what the memory holds: frame t0's latent (§6), or the clip's latents before the "
        "context window (history: what the model cannot see otherwise, docs/method.md §13)")
    fit_short_clips: bool = Field(True, description="a clip too short for this layout gets a shorter one (fewer "
                                  "preceding latents, a shorter 4n + 1 target; see fit_to_clip) instead of no sample")

    @field_validator("target_latents", "preceding", "t0_min", "t0_max", "references", mode="before")
    @classmethod
    def _whole_number(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"expected an int, got {v!r}")
        return int(v)

    @field_validator("t0_min", "t0_max")
    @classmethod
    def _latent_camera(cls, v: int) -> int:
        if v % TEMPORAL_STRIDE:
            raise ValueError(f"must be a multiple of {TEMPORAL_STRIDE} (a latent-frame camera), got {v}")
        return v

    @model_validator(mode="after")
    def _range(self) -> SampleConfig:
        if self.t0_min > self.t0_max:
            raise ValueError(f"t0_min ({self.t0_min}) > t0_max ({self.t0_max})")
        return self

    def layout(self) -> dict[str, Any]:
        """This config's ``SampleConfig`` keys as JSON values (a subclass's own keys, such as where
        the samples are read from, left out): what a trained world records of its samples."""
        return self.model_dump(mode="json", include=set(SampleConfig.model_fields))


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """A numpy Generator seeded by ``(seed, epoch, sha256(key))``: the same anywhere, any process."""
    if int(seed) < 0 or int(epoch) < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    digest = hashlib.sha256(str(key).encode("utf-8")).digest()
    words = [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), *words]))


@dataclass(frozen=True)
class SampleChoices:
    """The random decisions for one sample: latent index m of t0 and the dropouts."""

    m: int
    drop_preceding: bool
    drop_text: bool
    drop_references: bool
    drop_memory: bool = False

    @property
    def t0(self) -> int:
        return TEMPORAL_STRIDE * self.m


def valid_latent_starts(n_latents: int, config: SampleConfig,
                        depth_frames: Sequence[int] | None = None) -> list[int]:
    """Latent indices m allowed as the target's first latent for a clip of ``n_latents`` latents.

    ``m >= preceding``, ``m + target_latents - 1 <= n_latents - 1``, ``t0_min <= 4m <= t0_max`` and,
    when ``depth_frames`` is given, frame 4m has a depth map.
    """
    lo = max(config.preceding, -(-config.t0_min // TEMPORAL_STRIDE))
    hi = min(config.t0_max // TEMPORAL_STRIDE, n_latents - config.target_latents)
    have = None if depth_frames is None else {int(f) for f in depth_frames}
    return [m for m in range(lo, hi + 1) if have is None or TEMPORAL_STRIDE * m in have]


def fit_to_clip(config: SampleConfig, n_latents: int,
                depth_frames: Sequence[int] | None = None) -> SampleConfig | None:
    """The sample layout a clip of ``n_latents`` latents supports: ``config`` itself when it has a
    valid start, else (with ``fit_short_clips``) the longest shorter layout -- the target shrinks
    first (down to 2 latents, 5 frames), then the preceding context; t0 bounds follow. None when
    even that does not fit (or a depth map is missing at every candidate t0)."""
    if valid_latent_starts(n_latents, config, depth_frames):
        return config
    if not config.fit_short_clips or n_latents < 2:
        return None
    target = max(2, min(config.target_latents, n_latents - config.preceding))
    for preceding in range(min(config.preceding, n_latents - target), -1, -1):
        t0_min = TEMPORAL_STRIDE * preceding
        t0_max = max(t0_min, min(config.t0_max, TEMPORAL_STRIDE * (n_latents - target)))
        fitted = config.model_copy(update={"target_latents": target, "preceding": preceding,
                                           "t0_min": min(config.t0_min, t0_min), "t0_max": t0_max})
        if valid_latent_starts(n_latents, fitted, depth_frames):
            return fitted
    return None


def layout_name(config: SampleConfig) -> str:
    """``"T9_P2"``: target and preceding latents of a layout (for manifests and metrics)."""
    return f"T{config.target_latents}_P{config.preceding}"


def draw_choices(rng: np.random.Generator, starts: Sequence[int], config: SampleConfig) -> SampleChoices:
    """Draw t0 and the dropouts; always five uniforms in a fixed order (t0 never depends on the rates)."""
    if not starts:
        raise ValueError("draw_choices: no valid start")
    u = rng.random(5)
    m = int(starts[min(int(u[0] * len(starts)), len(starts) - 1)])
    return SampleChoices(m=m, drop_preceding=bool(u[1] < config.drop_preceding_p),
                         drop_text=bool(u[2] < config.text_dropout),
                         drop_references=bool(u[3] < config.drop_references_p),
                         drop_memory=bool(u[4] < config.drop_memory_p))


# ----------------------------------------------------------------------------------------------
# Samples and batches
# ----------------------------------------------------------------------------------------------
@dataclass
class TrainingSample:
    """One training sample (tensors without a batch dimension).

    target (48, Tt, h, w) float32, latent 0 clean; context (48, P, h, w) with P in {0, preceding};
    cond (49, Tt, h, w) and context_cond (49, P, h, w): memory readout + visibility; references
    (48, R, h, w) / reference_cond (49, R, h, w) with R = 0 unless ``SampleConfig.references``;
    reference_latents: their latent indices in the clip.
    """

    key: str
    target: torch.Tensor
    context: torch.Tensor
    cond: torch.Tensor
    context_cond: torch.Tensor
    prompt: str
    t0: int
    references: torch.Tensor | None = None
    reference_cond: torch.Tensor | None = None
    reference_latents: list[int] = field(default_factory=list)
    dropped_preceding: bool = False
    dropped_text: bool = False
    hole_rate: float = 0.0
    text: torch.Tensor | None = None
    """The prompt's precomputed encoder states, (n_tokens, D) without padding (the empty prompt's
    when the caption was dropped); None when the sample carries none (the trainer encodes ``prompt``)."""

    def __post_init__(self) -> None:
        if self.references is None:
            c, _, h, w = self.target.shape
            self.references = self.target.new_zeros((c, 0, h, w))
            self.reference_cond = self.cond.new_zeros((self.cond.shape[0], 0, h, w))

    @property
    def n_context(self) -> int:
        return int(self.context.shape[1])

    @property
    def n_references(self) -> int:
        return int(self.references.shape[1])


@dataclass
class TrainingBatch:
    """``collate``'s output: the TrainingSample fields stacked along a leading batch dimension."""

    keys: list[str]
    target: torch.Tensor        # (B, 48, Tt, h, w)
    context: torch.Tensor       # (B, 48, P, h, w), P may be 0
    cond: torch.Tensor          # (B, 49, Tt, h, w)
    context_cond: torch.Tensor  # (B, 49, P, h, w)
    prompts: list[str]
    t0: torch.Tensor            # (B,) int64
    references: torch.Tensor    # (B, 48, R, h, w), R may be 0
    reference_cond: torch.Tensor
    texts: list[torch.Tensor] | None = None  # precomputed prompt states (n_i, D), when every sample has them

    def __len__(self) -> int:
        return len(self.keys)

    def memory_cells(self) -> tuple[int, int]:
        """(target cells the memory covers, target cells): what the memory gives this batch
        (a sample with its memory dropped counts as uncovered)."""
        vis = self.cond[:, -1]
        return int(torch.count_nonzero(vis > 0.5)), int(vis.numel())

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> TrainingBatch:
        """A copy with every tensor (except t0) on ``device`` (and float tensors in ``dtype``)."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and f.name != "t0":
                v = v.to(device=device, dtype=dtype) if dtype is not None else v.to(device)
            moved[f.name] = v
        return TrainingBatch(**moved)


def _shape_key(s: TrainingSample) -> tuple:
    return (tuple(s.target.shape), tuple(s.cond.shape))


def collate(samples: Sequence[TrainingSample],
            context_mode: Literal["min", "strict"] = "min") -> TrainingBatch:
    """Stack samples into a batch.

    Rule: targets and conds must have the same shape. The batch's context length is the minimum
    P over the samples (each keeps its *last* P latents and their conditioning, the ones nearest
    the target, as in generation); references likewise keep the minimum R (their first R, in
    time order). ``context_mode="strict"`` raises instead when P or R differ. Use
    ``batch_samples`` to form uniform batches from a stream.
    """
    if not samples:
        raise ValueError("collate: empty batch")
    shapes = {_shape_key(s) for s in samples}
    if len(shapes) > 1:
        raise ValueError(f"collate: samples have different target/cond shapes {sorted(shapes)}")
    ps = [s.n_context for s in samples]
    rs = [s.n_references for s in samples]
    if context_mode not in ("min", "strict"):
        raise ValueError(f"collate: context_mode must be 'min' or 'strict', got {context_mode!r}")
    if context_mode == "strict" and (len(set(ps)) > 1 or len(set(rs)) > 1):
        raise ValueError(f"collate: samples have different context lengths {ps} / references {rs}")
    p, r = min(ps), min(rs)

    def last(x: torch.Tensor, n: int) -> torch.Tensor:
        return x[:, x.shape[1] - n:]

    return TrainingBatch(
        keys=[s.key for s in samples],
        target=torch.stack([s.target for s in samples]),
        context=torch.stack([last(s.context, p) for s in samples]),
        cond=torch.stack([s.cond for s in samples]),
        context_cond=torch.stack([last(s.context_cond, p) for s in samples]),
        prompts=[s.prompt for s in samples],
        t0=torch.tensor([s.t0 for s in samples], dtype=torch.int64),
        references=torch.stack([s.references[:, :r] for s in samples]),
        reference_cond=torch.stack([s.reference_cond[:, :r] for s in samples]),
        texts=[s.text for s in samples] if all(s.text is not None for s in samples) else None,
    )


def batch_samples(samples: Iterable[TrainingSample], batch_size: int, drop_last: bool = False,
                  max_pending: int = 64) -> Iterator[TrainingBatch]:
    """Group a stream into uniform batches (same shapes, same P, same R) and collate them.

    Samples wait in a bucket per (shapes, P, R) until it holds ``batch_size``; when more than
    ``max_pending`` samples wait in total, the fullest bucket is emitted short (so a rare bucket
    cannot hold samples forever). At the end the remaining buckets are emitted unless
    ``drop_last``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    buckets: OrderedDict[tuple, list[TrainingSample]] = OrderedDict()
    pending = 0
    for s in samples:
        k = (_shape_key(s), s.n_context, s.n_references)
        buckets.setdefault(k, []).append(s)
        pending += 1
        if len(buckets[k]) >= batch_size:
            pending -= len(buckets[k])
            yield collate(buckets.pop(k), "strict")
        elif pending > max_pending:
            fullest = max(buckets, key=lambda b: len(buckets[b]))
            pending -= len(buckets[fullest])
            yield collate(buckets.pop(fullest), "strict")
    for k in list(buckets):
        if not drop_last or len(buckets[k]) == batch_size:
            yield collate(buckets.pop(k), "strict")


# ----------------------------------------------------------------------------------------------
# Latents
# ----------------------------------------------------------------------------------------------
def _n_latents(n_frames: int) -> int:
    if n_frames < 1 or (n_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"the clip must have {TEMPORAL_STRIDE}n + 1 frames, got {n_frames}")
    return (n_frames - 1) // TEMPORAL_STRIDE + 1


def clip_latents(sample: Mapping[str, Any], vae=None, device: str | torch.device | None = None) -> torch.Tensor:
    """The whole clip's normalised latents (48, T_lat, H/16, W/16) float32.

    From ``sample["latents"]`` when stored (shape checked), else ``vae`` encodes all frames in one
    call (no grad). Raises ValueError when neither is available or shapes disagree.
    """
    key = sample.get("__key__")
    frames = sample["frames"]
    t, H, W = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    n_lat = _n_latents(t)
    want = (LATENT_CHANNELS, n_lat, H // LATENT_STRIDE, W // LATENT_STRIDE)
    stored = sample.get("latents")
    if stored is not None:
        lat = torch.as_tensor(np.asarray(stored))
        if tuple(lat.shape) != want:
            raise ValueError(f"sample {key!r}: stored latents have shape {tuple(lat.shape)}, expected {want} "
                             f"(48 channels, {n_lat} latents for {t} frames, {H}x{W} / {LATENT_STRIDE})")
        lat = lat.to(torch.float32)
        if not bool(torch.isfinite(lat).all()):
            raise ValueError(f"sample {key!r}: stored latents contain NaN/inf")
        return lat if device is None else lat.to(device)
    if vae is None:
        raise ValueError(f"sample {key!r}: no stored latents and no VAE to encode the clip with")
    from mirage_model.vae import encode_video

    video = torch.as_tensor(np.asarray(frames)).to(torch.float32).div(127.5).sub(1.0)
    video = video.permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    with torch.no_grad():
        lat = encode_video(vae, video)[0].to(torch.float32)
    if tuple(lat.shape) != want:
        raise ValueError(f"sample {key!r}: the VAE returned latents of shape {tuple(lat.shape)}, expected {want}")
    return lat if device is None else lat.to(device)


# ----------------------------------------------------------------------------------------------
# References (optional)
# ----------------------------------------------------------------------------------------------
def frame_voxels(depth: torch.Tensor, static: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor,
                 image_size: tuple[int, int], voxel_size: float) -> torch.Tensor:
    """Sorted unique int64 keys of the ``voxel_size`` voxels a depth map's static points fall in.

    ``depth``/``static`` (h, w) at any resolution; ``K`` in pixels of ``image_size`` (rescaled to the
    depth map's grid with the project's pixel-centre convention).
    """
    depth = torch.as_tensor(depth).to(torch.float32)
    static = torch.as_tensor(static).bool()
    K_d = scale_intrinsics(torch.as_tensor(K, dtype=torch.float64), tuple(image_size), tuple(depth.shape))
    pts = backproject_depth(depth, K_d, torch.as_tensor(c2w, dtype=torch.float64))
    ok = static & (depth > 0) & torch.isfinite(depth)
    ijk = torch.floor(pts[ok].to(torch.float64) / float(voxel_size)).to(torch.int64)
    if len(ijk) == 0:
        return torch.zeros(0, dtype=torch.int64)
    limit = 1 << 20
    if bool((ijk.abs() >= limit).any()):
        raise ValueError(f"voxel size {voxel_size:g} too small for the scene extent")
    ijk = ijk + limit
    return torch.unique((ijk[:, 0] << 42) | (ijk[:, 1] << 21) | ijk[:, 2])


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0
    inter = int(torch.isin(a, b).sum())
    return inter / (len(a) + len(b) - inter)


def select_references(voxels: Mapping[int, torch.Tensor], target_frames: Sequence[int],
                      candidate_frames: Sequence[int], min_iou: float = 0.04, max_refs: int = 4
                      ) -> list[tuple[int, float]]:
    """Earlier frames whose voxelised content overlaps the target's.

    ``voxels`` maps a pixel frame to its ``frame_voxels``. The target's content is the union of its
    frames' voxels; each candidate's IoU with it is computed and those with IoU >= ``min_iou`` are
    returned as ``(frame, iou)``, best first (ties: earlier frame first), at most ``max_refs``.
    """
    tv = [voxels[f] for f in target_frames if f in voxels]
    target = torch.unique(torch.cat(tv)) if tv else torch.zeros(0, dtype=torch.int64)
    scored = [(int(f), _iou(voxels[f], target)) for f in candidate_frames if f in voxels]
    good = [s for s in scored if s[1] >= min_iou]
    good.sort(key=lambda s: (-s[1], s[0]))
    return good[:max_refs]


# ----------------------------------------------------------------------------------------------
# Building one sample
# ----------------------------------------------------------------------------------------------
def _check_decoded(sample: Mapping[str, Any]) -> None:
    key = sample.get("__key__")
    missing = [k for k in ("frames", "c2w", "K", "depth", "static") if k not in sample]
    if missing:
        raise ValueError(f"sample {key!r}: missing decoded field(s) {missing}")
    frames = sample["frames"]
    if getattr(frames, "ndim", 0) != 4 or frames.shape[-1] != 3:
        raise ValueError(f"sample {key!r}: frames must be (T, H, W, 3), got {getattr(frames, 'shape', None)}")
    t, H, W = frames.shape[:3]
    if H % LATENT_STRIDE or W % LATENT_STRIDE:
        raise ValueError(f"sample {key!r}: frame size {H}x{W} is not a multiple of {LATENT_STRIDE}")
    for name, tail in (("c2w", (4, 4)), ("K", (3, 3))):
        shape = tuple(np.shape(sample[name]))
        if shape != (t, *tail):
            raise ValueError(f"sample {key!r}: {name} has shape {shape}, expected {(t, *tail)}")
    d, s = np.shape(sample["depth"]), np.shape(sample["static"])
    n_d = len(sample.get("depth_frames", range(t)))
    if len(d) != 3 or d != s or d[0] != n_d:
        raise ValueError(f"sample {key!r}: depth {d} and static {s} must both be ({n_d}, h, w)")


def build_training_sample(sample: Mapping[str, Any], config: SampleConfig | None = None, *,
                          seed: int = 0, epoch: int = 0, vae=None,
                          device: str | torch.device | None = None,
                          memory_config: MemoryConfig | None = None) -> TrainingSample:
    """Turn one decoded shard sample (``mirage_model.io.sample_format.decode_sample``) into a TrainingSample.

    Deterministic in ``(seed, epoch, sample["__key__"])``. ``vae`` is only used when the sample
    has no stored latents. ``device``: where latents/memory live (default: the VAE's device, else
    CPU). Raises ValueError (naming the key) for clips too short or inconsistent.
    """
    config = config or SampleConfig()
    _check_decoded(sample)
    key = str(sample.get("__key__", ""))
    frames = sample["frames"]
    t, H, W = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    image_size = (H, W)
    if t < 1 or (t - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"sample {key!r}: {t} frames; a clip must have {TEMPORAL_STRIDE}n + 1 frames")
    n_lat = _n_latents(t)
    depth_frames = [int(f) for f in sample.get("depth_frames", range(t))]
    config = fit_to_clip(config, n_lat, depth_frames) or config
    starts = valid_latent_starts(n_lat, config, depth_frames)
    if not starts:
        need = TEMPORAL_STRIDE * (max(config.preceding, -(-config.t0_min // TEMPORAL_STRIDE))
                                  + config.target_latents - 1) + 1
        raise ValueError(
            f"sample {key!r}: clip too short for a training sample: {t} frames ({n_lat} latents), but "
            f"{config.preceding} preceding + {config.target_latents} target latents with t0 in "
            f"[{config.t0_min}, {config.t0_max}] need at least {need} frames (and a depth map at t0)")
    choices = draw_choices(sample_rng(seed, epoch, key), starts, config)
    m, t0 = choices.m, choices.t0

    if device is None:
        device = next(vae.parameters()).device if vae is not None and sample.get("latents") is None \
            else torch.device("cpu")
    latents = clip_latents(sample, vae, device)
    target = latents[:, m:m + config.target_latents].contiguous()

    # memory from frame t0 (or the history before the context); the aux-resolution depth/mask are
    # resized by the memory itself
    di = depth_frames.index(t0)
    depth = torch.as_tensor(np.asarray(sample["depth"][di], dtype=np.float32))
    static = torch.as_tensor(np.asarray(sample["static"][di])).bool()
    if not bool(torch.isfinite(depth).all()):
        raise ValueError(f"sample {key!r}: depth of frame {t0} contains NaN/inf")
    K_all = torch.as_tensor(np.asarray(sample["K"]), dtype=torch.float64)
    c2w_all = torch.as_tensor(np.asarray(sample["c2w"]), dtype=torch.float64)
    memory = LatentMemory(LATENT_CHANNELS, memory_config, device=device)
    if config.memory_from == "t0":
        memory.insert(latents[:, m], depth, K_all[t0], c2w_all[t0], image_size,
                      exclude=(~static) | (depth <= 0), frame_index=t0)
    else:
        seeds = [k for k in range(0, m - config.preceding) if TEMPORAL_STRIDE * k in depth_frames]
        if not seeds:
            raise ValueError(f"sample {key!r}: memory_from='history' needs a depth map before the context "
                             f"window (latents 0..{m - config.preceding - 1}); t0 = {t0}")
        for k in seeds:
            f = TEMPORAL_STRIDE * k
            d = torch.as_tensor(np.asarray(sample["depth"][depth_frames.index(f)], dtype=np.float32))
            st = torch.as_tensor(np.asarray(sample["static"][depth_frames.index(f)])).bool()
            if not bool(torch.isfinite(d).all()):
                raise ValueError(f"sample {key!r}: depth of frame {f} contains NaN/inf")
            memory.insert(latents[:, k], d, K_all[f], c2w_all[f], image_size, exclude=(~st) | (d <= 0), frame_index=f)

    def read(frames_idx: list[int]) -> torch.Tensor:
        h, w = H // LATENT_STRIDE, W // LATENT_STRIDE
        if not frames_idx:
            return torch.zeros((COND_CHANNELS, 0, h, w), device=device)
        out = memory.read(K_all[frames_idx], c2w_all[frames_idx], image_size=image_size)
        return out.conditioning(torch.float32)

    target_frames = [t0 + TEMPORAL_STRIDE * j for j in range(config.target_latents)]
    cond = read(target_frames)
    hole_rate = 1.0 - float(cond[-1].mean())

    p = 0 if choices.drop_preceding else config.preceding
    context = latents[:, m - p:m].contiguous()
    context_cond = read([TEMPORAL_STRIDE * k for k in range(m - p, m)])

    refs: list[int] = []
    if config.references and not choices.drop_references:
        candidates = [TEMPORAL_STRIDE * k for k in range(0, m - config.preceding)]
        wanted = [f for f in candidates + target_frames if f in depth_frames]
        K_np = np.asarray(sample["K"])
        voxels = {f: frame_voxels(np.asarray(sample["depth"][depth_frames.index(f)], dtype=np.float32),
                                  np.asarray(sample["static"][depth_frames.index(f)]),
                                  K_np[f], np.asarray(sample["c2w"])[f], image_size, config.reference_voxel)
                  for f in wanted}
        picked = select_references(voxels, target_frames, candidates, config.reference_min_iou, config.references)
        refs = sorted(f // TEMPORAL_STRIDE for f, _ in picked)
    references = latents[:, refs].contiguous()
    reference_cond = read([TEMPORAL_STRIDE * k for k in refs])

    if choices.drop_memory:
        cond, context_cond, reference_cond = cond.zero_(), context_cond.zero_(), reference_cond.zero_()
        hole_rate = 1.0
    meta = sample.get("meta") or {}
    prompt = "" if choices.drop_text else str(meta.get("caption", "") or "")
    states = sample.get("text")
    text = None if states is None else states["empty" if choices.drop_text else "caption"]
    return TrainingSample(key=key, target=target, context=context, cond=cond, context_cond=context_cond,
                          prompt=prompt, t0=t0, references=references, reference_cond=reference_cond,
                          reference_latents=refs, dropped_preceding=choices.drop_preceding,
                          dropped_text=choices.drop_text, hole_rate=hole_rate, text=text)


# ----------------------------------------------------------------------------------------------
# Raw shard samples -> training samples, robustly
# ----------------------------------------------------------------------------------------------
ErrorCallback = Callable[[str, str], None]


def make_samples(raw_samples: Iterable[Mapping[str, Any]], config: SampleConfig | None = None, *,
                 seed: int = 0, epoch: int = 0, vae=None, device: str | torch.device | None = None,
                 memory_config: MemoryConfig | None = None,
                 on_error: ErrorCallback | None = None) -> Iterator[TrainingSample]:
    """Yield a TrainingSample per raw (bytes) or already decoded shard sample; never raise per sample.

    A sample that cannot be decoded (corrupt or missing member) or built (too short, bad shapes,
    no latents and no VAE, ...) is skipped and reported as ``on_error(key, reason)``, with
    ``reason`` = ``"decode: <error>"`` or ``"build: <error>"`` (default: a logged warning).
    """
    from mirage_model.io.sample_format import decode_sample

    config = config or SampleConfig()

    def report(key: str, reason: str) -> None:
        if on_error is not None:
            on_error(key, reason)
        else:
            log.warning("skipping training sample %s: %s", key, reason)

    for raw in raw_samples:
        key = str(raw.get("__key__", "<no key>")) if isinstance(raw, Mapping) else "<not a mapping>"
        if not isinstance(raw, Mapping):
            report(key, f"decode: expected a mapping of members, got {type(raw).__name__}")
            continue
        try:
            decoded = raw if "frames" in raw else decode_sample(raw)
        except Exception as exc:  # noqa: BLE001 - any corrupt member is a skipped sample
            report(key, f"decode: {type(exc).__name__}: {exc}")
            continue
        try:
            built = build_training_sample(decoded, config, seed=seed, epoch=epoch, vae=vae,
                                          device=device, memory_config=memory_config)
        except Exception as exc:  # noqa: BLE001
            report(key, f"build: {type(exc).__name__}: {exc}")
            continue
        yield built

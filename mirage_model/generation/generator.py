"""Chunked generation along a camera trajectory with a spatial memory (docs/method.md §4 sampling, §5).

Per chunk of 33 pixel frames (9 latent frames; later chunks overlap the previous one by 1 latent):
read the memory at the chunk's cameras -> (1, 49, 9, h, w) conditioning -> denoise with the UniPC
flow-matching scheduler (latent 0 is clean, timestep 0, re-pinned after every step) -> decode ->
plane-sweep depth of the 8 new latent frames' pixel frames at their known cameras (one depth per
latent cell for the latent memory, per pixel for the RGB cache) -> write them into the memory (``latent``: the denoised latents themselves, no decode/re-encode; ``rgb``: the decoded
frames; ``none``: no memory, zero conditioning).

Write-back depth and masks: see ``writeback.py`` (stereo fused with the memory's own depth readout;
frames without a stereo baseline are filled from what the memory sees, or skipped). Every cell of
a written frame is accounted for in ``chunk_stats[i]["cells"]`` (docs/method.md §2).

First-frame depth (``first_frame_depth``): a given depth map (``--synthetic`` passes the renderer's
true depth), else a monocular model from a local directory (``GenerationConfig.depth_model``), else
a fronto-parallel plane at ``GenerationConfig.first_depth_fallback`` (2.0).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler, WanTransformer3DModel
from tqdm.auto import tqdm

from mirage_model.geometry.trajectory import Trajectory
from mirage_model.memory import LatentMemory, RGBPointCache
from mirage_model.memory.base import WRITE_OUTCOMES, MemoryConfig
from mirage_model.memory.latent import latent_frame_indices
from mirage_model.model import MirageTransformer, build_transformer
from mirage_model.model.branch import MemoryBranch
from mirage_model.model.loss import append_clean_context
from mirage_model.model.presets import default_text_tokens, is_full_model
from mirage_model.model.text import (
    build_text_stack,
    build_tokenizer,
    encode_prompt,
    load_text_encoder,
    load_tokenizer,
    pad_states,
)
from mirage_model.vae import decode_latents, encode_video, load_vae

from .config import (
    CHUNK_FRAMES,
    CHUNK_STRIDE,
    DEFAULT_MAX_TEXT_LENGTH,
    DEFAULT_PRECEDING,
    FULL_MODEL_STEPS,
    GenerationConfig,
)
from .writeback import cell_depths, chunk_writeback, pixel_depths, upsample_nearest

log = logging.getLogger(__name__)



@dataclass
class GenerationResult:
    frames: np.ndarray  # (N, H, W, 3) uint8
    chunk_stats: list[dict] = field(default_factory=list)
    latents: torch.Tensor | None = None  # (48, N // 4 + 1, h, w): latent k is pixel frame 4k
    visibility: torch.Tensor | None = None  # (N // 4 + 1, h, w) bool: memory cells read for latent k
    readout: torch.Tensor | None = None  # (48, N // 4 + 1, h, w): what the memory showed latent k (0: nothing)
    settings: GenerationConfig | None = None  # the settings it ran with (MirageGenerator.settings)


def chunk_starts(n_frames: int, chunk: int = CHUNK_FRAMES, stride: int = CHUNK_STRIDE) -> list[int]:
    """First pixel frame of each chunk; ``n_frames`` must be ``chunk + stride * k``."""
    if n_frames < chunk or (n_frames - chunk) % stride:
        raise ValueError(f"trajectory must have {chunk} + {stride}k frames (33, 65, 97, ...), got {n_frames}")
    return list(range(0, n_frames - chunk + 1, stride))


MEMORY_OPS = ("read", "depth", "masks", "write")
"""The per-chunk memory operations timed in ``chunk_stats[i]["op_seconds"]`` (with "denoise", "decode")."""


class _OpTimer:
    """Accumulates wall seconds per named operation: ``with timer("read"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA, a no-op elsewhere (CPU runs stay fp32 and deterministic)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def readout_frames(vae, result: GenerationResult, hole: int = 24) -> np.ndarray | None:
    """What the memory showed each frame, decoded like the generated latents: (N, H, W, 3) uint8.

    ``result.readout`` goes through ``vae`` as one video; pixel frame f shows latent ceil(f / 4)'s
    cells, and the cells the memory left empty are painted ``hole`` (dark grey). None when the
    generation ran without memory.
    """
    if result.readout is None or result.visibility is None:
        return None
    frames = _to_uint8(decode_latents(vae, result.readout[None].to(next(vae.parameters()).device))[0])
    H, W = frames.shape[1:3]
    k = torch.div(torch.arange(len(frames)) + 3, 4, rounding_mode="floor")  # latent k covers frames 4k-3 .. 4k
    vis = result.visibility[k]
    up = vis.repeat_interleave(H // vis.shape[1], 1).repeat_interleave(W // vis.shape[2], 2).numpy()
    frames[~up] = hole
    return frames


def first_frame_depth(image: np.ndarray, config: GenerationConfig,
                      first_depth: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Depth (H, W) that seeds the memory from the first frame.

    A given depth map wins; else a monocular model from ``config.depth_model`` (relative depth,
    rescaled so its median is ``first_depth_fallback``: a single image has no metric scale, and the
    trajectory's units are relative to the scene anyway); else a fronto-parallel plane at
    ``first_depth_fallback``.
    """
    H, W = image.shape[:2]
    if first_depth is not None:
        depth = torch.as_tensor(np.asarray(first_depth), dtype=torch.float32)
        if depth.ndim != 2:
            raise ValueError(f"first_depth: expected (H, W), got shape {tuple(depth.shape)}")
        if not bool(torch.isfinite(depth).all()):
            raise ValueError("first_depth: contains NaN or inf")
        return depth
    if config.depth_model:
        from mirage_model.perception.depth import learned_depth

        result = learned_depth(image, config.depth_model)[0]
        depth = result.depth
        if not bool(result.valid.any()):
            raise ValueError(f"depth model {config.depth_model}: no valid depth for the first frame")
        return depth * (config.first_depth_fallback / float(depth[result.valid].median()))
    return torch.full((H, W), float(config.first_depth_fallback))


def _preset_text_encoder(preset: str, seed: int, device: torch.device, dtype: torch.dtype):
    """A preset's random text encoder, built on ``device`` in ``dtype``."""
    with device:
        _, encoder = build_text_stack(preset, seed=seed)
    return encoder.to(device=device, dtype=dtype)


class MirageGenerator:
    def __init__(self, transformer: MirageTransformer, vae, tokenizer, text_encoder):
        """``vae`` and ``text_encoder``: the model, or a zero-argument callable that builds it the
        first time it is used (training on shards with cached latents never encodes a video, and on
        shards with precomputed text states never encodes a prompt, so its workers never load them)."""
        self.transformer = transformer.eval()
        self._vae = vae
        self._text_encoder = text_encoder
        self.record: dict = {}  # the loaded checkpoint's model.json (mirage_model.model.checkpoint)
        self.record_source: str | None = None
        self._vae_device: torch.device | None = None
        self._text_device: torch.device | None = None
        self.tokenizer = tokenizer
        self.text_tokens = DEFAULT_MAX_TEXT_LENGTH  # the base model's prompt tokens (from_preset / from_pretrained)
        self.full_model = False  # Wan2.2-TI2V-5B (a model directory or the ti2v-5b preset): its sampling defaults

    @property
    def vae(self):
        if not isinstance(self._vae, torch.nn.Module):
            log.info("loading the VAE (first use)")
            vae = self._vae()
            self._vae = vae if self._vae_device is None else vae.to(self._vae_device)
        return self._vae

    @vae.setter
    def vae(self, vae) -> None:
        self._vae = vae

    @property
    def vae_loaded(self) -> bool:
        """Whether the VAE has been built (see ``lazy_vae``)."""
        return isinstance(self._vae, torch.nn.Module)

    @property
    def text_encoder(self):
        if not isinstance(self._text_encoder, torch.nn.Module):
            log.info("loading the text encoder (first use)")
            encoder = self._text_encoder()
            self._text_encoder = encoder if self._text_device is None else encoder.to(self._text_device)
        return self._text_encoder

    @text_encoder.setter
    def text_encoder(self, encoder) -> None:
        self._text_encoder = encoder

    @property
    def text_encoder_loaded(self) -> bool:
        """Whether the text encoder has been built (see ``lazy_text``)."""
        return isinstance(self._text_encoder, torch.nn.Module)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, preset: str = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, lazy_vae: bool = False,
                    lazy_text: bool = False) -> MirageGenerator:
        """A random-weight stack: transformer + zero-init branch, VAE and an offline text encoder.

        ``tiny`` / ``small``: tests and CPU demos (tiny VAE). ``ti2v-5b``: the full-size shapes for GPU
        benchmarks (5.0 B backbone + 2.6 B branch, full 705 M VAE, a 1-layer text encoder of the real
        width); it is built directly on ``device`` and refuses the CPU (tens of GB in fp32).
        """
        if preset not in ("tiny", "small", "ti2v-5b"):
            raise ValueError(f"unknown generator preset {preset!r}; choose 'tiny', 'small' or 'ti2v-5b'")
        device = torch.device(device)
        if preset == "ti2v-5b" and device.type == "cpu":
            raise ValueError("preset 'ti2v-5b' is GPU-only (7.6 B params with the branch); use --device cuda")
        with device:  # build parameters where they will live (no 30 GB host copy for the 5B shapes)
            backbone = build_transformer(preset, seed=seed, dtype=dtype)
            transformer = MirageTransformer.from_backbone(backbone, seed=seed).to(dtype)
        text = functools.partial(_preset_text_encoder, preset, seed, device, dtype)
        vae = functools.partial(load_vae, "full" if preset == "ti2v-5b" else "tiny", seed=seed,
                                dtype=torch.float32, device=device)  # the VAE stays float32 (see from_pretrained)
        gen = cls(transformer, vae if lazy_vae else vae(), build_tokenizer(), text if lazy_text else text())
        gen.text_tokens, gen.full_model = default_text_tokens(preset), preset == "ti2v-5b"
        return gen

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, branch_dir: str | os.PathLike | None = None,
                        lora: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                        device: str = "cpu", lazy_vae: bool = False,
                        vae_dtype: torch.dtype | None = torch.float32, lazy_text: bool = False) -> MirageGenerator:
        """A local Wan2.2-TI2V-5B-Diffusers-layout directory (``transformer/ vae/ text_encoder/ tokenizer/``).

        ``branch_dir``: a saved ``MemoryBranch`` (else a zero-initialised, no-op branch).
        ``lora``: a directory with ``pytorch_lora_weights.safetensors`` or a LoRA ``.safetensors`` file.
        ``lazy_vae`` / ``lazy_text``: load ``vae/`` / ``text_encoder/`` only when first used.
        ``dtype``: the transformer's, the branch's and the text encoder's weights (e.g. bfloat16 on
        GPUs), loaded in that dtype. ``vae_dtype``: the VAE's, float32 by default whatever ``dtype``
        is (the Wan2.2 VAE is documented and measured in float32).
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model directory {root} does not exist")
        for sub in ("transformer", "vae", "text_encoder", "tokenizer"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"{root}: missing component {sub!r} (expected {root / sub}/)")
        backbone = WanTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=dtype,
                                                         local_files_only=True).eval()
        if branch_dir is not None:
            if not Path(branch_dir).is_dir():
                raise FileNotFoundError(f"branch directory {branch_dir} does not exist")
            branch = MemoryBranch.from_pretrained(branch_dir, torch_dtype=dtype)
            transformer = MirageTransformer(backbone, branch)
        else:
            transformer = MirageTransformer.from_backbone(backbone)
        if lora is not None:
            lp = Path(lora)
            if not lp.exists():
                raise FileNotFoundError(f"LoRA {lp} does not exist")
            from mirage_model.model.lora import load_lora

            load_lora(backbone, lp)
        vae = functools.partial(load_vae, root, dtype=vae_dtype)
        vae = vae if lazy_vae else vae()
        tokenizer = load_tokenizer(root)
        text = functools.partial(load_text_encoder, root, dtype=dtype)
        gen = cls(transformer, vae, tokenizer, text if lazy_text else text())
        gen.full_model = is_full_model(backbone.config.text_dim)
        gen.text_tokens = default_text_tokens(None, model_dir=str(root))
        return gen.to(device)

    def load_training_checkpoint(self, directory: str | os.PathLike) -> MirageGenerator:
        """Load a local ``mirage train`` checkpoint directory (or a world's ``model/``): branch,
        LoRA (its rank and alpha from the checkpoint's ``lora/`` metadata) and, when it holds them,
        the backbone's weights; its record (``model.json``) then sets what :meth:`settings` checks.
        A model built from the same preset or ``model_dir`` as the training run matches it exactly."""
        from mirage_model.model.checkpoint import load_checkpoint

        self.record = load_checkpoint(self.transformer, directory)
        self.record_source = str(directory)
        self.transformer.eval()
        return self

    def settings(self, config: GenerationConfig | None = None) -> GenerationConfig:
        """``config`` with what it leaves to the model filled in: ``preceding`` and
        ``max_text_length`` from the loaded checkpoint's record (or, for a model without one, the
        default context and the base model's prompt tokens: 512 for the full model, 64 for the CPU
        presets), ``device: auto`` resolved. A value given explicitly that differs from what the model
        was trained with is a ValueError naming both."""
        config = config or GenerationConfig()
        trained = {"preceding": (self.record.get("sample") or {}).get("preceding"),
                   "max_text_length": self.record.get("max_text_length")}
        defaults = {"preceding": DEFAULT_PRECEDING, "max_text_length": self.text_tokens}
        update = {}
        for key, value in trained.items():
            given = getattr(config, key)
            if given is None:
                update[key] = defaults[key] if value is None else value
            elif value is not None and given != value:
                raise ValueError(f"generation {key}={given}, but the checkpoint {self.record_source} was trained with "
                                 f"{key}={value}: leave {key} unset (null) to use the model's")
        if config.device == "auto":
            update["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if "steps" not in config.model_fields_set and self.full_model:
            update["steps"] = FULL_MODEL_STEPS  # the full model's sampling; the CPU presets keep their few steps
        return config.model_copy(update=update)

    def to(self, device, transformer: bool = True) -> MirageGenerator:
        """Move the model (``transformer=False``: all but the transformer, e.g. one that FSDP has
        already sharded onto ``device``); a VAE not built yet is built there."""
        if transformer:
            self.transformer.to(device)
        if self.vae_loaded:
            self.vae.to(device)
        else:
            self._vae_device = torch.device(device)
        if self.text_encoder_loaded:
            self.text_encoder.to(device)
        else:
            self._text_device = torch.device(device)
        return self

    # ------------------------------------------------------------------------------------------
    def _scheduler(self, shift: float) -> UniPCMultistepScheduler:
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, num_train_timesteps=1000)

    @property
    def memory_config(self) -> MemoryConfig:
        """The latent memory's settings the model was trained with (its record's ``memory``; the
        defaults for a model without one). The RGB twin keeps the defaults: one colour per surface."""
        return MemoryConfig(**(self.record.get("memory") or {}))

    def _new_memory(self, kind: str, device):
        if kind == "latent":
            return LatentMemory(channels=48, config=self.memory_config, device=device)
        if kind == "rgb":
            return RGBPointCache(vae=self.vae, device=device)
        return None

    @torch.no_grad()
    def _denoise(self, clean0: torch.Tensor, cond: torch.Tensor, text: torch.Tensor, n_latents: int,
                 config: GenerationConfig, generator: torch.Generator, bar=None,
                 context: torch.Tensor | None = None, context_cond: torch.Tensor | None = None,
                 negative: torch.Tensor | None = None) -> torch.Tensor:
        """Sample (1, 48, n_latents, h, w) with latent 0 pinned to ``clean0`` (1, 48, 1, h, w).

        ``negative``: the negative prompt's text states; with it, each step's velocity is
        ``v_neg + guidance_scale * (v - v_neg)`` (classifier-free guidance on the text only: both
        passes see the same memory readout).

        ``context`` (1, 48, P, h, w): clean preceding latents appended after the target with timestep
        0 (``append_clean_context``, the layout the loss trains with); they only inform the target.
        """
        device = clean0.device
        dtype = self.transformer.dtype
        _, c, _, h, w = clean0.shape
        p_t, p_h, p_w = self.transformer.config.patch_size
        x = torch.randn((1, c, n_latents, h, w), generator=generator, dtype=torch.float32).to(device)
        x[:, :, :1] = clean0
        frame_mask = torch.ones(n_latents, dtype=torch.float32, device=device)
        frame_mask[0] = 0.0  # latent 0 is clean: timestep 0
        tokens_per_frame = (h // p_h) * (w // p_w)
        token_mask = frame_mask[::p_t].repeat_interleave(tokens_per_frame)[None]  # (1, tokens), frame-major
        scheduler = self._scheduler(config.shift)
        scheduler.set_timesteps(config.steps, device=device)
        # a bf16 backbone with float32 trained parts (training's model.dtype): bf16 compute throughout
        mixed = any(p.dtype != dtype for p in self.transformer.parameters())
        for t in scheduler.timesteps:
            timestep = token_mask * t.to(torch.float32)
            x_in, timestep, cond_in = x, timestep, cond
            if context is not None:
                x_in, timestep, cond_in = append_clean_context(x, timestep, cond, context, context_cond,
                                                               self.transformer.config.patch_size)
            with (torch.autocast(device.type, dtype=torch.bfloat16) if mixed
                  else _autocast(device, config.autocast and dtype == torch.float32)):
                v = self.transformer(x_in.to(dtype), timestep, text.to(dtype), cond_in.to(dtype)).float()
                if negative is not None:
                    v_neg = self.transformer(x_in.to(dtype), timestep, negative.to(dtype), cond_in.to(dtype)).float()
                    v = v_neg + config.guidance_scale * (v - v_neg)
            x = scheduler.step(v[:, :, :n_latents], t, x, return_dict=False)[0]
            x[:, :, :1] = clean0  # re-pin the clean latent after every step
            if bar is not None:
                bar.update(1)
        return x

    @staticmethod
    def _read_cameras(memory, K: torch.Tensor, c2w: torch.Tensor, image_size, shape, device) -> torch.Tensor:
        """Conditioning (1, 49, P, h, w) for P single cameras (one-frame reads; zeros without memory)."""
        if memory is None:
            return torch.zeros(shape, device=device)
        conds = [memory.read_chunk(K[i:i + 1], c2w[i:i + 1], image_size).conditioning(torch.float32)
                 for i in range(len(K))]
        return torch.cat(conds, dim=1)[None].to(device)

    @torch.no_grad()
    def generate(self, first_image: np.ndarray, prompt: str | torch.Tensor, trajectory: Trajectory,
                 config: GenerationConfig | None = None, first_depth: np.ndarray | torch.Tensor | None = None
                 ) -> GenerationResult:
        """Generate ``len(trajectory)`` frames (33 + 32k) starting from ``first_image`` (H, W, 3) uint8,
        with ``config`` completed by :meth:`settings` (recorded in the result). ``prompt``: the text,
        or its encoder states without padding, (n_tokens, D) (e.g. precomputed into the shards)."""
        config = self.settings(config)
        img = np.asarray(first_image)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"first_image: expected uint8 (H, W, 3), got {img.dtype} {img.shape}")
        H, W = img.shape[:2]
        if H % 32 or W % 32:
            raise ValueError(f"first_image: height and width must be multiples of 32, got {H}x{W}")
        if tuple(trajectory.image_size) != (H, W):
            trajectory = trajectory.resized((H, W))
        starts = chunk_starts(len(trajectory), config.chunk_frames)
        device = torch.device(config.device)
        image_size = (H, W)
        K_all = trajectory.K.to(torch.float32)
        c2w_all = trajectory.c2w.to(torch.float32)
        generator = torch.Generator("cpu").manual_seed(config.seed)

        if isinstance(prompt, torch.Tensor):
            text = pad_states([prompt], config.max_text_length).to(device)
        else:
            text = encode_prompt(self.tokenizer, self.text_encoder, [prompt], config.max_text_length).to(device)
        negative = (encode_prompt(self.tokenizer, self.text_encoder, [config.negative_prompt],
                                  config.max_text_length).to(device) if config.guidance_scale > 1 else None)
        video0 = torch.tensor(img, dtype=torch.float32).div(127.5).sub(1.0).permute(2, 0, 1)[None, :, None]
        clean0 = encode_video(self.vae, video0.to(device)).float()  # (1, 48, 1, h, w)
        _, _, _, h, w = clean0.shape
        n_lat = len(latent_frame_indices(config.chunk_frames))

        memory = self._new_memory(config.memory, device)
        stereo_params = config.writeback_stereo()  # the RGB cache's per-pixel sweep
        if memory is not None:
            depth0 = first_frame_depth(img, config, first_depth)
            feat0 = clean0[0, :, 0] if config.memory == "latent" else torch.from_numpy(img)
            memory.insert(feat0, depth0, K_all[0], c2w_all[0], image_size, frame_index=0)

        frames = np.zeros((len(trajectory), H, W, 3), dtype=np.uint8)
        all_latents: list[torch.Tensor] = []
        visibility: list[torch.Tensor] = []  # per latent frame, what the memory covered when it was generated
        readouts: list[torch.Tensor] = []  # ... and what it showed there (C, T, h, w)
        stats: list[dict] = []
        history, prev_start = None, 0  # the previous chunk's clean latents and first pixel frame
        bar = tqdm(total=len(starts) * config.steps, desc="denoising", unit="step", disable=not config.progress)
        for ci, start in enumerate(tqdm(starts, desc="chunks", unit="chunk", disable=not config.progress)):
            t0 = time.perf_counter()
            sl = slice(start, start + config.chunk_frames)
            K, c2w = K_all[sl], c2w_all[sl]
            timer = _OpTimer()
            if memory is not None:
                with timer("read"):
                    readout = memory.read_chunk(K, c2w, image_size)
                    cond = readout.conditioning(torch.float32)[None].to(device)
                hole_rate = readout.hole_rate
                visibility.append((readout.visibility if ci == 0 else readout.visibility[1:]).cpu())
                shown = readout.features.to(torch.float32).permute(1, 0, 2, 3)
                readouts.append((shown if ci == 0 else shown[:, 1:]).cpu())
            else:
                cond = torch.zeros((1, 49, n_lat, h, w), device=device)
                hole_rate = 1.0
            context = context_cond = None
            if history is not None and config.preceding:
                context = history[:, :, -1 - config.preceding:-1]  # the latents before the overlap one
                lat_frames = latent_frame_indices(config.chunk_frames)[-1 - config.preceding:-1]
                pix = [prev_start + f for f in lat_frames]
                with timer("read") if memory is not None else contextlib.nullcontext():
                    context_cond = self._read_cameras(memory, K_all[pix], c2w_all[pix], image_size,
                                                      (1, 49, config.preceding, h, w), device)
            with timer("denoise"):
                latents = self._denoise(clean0, cond, text, n_lat, config, generator, bar, context, context_cond,
                                        negative=negative)
            with timer("decode"):
                decoded = _to_uint8(decode_latents(self.vae, latents)[0])  # (33, H, W, 3)
            if ci == 0:
                frames[sl] = decoded
            else:
                frames[start + 1:start + config.chunk_frames] = decoded[1:]
            all_latents.append((latents[0] if ci == 0 else latents[0, :, 1:]).cpu())

            depth_sources: dict[str, int] = {}
            cells: dict[str, int] = {}
            points_written = 0
            if memory is not None:
                idx = list(range(config.depth_every, config.chunk_frames, config.depth_every))  # 4, 8, ..., 32
                with timer("depth"):
                    seen = memory.read_grid(K[idx], c2w[idx], image_size=image_size).depth  # before this chunk's writes
                    if memory.stride > 1:  # the latent memory: one depth per latent cell
                        stereo = cell_depths(decoded, K, c2w, idx, memory.stride, memory.points)
                        mem_depths = list(seen)
                    else:  # the RGB cache stores pixels: per-pixel depth
                        stereo = pixel_depths(decoded, K, c2w, idx, memory.points, params=stereo_params)
                        mem_depths = [upsample_nearest(d, image_size) for d in seen]
                with timer("masks"):
                    plans = chunk_writeback(decoded, K, c2w, idx, stereo, mem_depths,
                                            unobserved=config.unobserved_depth, mask_scale=config.writeback_mask_scale)
                read_vis = readout.visibility if ci == 0 else readout.visibility[1:]
                filled = readout.filled if ci == 0 or readout.filled is None else readout.filled[1:]
                cells = {"read": int(read_vis.sum()), "filled": 0 if filled is None else int(filled.sum()),
                         "covered": int((seen > 0).sum()),
                         **{k: 0 for k in WRITE_OUTCOMES}, "unobserved": 0}
                with timer("write"):
                    for j, (pix, (wb, exclude)) in enumerate(zip(idx, plans), start=1):
                        depth_sources[wb.source] = depth_sources.get(wb.source, 0) + 1
                        if wb.source == "none":
                            cells["unobserved"] += int(seen[0].numel())
                            continue
                        if not config.filter_writes:
                            exclude = ~upsample_nearest(wb.valid, image_size)  # only cells without depth stay out
                        feat = latents[0, :, j] if config.memory == "latent" else torch.from_numpy(decoded[pix])
                        points_written += memory.insert(feat, wb.depth, K[pix], c2w[pix], image_size,
                                                        exclude=exclude, frame_index=start + pix, counts=cells)
            skipped = depth_sources.get("none", 0) + depth_sources.get("memory_only", 0)
            clean0 = latents[:, :, -1:].clone()  # the overlap latent of the next chunk
            history, prev_start = latents, start
            seconds = time.perf_counter() - t0
            new_frames = config.chunk_frames if ci == 0 else config.chunk_frames - 1
            ms = memory.stats() if memory is not None else {"points": 0, "bytes": 0}
            stats.append({"chunk": ci, "seconds": seconds, "seconds_per_frame": seconds / new_frames,
                          "cache_points": int(ms["points"]), "cache_bytes": int(ms["bytes"]),
                          "hole_rate": float(hole_rate), "depth_frames_skipped": int(skipped),
                          "depth_sources": depth_sources, "points_written": int(points_written), "cells": cells,
                          "op_seconds": timer.seconds,
                          "memory_seconds": sum(timer.seconds.get(k, 0.0) for k in MEMORY_OPS)})
            log.info("chunk %d: %.2f s, %d points, %d bytes, hole rate %.3f", ci, seconds,
                     ms["points"], ms["bytes"], hole_rate)
        bar.close()
        return GenerationResult(frames=frames, chunk_stats=stats, latents=torch.cat(all_latents, dim=1),
                                visibility=torch.cat(visibility) if visibility else None,
                                readout=torch.cat(readouts, dim=1) if readouts else None, settings=config)


def save_outputs(result: GenerationResult, trajectory: Trajectory, out_dir: str | os.PathLike,
                 fps: float = 16, config: GenerationConfig | None = None) -> dict[str, str]:
    """Write ``video.mp4``, ``cameras.txt`` (RealEstate10K) and ``chunks.json``; returns the paths."""
    from mirage_model.geometry.formats import write_re10k
    from mirage_model.io.video import write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"video": str(out / "video.mp4"), "cameras": str(out / "cameras.txt"), "chunks": str(out / "chunks.json")}
    write_video(paths["video"], result.frames, fps)
    H, W = result.frames.shape[1:3]
    traj = trajectory if tuple(trajectory.image_size) == (H, W) else trajectory.resized((H, W))
    write_re10k(paths["cameras"], traj, fps=fps)
    payload = {"chunks": result.chunk_stats, "frames": int(result.frames.shape[0]), "height": int(H),
               "width": int(W)}
    config = config or result.settings
    if config is not None:
        payload["config"] = config.model_dump(mode="json")
    with open(paths["chunks"], "w") as f:
        json.dump(payload, f, indent=2)
    return paths

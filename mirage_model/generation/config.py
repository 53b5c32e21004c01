"""The settings of one generation: the one model every caller uses (``mirage generate``, the
``generation`` section of ``generate-batch``, ``demo``, ``eval`` and ``eval-memory``, the training
job's rollout video), validated like every other config (``mirage_model.config``).

``preceding`` and ``max_text_length`` must agree with what the model was trained with. Left at
None they are taken from the loaded checkpoint's record (``model.json``, written by ``mirage
train``; ``MirageGenerator.settings``), and a value given explicitly that differs from the record
is an error naming both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mirage_model.config import PathField, StrictConfig
from mirage_model.perception.params import GENERATION_STEREO, StereoParams

__all__ = ["CHUNK_FRAMES", "CHUNK_STRIDE", "DEFAULT_MAX_TEXT_LENGTH", "DEFAULT_PRECEDING", "FULL_MODEL_STEPS",
           "GenerationConfig"]

CHUNK_FRAMES = 33
CHUNK_STRIDE = 32  # each later chunk adds 32 pixel frames (1-latent overlap)
DEFAULT_PRECEDING = 2
"""Clean latents of the previous chunk given as context when no checkpoint says otherwise."""
FULL_MODEL_STEPS = 40
"""UniPC steps per chunk of the full model when ``steps`` is not set (the paper's sampling)."""
DEFAULT_MAX_TEXT_LENGTH = 64
"""Prompt tokens of a generator built from neither a preset nor a model directory (the presets'
and the full model's own: ``mirage_model.model.presets.default_text_tokens``)."""


class GenerationConfig(StrictConfig):
    """How to sample a video along a camera path with a spatial memory (docs/method.md §4-§5)."""

    steps: int = Field(8, ge=1, description="denoising steps per chunk (the full model: 40 unless set, as its "
                       "paper samples; the CPU presets: 8)")
    shift: float = Field(5.0, gt=0, description="flow-matching timestep shift of the UniPC scheduler")
    memory: Literal["latent", "rgb", "none"] = Field(
        "latent", description="spatial memory: latent point cache, RGB point cache (the peers' design), or none")
    seed: int = Field(0, ge=0, description="seed of the initial noise")
    chunk_frames: Literal[33] = Field(CHUNK_FRAMES, description="pixel frames per chunk (docs/method.md §5)")
    fps: int = Field(16, ge=1, description="frame rate of the written video")
    depth_every: Literal[4] = Field(4, description="pixel-frame stride of the write-back depth (one per latent)")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, ... or auto (cuda when available)")
    max_text_length: int | None = Field(
        None, ge=1, description="prompt tokens; null: the checkpoint's (else the model's: 512 for the full "
        "model, 64 for the tiny and small presets)")
    first_depth_fallback: float = Field(2.0, gt=0, description="constant depth of the first frame when none is "
                                        "given and no depth model is set")
    preceding: int | None = Field(
        None, ge=0, le=7, description="clean latents of the previous chunk given as context (0 = none); null: "
        f"the checkpoint's training layout (else {DEFAULT_PRECEDING})")
    unobserved_depth: Literal["memory_median", "skip"] = Field(
        "memory_median", description="new frames without a stereo baseline: fill from the memory's depth, or "
        "write nothing")
    filter_writes: bool = Field(True, description="keep moving objects, sky and cells without depth out of the "
                                "memory (the ablation turns it off)")
    writeback_depth_scale: float = Field(1.0, gt=0, le=1, description="RGB cache only: its per-pixel write-back "
                                         "stereo at this fraction of the frame size (writeback_stereo())")
    writeback_mask_scale: float = Field(1.0, gt=0, le=1, description="the write-back's moving-object test at "
                                        "this fraction of the frame size (0.5 from about 240x320 up)")
    depth_model: str | None = PathField(None, description="local DPT / Depth Anything directory for the first "
                                        "frame's depth")
    progress: bool = Field(True, description="a progress bar per chunk")
    guidance_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance on the text: 1 = off (one "
                                  "forward per step, the method's default); above 1 each step also runs the model "
                                  "with negative_prompt and extrapolates away from it (twice the compute)")
    negative_prompt: str = Field("", description="the text guidance steers away from (guidance_scale > 1)")
    autocast: bool = Field(True, description="bf16 autocast of the transformer on CUDA (fp32 weights)")

    def writeback_stereo(self) -> StereoParams:
        """The RGB cache's write-back sweep: ``GENERATION_STEREO`` at ``writeback_depth_scale``."""
        return GENERATION_STEREO.replace(scale=self.writeback_depth_scale)

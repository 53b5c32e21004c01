"""``mirage eval``: real cameras, real frames -- generate from each clip's first frame and score the video
against what the camera actually saw (RealEstate10K-format test sets; docs/method.md §14).

    clips (pipeline.testsets.list_clips; the first ``clips``) x variants -> Ray Data from_items
    -> map_batches(ClipActor, actor pool): per item it loads the clip (local or S3), generates once
       per memory mode and scores the video (memory_ablation.score_generation)
    -> driver: per-mode means -> <output>/eval.json + eval.md, one MLflow run

Variants:

* ``open``: the clip's first ``frames`` frames (every ``stride``-th camera line). PSNR / SSIM against
  the real frames (``psnr_gt_all``) and latent SNR against their VAE latents.
* ``closed``: the first ``(frames + 1) / 2`` frames out and the same cameras back
  (``geometry.trajectory.there_and_back``). The real frames reversed are the ground truth of the way
  back, so the revisit figures (``psnr_gt_revisit``, ``revisit_consistency_psnr``, coverage) ask
  the method's question on real footage: when the camera returns, is the scene still there?

The first frame's depth seeds the memory: ``stereo`` (default) runs plane-sweep stereo on the clip's
first frames at their given cameras (so it is in the cameras' units, whatever the scale of the
camera file), ``plane`` puts a plane at 2 units, ``model`` uses a local monocular depth model.
The same job evaluates the random presets, a trained toy world (``model.checkpoint``) and real
Wan2.2 weights (``model.model_dir``). A clip that cannot be read is recorded with its reason
(``pipeline.testsets.ClipError``) and the others are evaluated.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from jobs.config import EvalConfig
from jobs.eval_memory import AblationActor, run_evaluation
from pipeline.testsets import ClipError, list_clips, load_clip

log = logging.getLogger(__name__)

REPORT = "eval"
FIRST_DEPTH_FRAMES = 9
"""Frames of a clip the first frame's stereo depth may match against."""


def eval_items(config: EvalConfig) -> list[dict[str, Any]]:
    clips = list_clips(config.data, config.storage.options())
    if not clips:
        raise FileNotFoundError(f"test set {config.data}: no clip (<clip>.txt with a <clip>/ frame folder)")
    clips = clips[:config.clips] if config.clips else clips
    return [{"id": f"{clip}-{variant}", "clip": clip, "variant": variant}
            for clip in clips for variant in config.variants]


def stereo_first_depth(frames: np.ndarray, trajectory, clip: str):
    """Depth (H, W) of frame 0 by plane sweep over the clip's first frames at their cameras; pixels
    without a reliable match take the median depth. ClipError when nothing can be matched."""
    import torch

    from mirage_model.perception.depth import estimate_depth_video
    from mirage_model.perception.params import GENERATION_STEREO

    n = min(len(frames), FIRST_DEPTH_FRAMES)
    try:
        result = estimate_depth_video(frames[:n], trajectory.K[:n], trajectory.c2w[:n], indices=[0],
                                      params=GENERATION_STEREO)[0]
    except ValueError as exc:
        raise ClipError("no_first_depth", f"clip {clip}: no stereo depth for the first frame ({exc}); "
                        "use first_depth: plane or model") from exc
    if result.coverage < 0.01:
        raise ClipError("no_first_depth", f"clip {clip}: stereo found depth on {result.coverage:.1%} of the first "
                        "frame (too little parallax or texture); use first_depth: plane or model")
    fill = float(result.depth[result.valid].double().quantile(0.5))
    return torch.where(result.valid, result.depth, torch.full_like(result.depth, fill))


class ClipActor(AblationActor):
    """The ablation actor (``jobs.eval_memory``) with ground truth from a test clip."""

    def prompt(self, item: dict[str, Any]) -> str:
        return self.config.prompt

    def ground_truth(self, item: dict[str, Any]):
        from mirage_model.geometry.trajectory import there_and_back

        c = self.config
        closed = item["variant"] == "closed"
        clip = load_clip(c.data, item["clip"], frames=(c.frames + 1) // 2 if closed else c.frames,
                         size=(c.height, c.width), stride=c.stride, options=c.storage.options())
        frames, traj = clip.frames, clip.trajectory
        if c.first_depth == "stereo":
            depth = stereo_first_depth(frames, traj, item["clip"])
        elif c.first_depth == "model":
            from mirage_model.generation import GenerationConfig
            from mirage_model.generation.generator import first_frame_depth

            depth = first_frame_depth(frames[0], GenerationConfig(depth_model=c.generation.depth_model, progress=False))
        else:
            depth = None  # the generator's fronto-parallel plane
        if closed:
            traj = there_and_back(traj)
            frames = np.concatenate([frames, frames[-2::-1]])
        return frames, traj, depth


def run_eval(config: EvalConfig) -> dict[str, Any]:
    items = eval_items(config)
    n_clips = len({it["clip"] for it in items})
    text = f"{n_clips} clip(s) of {config.data} x {', '.join(config.variants)}"
    return run_evaluation(config, items, job="eval", name=REPORT, actor=ClipActor, items_text=text,
                          group_by="variant")

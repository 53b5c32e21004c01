"""Clip planning and resizing to the generator's grid, with consistent intrinsics.

* ``plan_clips`` cuts a video (or one shot of it) of ``n_frames`` into clips of ``clip_frames``
  (4n + 1: the Wan VAE is causal in time, docs/method.md §1) frames, ``[start, end)`` with ``end``
  exclusive; shorter footage gives a shorter 4n + 1 clip down to ``min_frames``.
* ``plan_fit`` / ``apply_fit`` / ``fit_to_multiple`` resize (``cv2.INTER_AREA`` when shrinking,
  ``INTER_LINEAR`` when enlarging) and then centre-crop images so H and W are multiples of
  ``size_multiple`` (32: the VAE's 16x stride times the DiT's 2x2 patch). The intrinsics follow
  ``mirage_model.geometry.camera``: ``scale_intrinsics`` (pixel-centre convention, identical to
  OpenCV's resize sampling ``x_dst = (x_src + 0.5) * s - 0.5``) then ``crop_intrinsics``. The same
  ``FitPlan`` applied to depth (bilinear) and masks (nearest) keeps every per-pixel map aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from mirage_model.geometry.camera import crop_intrinsics, scale_intrinsics
from mirage_model.io.video import VideoError

__all__ = ["FitPlan", "apply_fit", "fit_intrinsics", "fit_to_multiple", "plan_clips", "plan_fit"]


def _four_n_plus_one(n: int) -> int:
    """The largest 4k + 1 <= n (0 when n < 1)."""
    return 0 if n < 1 else (n - 1) // 4 * 4 + 1


def plan_clips(n_frames: int, clip_frames: int = 81, stride: int | None = None,
               max_clips: int | None = None, min_frames: int | None = None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` (end exclusive) clips of ``clip_frames`` frames.

    Clips start every ``stride`` frames (default ``clip_frames``: back to back, no overlap).
    With ``min_frames`` (4n + 1), footage that does not fill a whole clip still gives one: a video
    shorter than ``clip_frames`` becomes a single clip of the largest 4n + 1 frames it holds, and
    the frames left after the last whole clip become one more, when either is at least
    ``min_frames`` long. With ``max_clips`` and more candidates than that, the kept clips are
    spread evenly over the video (first and last candidate included). Raises ``ValueError``
    unless ``clip_frames`` / ``min_frames`` are 4n + 1, and ``VideoError("too_short")`` when no
    clip fits.
    """
    if clip_frames < 1 or (clip_frames - 1) % 4:
        raise ValueError(f"clip_frames must be 4n + 1 (e.g. 33, 81) for the causal video VAE, "
                         f"got {clip_frames}")
    if min_frames is not None and (min_frames < 1 or (min_frames - 1) % 4 or min_frames > clip_frames):
        raise ValueError(f"min_frames must be 4n + 1 and <= clip_frames ({clip_frames}), got {min_frames}")
    stride = clip_frames if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    spans = [(s, s + clip_frames) for s in range(0, n_frames - clip_frames + 1, stride)]
    if min_frames is not None:
        tail_start = spans[-1][1] if spans else 0
        tail = _four_n_plus_one(n_frames - tail_start)
        if tail >= min_frames and (not spans or stride >= clip_frames):
            spans.append((tail_start, tail_start + tail))
    if not spans:
        need = clip_frames if min_frames is None else min_frames
        raise VideoError("too_short", f"{n_frames} frame(s) < {need} needed for one clip")
    if max_clips is not None and len(spans) > max_clips:
        pick = np.unique(np.round(np.linspace(0, len(spans) - 1, max_clips)).astype(int))
        spans = [spans[i] for i in pick]
    return spans


@dataclass(frozen=True)
class FitPlan:
    """Resize ``src_size`` -> ``resize_to`` then crop ``out_size`` at (``top``, ``left``); all (H, W)."""

    src_size: tuple[int, int]
    resize_to: tuple[int, int]
    top: int
    left: int
    out_size: tuple[int, int]


def plan_fit(image_size: tuple[int, int], size_multiple: int = 32,
             target_size: tuple[int, int] | None = None) -> FitPlan:
    """How to bring an (H, W) image to a multiple of ``size_multiple``.

    Without ``target_size``: no resize, centre-crop to the largest multiples. With
    ``target_size`` (each a multiple of ``size_multiple``): scale uniformly by the smallest factor
    that covers the target ("resize to cover"), then centre-crop to it.
    """
    h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if size_multiple < 1:
        raise ValueError(f"size_multiple must be >= 1, got {size_multiple}")
    if target_size is None:
        oh, ow = (h // size_multiple) * size_multiple, (w // size_multiple) * size_multiple
        if oh == 0 or ow == 0:
            raise ValueError(f"image {h}x{w} is smaller than size_multiple={size_multiple}")
        return FitPlan((h, w), (h, w), (h - oh) // 2, (w - ow) // 2, (oh, ow))
    th, tw = (int(v) for v in target_size)
    if th <= 0 or tw <= 0 or th % size_multiple or tw % size_multiple:
        raise ValueError(f"target_size {target_size} must be positive multiples of {size_multiple}")
    scale = max(th / h, tw / w)
    rh, rw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    return FitPlan((h, w), (rh, rw), (rh - th) // 2, (rw - tw) // 2, (th, tw))


def _interp(plan: FitPlan, kind: str) -> int:
    if kind == "nearest":
        return cv2.INTER_NEAREST
    if kind == "linear":
        return cv2.INTER_LINEAR
    if kind != "auto":
        raise ValueError(f"interpolation must be 'auto', 'linear' or 'nearest', got {kind!r}")
    shrink = plan.resize_to[0] < plan.src_size[0] or plan.resize_to[1] < plan.src_size[1]
    return cv2.INTER_AREA if shrink else cv2.INTER_LINEAR


def apply_fit(images: np.ndarray, plan: FitPlan, interpolation: str = "auto") -> np.ndarray:
    """Apply ``plan`` to (H, W), (H, W, C), (N, H, W) or (N, H, W, C) arrays.

    ``interpolation``: ``"auto"`` (area when shrinking, else bilinear; for images), ``"linear"``
    (depth) or ``"nearest"`` (masks, labels). Bool arrays are resized as uint8 and come back bool.
    """
    arr = np.asarray(images)
    if arr.ndim < 2:
        raise ValueError(f"expected an image array, got shape {arr.shape}")
    if arr.ndim == 2:
        batched = False
    elif arr.ndim == 4:
        batched = True
    elif arr.ndim == 3:
        batched = tuple(arr.shape[1:]) == plan.src_size  # (N, H, W); else (H, W, C)
    else:
        raise ValueError(f"expected 2-4 dimensions, got shape {arr.shape}")
    spatial = arr.shape[1:3] if batched else arr.shape[:2]
    if tuple(spatial) != plan.src_size:
        raise ValueError(f"array spatial size {tuple(spatial)} != plan source {plan.src_size}")
    is_bool = arr.dtype == np.bool_
    work = arr.astype(np.uint8) if is_bool else arr
    flag = _interp(plan, interpolation)
    rh, rw = plan.resize_to
    (oh, ow), top, left = plan.out_size, plan.top, plan.left

    def one(img: np.ndarray) -> np.ndarray:
        if (rh, rw) != plan.src_size:
            squeeze = img.ndim == 3 and img.shape[-1] == 1
            img = cv2.resize(img, (rw, rh), interpolation=flag)
            if squeeze and img.ndim == 2:
                img = img[..., None]
        return img[top:top + oh, left:left + ow]

    if batched:
        out = np.stack([one(a) for a in work]) if len(work) else \
            np.zeros((0, oh, ow) + work.shape[3:], work.dtype)
    else:
        out = one(work)
    out = np.ascontiguousarray(out)
    return out.astype(bool) if is_bool else out


def fit_intrinsics(K: np.ndarray | torch.Tensor, plan: FitPlan) -> np.ndarray:
    """Intrinsics (3, 3) or (N, 3, 3) of the images produced by ``apply_fit(..., plan)`` (float64)."""
    Kt = torch.as_tensor(np.asarray(K, dtype=np.float64))
    if Kt.shape[-2:] != (3, 3):
        raise ValueError(f"K: expected (..., 3, 3), got {tuple(Kt.shape)}")
    Kt = scale_intrinsics(Kt, plan.src_size, plan.resize_to)
    Kt = crop_intrinsics(Kt, plan.top, plan.left)
    return Kt.numpy()


def fit_to_multiple(frames: np.ndarray, K: np.ndarray | torch.Tensor, size_multiple: int = 32,
                    target_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resize/centre-crop frames (N, H, W, C) to multiples of ``size_multiple``; returns (frames, K).

    ``K`` is (3, 3) or (N, 3, 3) in pixels of the input; the returned K (float64 numpy, same
    shape) belongs to the output frames. See ``plan_fit`` for the geometry.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"frames: expected (N, H, W, C), got {arr.shape}")
    plan = plan_fit(arr.shape[1:3], size_multiple, target_size)
    return apply_fit(arr, plan), fit_intrinsics(K, plan)

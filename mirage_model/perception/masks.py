"""Dynamic / sky / static masks for frames with known cameras and depth.

A static surface moves in the image exactly as its depth and the camera motion dictate (the
*rigid flow*); a moving object does not. ``moving_object_mask`` compares measured optical flow
(OpenCV DIS or Farneback) with the rigid flow towards the previous and the next frame, takes the
smaller normalised residual of the two (a pixel occluded in one of them still gets a clean
verdict from the other), thresholds it (absolute pixels plus a fraction of the rigid flow) and
cleans the result morphologically (open, close, drop small components). Its settings are the
fields of one ``MotionMaskParams`` (``mirage_model.perception.params``), passed as ``params=``.

Pixels without valid depth have no rigid flow. By default (``undecided="epipolar"``) they are
judged by a depth-free test instead: a static point at *any* depth in ``[near, inf)`` moves along
a known segment of its epipolar line, so a measured flow far from that whole segment cannot be
static (a lower bound of the residual; motion along the epipolar line is invisible to it). Only
textured pixels are judged that way (flow in flat regions such as sky is meaningless);
``undecided="static"`` leaves them all static.

Conventions: ``mirage_model.geometry.camera`` (OpenCV axes, c2w float64, K in pixels, pixel centre
of column ``i`` at ``x = i``). Flows are (H, W, 2) float32 (dx, dy) with ``a(p) ~ b(p + flow)``. Everything here runs on the CPU
and returns CPU tensors (inputs on another device are copied).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from mirage_model.geometry.camera import pixel_grid, scale_intrinsics, validate_intrinsics, validate_pose
from mirage_model.geometry.warp import relative_warp, reproject_depth
from mirage_model.io.images import to_uint8
from mirage_model.perception.depth import DepthResult, to_gray
from mirage_model.perception.params import MotionMaskParams

__all__ = [
    "MotionMaskParams",
    "clean_mask",
    "epipolar_residual",
    "learned_segmentation_mask",
    "moving_object_mask",
    "occluded_by_flow",
    "optical_flow",
    "rigid_flow",
    "sky_mask",
    "static_mask",
]


def _tensor(x, dtype=None) -> torch.Tensor:
    """CPU tensor (masks are computed on the CPU: the flows come from OpenCV)."""
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


# ----------------------------------------------------------------------------------------------
# Flows
# ----------------------------------------------------------------------------------------------
def rigid_flow(depth, K, c2w_src, c2w_dst, *, K_dst=None) -> torch.Tensor:
    """Flow (H, W, 2) float32 that static geometry at ``depth`` induces from src to dst camera.

    ``depth`` is the source frame's z-depth (H, W) (0 = unknown); ``K`` its intrinsics (``K_dst``
    defaults to ``K``). Pixel ``p`` of the source lands at ``p + flow`` in the destination. NaN where
    the depth is not positive or the point is behind the destination camera.
    """
    depth = _tensor(depth, torch.float64)
    K = validate_intrinsics(K, "K").cpu()
    K_dst = K if K_dst is None else validate_intrinsics(K_dst, "K_dst").cpu()
    c2w_src = validate_pose(c2w_src, "c2w_src").cpu()
    c2w_dst = validate_pose(c2w_dst, "c2w_dst").cpu()
    h, w = depth.shape
    uv, z = reproject_depth(depth, K, c2w_src, K_dst, c2w_dst)
    ok = (depth > 0) & (z > 1e-9)
    flow = uv - pixel_grid(h, w, torch.float64)
    flow[~ok] = float("nan")
    return flow.float()


def _gray_u8(frame) -> np.ndarray:
    g = to_gray(frame)
    if g.ndim != 2:
        raise ValueError(f"expected one frame (H, W[, 3]), got {tuple(g.shape)}")
    return to_uint8(g).cpu().numpy()


def optical_flow(frame_a, frame_b, method: str = "dis") -> torch.Tensor:
    """Dense optical flow (H, W, 2) float32 from ``frame_a`` to ``frame_b`` (OpenCV).

    ``method``: ``"dis"`` (DIS, medium preset) or ``"farneback"``. Frames are (H, W, 3) RGB or
    (H, W) grey, float [0, 1] or uint8.
    """
    a, b = _gray_u8(frame_a), _gray_u8(frame_b)
    if a.shape != b.shape:
        raise ValueError(f"optical_flow: frame shapes differ {a.shape} vs {b.shape}")
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=21,
                                            iterations=5, poly_n=5, poly_sigma=1.1, flags=0)
    else:
        raise ValueError(f"optical_flow: method must be 'dis' or 'farneback', got {method!r}")
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32))


def _in_frame(points: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(H, W) bool: pixel positions (H, W, 2) that fall inside an (h, w) image."""
    return (points[..., 0] >= -0.5) & (points[..., 0] <= w - 0.5) & (points[..., 1] >= -0.5) & (points[..., 1] <= h - 0.5)


def occluded_by_flow(forward, backward, *, alpha: float = 0.01, beta: float = 0.5) -> torch.Tensor:
    """(H, W) bool: pixels of frame a whose forward flow a->b is not undone by the backward flow
    b->a at the point it lands on (Sundaram et al., ECCV 2010): occluded in b or left its frame,
    or the flow is wrong there. ``|f(p) + g(p + f(p))|^2 > alpha (|f|^2 + |g|^2) + beta``."""
    f = _tensor(forward, torch.float32)
    g = _tensor(backward, torch.float32)
    h, w = f.shape[:2]
    grid = pixel_grid(h, w, torch.float32) + f
    norm = torch.stack([grid[..., 0] / max(w - 1, 1), grid[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    g_at = F.grid_sample(g.permute(2, 0, 1)[None], norm[None], mode="bilinear", padding_mode="border",
                         align_corners=True)[0].permute(1, 2, 0)
    err = (f + g_at).pow(2).sum(-1)
    return ~_in_frame(grid, h, w) | (err > alpha * (f.pow(2).sum(-1) + g_at.pow(2).sum(-1)) + beta)


def epipolar_residual(flow, K, c2w_src, c2w_dst, *, near: float, K_dst=None) -> torch.Tensor:
    """Distance (H, W) in pixels from ``p + flow`` to the image of the ray through ``p``.

    The ray is restricted to depths ``[near, inf)``: its image in the destination is a segment of
    the epipolar line from the point at infinity to the point at ``near`` (clipped where the ray
    passes behind the destination camera). Any static point, whatever its depth in that range,
    has residual ~0; a large residual means the pixel moved (or the flow is wrong).
    """
    flow = _tensor(flow, torch.float64)
    K = validate_intrinsics(K, "K").cpu()
    K_dst = K if K_dst is None else validate_intrinsics(K_dst, "K_dst").cpu()
    A, b = relative_warp(K, validate_pose(c2w_src, "c2w_src").cpu(), K_dst, validate_pose(c2w_dst, "c2w_dst").cpu())
    h, w = flow.shape[:2]
    grid = pixel_grid(h, w, torch.float64)
    p = torch.cat([grid, torch.ones(h, w, 1, dtype=torch.float64)], dim=-1)
    a = p @ A.T  # direction part: q(rho) = a + rho * b, rho = 1 / depth in [0, 1 / near]
    rho_max = torch.full((h, w), 1.0 / near, dtype=torch.float64)
    # keep q_z > 0 along the segment
    if float(b[2]) < 0:
        rho_max = torch.minimum(rho_max, (a[..., 2] - 1e-6).clamp_min(0) / (-float(b[2])))
    q0 = a
    q1 = a + rho_max[..., None] * b
    ok0 = q0[..., 2] > 1e-9
    p0 = q0[..., :2] / torch.where(ok0, q0[..., 2], torch.ones_like(q0[..., 2]))[..., None]
    p1 = q1[..., :2] / q1[..., 2:].clamp_min(1e-9)
    # a ray starting behind the destination (infinity point invalid): fall back to the near end
    p0 = torch.where(ok0[..., None], p0, p1)
    m = grid + flow
    d = p1 - p0
    t = ((m - p0) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-12)
    closest = p0 + t.clamp(0, 1)[..., None] * d
    return (m - closest).norm(dim=-1).float()


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------
def clean_mask(mask, *, open_px: int = 3, close_px: int = 7, min_area: int | float = 0.002,
               fill_holes: bool = True) -> torch.Tensor:
    """Morphological clean-up: open (remove specks), close (fill gaps), drop small components,
    and fill holes (background regions enclosed by the mask, i.e. not touching the image border;
    a moving object is solid even where its interior is too flat for flow to see it move).

    ``min_area``: pixels, or a fraction of the image when < 1. Kernels are elliptical.
    """
    m = _tensor(mask).bool().cpu().numpy().astype(np.uint8)
    h, w = m.shape
    if open_px > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_px, open_px)))
    if close_px > 1:
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE,
                             cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px)))
    area = min_area * h * w if min_area < 1 else min_area
    if area > 0 and m.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        keep = np.zeros(n, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= area
        m = keep[labels].astype(np.uint8)
    if fill_holes and m.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(1 - m, connectivity=4)
        x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        x1, y1 = x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]
        enclosed = (x0 > 0) & (y0 > 0) & (x1 < w) & (y1 < h)
        m = (m.astype(bool) | enclosed[labels]).astype(np.uint8)
    return torch.from_numpy(m.astype(bool))


def _depth_and_valid(depths, index: int, valid) -> tuple[torch.Tensor, torch.Tensor]:
    """The depth (H, W) and validity of frame ``index`` from the accepted ``depths`` forms."""
    if isinstance(depths, DepthResult):
        d, v = depths.depth, depths.valid
    elif isinstance(depths, dict):
        item = depths[index]
        d, v = (item.depth, item.valid) if isinstance(item, DepthResult) else (_tensor(item), None)
    elif isinstance(depths, (list, tuple)):
        item = depths[index]
        d, v = (item.depth, item.valid) if isinstance(item, DepthResult) else (_tensor(item), None)
    else:
        t = _tensor(depths)
        d, v = (t[index], None) if t.ndim == 3 else (t, None)
    d = _tensor(d, torch.float32)
    v = (d > 0) if v is None else (_tensor(v).bool() & (d > 0))
    if valid is not None:
        vv = _tensor(valid).bool()
        v &= vv[index] if vv.ndim == 3 else vv
    return d, v


def moving_object_mask(frames, depths, K, c2w, index: int, *, other: Sequence[int] | None = None,
                       valid=None, near: float | None = None, flows: dict | None = None,
                       params: MotionMaskParams = MotionMaskParams()) -> torch.Tensor:
    """Pixels of frame ``index`` that move independently of the camera (H, W) bool.

    Args:
        frames: (N, H, W, 3) or (N, H, W), float [0, 1] or uint8.
        depths: depth of frame ``index`` as (H, W) or one ``DepthResult``; or all frames as
            (N, H, W) / a list indexed by frame / a dict ``{frame: ...}`` of (H, W) depths or
            ``DepthResult`` (whose ``valid`` is used). Depth 0 = unknown.
        K: (3, 3) shared or (N, 3, 3) intrinsics. c2w: (N, 4, 4) poses.
        other: frames to compare with (default: ``index - 1`` and ``index + 1`` where they exist).
        valid: optional extra validity mask of the depth ((H, W) or (N, H, W)).
        near: nearest depth for the epipolar test (default: half the 1st percentile of the valid
            depth).
        flows: optional cache ``{(index, j): flow}`` of measured flows (filled in when given).
        params: the test's settings (``MotionMaskParams``: thresholds, flow method, clean-up,
            what to do with pixels without depth).
    Returns:
        (H, W) bool mask.
    """
    threshold_px, relative, undecided = params.threshold_px, params.relative, params.undecided
    gray = to_gray(frames).cpu()
    n = gray.shape[0]
    c2w = validate_pose(c2w, "c2w").cpu()
    if c2w.ndim != 3 or c2w.shape[0] != n:
        raise ValueError(f"c2w: expected ({n}, 4, 4), got {tuple(c2w.shape)}")
    Ks = validate_intrinsics(K, "K").cpu()
    Ks = Ks.expand(n, 3, 3) if Ks.ndim == 2 else Ks
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for {n} frames")
    depth, dvalid = _depth_and_valid(depths, index, valid)
    if other is None:
        other = [j for j in (index - 1, index + 1) if 0 <= j < n]
    other = [int(j) for j in other if int(j) != index]
    if not other:
        raise ValueError("moving_object_mask: no other frame to compare with")
    h, w = depth.shape

    if undecided == "epipolar":
        g = gray[index][None, None]
        mu = F.avg_pool2d(g, 7, 1, 3, count_include_pad=False)
        std = (F.avg_pool2d(g * g, 7, 1, 3, count_include_pad=False) - mu * mu).clamp_min(0).sqrt()[0, 0]
        judge_free = ~dvalid & (std >= params.min_texture)
        if near is None:
            near = 0.5 * float(torch.quantile(depth[dvalid][::max(1, int(dvalid.sum()) // 100_000)], 0.01)) \
                if bool(dvalid.any()) else 1e-3

    scores = []
    grid = pixel_grid(h, w, torch.float32)
    flows = {} if flows is None else flows

    def measured(a: int, b: int) -> torch.Tensor:
        if (a, b) not in flows:
            flows[(a, b)] = optical_flow(gray[a], gray[b], params.flow_method)
        return flows[(a, b)]

    for j in other:
        flow = measured(index, j)
        occluded = occluded_by_flow(flow, measured(j, index))
        rig = rigid_flow(torch.where(dvalid, depth, torch.zeros_like(depth)), Ks[index], c2w[index], c2w[j],
                         K_dst=Ks[j])
        res = (flow - rig).norm(dim=-1)
        tau = threshold_px + relative * rig.norm(dim=-1)
        score = torch.where(dvalid, res / tau, torch.zeros_like(res))
        if undecided == "epipolar":
            er = epipolar_residual(flow, Ks[index], c2w[index], c2w[j], near=near, K_dst=Ks[j])
            score = torch.where(judge_free, er / threshold_px, score)
        score = torch.nan_to_num(score, nan=0.0)
        # A point the other view does not see (occluded there, or out of its frame) has no flow to
        # compare: no evidence either way.
        gone = dvalid & ~_in_frame(grid + rig, h, w)
        scores.append(score.masked_fill(gone | occluded, float("nan")))
    # Smallest normalised residual over the comparisons that see the point (robust to an
    # occlusion the flow check misses); a point no other view sees is not judged.
    combined = torch.nan_to_num(torch.stack(scores).nan_to_num(float("inf")).amin(0), posinf=0.0)
    mask = combined > 1.0
    if params.morphology is not None:
        open_px, close_px = params.morphology
        mask = clean_mask(mask, open_px=open_px, close_px=close_px, min_area=params.min_area)
    return mask


def sky_mask(depth, valid=None, far: float | None = None) -> torch.Tensor:
    """Sky / unknown (H, W) bool: no valid depth, or depth beyond ``far`` when given."""
    depth = _tensor(depth, torch.float32)
    v = depth > 0
    if valid is not None:
        v &= _tensor(valid).bool()
    sky = ~v
    if far is not None:
        sky |= depth > far
    return sky


def static_mask(moving, sky, valid) -> torch.Tensor:
    """Pixels safe to write into a static memory: ``valid & ~moving & ~sky``."""
    return _tensor(valid).bool() & ~_tensor(moving).bool() & ~_tensor(sky).bool()


def _frame_masks(frames, depths, valids, K, c2w, indices: Sequence[int], method: str, model_dir,
                 flows: dict, params: MotionMaskParams) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(static, moving)`` (H, W) bool per frame of ``indices`` (see ``static_masks``)."""
    if method not in ("flow", "model"):
        raise ValueError(f"masks method must be 'flow' or 'model', got {method!r}")
    if method == "flow":
        frames = to_gray(_tensor(frames))  # once for the clip, not once per frame tested
    else:
        model, processor = load_segmentation_model(model_dir)  # once for the clip
        classes = dynamic_classes(model.config.id2label)
    out = []
    for f in indices:
        f = int(f)
        valid = _tensor(valids[f]).bool()
        if method == "model":
            moving = learned_segmentation_mask(frames[f], model_dir, classes, model=model, processor=processor)
        else:
            moving = moving_object_mask(frames, depths, K, c2w, f, valid=valid, flows=flows, params=params)
        out.append((static_mask(moving, sky_mask(depths[f], valid), valid), moving))
    return out


def static_masks(frames, depths, valids, K, c2w, indices: Sequence[int], *, method: str = "flow",
                 model_dir=None, flows: dict | None = None, scale: float = 1.0,
                 params: MotionMaskParams = MotionMaskParams()) -> list[tuple[torch.Tensor, float]]:
    """Write-back masks for several frames of a clip: ``(static (H, W) bool, moving fraction)`` each.

    The one place both the data pipeline and generation turn depth into "what may be stored":
    moving objects (``method="flow"``: optical flow vs the camera's rigid flow,
    ``moving_object_mask`` with ``params``; or ``method="model"``: a segmenter from
    ``model_dir``), sky (no valid depth) and invalid depth are excluded. ``depths`` / ``valids``: ``{frame: (H, W)}`` at the frames' resolution.
    ``scale`` < 1 runs the test on frames resized by that factor (depth and validity nearest, the
    intrinsics scaled) and returns the masks upsampled (nearest) to the frames' size: enough for a
    memory that stores one point per 16 x 16 latent cell, at a quarter of the cost for 0.5.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"static_masks: scale must be in (0, 1], got {scale}")
    if scale != 1.0 and method == "flow":
        x = _tensor(frames)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        size = tuple(x.shape[1:3])
        small = (max(8, round(size[0] * scale)), max(8, round(size[1] * scale)))
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        x = x.permute(0, 2, 3, 1) if x.shape[1] == 3 else x[:, 0]
        d_small = {f: upsample_nearest(_depth_and_valid(depths, int(f), None)[0], small) for f in indices}
        v_small = {f: upsample_nearest(_tensor(valids[f]), small) > 0.5 for f in indices}
        K_small = scale_intrinsics(torch.as_tensor(K, dtype=torch.float64), size, small)
        masks = _frame_masks(x, d_small, v_small, K_small, c2w, indices, method, model_dir,
                             {} if flows is None else flows, params)
        return [(upsample_nearest(static, size) > 0.5, float(moving.float().mean())) for static, moving in masks]
    masks = _frame_masks(frames, depths, valids, K, c2w, indices, method, model_dir, {} if flows is None else flows,
                         params)
    return [(static, float(moving.float().mean())) for static, moving in masks]


def upsample_nearest(x, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) or (h, w) array -> float32 tensor at ``size`` (H, W), nearest neighbour (no mixing
    of depths across an edge)."""
    t = torch.as_tensor(x, dtype=torch.float32)
    lead = t.shape[:-2]
    t = torch.nn.functional.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=tuple(size), mode="nearest")
    return t.reshape(*lead, *size)


def clip_masks(frames, depth_frames: Sequence[int], depth, valid, K, c2w, *, method: str = "flow",
               model_dir=None, params: MotionMaskParams = MotionMaskParams()) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of a clip's depth frames, with depth computed at a reduced size (the pipeline's
    ``depth.scale``): ``(static, moving)``, each (len(depth_frames), H, W) bool at the frames' size.

    Flow runs at the frames' full size (a small moving object needs it); the depth (N_d, h, w)
    and its validity only feed the rigid flow and are upsampled (nearest); ``params`` are the
    moving-object test's settings (``method="flow"``). The pipeline's masks stage, ``mirage
    eval-perception`` and the real-footage benchmark all make their masks here.
    """
    size = tuple(frames.shape[1:3])
    ids = [int(f) for f in depth_frames]
    depths, valids = upsample_nearest(depth, size), upsample_nearest(valid, size) > 0.5
    masks = _frame_masks(frames, dict(zip(ids, depths)), dict(zip(ids, valids)), K, c2w, ids, method,
                         model_dir, {}, params)
    return torch.stack([m[0] for m in masks]), torch.stack([m[1] for m in masks])


# ----------------------------------------------------------------------------------------------
# Learned segmentation (optional)
# ----------------------------------------------------------------------------------------------
DYNAMIC_LABELS = ("person", "rider", "bicycle", "car", "motorcycle", "bus", "truck", "train", "boat", "airplane",
                  "bird", "cat", "dog", "horse", "animal", "vehicle")
"""Label names of things that move: a segmentation model's classes whose name holds one of these
words are its moving classes unless ``classes`` is given."""


def load_segmentation_model(model_dir):
    """(model, image processor) of a transformers Segformer / Mask2Former (or any
    ``AutoModelForSemanticSegmentation`` / universal segmentation) checkpoint in a local directory."""
    from transformers import AutoConfig, AutoImageProcessor

    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    if "Mask2Former" in "".join(config.architectures or []) or config.model_type in ("mask2former", "maskformer"):
        from transformers import AutoModelForUniversalSegmentation as Auto
    else:
        from transformers import AutoModelForSemanticSegmentation as Auto
    model = Auto.from_pretrained(str(model_dir), local_files_only=True).eval()
    return model, AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True)


def dynamic_classes(id2label: dict, names: Sequence[str] = DYNAMIC_LABELS) -> tuple[int, ...]:
    """The label ids whose name (words split at spaces, commas, semicolons) holds one of ``names``;
    ValueError listing the labels when none does (masking nothing would pass silently)."""
    import re

    wanted = set(names)
    ids = tuple(sorted(int(i) for i, label in id2label.items()
                       if wanted & set(re.split(r"[\s,;/_-]+", str(label).lower()))))
    if not ids:
        shown = ", ".join(str(v) for v in list(id2label.values())[:12])
        raise ValueError(f"the segmentation model has no class of a moving thing ({', '.join(names[:6])}, ...) "
                         f"among its labels ({shown}, ...): give its moving class ids")
    return ids


def learned_segmentation_mask(frame, model_dir, classes: Sequence[int] | None = None, *, model=None,
                              processor=None) -> torch.Tensor:
    """(H, W) bool mask of the pixels a semantic segmentation model labels with one of ``classes``.

    The model is loaded from a *local* directory (``load_segmentation_model``) unless ``model`` /
    ``processor`` are given. ``classes`` are the model's label ids; None: its classes of moving
    things (``dynamic_classes`` of its ``config.id2label``). ``frame``: (H, W, 3) RGB, float [0, 1]
    or uint8.
    """
    from mirage_model.perception.depth import to_uint8_rgb

    if model is None or processor is None:
        model, processor = load_segmentation_model(model_dir)
    if classes is None:
        classes = dynamic_classes(model.config.id2label)
    img = to_uint8_rgb(frame)
    H, W = img.shape[:2]
    with torch.no_grad():
        inputs = processor(images=[img], return_tensors="pt").to(model.device)
        outputs = model(**inputs)
    if hasattr(processor, "post_process_semantic_segmentation"):
        labels = processor.post_process_semantic_segmentation(outputs, target_sizes=[(H, W)])[0]
    else:
        logits = F.interpolate(outputs.logits, size=(H, W), mode="bilinear", align_corners=False)
        labels = logits.argmax(1)[0]
    labels = torch.as_tensor(labels).cpu()
    if not classes:
        return torch.zeros(H, W, dtype=torch.bool)
    return torch.isin(labels, torch.as_tensor(list(classes), dtype=labels.dtype))


# ----------------------------------------------------------------------------------------------
# Learned propagation of the moving objects (optional)
# ----------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def seed_objects(moving: torch.Tensor, min_area: float = 0.002) -> list[torch.Tensor]:
    """The objects of one frame's moving mask (H, W bool): its connected components covering at
    least ``min_area`` of the frame, each as an (H, W) bool mask, largest first."""
    m = np.ascontiguousarray(moving.cpu().numpy().astype(np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = [i + 1 for i in np.argsort(-areas) if areas[i] >= min_area * m.size]
    return [torch.from_numpy(labels == i) for i in keep]


@torch.no_grad()
def propagate_objects(model, frames, seed_frame: int, objects: Sequence[torch.Tensor], out_frames: Sequence[int],
                      *, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(len(out_frames), H, W) bool: where a SAM2 video model (transformers ``Sam2VideoModel``)
    finds any of ``objects`` -- (H, W) masks on frame ``seed_frame`` -- in the frames ``out_frames``
    of the clip ``frames`` (T, H, W, 3) uint8, propagating forwards and backwards from the seed.

    The frames are prepared as SAM2's video processor does (resized to the model's square input,
    scaled to [0, 1], normalised by ``mean`` / ``std``), without it: the processor needs torchvision,
    the model does not."""
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    frames = torch.as_tensor(np.asarray(frames))
    T, H, W = frames.shape[:3]
    out = torch.zeros((len(out_frames), H, W), dtype=torch.bool)
    if not objects:
        return out
    param = next(model.parameters())
    size = int(model.config.image_size)
    video = frames.permute(0, 3, 1, 2).float().div(255.0)
    video = F.interpolate(video, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    video = (video - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    session = Sam2VideoInferenceSession(video=video, video_height=H, video_width=W, inference_device=param.device,
                                        dtype=param.dtype)
    ids = list(range(1, len(objects) + 1))
    for obj_id, obj in zip(ids, objects):
        m = F.interpolate(obj[None, None].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True) >= 0.5
        session.add_mask_inputs(session.obj_id_to_idx(obj_id), seed_frame, m.to(param.device, param.dtype))
    session.obj_with_new_inputs = ids
    model(inference_session=session, frame_idx=seed_frame)
    where = {int(f): i for i, f in enumerate(out_frames)}
    for reverse in (False, True):
        for step in model.propagate_in_video_iterator(session, start_frame_idx=seed_frame, reverse=reverse):
            i = where.get(int(step.frame_idx))
            if i is not None:
                logits = F.interpolate(step.pred_masks.float().cpu(), size=(H, W), mode="bilinear", align_corners=False)
                out[i] |= (logits > 0).any(dim=0)[0]
    return out

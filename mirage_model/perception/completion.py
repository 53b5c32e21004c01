"""Dense depth from confident multi-view depth: image-guided completion, and an explicit sky mask.

Plane-sweep stereo is accurate where it is confident (textured, seen from two views) and silent
elsewhere: on real footage it covers a third to a half of the pixels, and a memory built from that
is mostly holes. ``complete_depth`` fills the rest by edge-aware least squares on inverse depth
(the colorization energy of Levin et al., 2004): confident pixels pull the solution to their value,
neighbouring pixels of similar colour pull towards each other, so depth spreads along surfaces and
stops at image edges. Every filled pixel gets a confidence that falls with its distance from the
measured ones, kept next to the depth so a consumer can choose its own trade-off.

Sky has no depth to fill: ``sky_mask`` finds it explicitly -- untextured, bright or blue regions
without stereo depth that touch the top of the image -- and completion leaves it at 0.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = ["complete_depth", "complete_depth_video", "sky_mask_from_image"]


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.float32 and img.dtype != np.float64:
        img = img.astype(np.float32) / 255.0
    return img.mean(axis=-1) if img.ndim == 3 else img


def sky_mask_from_image(image, valid, depth=None, *, max_gradient: float = 0.04, min_value: float = 0.45,
                        min_fraction: float = 0.02, min_top_width: float = 0.2,
                        far_quantile: float = 0.6) -> torch.Tensor:
    """(H, W) bool: sky, found without a model.

    A pixel is a sky candidate when stereo gave it no depth (``~valid``), it is smooth (Sobel
    gradient of the grey image below ``max_gradient``, in [0, 1] units) and bright or blue
    (HSV value above ``min_value``, or blue dominating red). Sky is each connected region of
    candidates that touches the top row along at least ``min_top_width`` of the image width and
    holds at least ``min_fraction`` of the image (a bright wall or window high in an indoor frame
    is usually narrower). With
    ``depth``, a region must also lie behind what surrounds it: the median depth of the measured
    pixels along its border must reach the ``far_quantile`` of the frame's depths (a white wall
    or ceiling next to near furniture is not sky). ``image`` (H, W, 3) RGB uint8 or float
    [0, 1]; ``valid`` (H, W) bool of the stereo depth; ``depth`` (H, W)."""
    img = np.asarray(image)
    rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    valid = np.asarray(valid, dtype=bool) if not torch.is_tensor(valid) else valid.cpu().numpy().astype(bool)
    gray = _gray(rgb)
    g = cv2.GaussianBlur(gray, (0, 0), 1.0)
    grad = np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)) / 8.0
    value = rgb.max(axis=-1)
    blue = rgb[..., 2] > rgb[..., 0] + 0.05
    cand = (~valid) & (grad < max_gradient) & ((value > min_value) | blue)
    n, labels = cv2.connectedComponents(cand.astype(np.uint8), connectivity=4)
    top = set(np.unique(labels[0][cand[0]]).tolist()) - {0}
    sky = np.zeros_like(cand)
    d = None if depth is None else torch.as_tensor(depth).float().cpu().numpy()
    far = float(np.quantile(d[valid], far_quantile)) if d is not None and valid.sum() >= 20 else None
    for lab in top:
        region = labels == lab
        if region.mean() < min_fraction or region[0].mean() < min_top_width:
            continue
        if far is not None:
            ring = cv2.dilate(region.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~region & valid
            if ring.sum() >= 20 and float(np.median(d[ring])) < far:
                continue
        sky |= region
    return torch.from_numpy(sky)


def complete_depth(depth, valid, image, *, sky=None, confidence=None, smoothness: float = 1.0,
                   sigma: float = 0.06, max_side: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the holes of a depth map guided by its image.

    Args:
        depth: (H, W) depth, > 0 where ``valid``.
        valid: (H, W) bool, the measured (confident) pixels.
        image: (H, W, 3) RGB (uint8 or float [0, 1]) of the same view and size.
        sky: optional (H, W) bool; left empty (depth 0, confidence 0).
        confidence: optional (H, W) weight in [0, 1] of each measured pixel (default 1).
        smoothness: weight of the neighbour term against the data term.
        sigma: colour difference (grey, [0, 1]) at which two neighbours stop pulling together.
        max_side: the solve runs at most at this size (then upsampled; measured pixels keep their
            own value at full size).
    Returns:
        (dense depth (H, W) float32, confidence (H, W) float32): measured pixels keep their depth
        and confidence; filled ones get ``0.5 * exp(-distance / (0.1 * image diagonal))`` where
        ``distance`` is the pixel distance to the nearest measured pixel; sky is 0 in both.
    """
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import spsolve

    d = torch.as_tensor(depth).float().cpu().numpy()
    v = torch.as_tensor(valid).bool().cpu().numpy() & (d > 0) & np.isfinite(d)
    H, W = d.shape
    s = np.zeros((H, W), bool) if sky is None else torch.as_tensor(sky).bool().cpu().numpy()
    v &= ~s
    conf_in = np.ones((H, W), np.float32) if confidence is None else \
        np.clip(torch.as_tensor(confidence).float().cpu().numpy(), 0.0, 1.0)
    out_conf = np.where(v, conf_in, 0.0).astype(np.float32)
    if not v.any():
        return torch.zeros(H, W), torch.zeros(H, W)
    if v.all():
        return torch.from_numpy(d.astype(np.float32)), torch.from_numpy(out_conf)

    # working resolution
    scale = min(1.0, max_side / max(H, W))
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    gray = _gray(image).astype(np.float32)
    if (h, w) != (H, W):
        gray_s = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA)
        inv = np.where(v, 1.0 / np.maximum(d, 1e-9), 0.0).astype(np.float32)
        wsum = cv2.resize(v.astype(np.float32) * conf_in, (w, h), interpolation=cv2.INTER_AREA)
        inv_s = cv2.resize(inv * conf_in, (w, h), interpolation=cv2.INTER_AREA) / np.maximum(wsum, 1e-9)
        data_w = wsum
        sky_s = cv2.resize(s.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    else:
        gray_s, inv_s = gray, np.where(v, 1.0 / np.maximum(d, 1e-9), 0.0)
        data_w, sky_s = np.where(v, conf_in, 0.0), s
    data_w = np.where(sky_s, 0.0, data_w)

    # (C + smoothness * L) x = C b on a 4-neighbour grid, affinities from the grey image
    n = h * w
    idx = np.arange(n).reshape(h, w)
    rows, cols, vals = [], [], []
    for a, b, ga, gb, skya, skyb in (
        (idx[:, :-1], idx[:, 1:], gray_s[:, :-1], gray_s[:, 1:], sky_s[:, :-1], sky_s[:, 1:]),
        (idx[:-1, :], idx[1:, :], gray_s[:-1, :], gray_s[1:, :], sky_s[:-1, :], sky_s[1:, :]),
    ):
        wgt = np.exp(-((ga - gb) ** 2) / (2 * sigma ** 2)) + 1e-4
        wgt = np.where(skya | skyb, 1e-6, wgt)  # no depth leaks through the sky
        rows += [a.ravel(), b.ravel()]
        cols += [b.ravel(), a.ravel()]
        vals += [-wgt.ravel(), -wgt.ravel()]
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals).astype(np.float64)
    offdiag = coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    lap = diags(-np.asarray(offdiag.sum(axis=1)).ravel()) + offdiag
    c = data_w.ravel().astype(np.float64) + 1e-8  # a tiny pull to 0 keeps islands solvable
    A = (diags(c) + smoothness * lap).tocsc()
    x = spsolve(A, c * inv_s.ravel()).reshape(h, w).astype(np.float32)
    if (h, w) != (H, W):
        x = cv2.resize(x, (W, H), interpolation=cv2.INTER_LINEAR)
    dense = np.where(x > 1e-9, 1.0 / np.maximum(x, 1e-9), 0.0)
    dense = np.where(v, d, dense)
    dense = np.where(s, 0.0, dense).astype(np.float32)

    dist = cv2.distanceTransform((~v).astype(np.uint8), cv2.DIST_L2, 5)
    filled_conf = 0.5 * np.exp(-dist / (0.1 * np.hypot(H, W)))
    conf = np.where(v, out_conf, filled_conf)
    conf = np.where(s | (dense <= 0), 0.0, conf).astype(np.float32)
    return torch.from_numpy(dense), torch.from_numpy(conf)


def complete_depth_video(frames: np.ndarray, depth: np.ndarray, valid: np.ndarray,
                         outside: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """``complete_depth`` with its own ``sky_mask_from_image`` for each of N frames: what the data
    pipeline stores and what the masks and the perception report run on.

    ``frames`` (N, H, W, 3); ``depth``, ``valid`` (N, H, W) confident stereo depth; ``outside``
    optional (H, W) bool of pixels that show no scene (an undistorted frame's black border), left
    empty like sky but not called sky. Returns numpy (dense depth, valid = dense > 0, confidence,
    sky), each (N, H, W).
    """
    dense, conf, sky = np.zeros_like(depth), np.zeros_like(depth), np.zeros(depth.shape, bool)
    for i in range(len(depth)):
        s = sky_mask_from_image(frames[i], valid[i], depth[i]).numpy()
        if outside is not None:
            s &= ~outside
        d, c = complete_depth(depth[i], valid[i], frames[i], sky=s if outside is None else s | outside)
        dense[i], conf[i], sky[i] = d.numpy(), c.numpy(), s
    return dense, dense > 0, conf, sky

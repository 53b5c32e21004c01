"""The real fixtures (tests/data/real/README.md): paths, ground truth, loaders (tests and benchmarks)."""

from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parent / "data" / "real"
TOS = REAL / "tears_of_steel_cuts.mp4"
TOS_SHOTS = [(0, 21), (21, 65), (65, 185), (185, 240)]  # cuts checked by eye, frame by frame
TOS_FOLLOW = REAL / "tears_of_steel_follow.mp4"


def follow_masks() -> np.ndarray:
    """(44, 360, 640) bool: the walking man in each frame of ``tears_of_steel_follow.mp4``."""
    with np.load(REAL / "tears_of_steel_follow_masks.npz") as z:
        n, h, w = (int(x) for x in z["shape"])
        return np.unpackbits(z["masks"], axis=-1, count=w).astype(bool).reshape(n, h, w)


def motorcycle():
    """Middlebury 2014 "motorcycle" (quarter size) as scikit-image ships it, with its calibration
    (skimage.data.stereo_motorcycle docstring): (frames (2, H, W, 3), K (2, 3, 3), c2w (2, 4, 4)
    left = identity, ground-truth depth (H, W) in metres with 0 = unknown, 300 sparse world points
    drawn from the ground truth -- what SfM gives the depth stage)."""
    import skimage.data
    import torch

    left, right, disp = skimage.data.stereo_motorcycle()
    f, cx, cy, doffs, baseline = 994.978, 311.193, 254.877, 31.086, 0.193001  # metres
    gt = np.where(np.isfinite(disp), f * baseline / (disp + doffs), 0.0)
    K = torch.tensor([[[f, 0, cx], [0, f, cy], [0, 0, 1]], [[f, 0, cx + doffs], [0, f, cy], [0, 0, 1]]],
                     dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1, 0, 3] = baseline
    # what SfM gives the depth stage: a few hundred sparse points (here: from the ground truth)
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(gt > 0)
    pick = rng.choice(len(ys), 300, replace=False)
    z = gt[ys[pick], xs[pick]]
    points = torch.as_tensor(np.stack([(xs[pick] - cx) / f * z, (ys[pick] - cy) / f * z, z], -1))
    return np.stack([left, right]), K, c2w, gt, points


def photo_pan(n: int = 33, size: tuple[int, int] = (240, 320), yaw_deg: float = 8.0, k1: float = -0.08,
              static: bool = False, walker: bool = False, seed: int = 0) -> np.ndarray:
    """A camera rotating in place (or, ``static``, standing still) in front of a real photograph.

    The photograph is the left view of Middlebury's "motorcycle" (scikit-image's wheel; see
    tests/data/real/README.md). Seen by a camera that only rotates, it moves by the homography
    ``K R K^-1``, exactly as a real scene does under a pan on a tripod. The frames then get a lens's
    radial distortion (``k1``), sensor noise, and H.264 compression (qp 23), as phone footage has,
    and are decoded back: (n, H, W, 3) uint8 at 16 fps. ``static``: the same view every frame
    (only the noise and the compression differ). ``walker``: something crosses the view (a crop
    of scikit-image's "chelsea" photograph moving left to right), as people do in a static shot."""
    import tempfile

    import cv2
    import skimage.data

    from mirage_model.io.video import decode, write_video

    photo = skimage.data.stereo_motorcycle()[0]
    ph, pw = photo.shape[:2]
    h, w = size
    f_photo = 0.9 * pw  # the photograph's own camera
    Kp = np.array([[f_photo, 0, (pw - 1) / 2], [0, f_photo, (ph - 1) / 2], [0, 0, 1]])
    f = 0.9 * w * (f_photo / pw) * 1.6  # a narrower view: the pan stays inside the photograph
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    rng = np.random.default_rng(seed)
    frames = []
    for t in np.linspace(-0.5, 0.5, n):
        a = 0.0 if static else np.deg2rad(yaw_deg * t)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        H = Kp @ R @ np.linalg.inv(K)  # output pixel -> photo pixel
        # radial distortion of the lens: output pixel (distorted) -> ideal pixel -> photo pixel
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
        xn, yn = (xs - K[0, 2]) / f, (ys - K[1, 2]) / f
        r2 = xn * xn + yn * yn
        xu, yu = xn * (1 + k1 * r2) * f + K[0, 2], yn * (1 + k1 * r2) * f + K[1, 2]
        pts = H @ np.stack([xu.ravel(), yu.ravel(), np.ones(xu.size)])
        mx, my = (pts[0] / pts[2]).reshape(h, w).astype(np.float32), (pts[1] / pts[2]).reshape(h, w).astype(np.float32)
        frame = cv2.remap(photo, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if walker:
            cat = skimage.data.chelsea()[40:160, 120:200]
            x0 = int(round((t + 0.5) * (w - cat.shape[1])))
            y0 = h // 2 - cat.shape[0] // 2
            frame[y0:y0 + cat.shape[0], x0:x0 + cat.shape[1]] = cat
        frames.append(np.clip(frame + rng.normal(0, 2.0, frame.shape), 0, 255).astype(np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        return decode(write_video(f"{tmp}/pan.mp4", np.stack(frames), 16, qp=23)).frames

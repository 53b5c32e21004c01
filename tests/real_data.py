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

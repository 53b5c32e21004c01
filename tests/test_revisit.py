"""Revisit-consistency metrics: PSNR / SSIM against hand-computed values and a naive reference,
and the pose matching that finds "same camera on the way out and on the way back" pairs."""

import math

import numpy as np
import pytest
import torch

from mirage_model.evaluation import MAX_PSNR_DB, psnr, revisit_consistency, revisit_pairs, ssim
from mirage_model.geometry import trajectory

SIZE = (32, 48)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook SSIM, one 11x11 window at a time (float64, Gaussian sigma 1.5, valid positions)."""
    x1 = np.arange(11) - 5.0
    g = np.exp(-x1 ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    vals = []
    for ch in range(a.shape[2]):
        for r in range(a.shape[0] - 10):
            for c in range(a.shape[1] - 10):
                pa, pb = a[r:r + 11, c:c + 11, ch], b[r:r + 11, c:c + 11, ch]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va = (w * (pa - ma) ** 2).sum()
                vb = (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_identical_and_hand_computed():
    a = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a, max_db=MAX_PSNR_DB) == MAX_PSNR_DB
    b = a + 10  # MSE 100 -> 10 log10(255^2 / 100)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100), abs=1e-12)
    assert psnr(a, b) == pytest.approx(28.1308, abs=1e-4)
    # batches: MSE over everything
    stack_a, stack_b = np.stack([a, a]), np.stack([a, b])
    assert psnr(stack_a, stack_b) == pytest.approx(10 * math.log10(255 ** 2 / 50), abs=1e-12)


def test_ssim_identical_is_one_and_constant_images_hand_computed():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # constant images: no variance, so SSIM is the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    x, y = np.full((20, 20, 3), 100, np.uint8), np.full((20, 20, 3), 120, np.uint8)
    expected = (2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1)
    assert ssim(x, y) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.98361, abs=1e-5)


def test_ssim_matches_naive_reference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (16, 19, 3), dtype=np.uint8)
    noise = rng.normal(0, 25, a.shape)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    ref = _ssim_reference(a, b)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert ssim(b, a) == pytest.approx(ref, abs=1e-10)  # symmetric
    assert 0 < ref < 1
    # torch input and batch input give the same
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, abs=1e-10)
    assert ssim(np.stack([a, a]), np.stack([b, b])) == pytest.approx(ref, abs=1e-10)


def test_metric_input_errors():
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((16, 17, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ssim(a.astype(np.float32), a.astype(np.float32))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 16, 3), np.uint8), np.zeros((8, 16, 3), np.uint8))


def test_pan_and_return_pairs_are_exact_mirrors():
    n = 65
    traj = trajectory.pan_and_return(n, yaw_degrees=60.0, translation=(0.3, 0.0, 0.0), image_size=SIZE)
    pairs = revisit_pairs(traj, min_gap=8)
    assert pairs, "pan-and-return revisits its poses bit-identically"
    assert all(i == n - 1 - j for i, j in pairs)
    assert all(j > i + 8 for i, j in pairs)
    assert len(pairs) == 28  # i = 0 .. 27 (64 - i > i + 8)
    assert pairs[-1] == (0, 64)


def test_finely_sampled_return_pairs_the_closest_pose_not_the_first_in_tolerance():
    # 0.3 degrees per frame: several earlier frames fall inside the 0.5 degree tolerance
    n = 201
    traj = trajectory.pan_and_return(n, yaw_degrees=30.0, image_size=SIZE)
    pairs = revisit_pairs(traj, rot_tol_deg=0.5, min_gap=8)
    mirrored = [(i, j) for i, j in pairs if j > (n - 1 - j) + 8]  # the exact mirror is admissible
    assert len(mirrored) >= 90 and all(i == n - 1 - j for i, j in mirrored)
    # near the turn the mirror is too close in time; a neighbour within tolerance stands in
    assert all(j - i > 8 for i, j in pairs)


def test_no_revisit_and_closed_orbit():
    dolly = trajectory.dolly(33, distance=1.0, image_size=SIZE)
    assert revisit_pairs(dolly) == []
    frames = np.zeros((33, *SIZE, 3), np.uint8)
    out = revisit_consistency(frames, dolly)
    assert out["pairs"] == 0 and math.isnan(out["psnr"]) and math.isnan(out["ssim"])
    loop = trajectory.orbit(33, radius=1.0, degrees=360.0, image_size=SIZE)
    assert revisit_pairs(loop) == [(0, 32)]
    # a camera that never moves: every frame past the gap pairs with the first visit
    still = trajectory.dolly(20, distance=0.0, image_size=SIZE)
    assert revisit_pairs(still, min_gap=8) == [(0, j) for j in range(9, 20)]


def test_revisit_consistency_copies_vs_noise():
    n = 33
    traj = trajectory.pan_and_return(n, yaw_degrees=40.0, image_size=SIZE)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (n, *SIZE, 3), dtype=np.uint8)
    for i in range(n // 2):
        frames[n - 1 - i] = frames[i]  # perfect memory: the return shows what the way out showed
    good = revisit_consistency(frames, traj)
    assert good["pairs"] > 0
    assert good["psnr"] == MAX_PSNR_DB and good["ssim"] == pytest.approx(1.0)
    noisy = frames.copy()
    noisy[n // 2 + 1:] = np.clip(noisy[n // 2 + 1:] + rng.normal(0, 20, noisy[n // 2 + 1:].shape),
                                 0, 255).astype(np.uint8)
    bad = revisit_consistency(noisy, traj)
    assert bad["pairs"] == good["pairs"]
    assert 15 < bad["psnr"] < 30 and bad["ssim"] < 0.99
    with pytest.raises(ValueError, match="frames"):
        revisit_consistency(frames[:-1], traj)

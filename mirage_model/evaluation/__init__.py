"""Evaluation metrics on generated videos (pure torch / numpy)."""

from .revisit import MAX_PSNR_DB, psnr, revisit_consistency, revisit_pairs, ssim

__all__ = ["MAX_PSNR_DB", "psnr", "revisit_consistency", "revisit_pairs", "ssim"]

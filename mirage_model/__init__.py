"""Mirage: latent spatial memory for video world models (pure torch; no Ray imports here)."""

__version__ = "0.1.0"

"""Where the repository's ``configs/`` and ``assets/`` (the shipped world) are, however the package
was installed.

From a checkout (a source tree, or ``pip install -e .``) they sit next to the packages. A wheel
(``pip install .``) carries them as package data, ``mirage_resources/configs`` and
``mirage_resources/assets`` next to ``jobs/`` in site-packages (pyproject.toml maps them), so
``mirage demo`` finds its config and its world from any directory.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RESOURCE_ROOT"]

_PARENT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages
RESOURCE_ROOT = _PARENT if (_PARENT / "configs" / "demo").is_dir() else _PARENT / "mirage_resources"
"""The directory holding ``configs/`` and ``assets/``."""

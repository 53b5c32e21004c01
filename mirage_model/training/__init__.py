"""Training: sample construction from the pipeline's shards (docs/method.md §6).

The stages, optimizer and checkpoint files are in ``mirage_model.training.trainer``.
"""

from mirage_model.training.samples import *  # noqa: F403  (the public names of samples.py)
from mirage_model.training.samples import __all__  # noqa: F401

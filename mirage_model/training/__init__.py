"""Training: sample construction from the pipeline's shards (docs/method.md §6)."""

from mirage_model.training.samples import (
    SampleChoices,
    SampleConfig,
    TrainingBatch,
    TrainingSample,
    batch_samples,
    build_training_sample,
    clip_latents,
    collate,
    draw_choices,
    frame_voxels,
    make_samples,
    sample_rng,
    select_references,
    valid_latent_starts,
)

__all__ = [
    "SampleChoices",
    "SampleConfig",
    "TrainingBatch",
    "TrainingSample",
    "batch_samples",
    "build_training_sample",
    "clip_latents",
    "collate",
    "draw_choices",
    "frame_voxels",
    "make_samples",
    "sample_rng",
    "select_references",
    "valid_latent_starts",
]

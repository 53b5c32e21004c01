"""Chunked camera-controlled generation with a spatial memory (docs/method.md §4 sampling, §5)."""

from mirage_model.model.text import build_text_stack, encode_prompt, load_text_stack

from .config import GenerationConfig
from .generator import GenerationResult, MirageGenerator, readout_frames, save_outputs

__all__ = ["GenerationConfig", "GenerationResult", "MirageGenerator", "readout_frames", "save_outputs",
           "build_text_stack", "encode_prompt", "load_text_stack"]

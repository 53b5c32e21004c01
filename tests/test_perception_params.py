"""The perception settings objects (``mirage_model.perception.params``): one default per setting,
built once from the configs and passed as ``params=``; bad values are errors naming the field; and
the typed clip content ``encode_sample`` takes (``sample_format.ClipSample``)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mirage_model.config import load_config
from mirage_model.generation import writeback
from mirage_model.generation.config import GenerationConfig
from mirage_model.io import sample_format
from mirage_model.perception import depth, masks
from mirage_model.perception.depth import DepthResult
from mirage_model.perception.params import (
    GENERATION_STEREO,
    PREPROCESS_STEREO,
    WRITEBACK_CELL_STEREO,
    CellStereoParams,
    MotionMaskParams,
    StereoParams,
)
from pipeline import stages
from pipeline.config import PreprocessConfig

ROOT = Path(__file__).resolve().parents[1]


def _default(fn, name: str = "params"):
    return inspect.signature(fn).parameters[name].default


def test_function_defaults_are_the_params_defaults():
    for fn in (depth.plane_sweep_depth, depth.estimate_depth_video):
        assert _default(fn) == StereoParams() == GENERATION_STEREO
    assert _default(depth.cell_sweep_depth) == CellStereoParams()
    for fn in (masks.moving_object_mask, masks.static_masks, masks.clip_masks):
        assert _default(fn) == MotionMaskParams()
    # generation: the RGB cache's sweep is GENERATION_STEREO at the configured scale, the latent
    # memory's is the cell sweep without its own parallax check (writeback checks it first)
    assert _default(writeback.pixel_depths) == GENERATION_STEREO == GenerationConfig().writeback_stereo()
    assert GenerationConfig(writeback_depth_scale=0.5).writeback_stereo() == GENERATION_STEREO.replace(scale=0.5)
    assert _default(writeback.cell_depths) == WRITEBACK_CELL_STEREO
    assert WRITEBACK_CELL_STEREO == CellStereoParams().replace(min_parallax_px=0.0)
    # the pipeline's and generation's pixel sweeps differ in their plane count only (params.py says why)
    assert (PREPROCESS_STEREO.num_depths, GENERATION_STEREO.num_depths) == (48, 64)
    assert PREPROCESS_STEREO.replace(num_depths=GENERATION_STEREO.num_depths) == GENERATION_STEREO


def test_preprocess_config_builds_the_params_once():
    cfg = PreprocessConfig(source="in", output="out")
    assert cfg.depth.stereo == PREPROCESS_STEREO and cfg.masks.flow == MotionMaskParams()
    # the shipped YAMLs hold the defaults (default.yaml: all of them)
    shipped = load_config(PreprocessConfig, ROOT / "configs/preprocess/default.yaml")
    assert shipped == PreprocessConfig(source=shipped.source, output=shipped.output)
    assert load_config(PreprocessConfig, ROOT / "configs/preprocess/world.yaml").depth.stereo == PREPROCESS_STEREO
    # a partial stereo section sits over PREPROCESS_STEREO, not over the class defaults (64 planes)
    patched = load_config(PreprocessConfig, None, ["source=in", "output=out", "depth.stereo.patch=7",
                                                   "masks.flow.threshold_px=2"])
    assert patched.depth.stereo == PREPROCESS_STEREO.replace(patch=7)
    assert patched.masks.flow == MotionMaskParams(threshold_px=2.0)


def test_stages_pass_the_config_params(monkeypatch):
    monkeypatch.setattr(stages, "limit_threads", lambda config: None)
    seen = {}

    def fake_depth(frames, K, c2w, indices=None, *, params, points=None):
        seen["stereo"] = params
        h, w = frames.shape[1:3]
        return [DepthResult(depth=torch.ones(h, w), confidence=torch.ones(h, w), valid=torch.ones(h, w, dtype=torch.bool),
                            depth_range=(0.5, 2.0)) for _ in indices]

    def fake_masks(frames, depth_frames, depth, valid, K, c2w, *, method, model_dir, params):
        seen["flow"] = params
        n, (h, w) = len(depth_frames), frames.shape[1:3]
        return torch.ones(n, h, w, dtype=torch.bool), torch.zeros(n, h, w, dtype=torch.bool)

    monkeypatch.setattr("mirage_model.perception.estimate_depth_video", fake_depth)
    monkeypatch.setattr("mirage_model.perception.masks.clip_masks", fake_masks)
    cfg = load_config(PreprocessConfig, None, ["source=in", "output=out", "depth.complete=false",
                                               "depth.stereo.num_depths=20", "masks.flow.relative=0.3"])
    c2w = np.tile(np.eye(4), (9, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 1, 9)
    data = {"frames": np.zeros((9, 32, 32, 3), np.uint8), "K": np.array([[30.0, 0, 16], [0, 30, 16], [0, 0, 1]]),
            "c2w": c2w, "stats": {}}
    stages.EstimateDepth(cfg).process(data, {})
    stages.EstimateMasks(cfg).process(data, {})
    assert seen["stereo"] is cfg.depth.stereo and seen["stereo"].num_depths == 20
    assert seen["flow"] is cfg.masks.flow and seen["flow"].relative == 0.3


@pytest.mark.parametrize("cls, field, value", [
    (StereoParams, "num_depths", 2),
    (StereoParams, "patch", 4),
    (StereoParams, "cost_window", 2),
    (StereoParams, "scale", 0.0),
    (StereoParams, "ratio_margin", 0.0),
    (CellStereoParams, "work_cell", 1),
    (CellStereoParams, "min_overlap", 1.5),
    (MotionMaskParams, "threshold_px", 0.0),
    (MotionMaskParams, "flow_method", "raft"),
    (MotionMaskParams, "undecided", "guess"),
    (MotionMaskParams, "morphology", (3, -1)),
])
def test_a_bad_value_is_an_error_naming_the_field(cls, field, value):
    with pytest.raises(ValidationError, match=field):
        cls(**{field: value})
    with pytest.raises(ValidationError, match=field):
        cls().replace(**{field: value})


def test_params_are_frozen_and_strict():
    with pytest.raises(ValidationError, match="frozen"):
        PREPROCESS_STEREO.num_depths = 3
    with pytest.raises(ValidationError, match="num_planes"):
        StereoParams(num_planes=32)


def test_preprocess_config_errors_name_the_key():
    base = ["source=in", "output=out"]
    with pytest.raises(ValueError, match=r"depth.stereo.patch"):
        load_config(PreprocessConfig, None, base + ["depth.stereo.patch=4"])
    with pytest.raises(ValueError, match=r"masks.flow.flow_method"):
        load_config(PreprocessConfig, None, base + ["masks.flow.flow_method=raft"])
    with pytest.raises(ValueError, match=r"depth.num_depths is now depth.stereo.num_depths"):
        load_config(PreprocessConfig, None, base + ["depth.num_depths=32"])
    with pytest.raises(ValueError, match=r"stereo.scale must stay 1"):  # depth.scale resizes the frames
        load_config(PreprocessConfig, None, base + ["depth.stereo.scale=0.5"])


def test_clip_sample_round_trip():
    t, (h, w) = 5, (64, 96)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (t, h, w, 3), dtype=np.uint8)
    c2w = np.tile(np.eye(4), (t, 1, 1))
    K = np.array([[80.0, 0, 48], [0, 80, 32], [0, 0, 1]])
    clip = sample_format.ClipSample(
        frames=frames, c2w=c2w, K=K, depth=rng.uniform(1, 5, (2, 32, 48)).astype(np.float32),
        static=rng.uniform(size=(2, 32, 48)) > 0.5, fps=16, source_uri="/in/a.mp4", frame_indices=range(3, 8),
        depth_frames=[0, 4], depth_confidence=np.full((2, 32, 48), 0.5, np.float32), stats={"x": 1.0},
        extra_meta={"caption": "a room"})
    out = sample_format.decode_sample(sample_format.encode_sample("a.b", clip, aux_size=(16, 24)))
    assert out["frames"].shape == frames.shape and out["depth"].shape == out["static"].shape == (2, 16, 24)
    assert out["depth_confidence"].shape == (2, 16, 24) and np.allclose(out["depth_confidence"], 0.5)
    assert out["depth_frames"] == [0, 4] and np.array_equal(out["K"], np.broadcast_to(K, (t, 3, 3)))
    meta = out["meta"]
    assert meta["frame_indices"] == [3, 4, 5, 6, 7] and meta["source_uri"] == "/in/a.mp4"
    assert meta["stats"] == {"x": 1.0} and meta["caption"] == "a room" and meta["aux_size"] == [16, 24]
    with pytest.raises(ValueError, match="depth_frames"):
        sample_format.encode_sample("k", sample_format.ClipSample(
            frames=frames, c2w=c2w, K=K, depth=np.ones((2, 8, 8)), static=np.ones((2, 8, 8)), fps=16,
            source_uri="x", frame_indices=range(t), depth_frames=[0, 9]))

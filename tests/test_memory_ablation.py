"""The memory ablation harness (mirage_model/evaluation/memory_ablation.py, jobs/eval_memory.py).

The wiring tests use ``ReadoutCopyModel`` (a denoiser that copies the memory readout where the
memory sees) on the random-weight tiny stack: no learning, so a failure means the loop itself is
wrong -- chunk cameras, readout, write-back or the sampler's clean-latent pinning.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mirage_model.evaluation.memory_ablation import (
    ABLATION_PATHS,
    closed_path,
    latent_snr_db,
    revisit_latent_pairs,
    score_generation,
)
from mirage_model.evaluation.readout_copy import ReadoutCopyModel
from mirage_model.evaluation.revisit import MAX_PSNR_DB
from mirage_model.generation import GenerationConfig, MirageGenerator
from mirage_model.io.images import to_uint8
from mirage_model.synthetic import default_scene, render_trajectory
from mirage_model.vae import encode_video

SIZE = (64, 96)


@pytest.mark.parametrize("name", ABLATION_PATHS)
def test_closed_paths_return_along_the_same_poses(name):
    traj = closed_path(name, 65, SIZE)
    assert len(traj) == 65
    for i in range(65):
        assert torch.equal(traj.c2w[i], traj.c2w[64 - i]), (name, i)
    centres = traj.c2w[:, :3, 3]
    moved = float((centres - centres[0]).norm(dim=1).max())
    turned = float(torch.linalg.matrix_norm(traj.c2w[:, :3, :3] - traj.c2w[0, :3, :3]).max())
    assert moved > 0.2 or turned > 0.5, f"{name} barely moves"
    lat = revisit_latent_pairs(traj)
    assert (0, 16) in lat and all(i + j == 16 for i, j in lat)


def test_closed_path_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown ablation path 'spiral'"):
        closed_path("spiral", 65, SIZE)
    with pytest.raises(ValueError, match="odd"):
        closed_path("orbit-and-back", 64, SIZE)


def test_latent_snr_reference_points():
    ref = torch.randn(48, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    assert latent_snr_db(ref, ref) == MAX_PSNR_DB
    flat = ref.mean(dim=(-2, -1), keepdim=True).expand_as(ref)  # each latent frame's per-channel mean: 0 dB
    assert abs(latent_snr_db(flat, ref)) < 1e-9
    offset = ref + 5.0 * torch.arange(48, dtype=ref.dtype).view(48, 1, 1, 1)  # per-channel offsets are not content
    assert abs(latent_snr_db(offset.mean(dim=(-2, -1), keepdim=True).expand_as(offset), offset)) < 1e-9
    assert latent_snr_db(ref + 0.1 * torch.randn_like(ref), ref) == pytest.approx(20.0, abs=0.5)
    cells = offset.reshape(48, -1)  # (channels, cells): per-channel variance over the cells
    assert abs(latent_snr_db(cells.mean(dim=1, keepdim=True).expand_as(cells), cells)) < 1e-9
    assert latent_snr_db(ref[0, 0, 0] * 0.9, ref[0, 0, 0]) > 0  # 1-D: the plain variance
    with pytest.raises(ValueError, match="shapes differ"):
        latent_snr_db(ref[:, :2], ref)


@pytest.fixture(scope="module")
def copy_world():
    gen = MirageGenerator.from_preset("tiny", seed=0)
    gen.transformer = ReadoutCopyModel(gen.transformer)
    traj = closed_path("forward-and-back", 65, SIZE)
    gt = render_trajectory(default_scene(3), traj.K, traj.c2w, SIZE, fps=16.0)
    reference = to_uint8(gt.rgb.numpy())
    video = torch.tensor(reference, dtype=torch.float32).div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    return gen, traj, gt, reference, encode_video(gen.vae, video)[0]


def _run(copy_world, memory: str):
    gen, traj, gt, reference, ref_latents = copy_world
    result = gen.generate(reference[0], "", traj, GenerationConfig(steps=4, memory=memory, progress=False),
                          first_depth=gt.depth[0])
    return score_generation(result.frames, result.latents, result.visibility, result.chunk_stats, traj,
                            reference, ref_latents)


def test_copying_the_memory_brings_revisits_back_and_a_wrong_readout_camera_does_not(copy_world,
                                                                                      read_memory_at_previous_chunk):
    latent = _run(copy_world, "latent")
    none = _run(copy_world, "none")
    read_memory_at_previous_chunk()
    broken = _run(copy_world, "latent")
    # the memory covers the way back, and what it covers comes back exactly as it was generated
    assert latent["coverage_revisit"] >= 0.9
    assert 0 < latent["cells"]["filled"] < latent["cells"]["read"]  # coming closer magnifies: cracks were closed
    assert latent["covered_consistency_latent_snr"] >= 30.0
    # against the ground truth's own latents the memory gains over no memory
    assert latent["latent_snr_revisit"] - none["latent_snr_revisit"] >= 6.0
    assert none["coverage_revisit"] == 0.0 and math.isnan(none["covered_consistency_latent_snr"])
    # reading at the previous chunk's cameras: the same memory, the wrong place
    assert broken["covered_consistency_latent_snr"] < 10.0
    assert broken["latent_snr_revisit"] < latent["latent_snr_revisit"] - 1.5
    # every memory operation is timed; without memory there is none
    assert set(latent["op_seconds"]) >= {"read", "depth", "masks", "write", "denoise", "decode"}
    assert latent["memory_seconds"] > 0 and none["memory_seconds"] == 0.0
    assert latent["cache_bytes"] > 0 and none["cache_bytes"] == 0


def test_score_generation_checks_shapes(copy_world):
    _, traj, _, reference, ref_latents = copy_world
    with pytest.raises(ValueError, match="reference"):
        score_generation(reference[:10], ref_latents, None, [], traj, reference, ref_latents)


@pytest.mark.slow
def test_eval_memory_job_writes_json_and_markdown(tmp_path, ray_two_cpus):
    from jobs.config import EvalMemoryConfig
    from jobs.eval_memory import JSON_NAME, MARKDOWN_NAME, run_eval_memory

    cfg = EvalMemoryConfig.model_validate({
        "output": str(tmp_path / "out"), "copy_readout": True, "scenes": 1, "paths": ["forward-and-back"],
        "modes": ["latent", "none", "latent-unfiltered"], "generation": {"steps": 2},
        "mlflow": {"tracking_uri": "sqlite:///" + str(tmp_path / "ml.db")}})
    summary = run_eval_memory(cfg)
    data = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert set(data["modes"]) == {"latent", "none", "latent-unfiltered"}
    assert data["latent_minus_none_latent_snr_revisit"] > 6.0
    assert len(data["items"]) == 1 and data["items"][0]["id"] == "scene5000-forward-and-back"
    md = (tmp_path / "out" / MARKDOWN_NAME).read_text()
    assert "| latent |" in md and "| none |" in md
    item = data["items"][0]["modes"]
    gain = item["latent"]["psnr_gt_revisit"] - item["none"]["psnr_gt_revisit"]
    assert (f"| scene5000-forward-and-back | {item['latent']['psnr_gt_revisit']:.2f} | "
            f"{item['none']['psnr_gt_revisit']:.2f} | {item['latent-unfiltered']['psnr_gt_revisit']:.2f} | "
            f"{gain:+.2f} |") in md
    assert summary["mlflow"]["run_id"]
    acct = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (acct["job"], acct["inputs"], acct["accepted"]) == ("eval-memory", 1, 1)
    assert acct["stages"]["evaluate"]["busy_s"] > 0 and acct["peak_rss_mib"]["actor"] > 50
    np.testing.assert_allclose(data["modes"]["latent"]["coverage_revisit"],
                               data["items"][0]["modes"]["latent"]["coverage_revisit"])


def test_eval_memory_config_rejects_bad_values():
    from jobs.config import EvalMemoryConfig

    with pytest.raises(ValueError, match="33 \\+ 32k"):
        EvalMemoryConfig.model_validate({"frames": 64})
    with pytest.raises(ValueError, match="multiple of 32"):
        EvalMemoryConfig.model_validate({"height": 48})
    with pytest.raises(ValueError, match="must not repeat"):
        EvalMemoryConfig.model_validate({"modes": ["latent", "latent"]})
    with pytest.raises(ValueError):
        EvalMemoryConfig.model_validate({"paths": ["spiral"]})
    with pytest.raises(ValueError, match="model_dir brings its own"):
        EvalMemoryConfig.model_validate({"model": {"model_dir": "x", "vae": "y"}})

"""RealEstate10K-format test sets (pipeline.testsets) and ``mirage eval`` on them, local and on S3."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from mirage_model.geometry.camera import intrinsics_from_fov, look_at
from mirage_model.geometry.trajectory import Trajectory
from pipeline import storage
from pipeline.synth_data import make_synthetic_testset
from pipeline.testsets import ClipError, list_clips, load_clip, write_clip

SIZE = (48, 80)


def _clip(n: int = 9) -> tuple[np.ndarray, Trajectory]:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(n, *SIZE, 3), dtype=np.uint8)
    c2w = torch.stack([look_at(torch.tensor([0.1 * i, 0.0, 0.0], dtype=torch.float64),
                               torch.tensor([0.1 * i, 0.0, 1.0], dtype=torch.float64)) for i in range(n)])
    K = intrinsics_from_fov(60.0, SIZE).expand(n, 3, 3)
    return frames, Trajectory(c2w, K, SIZE, torch.arange(n, dtype=torch.float64) / 30.0)


def test_write_list_load_round_trip(tmp_path):
    frames, traj = _clip()
    write_clip(str(tmp_path), "b_10", frames, traj)
    write_clip(str(tmp_path), "b_9", frames, traj)
    (tmp_path / "lonely.txt").write_text("a camera file without frames is not a clip\n")
    (tmp_path / "orphan").mkdir()
    assert list_clips(str(tmp_path)) == ["b_9", "b_10"]  # natural order
    assert sorted(os.listdir(tmp_path / "b_9"))[0] == "0.png"  # frames named by timestamp (us)
    clip = load_clip(str(tmp_path), "b_9", frames=5, stride=2, size=SIZE)
    assert clip.frames.shape == (5, *SIZE, 3) and np.array_equal(clip.frames, frames[::2])
    torch.testing.assert_close(clip.trajectory.c2w, traj.c2w[::2], atol=1e-9, rtol=0)
    torch.testing.assert_close(clip.trajectory.K, traj.K[::2], atol=1e-6, rtol=0)
    # another size: frames resized, intrinsics scaled to match (also across an aspect change)
    other = load_clip(str(tmp_path), "b_9", frames=3, size=(64, 64))
    assert other.frames.shape == (3, 64, 64, 3)
    torch.testing.assert_close(other.trajectory.K, traj.resized((64, 64)).K[:3], atol=1e-6, rtol=0)


def test_frames_matched_by_timestamp_or_order(tmp_path):
    frames, traj = _clip()
    write_clip(str(tmp_path), "c", frames, traj)
    folder = tmp_path / "c"
    extra = folder / "999999999.png"  # an extra frame named by a timestamp no camera has: ignored
    shutil.copy(folder / "0.png", extra)
    assert np.array_equal(load_clip(str(tmp_path), "c", frames=9, size=SIZE).frames, frames)
    extra.unlink()
    for i, name in enumerate(sorted(os.listdir(folder), key=lambda n: int(n[:-4]))):  # names in camera order
        (folder / name).rename(folder / f"frame_{i}.png")
    assert np.array_equal(load_clip(str(tmp_path), "c", frames=9, size=SIZE).frames, frames)
    (folder / "frame_8.png").unlink()
    with pytest.raises(ClipError, match="8 frames for 9 camera lines") as err:
        load_clip(str(tmp_path), "c", frames=5, size=SIZE)
    assert err.value.reason == "frames_mismatch"


def test_preprocessed_shards_become_a_testset(tmp_path, capsys):
    """`mirage export-testset`: each sample of the shards (frames, cameras, fps) is a clip that
    `load_clip` reads back as it was stored."""
    from jobs.cli import main
    from pipeline.shards import list_shards, read_shard_samples
    from pipeline.synth_data import make_ground_truth_shards

    make_ground_truth_shards(str(tmp_path / "shards"), 3, frames=9, size=SIZE, vae=None, per_shard=1)
    samples = read_shard_samples(list_shards(str(tmp_path / "shards")))  # in shard order, one per shard
    assert main(["export-testset", str(tmp_path / "shards"), "--out", str(tmp_path / "set"), "--max-clips", "2"]) == 0
    assert list_clips(str(tmp_path / "set")) == sorted(s["__key__"] for s in samples[:2])
    for sample in samples[:2]:
        clip = load_clip(str(tmp_path / "set"), sample["__key__"], frames=9, size=SIZE)
        assert np.array_equal(clip.frames, sample["frames"])
        torch.testing.assert_close(clip.trajectory.c2w, torch.as_tensor(sample["c2w"]), atol=1e-6, rtol=0)
        torch.testing.assert_close(clip.trajectory.K, torch.as_tensor(sample["K"]), atol=1e-4, rtol=0)
        stamps = clip.trajectory.timestamps
        assert float(stamps[1] - stamps[0]) == pytest.approx(1 / sample["fps"], abs=1e-6)
        url = (tmp_path / "set" / f"{sample['__key__']}.txt").read_text().splitlines()[0]
        assert url == sample["meta"]["source_uri"]
    assert main(["export-testset", str(tmp_path / "set"), "--out", str(tmp_path / "x")]) != 0
    assert "set: no published shard" in capsys.readouterr().err
    assert main(["export-testset", str(tmp_path / "shards"), "--out", str(tmp_path / "x"), "--max-clips", "0"]) != 0
    assert "max_clips must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("damage, reason", [
    ("too_short", "too_short"), ("no_frames", "missing_frames"), ("bad_camera", "bad_camera_file"),
    ("bad_image", "bad_image")])
def test_bad_clips_raise_with_a_reason(tmp_path, damage, reason):
    frames, traj = _clip()
    write_clip(str(tmp_path), "d", frames, traj)
    if damage == "no_frames":
        for f in (tmp_path / "d").iterdir():
            f.unlink()
    elif damage == "bad_camera":
        lines = (tmp_path / "d.txt").read_text().splitlines()
        (tmp_path / "d.txt").write_text("\n".join(lines[:3] + ["1 2 3"] + lines[4:]) + "\n")
    elif damage == "bad_image":
        (tmp_path / "d" / "0.png").write_text("not a png")
    with pytest.raises(ClipError) as err:
        load_clip(str(tmp_path), "d", frames=9 if damage != "too_short" else 10, size=SIZE)
    assert err.value.reason == reason and "d" in str(err.value)


def test_synthetic_testset_on_s3(moto_s3):
    import s3fs

    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"],
                           client_kwargs={"endpoint_url": moto_s3["endpoint_url"], "region_name": moto_s3["region"]})
    fs.mkdir("testsets")
    options = storage.StorageOptions(endpoint_url=moto_s3["endpoint_url"], region=moto_s3["region"],
                                     key=moto_s3["key"], secret=moto_s3["secret"])
    ids = make_synthetic_testset("s3://testsets/re10k", 1, frames=9, size=(64, 96), options=options)
    assert list_clips("s3://testsets/re10k", options) == ids == ["clip_005000"]
    clip = load_clip("s3://testsets/re10k", ids[0], frames=9, size=(64, 96), options=options)
    assert clip.frames.shape == (9, 64, 96, 3) and clip.frames.std() > 5  # a rendered room, not a blank
    assert float((clip.trajectory.c2w[-1, :3, 3] - clip.trajectory.c2w[0, :3, 3]).norm()) > 0.5  # it moves


@pytest.mark.slow
def test_eval_job_open_and_closed_loop(tmp_path, ray_two_cpus):
    """The copy model over the tiny stack on a synthetic test set: the closed loop's way back comes
    back from memory (latent beats none against the real frames' latents); a broken clip is
    recorded and the others evaluated."""
    from jobs.config import EvalConfig
    from jobs.evaluate import run_eval

    data = tmp_path / "set"
    make_synthetic_testset(str(data), 1, frames=33, size=(64, 96), texture_scale=3.0)
    frames, traj = _clip(33)
    write_clip(str(data), "clip_broken", frames[:, :, :, :], traj)
    (data / "clip_broken" / "0.png").write_text("not a png")
    cfg = EvalConfig.model_validate({
        "data": str(data), "output": str(tmp_path / "out"), "model": {"preset": "tiny"}, "copy_readout": True,
        "frames": 33, "height": 64, "width": 96, "generation": {"steps": 2},
        "mlflow": {"tracking_uri": "sqlite:///" + str(tmp_path / "ml.db")}})
    summary = run_eval(cfg)
    out = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert out["failed"] == {"clip_broken-closed": "bad_image", "clip_broken-open": "bad_image"}
    closed, opened = out["groups"]["closed"]["modes"], out["groups"]["open"]["modes"]
    assert closed["latent"]["coverage_revisit"] > 0.5 and closed["none"]["coverage_revisit"] == 0.0
    assert closed["latent"]["latent_snr_revisit"] > closed["none"]["latent_snr_revisit"] + 3.0
    assert np.isfinite(opened["latent"]["psnr_gt_all"]) and opened["latent"]["psnr_gt_revisit"] is None
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "#### variant: closed" in md and "clip_broken-open (bad_image)" in md
    assert summary["mlflow"]["run_id"]
    acct = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (acct["job"], acct["inputs"], acct["accepted"], acct["rejected"]) == ("eval", 4, 2, {"bad_image": 2})


@pytest.mark.parametrize("bad, match", [
    ({"frames": 40}, "33 \\+ 32k"), ({"width": 100}, "multiple of 32"), ({"output": "s3://b/out"}, "local"),
    ({"first_depth": "model"}, "generation.depth_model"),
    ({"generation": {"depth_model": "/models/dpt"}}, "first_depth"),
    ({"modes": ["latent", "latent"]}, "repeat"), ({"variants": ["loop"]}, "open")])
def test_eval_config_rejects_bad_values(bad, match):
    from pydantic import ValidationError

    from jobs.config import EvalConfig

    with pytest.raises(ValidationError, match=match):
        EvalConfig.model_validate({"data": "runs/testset", **bad})

"""``mirage preprocess`` end to end on a local Ray (127.0.0.1): local disk, S3 (moto), kill + resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import shards, storage
from pipeline.config import PreprocessConfig
from pipeline.synth_data import BAD_INPUT_REASONS, make_bad_inputs, make_synthetic_dataset

pytestmark = pytest.mark.slow

CLIP = {"frames": 17, "max_clips": 1, "min_side": 64}  # the bad inputs are 96x64 on purpose
DEPTH = {"stereo": {"num_depths": 32}, "scale": 0.5, "every": 4}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two synthetic videos (one with a moving ball) and every kind of bad input."""
    root = tmp_path_factory.mktemp("videos")
    # seed 1: both videos register fully (seed 0 draws a view where SfM finds a degenerate model)
    make_synthetic_dataset(root, 2, seed=1, frames=21, size=(240, 320), moving_fraction=0.5)
    make_bad_inputs(root)
    return root


@pytest.fixture(scope="module")
def ray_local(moto_s3):
    import ray

    # Workers inherit the driver's environment: moto's fake credentials for the S3 test.
    os.environ["AWS_ACCESS_KEY_ID"] = moto_s3["key"]
    os.environ["AWS_SECRET_ACCESS_KEY"] = moto_s3["secret"]
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _config(source: str, output: str, **extra) -> PreprocessConfig:
    # a budget no clip here comes near, even on a loaded machine: only the budget's own test times out
    return PreprocessConfig.model_validate({"source": source, "output": output, "clip": CLIP, "depth": DEPTH,
                                            "inputs_per_shard": 2, "budget": {"base_s": 600}, **extra})


def _expected_status(videos: Path) -> dict[str, str]:
    status = {p.name: "ok" for p in videos.glob("synth_*.mp4")}
    for name in BAD_INPUT_REASONS:
        matches = [p for p in videos.iterdir() if p.stem == name or p.stem.startswith(name)]
        for p in matches:
            if p.suffix in (".mp4", ".m4a", ".mov", ".mkv", ".webm", ".avi"):
                status[p.name] = "rejected"
    return status


def _manifest(output: str, options=None) -> dict[str, dict]:
    text = storage.read_bytes(storage.join_uri(output, "manifest.jsonl"), options).decode()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {storage.basename(r["uri"]): r for r in rows}


def _check_output(output: str, videos: Path, options=None) -> set[str]:
    """Counts, reasons, shard contents vs manifest; returns the sample keys."""
    manifest = _manifest(output, options)
    expected = _expected_status(videos)
    assert {k: v["status"] for k, v in manifest.items()} == expected
    for name, reason in BAD_INPUT_REASONS.items():
        row = next(v for k, v in manifest.items() if k.startswith(name))
        assert row["reason"] == reason, (name, row)
    for row in manifest.values():  # every clip of every input is listed, good or rejected, with its reason
        assert row["clips"] and (row["status"] == "ok") == any(c["status"] == "ok" for c in row["clips"])
        assert all(c["reason"] for c in row["clips"] if c["status"] != "ok")
        # each clip's stage seconds and budget; a clip that reached SfM has its pose time
        assert all(c["budget_s"] > 0 for c in row["clips"] if c["frames"] >= 17)
        assert all(c["seconds"].get("poses", 0) > 0 for c in row["clips"] if c["status"] == "ok")
        assert sorted(c["key"] for c in row["clips"] if c["key"]) == sorted(row["sample_keys"])
    keys, coverage = set(), []
    for shard in shards.list_shards(output, options):
        for sample in shards.read_shard_samples(shard, options):  # plain webdataset underneath
            key = sample["__key__"]
            keys.add(key)
            owner = next(v for v in manifest.values() if key in v["sample_keys"])
            assert sample["meta"]["source_uri"] == owner["uri"]
            T = sample["frames"].shape[0]
            H, W = sample["image_size"]
            assert T == 17 and H % 32 == 0 and W % 32 == 0
            assert sample["c2w"].shape == (T, 4, 4) and np.isfinite(sample["c2w"]).all()
            assert sample["depth_frames"] == [0, 4, 8, 12, 16]
            assert sample["depth"].shape[0] == 5 == sample["static"].shape[0]
            coverage.append(float((sample["depth"] > 0).mean()))
            assert coverage[-1] > 0.05 and sample["static"].any()  # stereo found depth
            stats = sample["meta"]["stats"]
            assert stats["registered_fraction"] >= 0.9
            gt = np.load(videos / (Path(owner["uri"]).stem + ".gt.npz"))
            if bool(gt["moving"]):  # the moving-object mask found the ball
                assert stats["moving_fraction"] > 0.3 * float(gt["dynamic"].mean())
    assert np.mean(coverage) > 0.25
    assert keys == {k for v in manifest.values() for k in v["sample_keys"]}
    assert len(keys) == sum(1 for s in expected.values() if s == "ok")
    return keys


@pytest.fixture(scope="module")
def local_run(videos, ray_local, tmp_path_factory):
    from jobs.preprocess import run_preprocess

    out = str(tmp_path_factory.mktemp("shards"))
    summary = run_preprocess(_config(str(videos), out, latents={"vae": "tiny"}))
    return out, summary


def test_local_end_to_end(videos, local_run):
    out, summary = local_run
    keys = _check_output(out, videos)
    for sample in shards.read_shard_samples(shards.list_shards(out)):
        H, W = sample["image_size"]
        assert sample["latents"].shape == (48, 5, H // 16, W // 16)  # 17 frames -> 5 latent frames
    assert summary["manifest"]["status"] == {"ok": 2, "rejected": len(BAD_INPUT_REASONS)}
    assert summary["frames"] > 0 and summary["stage_seconds"]["poses"] > 0
    assert not [p for p in Path(out).iterdir() if p.name.startswith(".tmp-")]
    # summary.json: what this run did, every input accounted for
    acct = json.loads((Path(out) / "summary.json").read_text())
    n = 2 + len(BAD_INPUT_REASONS)
    assert acct["job"] == "preprocess" and acct["inputs"] == n and acct["accepted"] == 2
    reasons = list(BAD_INPUT_REASONS.values())
    assert acct["rejected"] == {r: reasons.count(r) for r in set(reasons)}
    # per outcome: the accepted clips and the rejected ones, each with their stage seconds
    outcomes = acct["details"]["outcomes"]
    assert outcomes["accepted"]["clips"] == 2 and outcomes["rejected"]["clips"] == len(BAD_INPUT_REASONS)
    assert outcomes["accepted"]["stage_seconds"]["poses"] > 0 and outcomes["accepted"]["seconds_per_clip"] > 0
    assert outcomes["rejected"]["stage_seconds"]["poses"] > 0  # the static camera reached the pose stage
    assert sum(o["frames"] for o in outcomes.values()) == acct["frames"]
    assert acct["frames"] == summary["frames"] and acct["details"]["samples"] == len(keys)
    assert acct["bytes_in"] > 0 and acct["bytes_out"] == sum(p.stat().st_size for p in Path(out).glob("shard-*"))
    assert {"decode", "poses", "depth", "masks", "latents", "encode"} <= set(acct["stages"])
    assert all(st["busy_s"] > 0 and st["per_s"] > 0 for st in acct["stages"].values())
    assert 50 < acct["peak_rss_mib"]["driver"] and all(50 < acct["peak_rss_mib"][k] < 8192 for k in acct["stages"])
    # Ray Data reads the shards too.
    import ray

    assert ray.data.read_webdataset(shards.list_shards(out)).count() == len(keys)


def test_rerun_skips_everything_done(videos, local_run):
    from jobs.preprocess import run_preprocess

    out, first = local_run
    again = run_preprocess(_config(str(videos), out))
    assert again["pending"] == 0 and again["done_before"] == first["inputs"]
    assert again["manifest"]["samples"] == first["manifest"]["samples"]


def test_s3_end_to_end(videos, local_run, moto_s3):
    import s3fs

    from jobs.preprocess import run_preprocess

    fs = s3fs.S3FileSystem(key=moto_s3["key"], secret=moto_s3["secret"],
                           client_kwargs={"endpoint_url": moto_s3["endpoint_url"], "region_name": moto_s3["region"]})
    fs.mkdir("mirage-test")
    for p in videos.iterdir():
        if p.suffix != ".npz":
            fs.put(str(p), f"mirage-test/raw/{p.name}")
    storage_cfg = {"endpoint_url": moto_s3["endpoint_url"], "region": moto_s3["region"]}
    config = _config("s3://mirage-test/raw/", "s3://mirage-test/shards", storage=storage_cfg)
    run_preprocess(config)
    keys = _check_output("s3://mirage-test/shards", videos, config.storage.options())
    assert _by_source(keys) == _by_source(_check_output(local_run[0], videos))  # same clips as the local run
    assert not [k for k in fs.ls("mirage-test/shards") if ".tmp-" in k]
    # a second run on the same inputs: the same cameras, to the byte, and the same manifest
    assert _cameras(local_run[0]) == _cameras("s3://mirage-test/shards", config.storage.options())
    assert _outcomes(local_run[0]) == _outcomes("s3://mirage-test/shards", config.storage.options())


def _cameras(output: str, options=None) -> dict[tuple[str, str], bytes]:
    samples = shards.read_shard_samples(shards.list_shards(output, options), options, decode=False)
    assert samples
    return {next(iter(_by_source({s["__key__"]}))): s["cameras.json"] for s in samples}


def _outcomes(output: str, options=None) -> dict[str, list]:
    """Per input (by file name): status, reason, per-clip outcome and the clips' stats (not timings or messages, which name the URI)."""
    return {name: [r["status"], r["reason"], r["stats"] and sorted(r["stats"].values(), key=json.dumps),
                   [{k: v for k, v in c.items() if k not in ("seconds", "key", "message")} for c in r["clips"]]]
            for name, r in _manifest(output, options).items()}


def test_kill_driver_then_resume_gives_the_same_samples(videos, local_run, tmp_path):
    from jobs.preprocess import run_preprocess

    out = tmp_path / "shards"
    cfg_path = tmp_path / "preprocess.yaml"
    cfg_path.write_text(yaml.safe_dump({"source": str(videos), "output": str(out), "clip": CLIP, "depth": DEPTH,
                                        "inputs_per_shard": 1}))
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 chars
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp))
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "preprocess", "--config", str(cfg_path)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("shard-*.json")):
            assert proc.poll() is None, "the driver ended before publishing anything"
            assert time.monotonic() < deadline, "no shard published within 300 s"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_ray_processes(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    published_at_kill = len(list(out.glob("shard-*.json")))
    assert published_at_kill < len(_expected_status(videos))  # the run really was cut short
    # Whatever is visible is whole: every published tar reads completely.
    for tar in out.glob("shard-*.tar"):
        shards.read_shard_samples(str(tar))
    run_preprocess(_config(str(videos), str(out), inputs_per_shard=1))
    assert _check_output(str(out), videos) == _check_output(local_run[0], videos)


def _by_source(keys: set[str]) -> set[tuple[str, str]]:
    """(file stem, clip index) of sample keys ``<stem>-<uri hash>-<clip>`` (the hash names the URI)."""
    return {(k.rsplit("-", 2)[0], k.rsplit("-", 1)[1]) for k in keys}


def _kill_ray_processes(ray_tmp: Path) -> None:
    """Stop the killed driver's own Ray (processes started under its RAY_TMPDIR), by PID."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(ray_tmp) in part for part in (p.info["cmdline"] or [])):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def test_cameras_from_files_skip_sfm_and_are_kept_exactly(videos, ray_local, tmp_path):
    """poses.method=file: the RealEstate10K file next to each video gives the cameras (no SfM)."""
    from jobs.preprocess import run_preprocess

    out = str(tmp_path / "shards")
    synth = tmp_path / "synth"
    synth.mkdir()
    for p in videos.glob("synth_*"):
        (synth / p.name).write_bytes(p.read_bytes())
    summary = run_preprocess(_config(str(synth), out, poses={"method": "file"}))
    assert summary["manifest"]["status"] == {"ok": 2}
    for sample in shards.read_shard_samples(shards.list_shards(out)):
        gt = np.load(synth / (Path(sample["meta"]["source_uri"]).stem + ".gt.npz"))
        idx = sample["meta"]["source_frame_indices"]
        np.testing.assert_allclose(sample["c2w"], gt["c2w"][idx], atol=1e-6)  # RE10K keeps 3x4 exactly
        K = gt["K"] if gt["K"].ndim == 2 else gt["K"][0]
        H, W = sample["image_size"]
        crop_top = (int(gt["image_size"][0]) - H) / 2  # centre crop to a multiple of 32
        np.testing.assert_allclose(sample["K"][0][1, 2], K[1, 2] - crop_top, atol=1e-4)
        assert sample["meta"]["stats"]["pose_source"] == "file"


def test_a_clip_over_its_budget_is_rejected_as_timeout_and_its_group_is_published(videos, ray_local, tmp_path):
    """A clip made slow on purpose (81 frames at 480x640, SfM at native size over all 3,240 frame
    pairs: about two minutes) shares a shard group with a small one. The slow clip is stopped at
    its budget and rejected as ``timeout``; the small one is accepted and the group is published."""
    from jobs.preprocess import run_preprocess

    src = tmp_path / "videos"
    make_synthetic_dataset(src / "slow", 1, seed=1, frames=81, size=(480, 640), moving_fraction=0.0)
    (src / "slow" / "synth_0000.mp4").rename(src / "slow.mp4")
    shutil.copyfile(videos / "synth_0000.mp4", src / "fast.mp4")
    shutil.rmtree(src / "slow")
    out = tmp_path / "shards"
    budget = {"base_s": 40.0, "per_frame_s": 0.01}  # fast: 40 s for 5-15 s of work; slow: 42 s for ~120 s
    summary = run_preprocess(_config(str(src), str(out), clip={"frames": 81, "min_frames": 17, "min_side": 64},
                                     poses={"matcher": "exhaustive", "max_side": None}, budget=budget))
    manifest = _manifest(str(out))
    fast, slow = manifest["fast.mp4"], manifest["slow.mp4"]
    assert fast["status"] == "ok", (fast, slow)
    assert slow["status"] == "rejected" and slow["reason"] == "timeout", slow
    clip = slow["clips"][0]
    assert clip["frames"] == 81 and clip["budget_s"] == pytest.approx(40 + 0.01 * 81 * 2, abs=0.1)
    assert sum(clip["seconds"].values()) < clip["budget_s"] + 5  # stopped at the budget, not after SfM ended
    assert "budget" in clip["message"] and "timeout" not in fast["clips"][0]["message"]
    assert len(shards.list_shards(str(out))) == 1 and summary["manifest"]["samples"] == 1  # one group, published
    acct = json.loads((out / "summary.json").read_text())
    assert acct["rejected"] == {"timeout": 1} and acct["details"]["outcomes"]["rejected"]["clips"] == 1


def test_a_run_that_fails_still_writes_its_summary(videos, ray_local, tmp_path, monkeypatch):
    """The driver fails after the first shard group (here: by the test); summary.json says what
    finished and why the run stopped, and the published group stays published."""
    import jobs.preprocess as preprocess

    real_collect = preprocess.collect

    def collect_then_fail(dataset, total, what, rows=None):
        for row in dataset.iter_rows():
            rows.append(row)
            raise RuntimeError("the driver lost its cluster (simulated by the test)")
        return real_collect(dataset, total, what, rows)

    monkeypatch.setattr(preprocess, "collect", collect_then_fail)
    src = tmp_path / "videos"
    src.mkdir()
    for p in videos.glob("synth_*.mp4"):
        shutil.copyfile(p, src / p.name)
    out = tmp_path / "shards"
    with pytest.raises(RuntimeError, match="simulated"):
        preprocess.run_preprocess(_config(str(src), str(out), inputs_per_shard=1))
    acct = json.loads((out / "summary.json").read_text())
    assert "simulated" in acct["details"]["failure"] and acct["details"]["groups"] == 1
    assert acct["inputs"] == 1 and acct["frames"] > 0
    assert len(list(out.glob("shard-*.json"))) >= 1  # what was published is still there


def test_learned_depth_and_mask_propagation_run_as_their_own_batched_stages(videos, ray_local, tmp_path):
    """depth.method=model through `mirage preprocess`: a tiny random Depth Anything predicts the depth
    frames of two clips per actor call, aligned to the stereo depth (cameras from files: no SfM
    points). Its output means nothing, so with the fit gates on both clips are rejected as
    depth_fit; with them off both are stored, with the fit's figures in their stats. The second run
    also follows the moving objects with a tiny random SAM2 video model (masks.video_model_dir):
    its masks only ever add to the flow test's."""
    from tiny_models import tiny_depth_anything, tiny_sam2_video

    from jobs.preprocess import run_preprocess

    model = tiny_depth_anything(tmp_path / "depth-model")
    synth = tmp_path / "synth"
    synth.mkdir()
    for p in videos.glob("synth_*"):
        (synth / p.name).write_bytes(p.read_bytes())
    depth = {**DEPTH, "method": "model", "model_dir": str(model), "batch_size": 3, "clips_per_batch": 2}
    gated = run_preprocess(_config(str(synth), str(tmp_path / "gated"), poses={"method": "file"}, depth=depth))
    assert gated["manifest"]["status"] == {"rejected": 2} and gated["manifest"]["reason"] == {"depth_fit": 2}
    message = _manifest(str(tmp_path / "gated"))["synth_0000.mp4"]["message"]
    assert "depth.max_fit_residual" in message or "depth.min_fit_explained" in message
    open_gates = {**depth, "max_fit_residual": None, "min_fit_explained": None}
    out = tmp_path / "open"
    masks = {"video_model_dir": str(tiny_sam2_video(tmp_path / "sam2")), "num_gpus": 0.5}
    summary = run_preprocess(_config(str(synth), str(out), poses={"method": "file"}, depth=open_gates, masks=masks))
    assert summary["manifest"]["status"] == {"ok": 2}
    objects = 0
    for sample in shards.read_shard_samples(shards.list_shards(str(out))):
        stats = sample["meta"]["stats"]
        assert stats["depth_source"] == "model" and stats["depth_fit_to"] == "stereo"
        assert stats["depth_fit_residual"] > 0 and 0 < stats["depth_fit_inliers"] <= 1
        assert sample["depth"].shape[0] == len(sample["depth_frames"]) and float(sample["depth"].max()) > 0
        assert stats["moving_fraction"] >= stats["moving_fraction_flow"]
        objects += stats["propagated_objects"]
    assert objects >= 1  # the video with the moving ball seeds it
    acct = json.loads((out / "summary.json").read_text())
    assert acct["stages"]["depth"]["busy_s"] > 0

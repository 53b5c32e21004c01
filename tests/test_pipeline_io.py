"""Pipeline I/O: storage, PyAV video, clip planning, resizing intrinsics, shards and resume."""

from __future__ import annotations

import json
import os
import pickle
import uuid

import numpy as np
import pytest
import webdataset as wds

from mirage_model.geometry.camera import intrinsics_from_fov
from mirage_model.io import sample_format, video
from mirage_model.io.video import VideoError
from pipeline import clips, shards, stages, storage, synth_data
from pipeline.storage import StorageOptions

BAR = 12  # pixel width of one bit of the frame-index pattern


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def pattern_frames(n: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Frames whose index is written as 8 big black/white bars (robust to H.264 loss)."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        for b in range(8):
            out[i, :, b * BAR:(b + 1) * BAR] = 255 * ((i >> b) & 1)
        out[i, : h // 4, :, 1] = (i * 37) % 256
    return out


def frame_id(frame: np.ndarray) -> int:
    """Inverse of ``pattern_frames`` for one (unrotated) frame."""
    rows = frame[frame.shape[0] // 2:]
    return sum(int(rows[:, b * BAR:(b + 1) * BAR].mean() > 127) << b for b in range(8))


def s3_options(moto_s3: dict) -> StorageOptions:
    return StorageOptions(**moto_s3)


@pytest.fixture()
def s3_bucket(moto_s3) -> str:
    opts = s3_options(moto_s3)
    fs, _ = storage.filesystem("s3://x/y", opts)
    name = f"test-{uuid.uuid4().hex[:10]}"
    fs.mkdir(name)
    return f"s3://{name}"


def make_sample(key: str, n: int = 9, seed: int = 0, aux: tuple[int, int] = (16, 24)) -> tuple:
    rng = np.random.default_rng(seed)
    frames = pattern_frames(n)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.linspace(0, 1, n)
    K = intrinsics_from_fov(60.0, (64, 96)).numpy()
    depth = rng.uniform(0.5, 6.0, size=(n,) + aux).astype(np.float32)
    static = rng.uniform(size=(n,) + aux) > 0.3
    latents = rng.normal(size=(3, 4, 2, 3)).astype(np.float32)
    clip = sample_format.ClipSample(frames=frames, c2w=c2w, K=K, depth=depth, static=static, fps=16,
                                    source_uri=f"/in/{key}.mp4", frame_indices=list(range(10, 10 + n)),
                                    stats={"sfm_inliers": 0.9}, latents=latents)
    enc = sample_format.encode_sample(key, clip)
    return enc, dict(frames=frames, c2w=c2w, K=K, depth=depth, static=static, latents=latents)


def check_decoded(dec: dict, ref: dict) -> None:
    assert dec["frames"].shape == ref["frames"].shape
    assert [frame_id(f) for f in dec["frames"]] == [frame_id(f) for f in ref["frames"]]
    assert np.abs(dec["frames"].astype(int) - ref["frames"]).mean() < 3.0
    np.testing.assert_array_equal(dec["c2w"], ref["c2w"])
    np.testing.assert_array_equal(dec["K"], np.broadcast_to(ref["K"], dec["K"].shape))
    assert dec["depth"].dtype == np.float16
    np.testing.assert_array_equal(dec["depth"], ref["depth"].astype(np.float16))
    np.testing.assert_array_equal(dec["static"], ref["static"])
    np.testing.assert_array_equal(dec["latents"], ref["latents"].astype(np.float16))
    assert dec["cameras"]["convention"] == "opencv" and dec["cameras"]["pose"] == "c2w"
    assert dec["image_size"] == (64, 96)
    assert dec["meta"]["frame_indices"] == list(range(10, 10 + len(ref["frames"])))
    assert dec["meta"]["stats"] == {"sfm_inliers": 0.9}


def no_tmp_files(root: str, options: StorageOptions | None = None) -> bool:
    fs, path = storage.filesystem(root, options)
    return not any(os.path.basename(p).startswith(".tmp-") for p in fs.find(path))


# ----------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------
def test_storage_options_hide_secrets(monkeypatch):
    opts = StorageOptions(endpoint_url="http://127.0.0.1:1", region="us-west-2",
                          key="AKIASECRETKEY", secret="very-secret-value")
    for text in (repr(opts), str(opts), f"{opts}"):
        assert "AKIASECRETKEY" not in text and "very-secret-value" not in text
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    kw = StorageOptions(region="us-west-2").s3fs_kwargs()
    assert kw["key"] == "envkey" and kw["secret"] == "envsecret"
    assert "envsecret" not in repr(StorageOptions())


def test_atomic_writes_and_listing_local(tmp_path):
    out = tmp_path / "out"
    storage.atomic_write_bytes(str(out / "a" / "x.bin"), b"hello")
    src = tmp_path / "src.bin"
    src.write_bytes(b"world")
    storage.atomic_write_file(src, str(out / "b" / "y.mp4"))
    assert (out / "a" / "x.bin").read_bytes() == b"hello"
    assert (out / "b" / "y.mp4").read_bytes() == b"world" and src.exists()
    assert no_tmp_files(str(out))

    (out / "c").mkdir()
    for name in ("c/z.MP4", "c/w.mov", "c/notes.txt", "c/.tmp-123-v.mp4"):
        (out / name).write_bytes(b"x")
    found = storage.list_files(str(out))
    assert found == sorted(str(out / n) for n in ("b/y.mp4", "c/w.mov", "c/z.MP4"))
    assert storage.list_files(str(out / "c" / "*.mov")) == [str(out / "c/w.mov")]
    (tmp_path / "list.txt").write_text(f"# comment\n{out / 'c/w.mov'}\nout/b/y.mp4\n\n")
    assert storage.list_files(str(tmp_path / "list.txt")) == [str(out / "c/w.mov"),
                                                              str(out / "b/y.mp4")]
    (tmp_path / "list.jsonl").write_text(json.dumps({"uri": "out/c/z.MP4"}) + "\n"
                                         + json.dumps({"path": str(out / "b/y.mp4")}) + "\n")
    assert storage.list_files(str(tmp_path / "list.jsonl")) == [str(out / "c/z.MP4"),
                                                                str(out / "b/y.mp4")]
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------
def test_decode_round_trip_is_frame_accurate(tmp_path):
    frames = pattern_frames(40)
    path = video.write_video(tmp_path / "v.mp4", frames, 16)
    assert no_tmp_files(str(tmp_path))
    info = video.probe(path)
    assert (info.n_frames, info.fps, info.width, info.height, info.rotation) == (40, 16.0, 96, 64, 0)
    assert info.duration == pytest.approx(2.5)
    dec = video.decode(path)
    assert dec.frames.shape == frames.shape and dec.frames.dtype == np.uint8
    assert [frame_id(f) for f in dec.frames] == list(range(40))
    assert np.abs(dec.frames.astype(int) - frames).mean() < 3.0
    np.testing.assert_allclose(dec.timestamps, np.arange(40) / 16, atol=1e-6)
    np.testing.assert_array_equal(dec.source_indices, np.arange(40))

    head = video.decode(path, max_frames=7)
    assert [frame_id(f) for f in head.frames] == list(range(7))
    half = video.decode(path, fps=8)  # CFR 16 -> 8 by timestamp: every other frame
    assert [frame_id(f) for f in half.frames] == list(range(0, 40, 2))
    same = video.decode(path, fps=16)
    np.testing.assert_array_equal(same.source_indices, np.arange(40))
    with open(path, "rb") as f:  # a seekable file object (what the pipeline passes for s3://)
        f.read(100)
        from_file = video.decode(f, max_frames=5, name="mem://v.mp4")
        assert video.probe(f).n_frames == 40
    assert from_file.info.uri == "mem://v.mp4"
    assert [frame_id(x) for x in from_file.frames] == list(range(5))
    with pytest.raises(ValueError, match="not a local path"):
        video.decode("s3://bucket/v.mp4")
    with pytest.raises(ValueError, match="even"):
        video.write_video(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8), 16)


def test_vfr_resampling_picks_frames_by_timestamp(tmp_path):
    ts = [0.0, 0.05, 0.15, 0.2, 0.4, 0.45, 0.5, 0.7]
    path = video.write_video(tmp_path / "vfr.mp4", pattern_frames(len(ts)), 10, timestamps=ts)
    native = video.decode(path)
    assert [frame_id(f) for f in native.frames] == list(range(8))
    np.testing.assert_allclose(native.timestamps, ts, atol=1e-4)
    # t_k = k / 20: latest frame with timestamp <= t_k; the last frame lasts one median interval.
    want = [0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 6, 6, 6, 6, 7]
    out = video.decode(path, fps=20)
    assert [frame_id(f) for f in out.frames] == want
    np.testing.assert_array_equal(out.source_indices, want)
    np.testing.assert_allclose(out.timestamps, np.arange(len(want)) / 20)
    np.testing.assert_array_equal(video.resample_by_timestamp(ts, 20), want)
    assert [frame_id(f) for f in video.decode(path, fps=20, max_frames=5).frames] == want[:5]
    np.testing.assert_array_equal(video.resample_by_timestamp(ts, 10), [0, 1, 3, 3, 4, 6, 6, 7])


def test_rotation_metadata_is_applied(tmp_path):
    frames = pattern_frames(3)
    plain = video.decode(video.write_video(tmp_path / "r0.mp4", frames, 10)).frames
    for rot in (90, 180, 270):
        path = video.write_video(tmp_path / f"r{rot}.mp4", frames, 10, rotation=rot)
        info = video.probe(path)
        assert info.rotation == rot
        assert (info.height, info.width) == ((96, 64) if rot in (90, 270) else (64, 96))
        dec = video.decode(path)
        assert dec.info.rotation == rot
        np.testing.assert_array_equal(dec.frames, np.rot90(plain, k=rot // 90, axes=(1, 2)))


def test_encoding_repeats_itself(tmp_path):
    """The same frames give the same file: with x264's macroblock-tree rate control on, 10 s of real
    footage encoded three times gave three different files and decoded frames (and SfM on them
    different cameras)."""
    import hashlib

    from real_data import TOS

    frames = video.decode(TOS).frames
    digests = {hashlib.md5(open(video.write_video(tmp_path / f"{i}.mp4", frames, 24), "rb").read()).hexdigest()
               for i in range(3)}
    assert len(digests) == 1


def test_squeezed_pixels_are_stretched_to_square(tmp_path):
    """An anamorphic file (stored 96 px wide, pixels 4/3 as wide as tall) decodes as a player shows
    it: 128 px wide, a vertical bar keeps its displayed place and width; rotation applies after."""
    stored = np.zeros((3, 64, 96, 3), np.uint8)
    stored[:, :, 36:48] = 255  # displayed at 48-64 of 128
    path = video.write_video(tmp_path / "sar.mp4", stored, 10, sample_aspect_ratio=4 / 3)
    info = video.probe(path)
    assert (info.height, info.width) == (64, 128) and info.sample_aspect_ratio == pytest.approx(4 / 3)
    dec = video.decode(path)
    assert dec.frames.shape == (3, 64, 128, 3)
    bright = np.nonzero(dec.frames[0, 32, :, 0] > 128)[0]
    assert abs(bright.min() - 48) <= 1 and abs(bright.max() - 63) <= 1
    square = video.decode(video.write_video(tmp_path / "square.mp4", stored, 10))
    assert square.info.sample_aspect_ratio == 1.0 and square.frames.shape == (3, 64, 96, 3)
    turned = video.decode(video.write_video(tmp_path / "sar90.mp4", stored, 10, rotation=90,
                                            sample_aspect_ratio=4 / 3))
    assert turned.frames.shape == (3, 128, 64, 3) and (turned.info.height, turned.info.width) == (128, 64)


def test_apply_rotation_unit():
    img = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(video.apply_rotation(img, 90), [[2, 5], [1, 4], [0, 3]])
    np.testing.assert_array_equal(video.apply_rotation(img, -90), video.apply_rotation(img, 270))
    assert video.normalize_rotation(-90.0) == 270 and video.normalize_rotation(179.6) == 180
    assert video.apply_rotation(img, 0) is img


def test_bad_inputs_raise_the_right_reason(tmp_path):
    bad = synth_data.make_bad_inputs(tmp_path, frames=33)
    for name, path in bad.items():
        want = synth_data.BAD_INPUT_REASONS[name]
        if name in synth_data.DECODABLE_BAD_INPUTS:  # the static camera decodes; the pose stage rejects it
            dec = video.decode(path)
            assert len(dec) == 33 and np.ptp(dec.frames.astype(int), axis=0).max() <= 8
            continue
        if want == "too_short":
            with pytest.raises(VideoError) as err:
                clips.plan_clips(len(video.decode(path)), 33)
        else:
            with pytest.raises(VideoError) as err:
                video.decode(path)
            with pytest.raises(VideoError):
                video.probe(path)
        assert err.value.reason == want, (name, err.value)
        assert isinstance(err.value, ValueError)
    with pytest.raises(VideoError) as err:
        video.decode(tmp_path / "does_not_exist.mp4")
    assert err.value.reason == "not_found"
    copy = pickle.loads(pickle.dumps(VideoError("truncated", "boom", "s3://b/k.mp4")))
    assert (copy.reason, copy.uri, str(copy)) == ("truncated", "s3://b/k.mp4",
                                                  "s3://b/k.mp4: [truncated] boom")


# ----------------------------------------------------------------------------------------------
# Clips and resizing
# ----------------------------------------------------------------------------------------------
def test_plan_clips():
    assert clips.plan_clips(81) == [(0, 81)]
    assert clips.plan_clips(200) == [(0, 81), (81, 162)]
    assert clips.plan_clips(100, 33, stride=16) == [(0, 33), (16, 49), (32, 65), (48, 81), (64, 97)]
    assert clips.plan_clips(100, 33, stride=16, max_clips=3) == [(0, 33), (32, 65), (64, 97)]
    with pytest.raises(ValueError, match="4n \\+ 1"):
        clips.plan_clips(200, 80)
    with pytest.raises(VideoError) as err:
        clips.plan_clips(80, 81)
    assert err.value.reason == "too_short"


def _blob(h: int, w: int, u: float, v: float, sigma: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)  # pixel centre of column i at x = i
    g = np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma ** 2))
    return np.repeat(g[None, ..., None], 3, axis=-1).astype(np.float32)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    m = img[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return float((xs * m).sum() / m.sum()), float((ys * m).sum() / m.sum())


@pytest.mark.parametrize("src,target", [((240, 320), (128, 192)),  # shrink (area) + crop rows
                                        ((250, 330), None),          # crop only
                                        ((90, 120), (128, 160))])    # enlarge (linear) + crop
def test_fit_to_multiple_keeps_intrinsics_consistent(src, target):
    K = intrinsics_from_fov(60.0, src).numpy()
    point = np.array([0.31, -0.17, 2.0])  # camera coordinates
    u, v = (K @ point)[:2] / point[2]
    frames = _blob(*src, u, v, sigma=0.03 * src[1])
    out, K2 = clips.fit_to_multiple(frames, K, 32, target)
    h2, w2 = out.shape[1:3]
    assert h2 % 32 == 0 and w2 % 32 == 0
    if target is not None:
        assert (h2, w2) == target
    u2, v2 = (K2 @ point)[:2] / point[2]
    cu, cv = _centroid(out[0])
    assert abs(cu - u2) < 0.05 and abs(cv - v2) < 0.05, ((cu, cv), (u2, v2))
    plan = clips.plan_fit(src, 32, target)
    naive_error = abs(plan.resize_to[1] / src[1] - 1) * 0.5  # what plain cx * s would be off by
    if naive_error > 0.1:
        assert abs(cu - u2) < naive_error / 2
    mask = np.zeros((2,) + src, bool)
    mask[:, int(round(v)), int(round(u))] = True
    depth = np.full((2,) + src, 3.0, np.float32)
    assert clips.apply_fit(mask, plan, "nearest").shape == (2, h2, w2)
    assert clips.apply_fit(mask, plan, "nearest").dtype == bool
    np.testing.assert_allclose(clips.apply_fit(depth, plan, "linear"), 3.0)
    K_batch = clips.fit_intrinsics(np.stack([K, K]), plan)
    np.testing.assert_allclose(K_batch[1], K2)


# ----------------------------------------------------------------------------------------------
# Shards
# ----------------------------------------------------------------------------------------------
def test_shard_round_trip_local(tmp_path):
    enc_a, ref_a = make_sample(shards.sample_key("clipA-1234", 0), seed=1)
    enc_b, ref_b = make_sample(shards.sample_key("clipA-1234", 1), n=5, seed=2)
    uri = str(tmp_path / "out" / "shard-test.tar")
    info = shards.write_shard([enc_a, enc_b], uri)
    assert info["n_samples"] == 2 and os.path.getsize(uri) == info["bytes"]
    assert no_tmp_files(str(tmp_path / "out"))
    got = shards.read_shard_samples(uri)
    assert [s["__key__"] for s in got] == ["clipA-1234-000", "clipA-1234-001"]
    check_decoded(got[0], ref_a)
    check_decoded(got[1], ref_b)
    # plain webdataset with the PyAV decode handler (no torchvision anywhere)
    ds = wds.WebDataset(uri, shardshuffle=False, empty_check=False).decode(sample_format.wds_video_decoder)
    first = next(iter(ds))
    assert first["video.mp4"].shape == (9, 64, 96, 3)


def test_keys_are_sanitised():
    assert sample_format.sanitize_key("abc-01_X") == "abc-01_X"
    k1, k2 = sample_format.sanitize_key("a.b c"), sample_format.sanitize_key("a_b_c")
    assert "." not in k1 and " " not in k1 and k1 != k2
    iid = shards.make_input_id("s3://bucket/some dir/My.Video.MP4")
    assert iid.startswith("My_Video-") and sample_format.sanitize_key(iid) == iid
    assert iid != shards.make_input_id("s3://bucket/other/My.Video.MP4")
    assert shards.group_id_for(["b", "a"]) == shards.group_id_for(["a", "b"])
    assert shards.group_inputs(["c", "a", "b", "a"], 2) == [["a", "b"], ["c"]]


def test_s3_storage_video_and_shards(moto_s3, s3_bucket, tmp_path):
    opts = s3_options(moto_s3)
    frames = pattern_frames(12)
    uri = f"{s3_bucket}/in/v.mp4"
    storage.atomic_write_file(video.write_video(tmp_path / "v.mp4", frames, 16), uri, opts)
    storage.atomic_write_bytes(f"{s3_bucket}/in/deep/note.txt", b"n", opts)
    assert storage.list_files(f"{s3_bucket}/in", opts) == [uri]
    assert storage.list_files(f"{s3_bucket}/in/", opts, suffixes=None) == [
        f"{s3_bucket}/in/deep/note.txt", uri]
    assert storage.list_files(f"{s3_bucket}/in/*.mp4", opts) == [uri]
    with storage.open_uri(uri, "rb", opts) as f:
        assert video.probe(f, name=uri).n_frames == 12
    dec = stages.decode_uri(uri, opts)
    assert dec.info.uri == uri and [frame_id(f) for f in dec.frames] == list(range(12))
    with pytest.raises(VideoError) as err:
        stages.decode_uri(f"{s3_bucket}/in/missing.mp4", opts)
    assert err.value.reason == "not_found"

    enc, ref = make_sample("s3clip-000")
    shard = f"{s3_bucket}/shards/shard-x.tar"
    shards.write_shard([enc], shard, opts)
    assert no_tmp_files(s3_bucket, opts)
    got = shards.read_shard_samples(shard, opts)
    assert len(got) == 1 and got[0]["__key__"] == "s3clip-000"
    check_decoded(got[0], ref)
    # the registered gopen handler makes plain webdataset read s3:// directly
    raw = next(iter(wds.WebDataset(shard, shardshuffle=False, empty_check=False)))
    assert raw["video.mp4"] == enc["video.mp4"]


def _records(ids: list[str], reject: set[str]) -> tuple[list[dict], list[shards.InputRecord]]:
    samples, records = [], []
    for i, iid in enumerate(ids):
        if iid in reject:
            records.append(shards.InputRecord(iid, f"/in/{iid}.mp4", "rejected", reason="too_short",
                                              message="5 frames"))
            continue
        key = shards.sample_key(iid, 0)
        samples.append(make_sample(key, n=5, seed=i)[0])
        records.append(shards.InputRecord(iid, f"/in/{iid}.mp4", "ok", sample_keys=[key],
                                          stats={"q": 1.0}))
    return samples, records


@pytest.mark.parametrize("where", ["local", "s3"])
def test_crash_safe_resume_and_manifest(where, tmp_path, request):
    if where == "s3":
        opts = s3_options(request.getfixturevalue("moto_s3"))
        out = f"{request.getfixturevalue('s3_bucket')}/run1"
    else:
        opts, out = None, str(tmp_path / "run1")
    inputs = [f"vid{i}" for i in range(7)]
    groups = shards.group_inputs(inputs, 3)  # [vid0..2], [vid3..5], [vid6]
    # group 0: two ok + one rejected; group 1: all rejected (sidecar only, no tar)
    g0 = shards.group_id_for(groups[0])
    res0 = shards.publish_group(out, g0, *_records(groups[0], {"vid1"}), opts)
    assert res0.shard_uri is not None and res0.n_samples == 2
    g1 = shards.group_id_for(groups[1])
    res1 = shards.publish_group(out, g1, *_records(groups[1], set(groups[1])), opts)
    assert res1.shard_uri is None
    # simulated crash in group 2: its tar was published, the sidecar never was; plus leftovers
    g2 = shards.group_id_for(groups[2])
    samples2, records2 = _records(groups[2], set())
    shards.write_shard(samples2, shards.shard_uri(out, g2), opts)
    storage.atomic_write_bytes(storage.join_uri(out, ".tmp-deadbeef-shard-zz.tar"), b"partial", opts)
    fs, path = storage.filesystem(out, opts)
    fs.pipe_file(path + "/.tmp-cafe-shard-zz.json", b"{")  # a raw leftover, not via atomic write

    state = shards.scan_output(out, opts)
    assert set(state.done) == set(groups[0]) | set(groups[1])
    assert state.pending(inputs) == ["vid6"]
    assert state.done["vid1"].reason == "too_short"
    assert shards.shard_uri(out, g2) in state.removed
    assert not storage.exists(shards.shard_uri(out, g2), opts)
    assert no_tmp_files(out, opts)

    # the re-run regroups only the pending inputs and reproduces the crashed group's name
    regrouped = shards.group_inputs(state.pending(inputs), 3)
    assert regrouped == [["vid6"]] and shards.group_id_for(regrouped[0]) == g2
    shards.publish_group(out, g2, samples2, records2, opts)
    assert shards.scan_output(out, opts).pending(inputs) == []

    counts = shards.finalize_manifest(out, opts)
    assert counts["inputs"] == 7 and counts["samples"] == 3 and counts["shards"] == 2
    assert counts["status"] == {"ok": 3, "rejected": 4}
    assert counts["reason"] == {"too_short": 4}
    lines = [json.loads(x) for x in storage.read_bytes(counts["manifest"], opts).decode().splitlines()]
    assert sorted(x["input_id"] for x in lines) == inputs
    assert all((x["shard"] is None) == (x["status"] == "rejected") for x in lines)
    assert shards.list_shards(out, opts) == sorted([shards.shard_uri(out, g0), shards.shard_uri(out, g2)])
    keys = [s["__key__"] for s in shards.read_shard_samples(shards.list_shards(out, opts), opts,
                                                            decode=False)]
    assert sorted(keys) == ["vid0-000", "vid2-000", "vid6-000"]
    assert no_tmp_files(out, opts)

    # a sidecar whose tar disappeared no longer counts: its inputs are pending again
    storage.remove(shards.shard_uri(out, g0), opts)
    state = shards.scan_output(out, opts)
    assert state.pending(inputs) == sorted(groups[0])
    assert not storage.exists(shards.sidecar_uri(out, g0), opts)


def test_synthetic_dataset_files(tmp_path):
    paths = synth_data.make_synthetic_dataset(tmp_path, 2, seed=3, frames=5, size=(32, 48),
                                              moving_fraction=0.5)
    assert [p.name for p in paths] == ["synth_0000.mp4", "synth_0001.mp4"]
    moving = []
    for p in paths:
        gt = np.load(p.with_name(p.stem + ".gt.npz"))
        assert gt["c2w"].shape == (5, 4, 4) and gt["depth"].dtype == np.float16
        assert gt["depth"].shape == gt["dynamic"].shape == gt["sky"].shape == (5, 32, 48)
        moving.append(bool(gt["moving"]))
        centres = gt["c2w"][:, :3, 3]
        assert 0.75 < np.linalg.norm(centres[-1] - centres[0]) < 1.25  # sideways baseline
        from mirage_model.geometry.formats import read_re10k
        traj = read_re10k(p.with_name(p.stem + ".cameras.txt"), (32, 48))
        np.testing.assert_allclose(traj.c2w.numpy(), gt["c2w"], atol=1e-6)
        assert len(video.decode(p)) == 5
    assert sorted(moving) == [False, True]


def test_fast_revisit_paths_turn_fast_and_come_back_the_same_way(tmp_path):
    """``camera_paths="fast"`` (the CPU world's training videos): pans, orbits and dollies of
    ``random_outbound_path``, out and back with ``revisit``; the camera file says the same."""
    from mirage_model.geometry.formats import read_re10k

    paths = synth_data.make_synthetic_dataset(tmp_path, 3, seed=1, frames=9, size=(32, 48), revisit=True,
                                              camera_paths="fast", texture_scale=3.0)
    turned = []
    for p in paths:
        gt = np.load(p.with_name(p.stem + ".gt.npz"))
        c2w = gt["c2w"]
        assert c2w.shape == (9, 4, 4) and str(gt["camera_paths"]) == "fast" and bool(gt["revisit"])
        for i in range(9):
            np.testing.assert_array_equal(c2w[i], c2w[8 - i])
        np.testing.assert_allclose(read_re10k(p.with_name(p.stem + ".cameras.txt"), (32, 48)).c2w.numpy(), c2w,
                                   atol=1e-6)
        angle = np.degrees(np.arccos(np.clip((np.trace(c2w[0, :3, :3].T @ c2w[4, :3, :3]) - 1) / 2, -1, 1)))
        moved = np.linalg.norm(c2w[4, :3, 3] - c2w[0, :3, 3])
        turned.append(angle > 30 or moved > 0.7)  # a pan of 50-100 or orbit of 40-80 degrees, a 0.8-1.5 dolly
    assert all(turned)
    with pytest.raises(ValueError, match="camera_paths must be one of"):
        synth_data.make_synthetic_dataset(tmp_path / "x", 1, frames=5, size=(32, 48), camera_paths="spiral")


def test_a_group_is_published_when_its_last_clip_arrives(tmp_path):
    """The streaming publisher (no group-by barrier): rows of two groups arrive interleaved, a retried
    row twice; each group is published at its last clip, exactly once, and nothing else is written."""
    from pipeline.config import PreprocessConfig

    cfg = PreprocessConfig.model_validate({"source": str(tmp_path / "in"), "output": str(tmp_path / "out")})
    publisher = stages.PublishCompleteGroups(cfg)

    def row(group, n_inputs, input_id, clip, n_clips):
        item = {"uri": f"/in/{input_id}.mp4", "input_id": input_id, "group_id": group, "group_inputs": n_inputs}
        return stages.reject(stages.new_row(item, clip, input_clips=n_clips), "too_short", "test clip")

    def feed(r):
        return publisher({k: np.array([r[k]], dtype=object) for k in stages.ROW_KEYS})["group_id"]

    arrivals = [row("g1", 2, "a", 0, 2), row("g2", 1, "c", 0, 1), row("g1", 2, "b", 0, 1),
                row("g1", 2, "a", 0, 2), row("g1", 2, "a", 1, 2)]
    published = [feed(r) for r in arrivals]
    assert published == [[], ["g2"], [], [], ["g1"]]  # g1 waits for clip 1 of input a, the duplicate changes nothing
    assert publisher.pending == {}
    sides = {p.name for p in (tmp_path / "out").iterdir()}
    assert sides == {storage.basename(shards.sidecar_uri(str(tmp_path / "out"), g)) for g in ("g1", "g2")}
    g1 = json.loads((tmp_path / "out" / storage.basename(shards.sidecar_uri(str(tmp_path / "out"), "g1"))).read_text())
    assert sorted(r["input_id"] for r in g1["inputs"]) == ["a", "b"]
    assert [len(r["clips"]) for r in sorted(g1["inputs"], key=lambda r: r["input_id"])] == [2, 1]

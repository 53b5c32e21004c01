"""Real footage comes in shots and at its own frame rate: cuts and fades split it, clips never span a
cut, frames are never repeated to reach a frame rate, short shots still give (shorter) clips."""

import numpy as np
import pytest

from mirage_model.geometry.trajectory import pan_and_return
from mirage_model.io.images import to_uint8
from mirage_model.io.video import decode, write_video
from mirage_model.synthetic import default_scene, render_trajectory
from pipeline.clips import plan_clips
from pipeline.config import PreprocessConfig, ShotConfig
from pipeline.shots import detect_shots
from pipeline.stages import DecodeClips, unpack

SIZE = (128, 160)


def _shot(seed: int, n: int, yaw: float) -> np.ndarray:
    traj = pan_and_return(n, yaw_degrees=yaw, translation=(0.2, 0.0, 0.0), image_size=SIZE)
    return to_uint8(render_trajectory(default_scene(seed), traj.K, traj.c2w, SIZE).rgb.numpy())


@pytest.fixture(scope="module")
def edited():
    """shot A (20 frames) | hard cut | shot B (18) | fade to black and back (2 + 4 + 2) | shot C (20)."""
    a, b, c = _shot(0, 20, 6.0), _shot(3, 18, -5.0), _shot(7, 22, 6.0)
    fade_out = np.stack([(b[-1] * w).astype(np.uint8) for w in (0.5, 0.2)])
    black = np.zeros((4, *SIZE, 3), np.uint8)
    fade_in = np.stack([(c[0] * w).astype(np.uint8) for w in (0.2, 0.5)])
    frames = np.concatenate([a, b, fade_out, black, fade_in, c[2:]])
    return frames, {"a": (0, 20), "b": (20, 38), "c_first": 38 + 2 + 4 + 2}


def test_cuts_and_fades_split_shots_and_black_frames_belong_to_none(edited):
    frames, at = edited
    shots = detect_shots(frames, fps=10.0, config=ShotConfig(min_shot_s=0.5))
    assert len(shots) == 3, shots
    (a0, a1), (b0, b1), (c0, c1) = shots
    assert a0 == 0 and a1 == at["b"][0]  # the hard cut, to the frame
    assert b0 == at["b"][0] and b1 <= at["b"][1] + 2  # B ends in its fade-out (dimmed frames are still B)
    assert c0 >= at["c_first"] - 2 and c1 == len(frames)
    black = [i for i in range(len(frames)) if frames[i].mean() < 12]
    assert not any(s <= i < e for i in black for s, e in shots)


def test_a_continuous_pan_is_one_shot():
    frames = _shot(2, 30, 70.0)  # a fast pan and back: large content change, no cut
    assert detect_shots(frames, fps=10.0) == [(0, 30)]


def test_clips_follow_the_footage_longer_and_shorter_than_one_clip():
    assert plan_clips(200, 81, min_frames=17) == [(0, 81), (81, 162), (162, 199)]  # the rest: 37 frames
    assert plan_clips(49, 81, min_frames=17) == [(0, 49)]  # a 2-5 s shot gives one shorter clip
    assert plan_clips(50, 81, min_frames=17) == [(0, 49)]  # 4n + 1 frames, never more
    assert plan_clips(200, 81) == [(0, 81), (81, 162)]  # without min_frames: whole clips only
    with pytest.raises(ValueError, match="too_short"):
        plan_clips(16, 81, min_frames=17)
    with pytest.raises(ValueError, match="4n \\+ 1"):
        plan_clips(100, 81, min_frames=16)


def test_slow_footage_keeps_its_own_frames(tmp_path):
    """An 8 fps video asked for at 16 fps: every source frame once, at 8 fps (was: 2x duplicates)."""
    frames = _shot(1, 17, 20.0)
    path = write_video(tmp_path / "slow.mp4", frames, fps=8)
    kept = decode(path, fps=16, upsample=False)
    assert len(kept) == 17 and kept.fps == pytest.approx(8.0)
    assert np.array_equal(kept.source_indices, np.arange(17))
    repeated = decode(path, fps=16)  # the old behaviour, still available: resample by timestamp
    assert len(repeated) > 30 and len(np.unique(repeated.source_indices)) == 17
    fast = decode(write_video(tmp_path / "fast.mp4", _shot(1, 30, 20.0), fps=30), fps=10, upsample=False)
    assert fast.fps == pytest.approx(10.0) and len(fast) == 10  # faster footage is still resampled down


def test_decode_clips_plans_per_shot_and_lists_every_part(tmp_path, edited):
    frames, _ = edited
    path = write_video(tmp_path / "edited.mp4", frames, fps=10)
    cfg = PreprocessConfig.model_validate({"source": str(tmp_path), "output": str(tmp_path / "out"),
                                           "clip": {"frames": 17, "min_frames": 17, "fps": 16}})
    rows = list(DecodeClips(cfg)({"uri": path, "input_id": "edited", "group_id": "g"}))
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["clip_index"] for r in rows] == list(range(len(rows)))
    spans = []
    for r in ok:
        data = unpack(r)
        assert data["fps"] == pytest.approx(10.0) and data["stats"]["source_fps"] == pytest.approx(10.0)
        idx = data["source_frame_indices"]
        assert len(np.unique(idx)) == len(idx) == r["n_frames"] == 17  # no repeated frame
        s0, s1 = data["stats"]["shot_frames"]
        assert s0 <= data["frame_indices"][0] and data["frame_indices"][-1] < s1  # inside one shot
        spans.append((data["stats"]["shot"], int(idx[0])))
    assert sorted({shot for shot, _ in spans}) == [0, 1, 2]  # each of the three shots gives a clip

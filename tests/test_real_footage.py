"""Real footage (tests/data/real/README.md lists each file, its licence and its ground truth)."""

from pathlib import Path

import numpy as np

from mirage_model.io.video import decode
from pipeline.config import PreprocessConfig, ShotConfig
from pipeline.shots import detect_shots
from pipeline.stages import DecodeClips, unpack

REAL = Path(__file__).resolve().parent / "data" / "real"
TOS = REAL / "tears_of_steel_cuts.mp4"
TOS_SHOTS = [(0, 21), (21, 65), (65, 185), (185, 240)]  # cuts checked by eye, frame by frame


def test_real_film_cuts_are_found_to_the_frame_and_effects_are_not_cuts():
    video = decode(TOS)
    assert len(video) == 240 and video.fps == 24
    assert detect_shots(video.frames, video.fps, ShotConfig()) == TOS_SHOTS


def test_real_film_clips_stay_inside_their_shots_at_the_source_rate(tmp_path):
    """At 12 fps (downsampled from 24) with 17-frame clips: shot 0 (21 frames = 10 at 12 fps) is too
    short and listed as such; every other clip lies inside one shot; no frame repeats."""
    cfg = PreprocessConfig.model_validate({"source": str(REAL), "output": str(tmp_path),
                                           "clip": {"fps": 12, "frames": 17, "min_frames": 17, "min_side": 96}})
    rows = list(DecodeClips(cfg)({"uri": str(TOS), "input_id": "tos", "group_id": "g"}))
    rejected = [r for r in rows if r["status"] != "ok"]
    assert [r["reason"] for r in rejected] == ["too_short"] and "shot 0" in rejected[0]["message"]
    cuts_in_source = [s for s, _ in TOS_SHOTS[1:]]
    for r in rows:
        if r["status"] != "ok":
            continue
        data = unpack(r)
        src = data["source_frame_indices"]
        assert data["fps"] == 12 and len(np.unique(src)) == len(src) == 17
        assert not any(src[0] < c <= src[-1] for c in cuts_in_source), (src[0], src[-1])
    assert sum(r["status"] == "ok" for r in rows) >= 5  # 44 + 120 + 55 source frames at half rate

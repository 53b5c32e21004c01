"""The report's revisit section states what its own figures say (issue 33: never fixed wording)."""

from __future__ import annotations

import re

from jobs.report import _section_revisit, revisit_reading


def _modes(latent: float, rgb: float, none: float) -> dict:
    chunks = [{"chunk": c, "cache_points": 100 * (c + 1), "cache_bytes": 11600 * (c + 1), "hole_rate": 0.1,
               "seconds_per_frame": 0.1} for c in range(2)]
    return {m: {"revisit_psnr_gt": v, "revisit": {"psnr": v + 5, "ssim": 0.5, "pairs": 40}, "chunks": chunks}
            for m, v in (("latent", latent), ("rgb", rgb), ("none", none))}


def _reading(html: str) -> str:
    return re.search(r'<p class="note" id="revisit-reading">(.*?)</p>', html, re.S).group(1)


def test_the_reading_is_generated_from_the_figures():
    text = _reading(_section_revisit({"generate": {"modes": _modes(21.19, 20.95, 18.92)}}))
    assert "latent memory (Mirage) comes closest to the ground truth (21.19 dB), +2.27 dB against no memory" in text
    assert "0.24 dB above the RGB cache" in text and "changes little" not in text
    # other figures, other words: the RGB cache first, latent below it
    text = _reading(_section_revisit({"generate": {"modes": _modes(20.0, 20.6, 19.5)}}))
    assert "RGB point cache comes closest" in text and "0.60 dB below the RGB cache" in text
    # modes that agree are said to agree
    assert "changes little" in revisit_reading(_modes(20.0, 20.02, 19.97))


def test_the_table_shows_psnr_against_the_ground_truth_per_mode():
    html = _section_revisit({"generate": {"modes": _modes(21.19, 20.95, 18.92)}})
    assert "PSNR vs ground truth, way back (dB)" in html
    for v in ("21.19", "20.95", "18.92"):
        assert f">{v}<" in html
    assert _section_revisit({"generate": {}}) == ""


def test_the_report_shows_each_memorys_readout_and_the_per_frame_psnr(tmp_path):
    import numpy as np

    from jobs.report import READOUT_PREFIX, make_figures, write_report

    n, rng = 65, np.random.default_rng(0)
    modes = _modes(21.19, 20.95, 18.92)
    for i, v in enumerate(modes.values()):
        v["psnr_gt_per_frame"] = list(18.0 + i + rng.random(n))
    result = {"generate": {"modes": modes, "frames": n, "chunk_starts": [0, 32],
                           "trajectory": {"forward": [[0.0, 0.0, 1.0]] * n}}}
    video = lambda: rng.integers(0, 255, (n, 32, 48, 3), dtype=np.uint8)  # noqa: E731
    videos = {"reference": video(), "latent": video(), "rgb": video(), "none": video(),
              f"{READOUT_PREFIX}latent": video(), f"{READOUT_PREFIX}rgb": video()}
    figs = make_figures(tmp_path, result, videos)
    html = write_report(tmp_path, result, figs).read_text()
    for name in ("psnr", "readout_latent", "readout_rgb", "frames"):
        src = f"report_assets/{name}.png"
        assert f'src="{src}"' in html and (tmp_path / src).read_bytes()[:4] == b"\x89PNG"
    # one readout block per memory that has one, none for the run without memory
    assert re.findall(r'<div id="readout-(\w+)">', html) == ["latent", "rgb"]
    # the readout rows are not mixed into the strip of generated frames
    assert "readout_none" not in figs and figs["frames"] == "report_assets/frames.png"

"""The report's revisit section states what its own figures say (issue 33: never fixed wording)."""

from __future__ import annotations

import re

from jobs.report import _section_revisit, revisit_reading


def _modes(latent: float, rgb: float, none: float) -> dict:
    return {m: {"revisit_psnr_gt": v, "revisit": {"psnr": v + 5, "ssim": 0.5, "pairs": 40}, "chunks": [{}]}
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

"""docs/benchmarks.md and README's figures table are generated from benchmarks/results/*.json.

A figure typed into README or the reference by hand, or a JSON changed without regenerating them,
fails here; so does a reference that grows back into a lab notebook (long headings, sections
without a command or a machine, more than one paragraph of reading)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import reference as ref

ROOT = Path(__file__).resolve().parent.parent


def test_reference_and_readme_are_generated_from_the_json():
    stale = ref.regenerate(check=True)
    assert not stale, (f"{stale} differ from benchmarks/results/*.json: run `python -m benchmarks.reference` "
                       "(or re-run the benchmark with --write-docs) instead of editing them by hand")


def test_a_changed_figure_changes_both_pages(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for p in ref.RESULTS.glob("*.json"):
        (results / p.name).write_text(p.read_text())
    data = json.loads((results / "memory-read-full.json").read_text())
    data["figures"]["growth_mib"] = 0.0123  # in README's table and in the reading
    (results / "memory-read-full.json").write_text(json.dumps(data))
    readme, reference = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text(ref.README.read_text())
    assert sorted(ref.regenerate(check=True, results=results, reference=reference, readme=readme)) == \
        sorted([str(reference), str(readme)])
    ref.regenerate(results=results, reference=reference, readme=readme)
    assert "| 0.0123 MiB (reference release" in readme.read_text()
    assert "grows by 0.0123 MiB per chunk" in reference.read_text()
    assert "0.076 MiB" not in readme.read_text()


def test_every_section_is_a_reference_entry():
    sections = ref.load_sections()
    assert len({s.key for s in sections}) == len(sections) >= 10
    text = ref.REFERENCE.read_text()
    headings = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert all(len(h.lstrip("# ")) <= 80 for h in headings), [h for h in headings if len(h.lstrip("# ")) > 80]
    for s in sections:
        assert s.command and s.machine and re.fullmatch(r"\d{4}-\d{2}-\d{2}", s.date), s.key
        assert s.blocks, f"{s.key}: no table"
        assert s.reading and "\n\n" not in s.reading.strip(), f"{s.key}: the reading is one paragraph"
        assert not re.search(r"tried and not kept|for the record", s.fmt(s.reading), re.I), s.key


def test_each_command_names_something_that_exists():
    from jobs.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001 - argparse has no API
    for s in ref.load_sections():
        cmd = s.command.split()
        if cmd[:2] == ["python", "-m"]:
            module = cmd[2]
            assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{s.key}: no module {module}"
        elif cmd[0] == "mirage":
            assert cmd[1] in commands, f"{s.key}: no `mirage {cmd[1]}`"
        elif cmd[0] == "make":
            assert re.search(rf"^{cmd[1]}:", (ROOT / "Makefile").read_text(), re.M), f"{s.key}: no make {cmd[1]}"
        else:
            pytest.fail(f"{s.key}: unknown kind of command {s.command!r}")


def test_readme_states_no_figure_outside_the_generated_table():
    """Measured figures in README prose drift from the JSON: they belong in the table."""
    readme = ref.README.read_text()
    head, rest = readme.split(ref.README_START, 1)
    prose = head + rest.split(ref.README_END, 1)[1]
    found = re.findall(r"\b\d+(?:\.\d+)? dB\b|\b\d+(?:\.\d+)?x (?:faster|less)\b|\b\d+ min \d+ s\b", prose)
    assert not found, f"measured figures in README prose (put them in benchmarks/results/*.json): {found}"


def test_a_template_naming_a_missing_figure_is_an_error():
    s = ref.Section(key="k", title="t", order=0, command="mirage demo", machine="m",
                    figures={"a": 1.0}, headline=[{"figure": "f", "measured": "{b} dB", "target": "-"}])
    with pytest.raises(ValueError, match=r"section k: cannot fill '\{b\} dB'"):
        s.headline_rows()
    with pytest.raises(ValueError, match="longer than 80"):
        ref.Section(key="k", title="x" * 81, order=0, command="c", machine="m")


def test_markdown_blocks_round_trip():
    body = "A paragraph\non two lines.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n\nAfter."
    blocks = ref.parse_blocks(body)
    assert blocks == [{"text": "A paragraph\non two lines."}, {"columns": ["a", "b"], "rows": [["1", "2"], ["3", "4"]]},
                      {"text": "After."}]
    assert "\n\n".join(ref.render_block(b) for b in blocks) == body

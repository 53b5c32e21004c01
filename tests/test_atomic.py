"""mirage_model.io.atomic: temp sibling + fsync + os.replace, nothing left behind on failure."""

import pytest

from mirage_model.io.atomic import TMP_PREFIX, atomic_path, atomic_write_bytes, atomic_write_text, tmp_name


def test_success_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(TMP_PREFIX) and tmp.name.endswith(".json")
        assert not tmp.exists()
        tmp.write_text("new")
        assert target.read_text() == "old"  # nothing visible before the context exits
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failure_leaves_no_file_and_no_temp(tmp_path):
    target = tmp_path / "sub" / "video.mp4"
    with pytest.raises(RuntimeError, match="encoder died"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("encoder died")
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_failure_keeps_the_previous_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("keep")
    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyError("x")
    assert target.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_conveniences_and_tmp_names(tmp_path):
    atomic_write_bytes(tmp_path / "d" / "x.bin", b"\x00\x01")
    atomic_write_text(str(tmp_path / "y.txt"), "h\u00e9llo\n")
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "y.txt").read_bytes() == "h\u00e9llo\n".encode()
    a, b = tmp_name("clip.mp4"), tmp_name("clip.mp4")
    assert a != b and a.startswith(".tmp-") and a.endswith("-clip.mp4")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "x.bin", "y.txt"]

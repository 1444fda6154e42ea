"""Crash-safe writes: all or nothing, no temp files left behind."""

import pytest

from ance.run.fsio import atomic_write_lines, fsync_dir


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "run.trec"
    target.write_text("old\n")
    atomic_write_lines(target, (f"line {i}\n" for i in range(3)))
    assert target.read_text() == "line 0\nline 1\nline 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]
    fsync_dir(tmp_path)


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "negatives.tsv"
    target.write_text("complete version\n")

    def lines():
        yield "half\n"
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError, match="disk gone"):
        atomic_write_lines(target, lines())
    assert target.read_text() == "complete version\n"
    assert [p.name for p in tmp_path.iterdir()] == ["negatives.tsv"]

"""`lab.files.written_whole`: a cache is seen whole or not at all, and writers running at once never share a
temporary (two `make train` of one task side by side both built the Pathfinder cache through one `.part`
file, and the second failed on its rename)."""
from __future__ import annotations

import itertools

import pytest

from lab import files
from lab.files import written_whole


def test_the_target_appears_only_when_the_block_completes(tmp_path):
    target = tmp_path / "cache.bin"
    with written_whole(target) as partial:
        partial.write_bytes(b"complete")
        assert not target.exists() and partial.parent == tmp_path
    assert target.read_bytes() == b"complete" and list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_old_target_and_no_temporary(tmp_path):
    target = tmp_path / "cache.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), written_whole(target) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


@pytest.fixture
def two_processes(monkeypatch):
    """Each written_whole call gets the next process id, as two processes writing at once would."""
    ids = itertools.count(1000)
    monkeypatch.setattr(files.os, "getpid", lambda: next(ids))


def test_two_writers_of_one_file_at_once_both_succeed(tmp_path, two_processes):
    target = tmp_path / "cache.bin"
    with written_whole(target) as first, written_whole(target) as second:
        assert first != second
        first.write_bytes(b"one")
        second.write_bytes(b"two")
    assert target.read_bytes() in (b"one", b"two") and list(tmp_path.iterdir()) == [target]


def test_a_folder_finished_by_another_writer_is_kept(tmp_path, two_processes):
    target = tmp_path / "prepared"
    with written_whole(target) as first:
        first.mkdir()
        (first / "train.de").write_text("first")
        with written_whole(target) as second:
            second.mkdir()
            (second / "train.de").write_text("second")
    assert (target / "train.de").read_text() == "second" and list(tmp_path.iterdir()) == [target]

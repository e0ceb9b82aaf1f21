"""Atomic writes and safe loads (files.py)."""

import json
import os
import re
import socket
import stat

import pytest
import torch

from sievetrain.files import (
    LOCK_FILE,
    CheckpointError,
    FolderInUse,
    FolderLock,
    append_jsonl,
    atomic_torch_save,
    atomic_write_text,
    load_torch,
    read_jsonl,
    remove_temporaries,
)


def test_torch_files_round_trip_through_the_one_atomic_writer(tmp_path):
    path = tmp_path / "state.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3, "log": [{"s": 0.5}], "k": None}
    atomic_torch_save(state, path)
    loaded = load_torch(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["log"] == state["log"]
    assert os.listdir(tmp_path) == ["state.pt"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.pt"
    atomic_write_text(path, "old")
    with pytest.raises(Exception):  # noqa: B017  (a lambda cannot be pickled)
        atomic_torch_save({"f": lambda: 0}, path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["state.pt"]


def test_not_a_torch_file_is_refused_naming_it(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_torch(path)


def test_jsonl_appends_keep_earlier_lines(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"b": 2})
    assert read_jsonl(path) == [{"a": 1}, {"b": 2}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_honour_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        (tmp_path / "kept.txt").write_text("old")
        os.chmod(tmp_path / "kept.txt", 0o640)
        atomic_write_text(tmp_path / "kept.txt", "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o640
    assert (tmp_path / "kept.txt").read_text() == "new"


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"a": 1}\n{"b": \n', "line 2 is not valid JSON"),
        ('{"a": 1}\n\n7\n', "line 3 is not a JSON object: 7"),
        ('"just a string"\n', "line 1 is not a JSON object"),
    ],
)
def test_a_damaged_jsonl_line_is_named_by_file_and_line(tmp_path, text, message):
    path = tmp_path / "results.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{str(path)!r} {message}")):
        read_jsonl(path)
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        read_jsonl(path)


def test_only_the_writers_temporaries_of_the_given_targets_are_removed(tmp_path):
    ours = [tmp_path / ".report.md.ab12cd34.tmp", tmp_path / ".report.md.k_3x9qzz.tmp"]
    theirs = [tmp_path / ".notes.tmp", tmp_path / ".data.csv.ab12cd34.tmp", tmp_path / "x.tmp"]
    for path in ours + theirs:
        path.write_bytes(b"")
    assert remove_temporaries(tmp_path, "report.md") == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_a_folder_lock_is_held_by_one_owner_named_in_the_refusal_and_released(tmp_path):
    folder = tmp_path / "runs" / "a"
    lock = FolderLock(folder).acquire()  # makes the folder and its missing parent
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    assert json.loads((folder / LOCK_FILE).read_text()) == owner
    message = f"{str(folder)!r} is in use by process {os.getpid()} on {owner['host']}"
    with pytest.raises(FolderInUse, match=re.escape(message)):
        FolderLock(folder).acquire()  # a second claim, even from this process
    (folder / "results.jsonl").write_text("{}\n")
    lock.release()
    lock.release()  # twice is fine
    assert os.listdir(folder) == ["results.jsonl"]  # a folder written to stays
    with FolderLock(folder):  # free again
        pass
    with FolderLock(tmp_path / "empty" / "b"):
        assert (tmp_path / "empty" / "b" / LOCK_FILE).exists()
    assert sorted(os.listdir(tmp_path)) == ["runs"]  # the folders it made, left empty: gone


def test_a_lock_file_whose_process_ended_is_taken_over_with_a_warning(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 4242, "host": "node7"}\n')  # no one holds it
    with pytest.warns(UserWarning, match="was left by process 4242 on node7, which has ended"):
        lock = FolderLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK_FILE).unlink()  # removed by hand while held, and another put there
    (tmp_path / LOCK_FILE).write_text("someone else's")
    lock.release()  # leaves the file that is not its own
    assert (tmp_path / LOCK_FILE).read_text() == "someone else's"

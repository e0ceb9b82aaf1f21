"""Atomic writes and safe loads (files.py)."""

import os

import pytest
import torch

from sievetrain.files import (
    CheckpointError,
    append_jsonl,
    atomic_torch_save,
    atomic_write_text,
    load_torch,
    read_jsonl,
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

"""The crash-safe JSONL store behind eval's ``results.jsonl`` and optimize's caches: durability, torn lines,
corruption."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading

import pytest

from cat_dspy import jsonl_store
from cat_dspy.jsonl_store import JsonlStore, StoreCorruptError
from cat_dspy.optimization.compile import JsonlCache


def test_every_append_is_fsynced_after_its_whole_line_is_written(tmp_path, monkeypatch):
    store = JsonlStore(tmp_path / "sub" / "r.jsonl")
    synced = []  # (what was fsynced, size of the file at that moment)
    real_fsync = os.fsync

    def fsync(fd):
        info = os.fstat(fd)
        synced.append("dir" if stat.S_ISDIR(info.st_mode) else info.st_size)
        real_fsync(fd)

    monkeypatch.setattr(jsonl_store.os, "fsync", fsync)
    sizes = []
    for i in range(3):
        store.append({"id": f"r{i}", "text": "é" * i})
        sizes.append(store.path.stat().st_size)
    # One fsync per record, each after that record's whole line; the new file's folder is fsynced once.
    assert [s for s in synced if s != "dir"] == sizes
    assert synced.count("dir") == 1 and synced[1] == "dir"
    assert store.path.read_bytes().endswith(b"\n") and list(store.load()) == ["r0", "r1", "r2"]


@pytest.mark.parametrize(
    "tail",
    [b'{"id": "b", "x"', b'{"id": "b"}', b'{"id": "b", "t": "\xc3"}\n', b"\x00\x00\x00\x00\n",
     b'{"id": "b", "x\n\n \n'],
    ids=["cut-json", "complete-json-without-newline", "cut-utf8-character", "zero-bytes", "then-blank-lines"],
)
def test_a_torn_last_line_is_dropped_with_a_warning_and_appends_continue_cleanly(tmp_path, caplog, tail):
    store = JsonlStore(tmp_path / "r.jsonl")
    store.append({"id": "a", "x": 1})
    clean = store.path.read_bytes()
    with store.path.open("ab") as fh:
        fh.write(tail)
    with caplog.at_level(logging.WARNING, logger="cat_dspy.jsonl_store"):
        assert store.load() == {"a": {"id": "a", "x": 1}}
    assert f"{store.path}:2: dropped a torn last line" in caplog.text
    assert store.path.read_bytes() == clean  # truncated away, so the next append starts on a clean line
    store.append({"id": "b", "x": 2})
    assert [json.loads(line) for line in store.path.read_text().splitlines()] == [{"id": "a", "x": 1},
                                                                                  {"id": "b", "x": 2}]
    caplog.clear()
    assert list(JsonlStore(store.path).load()) == ["a", "b"] and not caplog.text


def test_a_bad_line_in_the_middle_is_corruption_named_by_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b", oops}\n{"id": "c"}\n')
    before = path.read_bytes()
    with pytest.raises(StoreCorruptError, match=rf"^{path}:3: unparsable: .*corrupted before its last line"):
        JsonlStore(path).load()
    assert path.read_bytes() == before  # nothing truncated or rewritten
    path.write_text('{"id": "a"}\n[1, 2]\n{"id": "c"}\n')
    with pytest.raises(StoreCorruptError, match=rf"^{path}:2: a JSON list, not an object"):
        JsonlStore(path).records()
    path.write_text('{"id": "a"}\n{"name": "b"}\n')
    with pytest.raises(StoreCorruptError, match=rf"^{path}:2: record has no 'id' field"):
        JsonlStore(path).load()
    assert JsonlStore(path, key="name").records() == [{"id": "a"}, {"name": "b"}]


def test_first_record_of_a_key_wins_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "v": 1}\n\n{"id": "a", "v": 2}\n{"id": "b", "v": 3}\n\n')
    assert JsonlStore(path).load() == {"a": {"id": "a", "v": 1}, "b": {"id": "b", "v": 3}}
    assert JsonlStore(tmp_path / "missing.jsonl").load() == {}


def test_concurrent_appends_keep_whole_lines(tmp_path):
    store = JsonlStore(tmp_path / "r.jsonl")
    threads = [threading.Thread(target=lambda k=k: [store.append({"id": f"{k}-{i}", "pad": "x" * 5000})
                                                    for i in range(20)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.load()) == 80 and len(store.path.read_text().splitlines()) == 80


def test_optimize_cache_resumes_after_a_torn_write_and_refuses_a_corrupt_one(tmp_path, caplog):
    config = {"dataset": "d", "g": 2}
    cache = JsonlCache(tmp_path, "rollouts", config)
    cache.put("q1", ["a", "b"])
    cache.put("q2", ["c", "d"])
    with cache.path.open("a") as fh:  # a crash while writing q3: the rerun must not stop on the torn line
        fh.write('{"id": "q3", "value": ["e"')
    with caplog.at_level(logging.WARNING, logger="cat_dspy.jsonl_store"):
        resumed = JsonlCache(tmp_path, "rollouts", config)
    assert "dropped a torn last line" in caplog.text
    assert (resumed.get("q1"), resumed.get("q2"), resumed.get("q3")) == (["a", "b"], ["c", "d"], None)
    resumed.put("q3", ["e", "f"])
    assert JsonlCache(tmp_path, "rollouts", config).get("q3") == ["e", "f"]
    assert JsonlCache(tmp_path, "rollouts", config | {"g": 3}).get("q1") is None  # another configuration

    lines = cache.path.read_text().splitlines()
    cache.path.write_text("\n".join([lines[0], lines[1][:-3], lines[2]]) + "\n")
    with pytest.raises(StoreCorruptError, match=rf"{cache.path}:2: unparsable"):
        JsonlCache(tmp_path, "rollouts", config)
    assert JsonlCache(None, "rollouts", config).path is None  # memory only

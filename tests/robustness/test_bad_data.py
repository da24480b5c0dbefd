"""Bad data: missing fields, wrong types, empty files, duplicate ids and broken encodings fail with an error naming
file and line, before any LM call (checked through ``cat-dspy eval``'s own entry)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cat_dspy.cli import common as cli
from cat_dspy.datasets import DataError, load_dataset
from cat_dspy.testing import scripted_lm

pytestmark = pytest.mark.robustness

GOOD = {"id": "a", "question": "What is 1+1?", "answer": "2"}


def _line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# name -> (file content, the 1-based line the error must name, a word the message must contain)
CASES: dict[str, tuple[bytes, int, str]] = {
    "empty file": (b"", 1, "empty"),
    "only blank lines": (b"\n  \n\t\n", 1, "empty"),
    "missing question": (_line(GOOD) + _line({"id": "b", "answer": "3"}), 2, "missing field 'question'"),
    "question is a number": (_line({**GOOD, "question": 42}), 1, "question"),
    "question is empty": (_line(GOOD) + _line({**GOOD, "id": "b", "question": "   "}), 2, "empty"),
    "question is null": (_line({**GOOD, "question": None}), 1, "question"),
    "messages end with the assistant": (
        _line({**GOOD, "question": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        1, "user"),
    "message without content": (_line({**GOOD, "question": [{"role": "user"}]}), 1, "content"),
    "answer is a list": (_line(GOOD) + _line(GOOD | {"id": "b"}) + _line({**GOOD, "id": "c", "answer": [2]}), 3,
                         "answer"),
    "answer is a boolean": (_line({**GOOD, "answer": True}), 1, "answer"),
    "answer is empty": (_line({**GOOD, "answer": " "}), 1, "answer"),
    "answer missing on one line": (_line(GOOD) + _line({"id": "b", "question": "q2"}), 2, "missing field 'answer'"),
    "id is a boolean": (_line({**GOOD, "id": True}), 1, "'id'"),
    "id is missing": (_line(GOOD) + _line({"question": "q2", "answer": "1"}), 2, "missing field 'id'"),
    "duplicate ids": (_line(GOOD) + _line({**GOOD, "question": "other"}), 2, "duplicate id"),
    "malformed JSON": (_line(GOOD) + b'{"id": "b", "question": "q2"\n', 2, "malformed JSON"),
    "a JSON array": (_line(GOOD) + b"[1, 2]\n", 2, "expected a JSON object"),
    "not UTF-8": (_line(GOOD) + b'{"id": "b", "question": "caf\xe9", "answer": "1"}\n', 2, "UTF-8"),
    "rubrics not a list": (_line({**GOOD, "rubrics": "be nice"}), 1, "rubrics"),
    "rubric item without points": (_line({**GOOD, "rubrics": [{"criterion": "x", "tags": []}]}), 1, "points"),
    "bad line after many good ones": (b"".join(_line({**GOOD, "id": f"i{k}", "question": f"q{k}"}) for k in
                                               range(500)) + b"{oops\n", 501, "malformed JSON"),
}


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / (name.replace(" ", "_") + ".jsonl")
    path.write_bytes(content)
    return path


def test_bad_files_name_file_and_line(tmp_path):
    for name, (content, line, word) in CASES.items():
        path = _write(tmp_path, name, content)
        with pytest.raises(DataError) as info:
            load_dataset(str(path), id_field="id")
        message = str(info.value)
        assert f"{path}:{line}:" in message, (name, message)
        assert word.lower() in message.lower(), (name, message)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    path = _write(tmp_path, "dup questions", _line({"question": "same", "answer": "1"}) * 2)  # ids from hashes
    with pytest.raises(DataError, match=rf"{path}:2: duplicate id"):
        load_dataset(str(path))


def test_eval_fails_before_any_lm_call(tmp_path, monkeypatch, capsys):
    from cat_dspy.cli import eval as eval_cli

    built, engines = [], []

    def roles(args):  # would serve the eval; must never be reached
        built.append(args)
        lms = {role: scripted_lm(["\\boxed{2}"]) for role in cli.ROLES}
        engines.extend(lm.engine_script for lm in lms.values())
        return lms

    monkeypatch.setattr(cli, "build_roles", roles)
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    for name, (content, line, _) in CASES.items():
        path = _write(tmp_path, name, content)
        args = parser.parse_args(["--dataset", str(path), "--id-field", "id", "--run-dir", str(tmp_path / "run"),
                                  "--no-progress"])
        assert eval_cli.run(args) == 2, name
        assert f"{path}:{line}:" in capsys.readouterr().err, name
    assert not built and sum(e.calls for e in engines) == 0
    assert not (tmp_path / "run").exists()  # not even a run folder

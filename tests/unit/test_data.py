"""Tests for cat_dspy.datasets: named sets (read from shared/data, skipped when absent), user JSONL, validation."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from cat_dspy import datasets as data
from cat_dspy.datasets import DATASETS, DataError, load_dataset, split_items

NUMBER = re.compile(r"-?\d+(\.\d+)?")


def need(data_dir: Path, name: str, split: str | None = None) -> Path:
    """The local file of a named set in ``data_dir`` (the test's ``needs_data`` marker made sure it is there)."""
    spec = DATASETS[name]
    return data_dir / spec.files[split or spec.default_split]


def raw_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write(path: Path, lines: list[str | dict] | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines), "utf-8")
    return path


@pytest.fixture
def no_shared(monkeypatch):
    """Hide every data dir but the ones a test passes."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)


@pytest.fixture
def answers_module(monkeypatch):
    """cat_dspy.scoring.extraction.extract_answer, or a stand-in (last \\boxed{}) while it does not exist."""
    try:
        from cat_dspy.scoring.extraction import extract_answer  # noqa: F401
    except ImportError:
        fake = types.ModuleType("cat_dspy.scoring.extraction")
        fake.extract_answer = lambda text: (re.findall(r"\\boxed\{([^{}]*)\}", text or "") or [None])[-1]
        monkeypatch.setitem(sys.modules, "cat_dspy.scoring.extraction", fake)


# --- named sets --------------------------------------------------------------------------------------------------


def test_specs_cover_the_named_sets():
    assert set(DATASETS) == {"gsm8k", "math500", "math", "aime24", "aime25", "healthbench"}
    defaults = {name: spec.default_split for name, spec in DATASETS.items()}
    assert defaults == {**dict.fromkeys(DATASETS, "test"), "math": "train"}
    assert set(DATASETS["gsm8k"].files) == {"test", "train"}
    assert all(spec.hub is not None for spec in DATASETS.values())


@pytest.mark.needs_data("gsm8k")
def test_gsm8k_answers_are_final_numbers_without_commas(data_dir):
    path = need(data_dir, "gsm8k")
    items = load_dataset("gsm8k", data_dir=data_dir)
    raw = raw_records(path)
    assert len(items) == len(raw)
    assert all(NUMBER.fullmatch(item.answer) for item in items)
    assert any("," in r["answer"].split("####")[-1] for r in raw)  # the file has thousands separators; we drop them
    first = items[0]
    assert first.question == raw[0]["question"]
    assert first.answer == raw[0]["answer"].split("####")[-1].strip().replace(",", "")
    assert first.id == "gsm8k-test-0" and first.meta == {"source": "gsm8k/test.jsonl", "line": 1}
    assert first.messages is None and first.rubrics is None and first.verifiable


@pytest.mark.needs_data("gsm8k", split="train")
def test_gsm8k_train_split_and_limit(data_dir):
    items = load_dataset("GSM8K", split="train", limit=5, data_dir=data_dir)
    assert [i.id for i in items] == [f"gsm8k-train-{n}" for n in range(5)]
    assert all(NUMBER.fullmatch(i.answer) for i in items)


@pytest.mark.needs_data("math500")
def test_math500_maps_problem_answer_and_meta(data_dir):
    path = need(data_dir, "math500")
    items = load_dataset("math500", data_dir=data_dir)
    raw = raw_records(path)
    assert [i.id for i in items] == [r["unique_id"] for r in raw]
    assert all(i.answer and i.answer == r["answer"] for i, r in zip(items, raw, strict=True))
    assert all(i.question == r["problem"] for i, r in zip(items, raw, strict=True))
    assert all(isinstance(i.meta["subject"], str) and i.meta["level"] in range(1, 6) for i in items)


@pytest.mark.needs_data("math")
def test_math_defaults_to_train_and_keeps_null_answers_as_none(data_dir):
    path = need(data_dir, "math")
    items = load_dataset("math", data_dir=data_dir)
    raw = raw_records(path)
    assert len(items) == len(raw) and items[0].id == raw[0]["id"]
    assert sum(i.answer is None for i in items) == sum(r["answer"] is None for r in raw)
    assert all(i.answer for i in items if i.answer is not None)
    assert {i.meta["source_split"] for i in items} <= {"train", "test"}
    assert load_dataset("math", limit=3, data_dir=data_dir) == items[:3]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.needs_data(n)) for n in ("aime24", "aime25")])
def test_aime_answers_are_integers(name, data_dir):
    path = need(data_dir, name)
    items = load_dataset(name, data_dir=data_dir)
    raw = raw_records(path)
    assert len(items) == len(raw)
    assert all(i.answer.isdigit() and 0 <= int(i.answer) <= 999 for i in items)
    assert [i.question for i in items] == [r["problem"] for r in raw]
    expected = [f"aime24-{r['id']}" for r in raw] if name == "aime24" else [f"aime25-test-{n}" for n in range(len(raw))]
    assert [i.id for i in items] == expected


@pytest.mark.needs_data("healthbench")
def test_healthbench_has_messages_and_rubrics(data_dir):
    path = need(data_dir, "healthbench")
    items = load_dataset("healthbench", split="all", data_dir=data_dir)
    raw = raw_records(path)
    assert [i.id for i in items] == [r["prompt_id"] for r in raw]
    for item in items[:50]:
        assert item.answer is None and not item.verifiable
        assert item.messages and item.messages[-1]["role"] == "user"
        assert item.messages[-1]["content"] in item.question
        assert item.rubrics and all(
            isinstance(r["criterion"], str) and isinstance(r["points"], int) and isinstance(r["tags"], list)
            for r in item.rubrics
        )
        assert "example_tags" in item.meta
    multi = next(i for i in items if len(i.messages) > 1)
    assert multi.question.startswith("User: ") and "\n\nAssistant: " in multi.question


def test_named_set_errors_name_the_relative_file_and_line(tmp_path, no_shared):
    good = {"question": "q", "answer": "work\n#### 1,000"}
    write(tmp_path / "gsm8k" / "test.jsonl", [{**good, "question": f"q{n}"} for n in range(16)] + [{"answer": "x"}])
    with pytest.raises(DataError, match=r"^gsm8k/test\.jsonl:17: missing field 'question'"):
        load_dataset("gsm8k", data_dir=tmp_path)
    write(tmp_path / "gsm8k" / "test.jsonl", [good, {"question": "q", "answer": "no final line"}])
    with pytest.raises(DataError, match=r"^gsm8k/test\.jsonl:2: GSM8K answer has no final '####"):
        load_dataset("gsm8k", data_dir=tmp_path, limit=1)


def test_data_dir_order_argument_then_env(tmp_path, monkeypatch, no_shared):
    write(tmp_path / "a" / "gsm8k" / "test.jsonl", [{"question": "from a", "answer": "#### 1"}])
    write(tmp_path / "env" / "gsm8k" / "test.jsonl", [{"question": "from env", "answer": "#### 2"}])
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "env"))
    assert load_dataset("gsm8k")[0].question == "from env"
    assert load_dataset("gsm8k", data_dir=tmp_path / "a")[0].question == "from a"
    assert load_dataset("gsm8k", data_dir=tmp_path / "missing")[0].question == "from env"  # falls through
    assert data.data_dirs(tmp_path / "a") == [tmp_path / "a", tmp_path / "env"]


def test_unknown_split_is_rejected(tmp_path, no_shared):
    with pytest.raises(DataError, match=r"no split 'dev' \(available: test, train\)"):
        load_dataset("gsm8k", split="dev", data_dir=tmp_path)


def test_missing_local_copy_offline_explains_how_to_fix(tmp_path, monkeypatch, no_shared):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        load_dataset("math500", data_dir=tmp_path)
    msg = str(err.value)
    for part in ("'math500'", str(tmp_path), "math500/test.jsonl", "HF_HUB_OFFLINE", "--data-dir", "CAT_DSPY_DATA"):
        assert part in msg


def _fake_hub(monkeypatch, rows, calls):
    def load(path, name=None, *, split=None, data_files=None):
        calls.append((path, name, split, data_files))
        if isinstance(rows, Exception):
            raise rows
        return rows

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))


def test_hub_fallback_maps_rows_like_local_files(tmp_path, monkeypatch, no_shared, answers_module):
    calls: list = []
    rows = [{"problem": "p0", "solution": r"so \boxed{5}", "type": "Algebra", "level": "Level 3"}]
    _fake_hub(monkeypatch, rows, calls)
    [item] = load_dataset("math", data_dir=tmp_path)
    assert calls == [("DigitalLearningGmbH/MATH-lighteval", "default", "train", None)]
    assert (item.id, item.question, item.answer) == ("math-train-0", "p0", "5")
    source = "hf:DigitalLearningGmbH/MATH-lighteval[train]"
    assert item.meta == {"source": source, "line": 1, "subject": "Algebra", "level": 3}
    calls.clear()
    _fake_hub(monkeypatch, [{"id": 7, "problem": "p", "answer": 12}], calls)
    assert load_dataset("aime24", data_dir=tmp_path)[0].id == "aime24-7"
    assert calls == [("HuggingFaceH4/aime_2024", None, "train", None)]


def test_hub_failure_is_a_data_error(tmp_path, monkeypatch, no_shared):
    _fake_hub(monkeypatch, ConnectionError("no network"), [])
    with pytest.raises(DataError, match=r"'gsm8k'.*no network.*--data-dir"):
        load_dataset("gsm8k", data_dir=tmp_path)


def test_solution_fallback_uses_the_last_boxed_answer(tmp_path, no_shared, answers_module):
    record = {"problem": "p", "solution": r"\boxed{1} then \boxed{2}", "unique_id": "u1"}
    write(tmp_path / "math500" / "test.jsonl", [record])
    assert load_dataset("math500", data_dir=tmp_path)[0].answer == "2"


# --- user JSONL --------------------------------------------------------------------------------------------------


def test_user_file_maps_fields_and_keeps_extras(tmp_path):
    lines = [{"question": "1+1?", "answer": 2, "topic": "add"}, "", {"question": "2+2?", "answer": " 4 "}]
    path = write(tmp_path / "mine.jsonl", lines)
    items = load_dataset(path)
    assert [(i.question, i.answer) for i in items] == [("1+1?", "2"), ("2+2?", "4")]
    assert items[0].meta == {"source": str(path), "line": 1, "topic": "add"} and items[1].meta["line"] == 3
    assert re.fullmatch(r"mine-[0-9a-f]{12}", items[0].id) and load_dataset(str(path)) == items  # stable ids


def test_user_file_custom_fields(tmp_path):
    path = write(
        tmp_path / "c.jsonl", [{"uid": 1, "prompt": "a", "target": "x"}, {"uid": "b", "prompt": "a", "target": None}]
    )
    items = load_dataset(path, question_field="prompt", answer_field="target", id_field="uid")
    assert [(i.id, i.answer) for i in items] == [("1", "x"), ("b", None)]
    assert load_dataset(path, question_field="prompt", answer_field=None, id_field="uid")[0].answer is None


def test_user_file_without_answers_is_non_verifiable(tmp_path):
    path = write(tmp_path / "advice.jsonl", [{"question": "How do I sleep better?"}, {"question": "Is coffee ok?"}])
    assert [i.answer for i in load_dataset(path)] == [None, None]


def test_user_file_with_messages_and_rubrics(tmp_path):
    convo = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Ok?"},
    ]
    rubric = [{"criterion": "Is kind", "points": 3}]
    [item] = load_dataset(write(tmp_path / "chat.jsonl", [{"question": convo, "rubrics": rubric}]))
    assert item.messages == tuple(convo) and item.question == "User: Hi\n\nAssistant: Hello\n\nUser: Ok?"
    assert item.rubrics == ({"criterion": "Is kind", "points": 3, "tags": []},) and item.answer is None


def test_user_file_with_bom_loads(tmp_path):
    path = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"question": "caf\xc3\xa9?", "answer": "1"}\n')
    assert load_dataset(path)[0].question == "café?"


def test_unknown_name_or_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"no such file.*gsm8k"):
        load_dataset(str(tmp_path / "nope.jsonl"))


BAD = [
    ("malformed JSON", ['{"question": "a"}', '{"question": '], None, 2, "malformed JSON"),
    ("not an object", ['{"question": "a"}', "[1, 2]"], None, 2, "expected a JSON object, got array"),
    ("missing question", ['{"q": "a"}'], None, 1, "missing field 'question'"),
    ("question wrong type", ['{"question": 5}'], None, 1, "must be a string or a non-empty message list"),
    ("empty question", ['{"question": "  "}'], None, 1, "field 'question' is empty"),
    ("bad message", ['{"question": [{"role": "user"}]}'], None, 1, "question[0] must be an object"),
    ("ends with assistant", ['{"question": [{"role": "assistant", "content": "x"}]}'], None, 1, "end with a 'user'"),
    ("empty file", [], None, 1, "empty file"),
    ("blank lines only", ["", "  ", ""], None, 1, "empty file"),
    ("line numbers count blanks", ["", "", '{"question": 1}'], None, 3, "must be a string"),
    ("duplicate id", ['{"id": 1, "question": "a"}', '{"id": 2, "question": "b"}', '{"id": 1, "question": "c"}'],
     "id", 3, "duplicate id '1' (first on line 1"),
    ("duplicate question", ['{"question": "a"}', '{"question": "b"}', '{"question": "a"}'], None, 3, "same question"),
    ("id wrong type", ['{"id": [1], "question": "a"}'], "id", 1, "field 'id' must be a string or integer"),
    ("missing id", ['{"question": "a"}'], "id", 1, "missing field 'id'"),
    ("answer wrong type", ['{"question": "a", "answer": [1]}'], None, 1, "field 'answer' must be a string or number"),
    ("answer empty", ['{"question": "a", "answer": ""}'], None, 1, "field 'answer' is empty"),
    ("answer missing on some lines", ['{"question": "a", "answer": "1"}', '{"question": "b"}'], None, 2,
     "missing field 'answer' (present on line 1"),
    ("bad rubric", ['{"question": "a", "rubrics": [{"criterion": "c", "points": "5"}]}'], None, 1, "rubrics[0]"),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "id_field", "line", "problem"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_data_raises_data_error_naming_file_and_line(tmp_path, lines, id_field, line, problem):
    path = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as err:
        load_dataset(path, id_field=id_field, limit=1)  # the whole file is validated, whatever the limit
    assert str(err.value).startswith(f"{path}:{line}: ") and problem in str(err.value)
    assert isinstance(err.value, ValueError)


def test_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "latin1.jsonl", b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: not valid UTF-8"):
        load_dataset(path)


# --- limit, seed, splits, samples --------------------------------------------------------------------------------


@pytest.fixture
def twenty(tmp_path) -> Path:
    return write(tmp_path / "twenty.jsonl", [{"question": f"q{n}", "answer": str(n)} for n in range(20)])


def test_limit_takes_the_first_items_in_file_order(twenty):
    full = load_dataset(twenty)
    assert [i.answer for i in full] == [str(n) for n in range(20)]
    assert load_dataset(twenty, limit=5) == full[:5]
    assert load_dataset(twenty, limit=0) == [] and load_dataset(twenty, limit=99) == full
    with pytest.raises(ValueError, match="limit"):
        load_dataset(twenty, limit=-1)


def test_seed_shuffles_deterministically_before_limit(twenty):
    full = load_dataset(twenty)
    a, b = load_dataset(twenty, seed=3), load_dataset(twenty, seed=3)
    assert a == b and a != full and sorted(a, key=lambda i: int(i.answer)) == full
    assert load_dataset(twenty, seed=4) != a
    assert load_dataset(twenty, seed=3, limit=5) == a[:5]


def test_split_items_is_disjoint_and_seeded():
    items = list(range(50))
    train, dev, test = split_items(items, train=30, dev=10, seed=1)
    assert (len(train), len(dev), len(test)) == (30, 10, 10)
    assert sorted(train + dev + test) == items
    assert split_items(items, train=30, dev=10, seed=1) == (train, dev, test)
    assert split_items(items, train=30, dev=10, seed=2) != (train, dev, test)
    assert [len(p) for p in split_items(items, train=5, dev=5, test=3)] == [5, 5, 3]
    for bad in ({"train": 40, "dev": 20}, {"train": -1, "dev": 1}, {"train": 1, "dev": 1, "test": 49}):
        with pytest.raises(ValueError, match="cannot split"):
            split_items(items, **bad)

"""Datasets as validated :class:`Item` lists: the CaT benchmarks by name, or any user JSONL file.

Loaders read their source once, streaming, and validate *every* record before returning anything: a bad file fails
fast with ``file:line: problem``, and no LM call ever runs on half-checked data.

Named sets (:data:`DATASETS`) load from the first local data directory holding the file, tried in this order: the
``data_dir`` argument (``--data-dir``), then ``$CAT_DSPY_DATA``: the data is where the user says. With no local
copy, and only while ``HF_HUB_OFFLINE`` is unset, they fall back to the
Hugging Face Hub (the upstream sets, not the local held-out subsets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_VAR = "CAT_DSPY_DATA"
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_SIMPLE_EVALS = "https://openaipublic.blob.core.windows.net/simple-evals/"  # HealthBench's home


class DataError(ValueError):
    """Bad or missing data; the message names ``file:line`` (or the dataset) and the problem."""


@dataclass(frozen=True)
class Item:
    """One question, with its normalized gold answer when verifiable."""

    id: str  # unique within its source, stable across runs
    question: str  # the prompt; a chat conversation is rendered as "Role: content" turns
    answer: str | None = None  # None: non-verifiable (e.g. HealthBench)
    messages: tuple[dict, ...] | None = None  # raw {role, content} chat messages, for conversations
    rubrics: tuple[dict, ...] | None = None  # {criterion, points, tags} rubric items, where the source has them
    meta: dict = field(default_factory=dict, compare=False)  # source, 1-based line, subject/level/... when present

    @property
    def verifiable(self) -> bool:
        """Whether the item has a gold answer."""
        return self.answer is not None


@dataclass(frozen=True)
class Fields:
    """How a record's fields map onto an :class:`Item` (field names; None: not in the source)."""

    question: str = "question"  # a string, or a list of chat messages ending with a user turn
    answer: str | None = "answer"  # null values mean "no answer"
    id: str | None = None  # None: ids from line numbers (named sets) or question hashes (files)
    solution: str | None = None  # answer fallback: the last \boxed{} of this field
    rubrics: str | None = None  # optional list of {criterion, points, tags}
    meta: dict[str, str] = field(default_factory=dict)  # meta key -> source field, copied when present
    gsm8k: bool = False  # the answer is a GSM8K worked solution ending in "#### <number>"


@dataclass(frozen=True)
class HubSource:
    """Online fallback: arguments for ``datasets.load_dataset`` and the mapping of its rows."""

    path: str
    config: str | None = None
    splits: dict[str, str] = field(default_factory=dict)  # our split -> hub split; same name when absent
    fields: Fields | None = None  # None: same as the local files
    data_files: str | None = None


@dataclass(frozen=True)
class HashSplit:
    """Splits carved out of one file by a stable hash of each item's id (:func:`held_out`).

    An id's split depends on the id alone, never on the file's order, size or the other records: the same
    conversation lands in the same split in a 450-example copy and in the full release.
    """

    fraction: float  # share of the ids held out
    held_out: str = "test"  # the held-out split: evaluation only
    rest: str = "train"  # everything else: training and validation
    salt: str = "cat-dspy"


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: one file (relative to the data dir) per split, its field mapping and online fallback."""

    files: dict[str, str]
    fields: Fields
    hub: HubSource | None = None
    default_split: str = "test"
    id_prefix: str = ""  # prepended to ids taken from ``fields.id``
    hash_split: HashSplit | None = None  # splits that share one file, by id (``files`` maps each to that file)


HEALTHBENCH_HELD_OUT = 0.1
"""Share of HealthBench prompt ids held out for evaluation: the paper's 500 of 5,000 (cat-paper.md §2.4)."""


_MATH = {"subject": "subject", "level": "level"}
_LIGHTEVAL = Fields("problem", None, solution="solution", meta={"subject": "type", "level": "level"})
_TRAIN = {"test": "train"}  # hub split names, where they differ from ours
DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec(
        {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"},
        Fields(gsm8k=True),
        HubSource("openai/gsm8k", "main"),
    ),
    "math500": DatasetSpec(
        {"test": "math500/test.jsonl"},
        Fields("problem", "answer", id="unique_id", solution="solution", meta=_MATH),
        HubSource("HuggingFaceH4/MATH-500"),
    ),
    "math": DatasetSpec(  # online: only the 7,500 MATH train problems (the local file adds 4,500 MATH test ones)
        {"train": "math/train.jsonl"},
        Fields("problem", "answer", id="id", solution="solution", meta={**_MATH, "source_split": "source_split"}),
        HubSource("DigitalLearningGmbH/MATH-lighteval", "default", fields=_LIGHTEVAL),
        default_split="train",
    ),
    "aime24": DatasetSpec(
        {"test": "aime24/test.jsonl"},
        Fields("problem", "answer", id="id", meta={"url": "url"}),
        HubSource("HuggingFaceH4/aime_2024", splits=_TRAIN),
        id_prefix="aime24-",
    ),
    "aime25": DatasetSpec(
        {"test": "aime25/test.jsonl"}, Fields("problem", "answer"), HubSource("yentinglin/aime_2025", splits=_TRAIN)
    ),
    "healthbench": DatasetSpec(  # one file; "test" (held out, for eval) and "train" are disjoint by prompt id
        dict.fromkeys(("test", "train", "all"), "healthbench/healthbench_eval.jsonl"),
        Fields("prompt", None, id="prompt_id", rubrics="rubrics", meta={"example_tags": "example_tags"}),
        HubSource("json", splits={"test": "train", "all": "train"},
                  data_files=_SIMPLE_EVALS + "healthbench/2025-05-07-06-14-12_oss_eval.jsonl"),
        hash_split=HashSplit(HEALTHBENCH_HELD_OUT),
    ),
}


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The data directories to try, in order: ``data_dir`` (``--data-dir``), then ``$CAT_DSPY_DATA``."""
    found = []
    for cand in (data_dir, os.environ.get(ENV_VAR) or None):
        if cand is not None and (path := Path(cand).expanduser()) not in found:
            found.append(path)
    return found


def load_dataset(
    name_or_path: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    question_field: str = "question",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    seed: int | None = None,
) -> list[Item]:
    """Load and validate a named dataset or a JSONL file.

    Args:
        name_or_path: A :data:`DATASETS` name, or the path of a JSONL file (one object per line).
        split: Split of a named set (default: its ``default_split``); ignored for files.
        limit: Keep the first ``limit`` items (after the shuffle when ``seed`` is given).
        data_dir: Directory holding the named sets (else ``$CAT_DSPY_DATA``).
        question_field: Files only: field with the question (a string or a list of chat messages).
        answer_field: Files only: gold answer field (None, null, or absent from every line: non-verifiable items).
        id_field: Files only: field with unique ids (default: a hash of the question, so questions must be unique).
        seed: Shuffle with ``random.Random(seed)`` before ``limit``.

    Returns:
        The items, in file order unless ``seed`` is given.

    Raises:
        DataError: On any malformed record (naming ``file:line``), an unknown split, or a missing dataset.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    key = str(name_or_path)
    if key.lower() in DATASETS:
        items = _load_named(key.lower(), split, data_dir)
    else:
        items = _load_file(Path(key).expanduser(), Fields(question_field, answer_field, id=id_field, rubrics="rubrics"))
    if seed is not None:
        items = random.Random(seed).sample(items, len(items))
    return items if limit is None else items[:limit]


def held_out(item_id: str, fraction: float, salt: str = "cat-dspy") -> bool:
    """Whether ``item_id`` falls in the held-out share ``fraction`` of a :class:`HashSplit`: the first 8 bytes of
    ``sha256(salt + "/" + id)``, read as a number in [0, 1), are below ``fraction``.

    >>> held_out("c5f6bb12-a633-4ee4-b6a8-e6f9539472dc", 0.1), held_out("x", 0.0), held_out("x", 1.0)
    (False, False, True)
    """
    digest = hashlib.sha256(f"{salt}/{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def check_training_split(name: str, split: str | None, *, ttrl: bool = False, validation: bool = False) -> None:
    """Refuse to train (or validate) on a named set's evaluation examples unless the TTRL setting is named.

    The paper trains on MATH-500's test questions without labels (test-time RL: ``ttrl: true`` in a recipe); every
    other setting trains on examples that ``cat-dspy eval`` never grades. For validation (checkpoint selection)
    only the held-out split of a set split by id (HealthBench) is refused: GSM8K's test split stays usable for
    monitoring label metrics during training. JSONL files are the user's business.

    Raises:
        DataError: ``split`` holds the examples evaluation grades and ``ttrl`` is not set.

    >>> check_training_split("math500", "test", ttrl=True); check_training_split("healthbench", "train")
    >>> check_training_split("math", None); check_training_split("gsm8k", "test", validation=True)
    >>> check_training_split("healthbench", "test")
    Traceback (most recent call last):
    ...
    cat_dspy.datasets.DataError: training on healthbench split 'test' ...
    """
    spec = DATASETS.get(str(name).lower())
    if spec is None or ttrl:
        return
    split = split or spec.default_split
    graded = {spec.hash_split.held_out, "all"} if spec.hash_split else set() if validation else {"test"}
    if split in graded:
        other = f" (use split {spec.hash_split.rest!r})" if spec.hash_split else ""
        raise DataError(f"{'validating' if validation else 'training'} on {name} split {split!r} would use the "
                        f"examples `cat-dspy eval` grades{other}; set `ttrl: true` to train on test questions "
                        "without labels (the paper's MATH-500 setting)")


def split_items(
    items: Sequence[T], *, train: int, dev: int, test: int | None = None, seed: int = 0
) -> tuple[list[T], list[T], list[T]]:
    """Seeded, disjoint train/dev/test splits (``test=None``: all the rest).

    >>> tr, dv, te = split_items(range(10), train=5, dev=2, seed=1)
    >>> len(tr), len(dv), len(te), sorted(tr + dv + te) == list(range(10))
    (5, 2, 3, True)
    """
    sizes = [train, dev] + ([] if test is None else [test])
    if any(n < 0 for n in sizes) or sum(sizes) > len(items):
        raise ValueError(f"cannot split {len(items)} items into train={train}, dev={dev}, test={test}")
    pool = random.Random(seed).sample(list(items), len(items))
    end = len(pool) if test is None else train + dev + test
    return pool[:train], pool[train : train + dev], pool[train + dev : end]


def _load_named(name: str, split: str | None, data_dir: str | os.PathLike | None) -> list[Item]:
    spec = DATASETS[name]
    split = split or spec.default_split
    if split not in spec.files:
        raise DataError(f"dataset {name!r} has no split {split!r} (available: {', '.join(spec.files)})")
    rel, tried = spec.files[split], data_dirs(data_dir)
    line_ids = f"{name}-{split}-"  # + the 0-based line number, as the SOURCE.md files suggest
    for folder in tried:
        if (path := folder / rel).is_file():
            log.info("loading %s/%s from %s", name, split, path)
            with path.open("rb") as fh:
                items = _build(_read_jsonl(fh, rel), rel, spec.fields, spec.id_prefix if spec.fields.id else line_ids)
            return _hash_split(items, spec, split)
    missing = f"dataset {name!r} split {split!r}: no local {rel} (tried: {', '.join(map(str, tried)) or 'none'})"
    hint = f"pass --data-dir DIR or set {ENV_VAR}=DIR, with DIR/{rel} present"
    if (hub := spec.hub) is None:
        raise DataError(f"{missing} and no online source; {hint}")
    if any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in _OFFLINE_VARS):
        raise DataError(f"{missing}, and HF_HUB_OFFLINE is set, so no download of {hub.path}; {hint}")
    hub_split, fields = hub.splits.get(split, split), hub.fields or spec.fields
    log.warning("%s; downloading %s [%s] from the Hugging Face Hub", missing, hub.path, hub_split)
    try:
        import datasets

        rows = datasets.load_dataset(hub.path, hub.config, split=hub_split, data_files=hub.data_files)
    except Exception as exc:
        raise DataError(f"{missing}, and the download of {hub.path} failed ({exc}); {hint}") from exc
    records = ((i, dict(row)) for i, row in enumerate(rows, 1))
    items = _build(records, f"hf:{hub.path}[{hub_split}]", fields, spec.id_prefix if fields.id else line_ids)
    return _hash_split(items, spec, split)


def _hash_split(items: list[Item], spec: DatasetSpec, split: str) -> list[Item]:
    """The items of ``split`` when the spec carves splits out of one file by id; else all of them."""
    hs = spec.hash_split
    if hs is None or split not in (hs.held_out, hs.rest):
        return items
    return [it for it in items if held_out(it.id, hs.fraction, hs.salt) == (split == hs.held_out)]


def _load_file(path: Path, fields: Fields) -> list[Item]:
    if not path.is_file():
        raise DataError(f"{path}: no such file (and not a dataset name: {', '.join(DATASETS)})")
    with path.open("rb") as fh:
        return _build(_read_jsonl(fh, str(path)), str(path), fields, "" if fields.id else f"{path.stem}-", user=True)


def _read_jsonl(lines: Iterable[bytes], label: str) -> Iterator[tuple[int, dict]]:
    """Yield ``(line number, object)`` for each non-blank line; raise :class:`DataError` at the first bad one."""
    records = 0
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)  # bytes: UTF-8 (a BOM is fine), checked here
        except json.JSONDecodeError as exc:
            raise DataError(f"{label}:{lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{label}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not isinstance(record, dict):
            raise DataError(f"{label}:{lineno}: expected a JSON object, got {_jtype(record)}")
        records += 1
        yield lineno, record
    if not records:
        raise DataError(f"{label}:1: empty file (no records)")


def _build(
    records: Iterable[tuple[int, dict]], label: str, fields: Fields, id_base: str, user: bool = False
) -> list[Item]:
    """Validate every record and map it to an :class:`Item`; ids are ``id_base`` + the ``fields.id`` value, else +
    the 0-based line number, or for ``user`` data (which keeps its other fields in ``meta``) a question hash."""
    hashed = user and not fields.id
    items: list[Item] = []
    seen: dict[str, int] = {}
    answered: dict[bool, int] = {}  # has the answer field -> first line
    used = {fields.question, fields.answer, fields.id, fields.rubrics}
    for lineno, rec in records:
        where = f"{label}:{lineno}"
        question, messages = _question(rec, fields.question, where)
        if fields.id:
            if not isinstance(raw_id := _require(rec, fields.id, where), str | int) or isinstance(raw_id, bool):
                raise DataError(f"{where}: field {fields.id!r} must be a string or integer, got {_jtype(raw_id)}")
            item_id = f"{id_base}{raw_id}"
        else:
            item_id = id_base + (hashlib.sha1(question.encode()).hexdigest()[:12] if hashed else str(lineno - 1))
        if item_id in seen:
            why = "same question; give the lines ids via id_field" if hashed else "ids must be unique"
            raise DataError(f"{where}: duplicate id {item_id!r} (first on line {seen[item_id]}; {why})")
        seen[item_id] = lineno
        answer = None
        if fields.answer:
            answered.setdefault(fields.answer in rec, lineno)
            if (answer := _answer(rec.get(fields.answer), fields.answer, where)) is not None and fields.gsm8k:
                answer = _gsm8k_final(answer, where)
        if answer is None and fields.solution and isinstance(rec.get(fields.solution), str):
            answer = _boxed(rec[fields.solution])
        rubrics = _rubrics(rec[fields.rubrics], fields.rubrics, where) if fields.rubrics in rec else None
        meta: dict[str, Any] = {"source": label, "line": lineno}
        meta.update((k, rec[src]) for k, src in fields.meta.items() if src in rec)
        if isinstance(level := meta.get("level"), str):  # "Level 3" -> 3 (hub copies of MATH), "Level ?" -> None
            meta["level"] = int(digits.group()) if (digits := re.search(r"\d+", level)) else None
        if user:
            meta.update((k, v) for k, v in rec.items() if k not in used and k not in meta)
        items.append(Item(item_id, question, answer, messages, rubrics, meta))
    if len(answered) == 2:
        where, first = f"{label}:{answered[False]}", answered[True]
        raise DataError(f"{where}: missing field {fields.answer!r} (present on line {first}; use null for no answer)")
    return items


def _jtype(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _require(rec: dict, key: str, where: str) -> Any:
    if key not in rec:
        raise DataError(f"{where}: missing field {key!r} (fields: {', '.join(sorted(rec))[:200] or 'none'})")
    return rec[key]


def _question(rec: dict, key: str, where: str) -> tuple[str, tuple[dict, ...] | None]:
    value = _require(rec, key, where)
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field {key!r} is empty")
        return value, None
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} must be a string or a non-empty message list, got {_jtype(value)}")
    messages = []
    for i, msg in enumerate(value):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
            raise DataError(f"{where}: {key}[{i}] must be an object with string 'role' and 'content'")
        messages.append({"role": msg["role"], "content": msg["content"]})
    if messages[-1]["role"] != "user":
        raise DataError(f"{where}: field {key!r} must end with a 'user' message, not {messages[-1]['role']!r}")
    return _render(messages), tuple(messages)


def _render(messages: Sequence[dict]) -> str:
    r"""A conversation as text: a lone user message as-is, else ``Role: content`` turns.

    >>> hi, yes = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"}
    >>> _render([hi]), _render([hi, yes, hi])
    ('Hi', 'User: Hi\n\nAssistant: Yes?\n\nUser: Hi')
    """
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _answer(value: Any, key: str, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field {key!r} must be a string or number, got {_jtype(value)}")
    if not (text := str(value).strip()):
        raise DataError(f"{where}: field {key!r} is empty (use null for no answer)")
    return text


def _gsm8k_final(solution: str, where: str) -> str:
    r"""The final answer of a GSM8K worked solution: after ``####``, commas removed.

    >>> _gsm8k_final("3 * 5 = <<3*5=15>>15 boxes\n#### 1,015", "x:1")
    '1015'
    """
    _, marker, final = solution.rpartition("####")
    if not marker or not final.strip():
        raise DataError(f"{where}: GSM8K answer has no final '#### <number>' line")
    return final.strip().replace(",", "")


def _boxed(solution: str) -> str | None:
    from cat_dspy.scoring.extraction import extract_answer  # lazy: only MATH-style records without an answer need it

    return (extract_answer(solution) or "").strip() or None


def _rubrics(value: Any, key: str, where: str) -> tuple[dict, ...]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of rubric items, got {_jtype(value)}")
    out = []
    for i, item in enumerate(value):
        item = item if isinstance(item, dict) else {}
        points, tags = item.get("points"), item.get("tags", [])
        if not isinstance(item.get("criterion"), str) or type(points) not in (int, float) or not isinstance(tags, list):
            raise DataError(f"{where}: {key}[{i}] needs a string 'criterion', numeric 'points' and a list 'tags'")
        out.append({"criterion": item["criterion"], "points": points, "tags": [str(t) for t in tags]})
    return tuple(out)

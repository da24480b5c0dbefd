"""Lenient parsing of rubric criteria (anchor output) and yes/no verdicts (judge output), paper §1.4.

The paper asks for XML and uses "a standard XML tree parser"; small models break XML, so every function falls back
to regular expressions (all linear-time: bounded attribute scans, no nested quantifiers) and never raises for a
malformed output: one too deep or too large to process (:data:`cat_dspy.scoring.counters.UNPARSABLE`) reads as
unread and is counted (:func:`cat_dspy.scoring.counters.parse_failure_stats`, logged at DEBUG); any other
exception is a bug and propagates.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from itertools import islice

from cat_dspy.scoring.counters import PARSE_FAILURES, UNPARSABLE

__all__ = ["parse_criteria", "parse_verdict", "parse_verdicts"]

_MAX_XML_CHARS = 200_000
_CRITERION_RE = re.compile(
    r"<criterion\b[^<>]{0,200}>(.*?)(?:</criterion\s*>|(?=<criterion\b)|</rubric\s*>|\Z)", re.S | re.I
)
_RUBRIC_RE = re.compile(r"<rubric\b[^<>]{0,200}>(.*?)(?:</rubric\s*>|\Z)", re.S | re.I)
_NUMBERED_RE = re.compile(
    r"^[ \t>]*(?:\(\d{1,3}\)|\d{1,3}[.)]|criterion[ \t]*\d{1,3}[ \t]*[:.)-])[ \t]+(\S.*)$", re.M | re.I
)
_BULLET_RE = re.compile(r"^[ \t>]*[-*•+][ \t]+(\S.*)$", re.M)
_TAG_RE = re.compile(r"<[^<>]{0,200}>")


def _clean(item: str) -> str:
    item = item.replace("**", "").replace("__", "")
    return " ".join(item.split()).strip(" \t-*•:")


def _finish(items: list[str], max_criteria: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for raw in items:
        item = _clean(raw)
        key = item.casefold()
        if item and key not in seen:
            seen.add(key)
            out.append(item)
        if len(out) >= max_criteria:
            break
    return out


def _xml_criteria(text: str) -> list[str]:
    if not re.search(r"<criterion\b", text, re.I):
        return []
    rubric = _RUBRIC_RE.search(text)
    region = rubric.group(1) if rubric else text
    if len(region) <= _MAX_XML_CHARS:
        try:  # well-formed XML: the standard tree parser, as in the paper
            root = ET.fromstring(f"<root>{region}</root>")
            found = ["".join(el.itertext()) for el in root.iter() if str(el.tag).lower() == "criterion"]
            if any(f.strip() for f in found):
                return found
        except (ET.ParseError, UnicodeError):  # not well-formed, or text expat cannot encode: the regexes read it
            pass
    return [html.unescape(_TAG_RE.sub(" ", item)) for item in _CRITERION_RE.findall(region)]


def parse_criteria(text: str | None, *, max_criteria: int = 20) -> tuple[list[str], bool]:
    """Criteria from the anchor's rubric output.

    Preference: XML ``<criterion>`` items (optionally inside ``<rubric>``; broken XML, attributes and any case are
    tolerated), then numbered lines (``1.``, ``1)``, ``(1)``), then bulleted lines (``-``, ``*``, ``•``). Items are
    stripped of whitespace and markdown bold; empty and duplicate items are dropped; the first ``max_criteria`` kept.

    Args:
        text: The rubric text (may be None or malformed).
        max_criteria: Maximum number of criteria returned.

    Returns:
        ``(criteria, parsed)``: ``parsed`` is True when a structured form gave at least one criterion; else ``([],
        False)``.

    Examples:
        >>> parse_criteria("<rubric><criterion>Says **72**</criterion><criterion id='2'>Shows work")
        (['Says 72', 'Shows work'], True)
        >>> parse_criteria("1. Mentions a doctor\\n2) Is kind\\n(3) is kind")
        (['Mentions a doctor', 'Is kind'], True)
        >>> parse_criteria("no list here")
        ([], False)
    """
    try:
        if not isinstance(text, str) or not text.strip() or max_criteria <= 0:
            return [], False
        plain = text.replace("**", "")  # "**1.** Item" is still a numbered line
        for candidates in (
            lambda: _xml_criteria(text),
            lambda: _NUMBERED_RE.findall(plain),
            lambda: _BULLET_RE.findall(plain),
        ):
            items = _finish(candidates(), max_criteria)
            if items:
                return items, True
        return [], False
    except UNPARSABLE as exc:  # too deep/large to read: counted (a bug, any other error, propagates)
        PARSE_FAILURES.count("parse_criteria", cause=repr(exc)[:200])
        return [], False


# --------------------------------------------------------------------------------------------- verdicts
_NEG_PHRASE = re.compile(
    r"\b(?:not|isn'?t|wasn'?t|doesn'?t|never)\s+(?:(?:been|fully|really|actually)\s+)?"
    r"(?:satisfied|met|meet|meets|pass|passed|passes|true|fulfilled|satisfy|satisfies|correct)\b"
)
_POS_WORDS = re.compile(r"\b(?:yes|true|satisfied|satisfies|met|meets|pass|passed|passes|fulfilled|correct)\b")
_NEG_WORDS = re.compile(r"\b(?:no|false|fail|fails|failed|unsatisfied|unmet|unfulfilled|incorrect)\b")
_LEADING = re.compile(
    r"^(?:(?:final\s+)?(?:verdict|answer|judgment|judgement|decision|result)\s*(?:is)?\s*[:=\-]?\s*)?"
    r"(not\s+(?:satisfied|met|fulfilled|true|passed|pass)|yes|no|true|false|satisfied|unsatisfied|met|unmet"
    r"|pass|passed|fail|failed|fulfilled|correct|incorrect)\b"
)
_VERDICT_TAG = re.compile(r"<verdict\b([^<>]{0,200})>(.*?)(?:</verdict\s*>|(?=<verdict\b)|\Z)", re.S | re.I)
_ID_ATTR = re.compile(r"\b(?:id|index|idx|n|num|number|criterion)\s*=\s*[\"']?\s*(\d{1,6})", re.I)
_SECOND = re.compile(r"\s*(?:and|or|/|\\|-)?\s*(not\s+(?:satisfied|met)|yes|no|true|false|satisfied|met|pass|fail)\b")
_POSITIVE_LEADS = {"yes", "true", "satisfied", "met", "pass", "passed", "fulfilled", "correct"}
_WHOLE = {"y": True, "n": False, "1": True, "0": False, "ok": True}  # only when they are the whole answer


def _simplify(text: str) -> str:
    text = _TAG_RE.sub(" ", text).lower().replace("’", "'")
    return " ".join(re.sub(r"[*_`#\"“”()\[\]{}!?.,;]", " ", text).split())


def _classify(text: str) -> bool | None:
    s = _simplify(text)
    if not s or s in _WHOLE:
        return _WHOLE.get(s)
    lead = _LEADING.match(s)
    if lead:
        first = not lead.group(1).startswith("not") and lead.group(1) in _POSITIVE_LEADS
        second = _SECOND.match(s, lead.end())  # "yes and no", "true/false": both, cannot tell
        if second and (not second.group(1).startswith("not") and second.group(1) in _POSITIVE_LEADS) != first:
            return None
        return first
    s, n_neg = _NEG_PHRASE.subn(" ", s)
    neg = n_neg > 0 or _NEG_WORDS.search(s) is not None
    pos = _POS_WORDS.search(s) is not None
    if neg and pos and n_neg > 0 and not _NEG_WORDS.search(s):
        pos = False  # "it is not satisfied, although ... met" style: the negated phrase wins
    return None if neg == pos else pos


def parse_verdict(text: str | None) -> bool | None:
    """One yes/no verdict from a judge answer.

    Understands yes/no, true/false, satisfied/not satisfied, met/not met, pass/fail and 1/0 in any case and with
    punctuation or markdown, also inside ``<verdict>...</verdict>``. A leading verdict word decides; otherwise a
    negated phrase wins over its positive word ("not satisfied" is False).

    Args:
        text: The judge's answer (may be None or malformed).

    Returns:
        True or False, or None when it cannot tell (empty, contradictory or no verdict word).

    Examples:
        >>> [parse_verdict(t) for t in ["Yes.", "**NO**", "TRUE", "not met", "<verdict>satisfied</verdict>"]]
        [True, False, True, False, True]
        >>> parse_verdict("The criterion is not satisfied."), parse_verdict("yes and no"), parse_verdict("")
        (False, None, None)
        >>> parse_verdict("<verdict>yes</verdict> (quoted from the response)\\nNo.")
        False
    """
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        head, newline, last = text.rstrip().rpartition("\n")
        if newline and head.strip() and (final := _bare(last)) is not None:
            return final  # a verdict alone on the last line is the final word (after any echoed or quoted text)
        tags = _VERDICT_TAG.findall(text)
        if tags:
            for _, content in reversed(tags):  # the last readable tag is the final word
                verdict = _classify(content)
                if verdict is not None:
                    return verdict
            return None
        return _classify(text)
    except UNPARSABLE as exc:  # too deep/large to read: counted (a bug, any other error, propagates)
        PARSE_FAILURES.count("parse_verdict", cause=repr(exc)[:200])
        return None


_SPLITTERS = (re.compile(r"[^,;|]+"), re.compile(r"[^,;|\s]+"))  # "not met, yes" first, then "yes no yes"
_MAX_PIECES = 5_000
_NUMBERED_VERDICT = re.compile(  # the prefix classes never overlap, so a failed line costs linear time
    r"^[ \t>*#-]*(?:(?:criterion|criteria|item|c)[ \t]*)?\(?#?(\d{1,4})(?:\)|[ \t]*[.:)\-–—=])[ \t]*(.*)$", re.M | re.I
)


def _fill(slots: list[bool | None], pairs: list[tuple[int | None, str]]) -> None:
    """Place (id, text) verdicts into slots: by id when given (1-based, or 0-based if an id 0 occurs), else in order."""
    ids = [i for i, _ in pairs if i is not None]
    base = 0 if ids and min(ids) == 0 else 1
    for idx, content in reversed(pairs):  # a repeated id: the last verdict is the final word
        if idx is not None and 0 <= idx - base < len(slots) and slots[idx - base] is None:
            slots[idx - base] = _classify(content)
    free = (k for k, v in enumerate(slots) if v is None)
    for idx, content in pairs:
        if idx is None:
            k = next(free, None)
            if k is None:
                break
            slots[k] = _classify(content)


def _bare(line: str) -> bool | None:
    """The verdict of a line that holds nothing but a verdict (``no``, ``2. yes``, ``Verdict: no``), else None."""
    if len(line) > 200 or "<" in line:
        return None
    numbered = _NUMBERED_VERDICT.match(line)
    s = _simplify(numbered.group(2) if numbered else line)
    if s in _WHOLE:
        return _WHOLE[s]
    lead = _LEADING.match(s)
    return _classify(s) if lead and lead.end() == len(s) else None


def _line_format(line: str) -> str | None:
    """Which verdict format a line is written in (``tag``/``tag_id``/``numbered``/``plain``), None for other text."""
    tags = _VERDICT_TAG.findall(line) if "<" in line else []
    if tags:
        return "tag_id" if any(_ID_ATTR.search(attrs) for attrs, _ in tags) else "tag"
    if _bare(line) is None:
        return None
    return "numbered" if _NUMBERED_VERDICT.match(line) else "plain"


def _final_block(text: str) -> str | None:
    """The run of verdict lines, all in one format, that ends the text (blank lines skipped); None if none.

    A judge that quotes or echoes the response it grades (fake verdicts included) writes its own answer last; when
    that answer is complete it is read alone, so verdicts in another format earlier in the text cannot fill slots.
    """
    lines = text.rstrip().splitlines()
    run: list[str] = []
    kind = None
    for line in reversed(lines[-_MAX_PIECES:]):
        if not line.strip():
            continue
        fmt = _line_format(line)
        if fmt is None or kind not in (None, fmt):
            break
        kind = fmt
        run.append(line)
    return "\n".join(reversed(run)) if run and len(run) < len(lines) else None


def _read_verdicts(text: str, n: int) -> list[bool | None]:
    slots: list[bool | None] = [None] * n
    tags = _VERDICT_TAG.findall(text)
    numbered = _NUMBERED_VERDICT.findall(text) if not tags else []
    if tags:
        pairs: list[tuple[int | None, str]] = []
        for attrs, content in tags:
            m = _ID_ATTR.search(attrs)
            pairs.append((int(m.group(1)) if m else None, content))
        _fill(slots, pairs)
    elif numbered:
        _fill(slots, [(int(i), rest) for i, rest in numbered])
    else:  # plain lines in order (or "yes, no, yes" on one line), skipping lines without a verdict
        lines = text.strip().splitlines()
        read = [v for v in map(_classify, lines[:_MAX_PIECES]) if v is not None]
        for splitter in _SPLITTERS if len(lines) == 1 and len(read) < n else ():
            pieces = (t.group() for t in islice(splitter.finditer(text), _MAX_PIECES))
            alt = [v for v in map(_classify, pieces) if v is not None]
            read = alt if len(alt) > len(read) else read
        slots[: len(read[:n])] = read[:n]
    return slots


def parse_verdicts(text: str | None, n: int) -> tuple[list[bool], int]:
    """``n`` verdicts from a one-call judge answer.

    Accepts ``<verdict id="3">yes</verdict>`` / ``<verdict>no</verdict>`` sequences (mapped by id when ids are
    present), numbered lines (``1. yes``, ``1: no``, ``Criterion 2 - satisfied``) or plain lines in order. Extra
    verdicts are ignored; a repeated id keeps its last verdict. When the text ends with a complete answer (``n``
    readable verdicts on consecutive lines in one format), that answer alone is read: verdicts quoted or echoed
    from the graded response before it cannot fill slots.

    Args:
        text: The judge's answer (may be None or malformed).
        n: Number of criteria judged.

    Returns:
        ``(verdicts, n_unreadable)``: exactly ``n`` booleans, where missing or unreadable verdicts count as False
        (not satisfied), and how many of them could not be read (0 = fully parsed).

    Examples:
        >>> parse_verdicts('<verdict id="2">no</verdict><verdict id="1">yes</verdict>', 3)
        ([True, False, False], 1)
        >>> parse_verdicts("1. yes\\n2: not met\\nCriterion 3 - satisfied", 3)
        ([True, False, True], 0)
        >>> parse_verdicts("Yes\\nNo", 2), parse_verdicts(None, 2)
        (([True, False], 0), ([False, False], 2))
        >>> parse_verdicts('Echo: <verdict id="1">yes</verdict>\\n1. no\\n2. no', 2)
        ([False, False], 0)
    """
    try:
        n = max(0, int(n))
    except (TypeError, ValueError):
        return [], 0
    slots: list[bool | None] = [None] * n
    try:
        if n and isinstance(text, str) and text.strip():
            block = _final_block(text)
            final = _read_verdicts(block, n) if block is not None else None
            slots = final if final is not None and None not in final else _read_verdicts(text, n)
    except UNPARSABLE as exc:  # too deep/large to read: counted (a bug, any other error, propagates)
        PARSE_FAILURES.count("parse_verdicts", cause=repr(exc)[:200])
        slots = [None] * n
    return [bool(v) for v in slots], sum(v is None for v in slots)

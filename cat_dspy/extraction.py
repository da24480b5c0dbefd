"""Final-answer extraction from free-text responses (rollouts, references, candidates).

``"strict"`` reads only explicit answer forms (a box, GSM8K's ``####``, "the answer is"), as in the paper;
``"flexible"`` falls back to the last number, for models too small to follow an answer format.
"""

from __future__ import annotations

import re

from cat_dspy.counters import PARSE_FAILURES, UNPARSABLE

__all__ = ["EXTRACTIONS", "extract_answer"]

EXTRACTIONS = ("strict", "flexible")

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_TOKENS = re.compile(r"\\(?:boxed|fbox)\s*\{|\\[\\{}]|[{}]")
_ANSWER_IS = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\b\s*:?[ \t]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_FILLER = re.compile(r"^(?:(?:indeed|actually|simply|just|probably|exactly|clearly|then|now|still)\b[\s,:]*)+", re.I)
_NUMBER_IN_TEXT = re.compile(r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")
_GSM8K = re.compile(r"####[ \t]*(?=[-+$\\(.\d])")  # a number-like tail, not a markdown "#### Step" heading


def _clean_tail(ans: str) -> str:
    ans, prev = ans.strip(), None
    while ans != prev:
        prev = ans
        ans = ans.strip().removesuffix("**").removeprefix("**").strip(" \t$").rstrip(".").strip()
    return ans


def _last_box_flat(text: str) -> str | None:
    """Content of the last complete (balanced) box, in one linear pass; unbalanced or empty boxes are skipped."""
    first = min((i for i in (text.find("\\boxed"), text.find("\\fbox")) if i >= 0), default=-1)
    if first < 0:
        return None
    stack: list[int] = []  # content start for a box opener, -1 for a plain brace
    done: list[tuple[int, int]] = []  # complete boxes in closing order
    for m in _BOX_TOKENS.finditer(text, first):
        tok = m.group()
        if tok == "{":
            stack.append(-1)
        elif tok == "}":
            if stack:
                start = stack.pop()
                if start >= 0:
                    done.append((start, m.start()))
        elif tok[-1] == "{" and tok[1] in "bf":
            stack.append(m.end())
    for start, end in reversed(done):  # empty boxes never overlap, so this stays linear
        inner = text[start:end].strip()
        if inner:
            return inner
    return None


def _last_box(text: str) -> str | None:
    inner = _last_box_flat(text)
    for _ in range(3):  # \boxed{\boxed{x}} -> x (bounded)
        if inner is None or not inner.startswith(("\\boxed", "\\fbox")):
            break
        inner = _last_box_flat(inner) or inner
    return inner


def extract_answer(text: str | None, extraction: str = "strict") -> str | None:
    """Extract the final answer of a response.

    Priority: the last complete ``\\boxed{...}``/``\\fbox{...}`` (balanced braces; a truncated box is skipped), then
    the last GSM8K ``#### N``, then the last "the (final) answer is X"; with ``extraction="flexible"``, then the
    last number in the text (lm-evaluation-harness' GSM8K *flexible-extract*, for small models that state answers
    in prose). Linear time, never raises.

    Args:
        text: A model response (may be None or malformed).
        extraction: ``"strict"`` (the forms above) or ``"flexible"`` (strict, else the last number).

    Returns:
        The answer text (stripped of ``$``, ``**`` and a trailing period), or None when nothing was found.

    Examples:
        >>> extract_answer(r"so \\boxed{1} then \\boxed{\\frac{1}{2}}")
        '\\\\frac{1}{2}'
        >>> extract_answer("#### 1,234")
        '1,234'
        >>> extract_answer("The final answer is **72**."), extract_answer("So the answer is indeed 2.")
        ('72', '2')
        >>> extract_answer(r"\\boxed{3} and \\boxed{\\frac{4") is None, extract_answer("   ")
        (False, None)
        >>> extract_answer(r"The answer is \\boxed{4"), extract_answer(r"The answer is \\boxed{}.")
        (None, None)
        >>> extract_answer("3 + 4 = 7."), extract_answer("3 + 4 = 7.", "flexible")
        (None, '7')
        >>> extract_answer(r"So $\\boxed{7}$, not 8.", "flexible"), extract_answer("It costs $1,250.", "flexible")
        ('7', '1,250')
        >>> extract_answer("15, then 16, 17,", "flexible"), extract_answer("x = -2.5.", "flexible")
        ('17', '-2.5')
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        boxed = _last_box(text)
        if boxed:
            return boxed
        for pattern in (_GSM8K, _ANSWER_IS):
            last = None
            for last in pattern.finditer(text):  # noqa: B007 - the last match wins
                pass
            if last is not None:
                eol = text.find("\n", last.end())
                tail = text[last.end() : eol if eol >= 0 else len(text)]
                end = _SENTENCE_END.search(tail) if pattern is _ANSWER_IS else None
                ans = _clean_tail(tail[: end.start()] if end else tail)
                if pattern is _ANSWER_IS:
                    ans = _FILLER.sub("", ans)  # "the answer is indeed 2" -> "2"
                if ans and not _BOX_CMD.search(ans):  # a box here is truncated or empty: no answer, not its text
                    return ans
        if extraction == "flexible":
            numbers = _NUMBER_IN_TEXT.findall(text)
            return _clean_tail(numbers[-1]) if numbers else None
        return None
    except UNPARSABLE as exc:  # too deep/large to read: no answer, counted (a bug, any other error, propagates)
        PARSE_FAILURES.count("extract_answer", cause=repr(exc)[:200])
        return None

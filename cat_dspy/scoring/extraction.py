"""Final-answer extraction from free-text responses (rollouts, references, candidates).

``"strict"`` reads only explicit answer forms (a box, GSM8K's ``####``, "the answer is"), as in the paper;
``"flexible"`` falls back to the last number, for models too small to follow an answer format.

Rules, and how peer graders decide the same cases. What is said of Math-Verify was checked in its installed source
(math-verify 0.9.0 ``math_verify/parser.py``, with latex2sympy2_extended 1.11.0 ``math_normalization.py``) and on
the examples given; Qwen2.5-Math's ``grader.py``, lm-evaluation-harness' ``minerva_math`` and hendrycks MATH are not
installed here, and the notes on them were not rechecked.

* **Boxes.** The last complete ``\\boxed{...}``/``\\fbox{...}`` is the answer. Boxes that follow each other with only
  separators between them (spaces, ``$``, ``,``, ``;``, "and", "or") state one answer together: ``\\boxed{1},
  \\boxed{2}`` gives ``1, 2``, which math-verify compares as the set {1, 2}. A box after prose replaces the earlier
  ones: ``first \\boxed{1}, then \\boxed{2}`` gives ``2``, and so does ``I guessed \\boxed{1} at first. After
  checking the units, \\boxed{2}.`` Math-Verify joins more: it matches ``\\boxed{.+}`` from the first box to the
  last ``}`` and, reading the boxes from the right (``extract_boxed_content(mode="last")``), joins a box to the one
  after it when fewer than 10 characters divide them, or fewer than 70 that hold "and", "or", ``,`` or ``;`` and the
  two contents differ; it reads both examples, and ``\\boxed{1} then \\boxed{2}``, as the set {1, 2}. It keeps
  only the last box when more prose divides them (``\\boxed{1}. Therefore the final answer is $\\boxed{2}$.`` gives
  2). We keep the last box by choice: the paper's responses end with one final answer, "Therefore the final answer
  is $\\boxed{...}$", and a box earlier in the prose is a step or an attempt the response went on to correct, so
  joining it would turn a corrected right answer into a set that equals neither value. A command written with two
  backslashes (``\\\\boxed{``, JSON-escaped text) is a box read by the same rules, its content with the backslashes
  un-doubled (``\\\\frac`` is ``\\frac``).
* **A final-answer statement after the box wins.** "The final answer is X", "Final answer: X", or a line that
  opens with "The answer is X"/"Answer: X" (optionally after "So,"/"Thus,"/"Therefore,") that comes *after* the
  last box replaces it when X reads as an answer: it starts like math or is a single choice letter, and it holds a
  digit or a letter (command names count: ``\\pi``) or is the empty set, so a line that states nothing
  (``Final answer: \\"``, ``The final answer is (``) keeps the box. Quotation marks around X (``"``, ``\\"``, “”)
  are not part of it. A "the answer is" in the middle of a sentence after a box does not replace it (Math-Verify
  ranks Minerva's "final answer is X. I hope" above the box, "final answer ... is X" level with it, the match that
  ends later winning, and "answer: X" or "answer ... X" below it; not rechecked: Qwen2.5-Math ranks only the
  Minerva form above the box, hendrycks MATH always takes the box).
* **GSM8K** ``#### N`` comes next (what follows it is taken as a continuation), then the last "the (final) answer
  is X". After such a phrase, an answer that starts like math ends where prose starts: "the answer is 2 What
  does..." gives ``2``, "28 percent of them" gives ``28 percent``, ``$3$ and $4$`` gives ``3, 4``.
* **A truncated box** (the text ends inside ``\\boxed{``) yields its content up to the end (as Qwen2.5-Math does;
  not rechecked), when nothing above was found (a complete answer anywhere beats a truncated one) and it holds a
  digit or a letter outside command names (``\\boxed{\\sqrt{`` yields nothing).
* **A new exchange after the answer** (a line opening with "Question:", "Problem 2:", "Q:") is a few-shot
  continuation, cut off when an answer stands before it (lm-evaluation-harness stops generating at "Question:";
  not rechecked).
* ``"flexible"``: then the last number in the text (as lm-evaluation-harness' GSM8K *flexible-extract*; not
  rechecked).
"""

from __future__ import annotations

import re

from cat_dspy.scoring.counters import PARSE_FAILURES, UNPARSABLE

__all__ = ["EXTRACTIONS", "extract_answer"]

EXTRACTIONS = ("strict", "flexible")

_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A box opener (its command written with one backslash, or two as in JSON-escaped text), an escaped backslash or
# brace (no group), or a group brace.
_BOX_TOKENS = re.compile(r"\\\\?(?:boxed|fbox)\s*\{|\\[\\{}]|[{}]")
# Text allowed between boxes that state one answer together: spaces, math delimiters, commas, "and"/"or".
_BOX_GAP = re.compile(r"(?:\s|\$|\\[()\[\]]|[,;]|\\q?quad\b|\band\b|\bor\b|\\text\s*\{\s*(?:,|and|or)?\s*\})*", re.I)
_PHRASE = re.compile(
    r"\bthe\s+(?P<final>final\s+)?answer\s+is\b\s*:?[ \t]*"
    r"|\b(?P<final2>final\s+)?answer(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*",
    re.IGNORECASE,
)
_LINE_OPENER = re.compile(r"[\s>*#_-]*(?:(?:so|thus|therefore|hence)\b[\s,]*)?(?:\*\*)?", re.I)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_FILLER = re.compile(r"^(?:(?:indeed|actually|simply|just|probably|exactly|clearly|then|now|still)\b[\s,:]*)+", re.I)
_NUMBER_IN_TEXT = re.compile(r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?")
_GSM8K = re.compile(r"####[ \t]*(?=[-+$\\(.\d])")  # a number-like tail, not a markdown "#### Step" heading
_SPAN = r"\$\$?((?:\\.|[^$\\])+)\$\$?"  # $...$ or $$...$$, where \$ is a dollar sign
_MATH_SPANS = re.compile(_SPAN + r"(?:\s*(?:,|\band\b|\bor\b)\s*" + _SPAN.replace("(", "(?:", 1) + ")*")
_MATH_SPAN = re.compile(_SPAN)
_MATH_START = re.compile(r"[-+−]?(?:\d|\.\d|\\|\(|\[|\{)|[A-Za-z]\s*=")
_CHOICE = re.compile(r"\(?[A-Za-z]\)?")
# Tokens of an answer that starts like math; a word of two or more letters (other than these) ends it.
_MATH_TOKEN = re.compile(
    r"(?P<space>\s+)|(?P<cmd>\\[A-Za-z]+|\\.)|(?P<open>\{)|(?P<num>\d[\d.]*)"
    r"|(?P<op>[-+−*/^=<>()\[\],!_'%×÷·:;|])|(?P<word>[A-Za-z]+)"
)
_PERCENT_WORDS = {"percent", "percentage", "pct"}
# A line that opens a new exchange: few-shot continuations (lm-evaluation-harness stops generating at "Question:").
_CONTINUATION = re.compile(r"^[ \t*#]*(?:question|problem|q)[ \t]*\d*[ \t]*[:.][ \t]", re.I | re.M)
_COMMAND = re.compile(r"\\[A-Za-z]+")
_HOLDS_SOMETHING = re.compile(r"[^\W_]")  # a digit or a letter outside command names: "\\sqrt{" holds nothing
# A stated answer holds a digit or a letter (command names count: "\\pi"), or is the empty set; "(", "-" or an
# escaped quotation mark alone is no answer.
_HOLDS_ANSWER = re.compile(r"[^\W_]|∅|\\\{\s*\\\}")
_QUOTES = ('\\"', '"', "“", "”")  # quotation marks around a stated answer (escaped, as in JSON text, or not)
_MAX_TAIL = 2000  # characters of a line read after an answer phrase


def _clean_tail(ans: str) -> str:
    ans, prev = ans.strip(), None
    while ans != prev:
        prev = ans
        ans = ans.strip().removesuffix("**").removeprefix("**").strip(" \t$").rstrip(".").strip()
        for quote in _QUOTES:  # "Final answer: \"5\"" (JSON-escaped text) states 5
            ans = ans.removeprefix(quote).removesuffix(quote)
    return ans


def _scan_boxes(text: str) -> tuple[list[tuple[int, int, int]], tuple[int, int] | None]:
    """All complete boxes as (command start, content start, content end) in closing order, and (command start,
    content start) of the innermost box still open at the end of the text (None if none); one linear pass.

    A command written with two backslashes (``\\\\boxed{``, JSON-escaped text) opens a box like ``\\boxed{``; a run of
    backslashes is read in pairs from its start, so ``\\\\\\boxed{`` is a line break, then a box.
    """
    first = min((i for i in (text.find("\\boxed"), text.find("\\fbox")) if i >= 0), default=-1)
    if first < 0:
        return [], None
    while first > 0 and text[first - 1] == "\\":  # start at the run of backslashes before the first command
        first -= 1
    stack: list[tuple[int, int]] = []  # (command start, content start) for a box opener, (-1, -1) for a brace
    done: list[tuple[int, int, int]] = []
    for m in _BOX_TOKENS.finditer(text, first):
        tok = m.group()
        if tok == "{":
            stack.append((-1, -1))
        elif tok == "}":
            if stack:
                cmd, start = stack.pop()
                if start >= 0:
                    done.append((cmd, start, m.start()))
        elif len(tok) > 2:  # a box opener (the other tokens are one or two characters)
            stack.append((m.start(), m.end()))
    still_open = next(((cmd, start) for cmd, start in reversed(stack) if start >= 0), None)
    return done, still_open


def _box_content(text: str, cmd: int, start: int, end: int) -> str:
    """The content of the box whose command starts at ``cmd``; a box written ``\\\\boxed{`` is JSON-escaped text, so
    its content is read with backslashes un-doubled (``\\\\frac`` -> ``\\frac``), as the text means it."""
    inner = text[start:end].strip()
    return inner.replace("\\\\", "\\") if text.startswith("\\\\", cmd) else inner


def last_box_span(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the content of the last complete, non-empty ``\\boxed{}``/``\\fbox{}`` (None if none).

    Examples:
        >>> text = r"so $\\boxed{\\frac{1}{2}}$ and \\boxed{"
        >>> start, end = last_box_span(text)
        >>> text[start:end]
        '\\\\frac{1}{2}'
    """
    done, _ = _scan_boxes(text)
    for _, start, end in reversed(done):
        if text[start:end].strip():
            return start, end
    return None


def _unwrap(inner: str) -> str:
    for _ in range(3):  # \boxed{\boxed{x}} -> x (bounded)
        if not inner.startswith(("\\boxed", "\\fbox")):
            break
        done, _ = _scan_boxes(inner)
        inner = next((inner[s:e].strip() for _, s, e in reversed(done) if inner[s:e].strip()), inner)
    return inner


def _last_box_group(text: str) -> tuple[str, int] | None:
    """The last box, joined with the boxes just before it that only separators divide from it; and where it ends."""
    done, _ = _scan_boxes(text)
    group: list[str] = []
    end = -1
    kept_cmd = len(text) + 1
    for cmd, start, stop in reversed(done):  # outer boxes close after their inner ones: skip nested ones
        if cmd >= kept_cmd:
            continue
        inner = _box_content(text, cmd, start, stop)
        if not inner:
            if group:
                break
            continue
        if group:
            gap = text[stop + 1 : kept_cmd]
            if _BOX_GAP.fullmatch(gap) is None:
                break
        else:
            end = stop + 1
        kept_cmd = cmd
        inner = _unwrap(inner)
        if not group or not _same(group[-1], inner):  # \boxed{10} \boxed{10.0}: one answer, written twice
            group.append(inner)
    return (", ".join(reversed(group)), end) if group else None


def _same(a: str, b: str) -> bool:
    """The same text, or the same plain number (``10``, ``10.0``, ``1e1``)."""
    if a == b:
        return True
    try:
        return len(a) < 40 and len(b) < 40 and float(a) == float(b)
    except ValueError:
        return False


def _math_prefix(s: str) -> str:
    """The leading part of ``s`` that reads as math: numbers, operators, LaTeX commands and groups, single letters,
    a percent word, and "and"/"or" between elements (turned into commas); the first other word ends it."""
    end, pos, parts = 0, 0, []
    while pos < len(s):
        m = _MATH_TOKEN.match(s, pos)
        if m is None:
            break
        kind = m.lastgroup
        if kind == "open":  # a LaTeX group: take it whole (bounded by the tail length)
            depth, i = 0, pos
            while i < len(s):
                depth += (s[i] == "{") - (s[i] == "}")
                i += 1
                if depth == 0:
                    break
            parts.append(s[end:i])
            end = pos = i
            continue
        if kind == "word":
            word = m.group().lower()
            if word in ("and", "or"):
                nxt = _MATH_TOKEN.match(s, m.end())
                nxt = _MATH_TOKEN.match(s, nxt.end()) if nxt and nxt.lastgroup == "space" else nxt
                starts_element = nxt is not None and (nxt.lastgroup in ("num", "cmd") or nxt.group() in ("(", "-")
                                                       or (nxt.lastgroup == "word" and len(nxt.group()) == 1))
                if not starts_element:
                    break
                parts.append(s[end : m.start()].rstrip() + ", ")
                end = pos = m.end()
                continue
            if word in _PERCENT_WORDS:
                parts.append(s[end : m.end()])
                end = m.end()
                break
            if len(word) > 1 or re.match(r"\.[A-Za-z]", s[m.end() : m.end() + 2]):  # a word, or "i.e."/"e.g."
                break
        pos = m.end()
        if kind != "space":
            parts.append(s[end:pos])
            end = pos
    return re.sub(r",\s+", ", ", "".join(parts)).rstrip(" \t,;:*=")


def _statement_value(tail: str) -> str:
    """The answer stated at the start of ``tail`` (the rest of the line after an answer phrase or ``####``)."""
    tail = tail[:_MAX_TAIL].strip().removeprefix("**").lstrip()
    if tail.startswith("$"):
        spans = _MATH_SPANS.match(tail)
        if spans:
            return ", ".join(_clean_tail(x) for x in _MATH_SPAN.findall(spans.group()))
    end = _SENTENCE_END.search(tail)
    ans = _FILLER.sub("", _clean_tail(tail[: end.start()] if end else tail))  # "the answer is indeed 2" -> "2"
    if _MATH_START.match(ans):
        ans = _clean_tail(_math_prefix(ans)) or ans
    return ans


_MAX_WORDS_STATED = 3
"""A stated answer that reads neither as math nor as a choice counts only up to this many words."""


def _answer_like(ans: str) -> bool:
    return _holds_answer(ans) and bool(_MATH_START.match(ans) or _CHOICE.fullmatch(ans))


def _holds_answer(ans: str) -> bool:
    """Something a stated answer can be: not empty, no box command, not punctuation alone (``\\"``, ``(``)."""
    return bool(ans) and not _BOX_CMD.search(ans) and _HOLDS_ANSWER.search(ans) is not None


def _opens_line(text: str, start: int) -> bool:
    line_start = text.rfind("\n", max(0, start - 41), start) + 1  # bounded look-back: linear in all
    if line_start == 0 and start > 40:
        return False
    return _LINE_OPENER.fullmatch(text, line_start, start) is not None


def _tail(text: str, end: int) -> str:
    eol = text.find("\n", end, end + _MAX_TAIL)
    return text[end : eol if eol >= 0 else end + _MAX_TAIL]


def extract_answer(text: str | None, extraction: str = "strict") -> str | None:
    """Extract the final answer of a response (the rules and their peers: see the module docstring).

    Priority: the last complete ``\\boxed{...}``/``\\fbox{...}`` (with the boxes that only separators divide from it),
    unless a final-answer statement that states an answer follows it; then the last GSM8K ``#### N``; then the last
    "the (final) answer is X"/"Final answer: X"; then the content of a box the text ends inside; with
    ``extraction="flexible"``, then the last number in the text. Linear time, never raises.

    Args:
        text: A model response (may be None or malformed).
        extraction: ``"strict"`` (the forms above) or ``"flexible"`` (strict, else the last number).

    Returns:
        The answer text (stripped of ``$``, ``**`` and a trailing period), or None when nothing was found.

    Examples:
        >>> extract_answer(r"so \\boxed{1} then \\boxed{\\frac{1}{2}}"), extract_answer(r"$\\boxed{1}$, $\\boxed{2}$")
        ('\\\\frac{1}{2}', '1, 2')
        >>> extract_answer("#### 1,234"), extract_answer("the answer is 2 What does this new scenario resolve?")
        ('1,234', '2')
        >>> extract_answer("The final answer is **72**."), extract_answer("So the answer is indeed 2.")
        ('72', '2')
        >>> extract_answer("\\\\boxed{3}, checked.\\nThe final answer is 5.")
        '5'
        >>> extract_answer(r"\\boxed{3}, as the answer is 5"), extract_answer("\\\\boxed{3}\\nAnswer: 5")
        ('3', '5')
        >>> extract_answer('\\\\boxed{3}\\nFinal answer: \\\\"'), extract_answer(r"\\\\boxed{1} then \\\\boxed{2}")
        ('3', '2')
        >>> extract_answer(r"\\boxed{3} and \\boxed{\\frac{4") , extract_answer("   ")
        ('3', None)
        >>> extract_answer(r"The answer is \\boxed{4"), extract_answer(r"The answer is \\boxed{}.")
        ('4', None)
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
        for i, m in enumerate(_CONTINUATION.finditer(text)):  # a new "Question:" after an answer: cut it off
            if i == 3:
                break
            answered = _extract(text[: m.start()]) if m.start() else None
            if answered is not None:
                return answered
        answer = _extract(text)
        if answer is None and extraction == "flexible":
            numbers = _NUMBER_IN_TEXT.findall(text)
            return _clean_tail(numbers[-1]) if numbers else None
        return answer
    except UNPARSABLE as exc:  # too deep/large to read: no answer, counted (a bug, any other error, propagates)
        PARSE_FAILURES.count("extract_answer", cause=repr(exc)[:200])
        return None


def _extract(text: str) -> str | None:
    """The strict extraction of :func:`extract_answer`."""
    last_is = last_label = last_final = None  # "the answer is X", "Answer: X", the last final statement
    for m in _PHRASE.finditer(text):
        if m.group(0)[:3].lower() == "the":
            last_is = m
        else:
            last_label = m
        if m.group("final") or m.group("final2") or _opens_line(text, m.start()):
            last_final = m
    box = _last_box_group(text)
    if box is not None:
        if last_final is not None and last_final.start() >= box[1]:
            stated = _statement_value(_tail(text, last_final.end()))
            if _answer_like(stated):
                return stated
        return box[0]
    last_gsm8k = None
    for last_gsm8k in _GSM8K.finditer(text):  # noqa: B007 - the last match wins
        pass
    if last_gsm8k is not None:
        ans = _statement_value(_tail(text, last_gsm8k.end()))
        if _holds_answer(ans):
            return ans
    # A label ("Answer: ...") counts when what follows reads as an answer (GSM8K few-shot "Answer:" opens prose).
    label = _statement_value(_tail(text, last_label.end())) if last_label is not None else ""
    label_ok = _answer_like(label)
    if last_is is not None and not (label_ok and last_label.start() > last_is.start()):  # type: ignore[union-attr]
        ans = _statement_value(_tail(text, last_is.end()))
        # A box here is truncated or empty: no answer, not its text. Prose is no answer either ("the final answer
        # is just as clear as it ever was"): a stated answer reads as math or a choice, or is a few words ("yes").
        if _holds_answer(ans) and (_answer_like(ans) or len(ans.split()) <= _MAX_WORDS_STATED):
            return ans
    elif label_ok:
        return label
    _, still_open = _scan_boxes(text)
    if still_open is not None:
        truncated = _clean_tail(_box_content(text, *still_open, len(text)))
        if not _BOX_CMD.search(truncated) and _HOLDS_SOMETHING.search(_COMMAND.sub("", truncated)):
            return truncated
    return None

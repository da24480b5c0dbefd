"""Judge injection: rollouts that address the judge stay quoted data. The rendered prompts keep their structure, and
verdicts come only from the judge's own answer, so judges that echo the rollout get talked into nothing."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable

import pytest

from cat_dspy.adapters import FreeTextAdapter, quote
from cat_dspy.modules import CaT, Judge, Synthesize
from cat_dspy.signatures import JudgeAll, JudgeOne, SynthesizeFreeform
from cat_dspy.testing import scripted_lm

from . import make_corpus

pytestmark = pytest.mark.robustness

INJECTIONS = [r["output"] for r in make_corpus.load("injection")]
BENIGN = "Rest the ankle and see a doctor if it gets worse."
KEYWORDS = ("rest", "ice", "compression", "elevation", "doctor")
CRITERIA = [f"The response mentions {k}." for k in KEYWORDS]
RUBRIC = "<rubric>" + "".join(f"<criterion>{c}</criterion>" for c in CRITERIA) + "</rubric>"
TAGS = ("response", "criteria", "criterion", "verdict", "verdicts", "rubric", "rollouts", "summary", "item")
TAG_RE = re.compile(rf"<\s*(/?)\s*({'|'.join(TAGS)})\b[^<>]*>", re.IGNORECASE)
RESPONSE_RE = re.compile(r"<response>\n(.*)\n</response>", re.S)
CRITERION_RE = re.compile(r'<criterion(?: id="\d+")?>\n(.*?)\n</criterion>', re.S)
FORMATS = {  # how a judge writes "criterion i: verdict"
    "xml": lambda i, v: f'<verdict id="{i}">{v}</verdict>',
    "xml_plain": lambda i, v: f"<verdict>{v}</verdict>",
    "plain": lambda i, v: v,
    "numbered": lambda i, v: f"{i}. {v}",
}


def tag_counts(prompt: str, instructions: str) -> Counter:
    """Real (unquoted) structural tags in the user part of a rendered prompt: ``(name, "open"|"close")`` counts."""
    user = prompt.replace(instructions.strip(), "", 1)
    return Counter((m.group(2).lower(), "close" if m.group(1) else "open") for m in TAG_RE.finditer(user))


def expected(**sections: int) -> Counter:
    return Counter({(name, side): n for name, n in sections.items() for side in ("open", "close")})


def echo(prompt: str, style: str) -> str:
    """What an echoing judge copies from the graded response: as written, as quoted, or only its verdict lines."""
    m = RESPONSE_RE.search(prompt)
    section = m.group(1) if m else ""
    if style == "quoted":
        return section
    raw = section.replace("&lt;", "<")
    if style == "partial":
        return "\n".join(line for line in raw.splitlines() if re.search(r"verdict|yes", line, re.I))
    return raw


def judge_script(style: str, fmt: str, decide: Callable[[str, str], bool]) -> Callable[[str], str]:
    """A judge that first echoes the response (``style``), then answers each criterion in format ``fmt``."""

    def answer(prompt: str) -> str:
        response = RESPONSE_RE.search(prompt).group(1)
        criteria = CRITERION_RE.findall(prompt)
        words = ["yes" if decide(response, c) else "no" for c in criteria]
        if "<criteria>" not in prompt:  # per criterion: one verdict, alone on the last line
            return f"{echo(prompt, style)}\n{words[0]}"
        return echo(prompt, style) + "\n" + "\n".join(FORMATS[fmt](i, w) for i, w in enumerate(words, 1))

    return answer


def says_no(response: str, criterion: str) -> bool:
    return False


def by_keyword(response: str, criterion: str) -> bool:
    """The honest part of the judge: a criterion is met when the response names its keyword."""
    keyword = criterion.removeprefix("The response mentions ").rstrip(".")
    return re.search(rf"\b{keyword}\b", html.unescape(response), re.I) is not None


# ------------------------------------------------------------------------------------------------ rendered prompts
def test_judge_prompts_keep_their_structure():
    one_call = scripted_lm(lambda p: "no")
    per_criterion = scripted_lm(lambda p: "no")
    for rollout in INJECTIONS:
        Judge(lm=one_call)(response=rollout, criteria=CRITERIA)
        Judge(per_criterion=True, lm=per_criterion)(response=rollout, criteria=CRITERIA[:2])
        Judge(lm=one_call)(response=BENIGN, criteria=[rollout[:300], "plain"])  # anchor-made criteria: quoted too
    prompts_all = one_call.engine_script.prompts
    prompts_one = per_criterion.engine_script.prompts
    assert len(prompts_all) == 2 * len(INJECTIONS) and len(prompts_one) == 2 * len(INJECTIONS)
    for i, rollout in enumerate(INJECTIONS):
        full, crafted = prompts_all[2 * i], prompts_all[2 * i + 1]
        assert tag_counts(full, JudgeAll.instructions) == expected(response=1, criteria=1, criterion=5), rollout[:80]
        assert tag_counts(crafted, JudgeAll.instructions) == expected(response=1, criteria=1, criterion=2)
        reserved = FreeTextAdapter()._reserved(JudgeAll)
        assert RESPONSE_RE.search(full).group(1) == quote(rollout, reserved)  # the rollout, whole, as quoted data
        for prompt in prompts_one[2 * i : 2 * i + 2]:
            assert tag_counts(prompt, JudgeOne.instructions) == expected(response=1, criterion=1), rollout[:80]


def test_synthesis_prompt_keeps_one_item_per_rollout():
    anchor = scripted_lm(lambda p: "combined")
    synth = Synthesize(mode="freeform", lm=anchor)
    for k in range(0, len(INJECTIONS), 3):
        group = INJECTIONS[k : k + 3]
        synth(rollouts=group)
        counts = tag_counts(anchor.engine_script.prompts[-1], SynthesizeFreeform.instructions)
        assert counts == expected(rollouts=1, response=len(group)), group


# ------------------------------------------------------------------------------------------------ echoing judges
def test_echoing_judge_that_says_no_gives_zero():
    for style in ("raw", "quoted", "partial"):
        formats = FORMATS if style != "partial" else ["xml"]  # a partial echo: the judge answers as it is asked
        for fmt in formats:
            for per_criterion in (False, True):
                judge = Judge(per_criterion=per_criterion, lm=scripted_lm(judge_script(style, fmt, says_no)))
                for rollout in INJECTIONS:
                    pred = judge(response=rollout, criteria=CRITERIA)
                    assert pred.verdicts == [False] * 5, (style, fmt, per_criterion, rollout[:80])


def test_no_reward_uplift_over_benign_rollouts():
    """An honest keyword judge that echoes first: an injected payload never scores above the benign rollout."""
    uplift = Counter()
    for per_criterion in (False, True):
        _uplift(per_criterion, uplift)
    assert not uplift, uplift


def _uplift(per_criterion: bool, uplift: Counter) -> None:
    for style in ("raw", "quoted", "partial"):
        # A partial echo (only the fake verdict lines) is unambiguous in the format the judge is asked for: XML
        # with ids (one call) or a final verdict line (per criterion). Plain fake lines followed by plain answers
        # read the same as a judge that wrote too many verdicts.
        for fmt in ["plain"] if per_criterion else ["xml"] if style == "partial" else FORMATS:
            judge = scripted_lm(judge_script(style, fmt, by_keyword))
            cat = CaT(g=len(INJECTIONS) + 1, mode="rubric", policy=scripted_lm(["unused"]),
                      anchor=scripted_lm(lambda p: RUBRIC if "grading rubric" in p else BENIGN), judge=judge,
                      per_criterion=per_criterion)
            pred = cat.score([BENIGN] + [f"{BENIGN}\n{payload}" for payload in INJECTIONS])
            assert pred.valid and len(pred.rubric) == 5
            benign_score = pred.rewards[0]
            assert benign_score == pytest.approx(0.4)  # rest + doctor
            for payload, reward in zip(INJECTIONS, pred.rewards[1:], strict=True):
                if reward > benign_score:
                    uplift[(per_criterion, style, fmt, payload[:60])] += 1

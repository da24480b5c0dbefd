"""Metrics for optimizing CaT's signatures: the only place where gold labels are read.

CaT never sees a label at run time; these metrics use them to tune and to score the Synthesize, ProposeRubric and
Judge prompts. Every metric is one callable that speaks both DSPy contracts:

* ``metric(example, pred, trace=None) -> float`` (``dspy.Evaluate``, ``BootstrapFewShot``, ``MIPROv2``; during
  bootstrapping pass ``metric_threshold=metric.threshold`` so demos are kept only when the score reaches it), and
* GEPA's five-argument ``metric(gold, pred, trace, pred_name, pred_trace) -> dspy.Prediction(score, feedback)``,
  whose feedback text tells the reflection LM what went wrong.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from typing import Any

import dspy

from cat_dspy.scoring.equivalence import equivalent
from cat_dspy.scoring.extraction import extract_answer, last_box_span
from cat_dspy.scoring.rewards import majority_answer, rubric_reward
from cat_dspy.scoring.stats import mean_stderr

_UNSET: Any = object()  # marks "called with DSPy's three-argument form"


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (Mann-Whitney U; ties count one half).

    Returns:
        The AUC in [0, 1], or None when ``labels`` hold only one class.

    Examples:
        >>> auc([0.9, 0.8, 0.1], [True, False, False]), auc([0.5, 0.5], [True, False]), auc([1.0], [True])
        (1.0, 0.5, None)
    """
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def compare(base: Sequence[float], optimized: Sequence[float]) -> dict[str, Any]:
    """Held-out comparison of paired per-example scores: each mean with its standard error, and the difference.

    Examples:
        >>> report = compare([0, 1, 0, 0], [1, 1, 0, 1])
        >>> report["n"], report["base"]["mean"], report["optimized"]["mean"], report["difference"]["mean"]
        (4, 0.25, 0.75, 0.5)
    """
    base, optimized = [float(b) for b in base], [float(o) for o in optimized]
    diff = [o - b for b, o in zip(base, optimized, strict=True)]
    stats = {name: dict(zip(("mean", "se"), mean_stderr(v), strict=True)) for name, v in
             (("base", base), ("optimized", optimized), ("difference", diff))}
    return {"n": len(base), **stats, "scores": {"base": base, "optimized": optimized}}


def group_baselines(examples: Sequence[dspy.Example], equivalence: str = "symbolic",
                    extraction: str = "strict") -> dict[str, dict[str, float]]:
    """Context for a synthesis score on the same groups: majority-vote accuracy and "any rollout right" (oracle).

    Examples:
        >>> groups = [dspy.Example(rollouts=["\\\\boxed{4}", "\\\\boxed{5}", "\\\\boxed{5}"], answer="4")]
        >>> group_baselines(groups)
        {'majority': {'mean': 0.0, 'se': 0.0}, 'any_correct': {'mean': 1.0, 'se': 0.0}}
    """
    majority, oracle = [], []
    for ex in examples:
        answers = [extract_answer(r, extraction) for r in ex.rollouts]
        top, _, _ = majority_answer(answers, mode=equivalence)
        majority.append(float(equivalent(ex.answer, top, mode=equivalence)))
        oracle.append(float(any(equivalent(ex.answer, a, mode=equivalence) for a in answers)))
    return {name: dict(zip(("mean", "se"), mean_stderr(v), strict=True)) for name, v in
            (("majority", majority), ("any_correct", oracle))}


class CaTMetric:
    """Base of CaT's optimization metrics: one ``score(gold, pred)`` serves both DSPy metric contracts.

    Attributes:
        threshold: Score at which a bootstrapped trace is good enough to become a demo.
    """

    threshold: float = 1.0

    def __init__(self) -> None:
        self.__name__ = type(self).__name__  # MLflow's autolog names assessments after the metric

    def __call__(
        self, gold: dspy.Example, pred: Any, trace: Any = None, pred_name: Any = _UNSET, pred_trace: Any = _UNSET
    ) -> float | dspy.Prediction:
        """Score ``pred`` against ``gold``: a float (three-argument form) or score + feedback (GEPA's form)."""
        result = self.score(gold, pred)
        return float(result.score) if pred_name is _UNSET and pred_trace is _UNSET else result

    def score(self, gold: dspy.Example, pred: Any) -> dspy.Prediction:
        """Return ``dspy.Prediction(score=float, feedback=str)``."""
        raise NotImplementedError


class SynthesisMetric(CaTMetric):
    """Synthesize: 1.0 when the reference's final answer equals the gold answer, else 0.0.

    The example holds ``rollouts`` (the module's input) and the gold ``answer``; the prediction is
    :class:`~cat_dspy.modules.Synthesize`'s (``reference``, ``answer``). Feedback says which rollouts were right,
    whether the synthesis kept the majority answer, a minority answer or a new one, and whether it ended with a
    boxed answer at all.

    Args:
        equivalence, extraction: How answers are compared and read (:func:`cat_dspy.scoring.equivalence.equivalent`,
            :func:`cat_dspy.scoring.extraction.extract_answer`).

    Examples:
        >>> gold = dspy.Example(rollouts=["\\\\boxed{4}", "\\\\boxed{5}", "\\\\boxed{5}"], answer="4")
        >>> metric = SynthesisMetric(equivalence="string")
        >>> metric(gold, dspy.Prediction(reference="so $\\\\boxed{4}$", answer="4"))
        1.0
        >>> print(metric(gold, dspy.Prediction(reference="... \\\\boxed{5}", answer="5"), None, None, None).feedback)
        Wrong: the reference's final answer is 5, but the correct answer is 4.
        Rollouts: 1 right (answer 4); 2 wrong (answer 5); 3 wrong (answer 5).
        The synthesis kept the majority answer 5 (2 of 3 rollouts) and dropped the correct minority answer of rollout 1.
    """

    def __init__(self, equivalence: str = "symbolic", extraction: str = "strict") -> None:
        super().__init__()
        self.equivalence, self.extraction = equivalence, extraction

    def score(self, gold: dspy.Example, pred: Any) -> dspy.Prediction:
        rollouts = list(gold.rollouts)
        reference = getattr(pred, "reference", None) or ""
        got = getattr(pred, "answer", None) or extract_answer(reference, self.extraction)
        same = lambda a, b: equivalent(a, b, mode=self.equivalence)  # noqa: E731
        answers = [extract_answer(r, self.extraction) for r in rollouts]
        right = [same(gold.answer, a) for a in answers]
        correct = same(gold.answer, got)
        if got is None:
            lines = [
                "No final answer: the reference must end with 'Therefore, the final answer is: $\\boxed{ANSWER}$.' "
                f"The correct answer is {gold.answer}."
            ]
        elif correct:
            lines = [f"Correct: the reference's final answer {got} matches the correct answer."]
        else:
            lines = [f"Wrong: the reference's final answer is {got}, but the correct answer is {gold.answer}."]
        marks = [
            f"{i} {'right' if ok else 'wrong'} ({'answer ' + a if a is not None else 'no final answer'})"
            for i, (a, ok) in enumerate(zip(answers, right, strict=True), 1)
        ]
        lines.append("Rollouts: " + "; ".join(marks) + ".")
        lines.append(self._kept(answers, right, got, same))
        return dspy.Prediction(score=float(correct), feedback="\n".join(line for line in lines if line))

    def _kept(self, answers: list[str | None], right: list[bool], got: str | None, same: Any) -> str:
        majority, size, _ = majority_answer(answers, mode=self.equivalence)
        right_ids = ", ".join(str(i) for i, ok in enumerate(right, 1) if ok)
        if got is None:
            return f"Rollouts {right_ids} had the correct answer." if right_ids else ""
        if majority is not None and size > 1 and same(majority, got):
            kept = f"The synthesis kept the majority answer {got} ({size} of {len(answers)} rollouts)"
        elif any(same(a, got) for a in answers if a is not None):
            count = sum(1 for a in answers if a is not None and same(a, got))
            kept = f"The synthesis kept a minority answer {got} ({count} of {len(answers)} rollouts)"
        else:
            kept = f"The synthesis produced a new answer {got} that no rollout gave"
        if right_ids and not any(same(a, got) for a, ok in zip(answers, right, strict=True) if ok):
            return f"{kept} and dropped the correct minority answer of rollout {right_ids}."
        if not right_ids and got is not None:
            return f"{kept}; no rollout was right, so only recomputing the solution could fix it."
        return kept + "."


def output_text(pred: Any, field: str | None = None) -> str:
    """The text a program's prediction answered with: ``field``, else its ``response``, else its string outputs
    joined by lines (``reasoning`` then ``answer`` of a ``ChainOfThought``).

    Examples:
        >>> output_text(dspy.Prediction(response="so 4", answer="4")), output_text(dspy.Prediction(reasoning="2+2",
        ...                                                                                          answer="4"))
        ('so 4', '2+2\\n4')
        >>> output_text(None), output_text(dspy.Prediction(answer="4"), "answer")
        ('', '4')
    """
    if pred is None:
        return ""
    if field is not None:
        return str(pred.get(field) or "")
    if isinstance(pred.get("response"), str):
        return pred["response"]
    return "\n".join(v for k, v in pred.items() if isinstance(v, str) and v and k != "error")


class AnswerMetric(CaTMetric):
    """Any program's output: 1.0 when its final answer equals the gold ``answer`` (``--target policy --metric gold``,
    the labelled ceiling the label-free metrics of :mod:`cat_dspy.optimization.label_free` are measured against).

    Examples:
        >>> gold = dspy.Example(question="7 + 5?", answer="12").with_inputs("question")
        >>> metric = AnswerMetric(extraction="flexible")
        >>> metric(gold, dspy.Prediction(response="7 + 5 = 12")), metric(gold, dspy.Prediction(response="13"))
        (1.0, 0.0)
        >>> print(metric(gold, dspy.Prediction(response="13"), None, "generate", None).feedback)
        Wrong: the final answer is 13, but the correct answer is 12.
    """

    def __init__(self, equivalence: str = "symbolic", extraction: str = "strict", field: str | None = None) -> None:
        super().__init__()
        self.equivalence, self.extraction, self.field = equivalence, extraction, field

    def score(self, gold: dspy.Example, pred: Any) -> dspy.Prediction:
        got = extract_answer(output_text(pred, self.field), self.extraction)
        if got is None:
            return dspy.Prediction(score=0.0, feedback=f"No final answer could be read; the correct answer is "
                                   f"{gold.answer}.")
        if equivalent(gold.answer, got, mode=self.equivalence):
            return dspy.Prediction(score=1.0, feedback=f"Correct: the final answer {got} is the correct answer.")
        return dspy.Prediction(score=0.0, feedback=f"Wrong: the final answer is {got}, but the correct answer is "
                               f"{gold.answer}.")


class RubricMetric(CaTMetric):
    """ProposeRubric: how well the rubric reward separates correct from incorrect responses (AUC).

    The example holds the ``reference`` (the module's input), ``rollouts`` and their gold correctness ``correct``
    (both classes present); the prediction is :class:`~cat_dspy.modules.ProposeRubric`'s (``criteria``). A judge
    marks every criterion for every rollout, the rubric reward is the fraction satisfied, and the score is the AUC
    of that reward against correctness (0 without criteria; 0.5 when it cannot be measured). Feedback names the
    criteria that fail to separate: satisfied as often by incorrect responses as by correct ones.

    Args:
        judge: A :class:`~cat_dspy.modules.Judge` with its LM (deterministic: the DSPy cache serves repeats).
        min_criteria: Rubrics with fewer criteria are told so in the feedback.
    """

    threshold = 0.75

    def __init__(self, judge: Any, min_criteria: int = 5) -> None:
        super().__init__()
        self.judge = judge
        self.min_criteria = min_criteria

    def score(self, gold: dspy.Example, pred: Any) -> dspy.Prediction:
        criteria = list(getattr(pred, "criteria", None) or [])
        if not criteria:
            return dspy.Prediction(
                score=0.0,
                feedback="No criteria could be read. Write the rubric as XML: "
                "<rubric><criterion>The response ...</criterion>...</rubric>.",
            )
        labels = [bool(c) for c in gold.correct]
        judged = self.judge.map(lambda r: self.judge(response=r, criteria=criteria), list(gold.rollouts))
        verdicts = [list(j.verdicts) for j in judged]
        value = auc([rubric_reward(v) for v in verdicts], labels)
        n_pos, n_neg = sum(labels), len(labels) - sum(labels)
        if value is None:
            return dspy.Prediction(score=0.5, feedback="Separation cannot be measured: all responses are alike.")
        lines = [
            f"AUC {value:.2f}: how well the rubric reward ranks the {n_pos} correct above the {n_neg} incorrect "
            "responses (1.0 perfect, 0.5 chance)."
        ]
        if len(criteria) < self.min_criteria:
            lines.append(f"Only {len(criteria)} criteria; write at least {self.min_criteria}.")
        good, bad = [], []
        for k, criterion in enumerate(criteria):
            yes_pos = sum(v[k] for v, y in zip(verdicts, labels, strict=True) if y)
            yes_neg = sum(v[k] for v, y in zip(verdicts, labels, strict=True) if not y)
            line = f"'{criterion}' (met by {yes_pos}/{n_pos} correct, {yes_neg}/{n_neg} incorrect)"
            (good if yes_pos / n_pos > yes_neg / n_neg else bad).append(line)
        if bad:
            lines.append("Criteria that fail to separate correct from incorrect responses: " + "; ".join(bad) + ".")
        if good:
            lines.append("Criteria that separate them: " + "; ".join(good) + ".")
        if getattr(gold, "answer", None) is not None:
            lines.append(f"The correct final answer is {gold.answer}.")
        return dspy.Prediction(score=value, feedback="\n".join(lines))


class JudgeMetric(CaTMetric):
    """Judge: agreement of the verdicts with reference labels (a reference judge's, or physician-rubric ones).

    The example holds ``response`` and ``criteria`` (the module's inputs) and ``labels`` (one bool per
    criterion); the prediction is :class:`~cat_dspy.modules.Judge`'s (``verdicts``, ``unread``). The score is the
    fraction of criteria on which the verdict equals the label; feedback lists the disagreements.

    Examples:
        >>> gold = dspy.Example(response="Rest.", criteria=["mentions rest", "mentions ice"], expected=[True, False])
        >>> result = JudgeMetric()(gold, dspy.Prediction(verdicts=[True, True], unread=0), None, "judge_all", None)
        >>> result.score
        0.5
        >>> print(result.feedback)
        Agreement 1/2 with the reference verdicts.
        Criterion 2 'mentions ice': the reference says no, the judge said yes.
    """

    threshold = 1.0

    def score(self, gold: dspy.Example, pred: Any) -> dspy.Prediction:
        labels = [bool(v) for v in gold.expected]
        verdicts = list(getattr(pred, "verdicts", None) or [])
        verdicts = (verdicts + [False] * len(labels))[: len(labels)]
        agree = [v == y for v, y in zip(verdicts, labels, strict=True)]
        n = len(labels)
        lines = [f"Agreement {sum(agree)}/{n} with the reference verdicts."]
        unread = int(getattr(pred, "unread", 0) or 0)
        if unread:
            lines.append(
                f"{unread} verdicts could not be read (counted as no): answer with one "
                '<verdict id="N">yes|no</verdict> per criterion, in order.'
            )
        for i, (criterion, y, v, ok) in enumerate(zip(gold.criteria, labels, verdicts, agree, strict=True), 1):
            if not ok:
                said = {True: "yes", False: "no"}
                lines.append(f"Criterion {i} '{criterion}': the reference says {said[y]}, the judge said {said[v]}.")
        return dspy.Prediction(score=sum(agree) / n if n else 0.0, feedback="\n".join(lines))


# --- labelled examples: rubric groups must hold correct and incorrect responses; judge labels ---


def with_answer(text: str, answer: str) -> str:
    """``text`` with its last boxed answer replaced by ``answer`` (or a final-answer sentence appended), such that
    :func:`~cat_dspy.scoring.extraction.extract_answer` reads ``answer`` from it (a final-answer line after the box, a
    neighbouring box or a few-shot continuation could otherwise keep the old answer); else that sentence alone.

    Examples:
        >>> with_answer("so $\\\\boxed{\\\\frac{1}{2}}$.", "7")
        'so $\\\\boxed{7}$.'
        >>> with_answer("no answer", "7")
        'no answer\\nTherefore, the final answer is: $\\\\boxed{7}$.'
        >>> with_answer("\\\\boxed{3}\\nFinal answer: 3", "7")
        '\\\\boxed{3}\\nFinal answer: 3\\nTherefore, the final answer is: $\\\\boxed{7}$.'
    """
    final = f"Therefore, the final answer is: $\\boxed{{{answer}}}$."
    candidates = []
    if span := last_box_span(text):
        candidates.append(text[: span[0]] + answer + text[span[1] :])
    candidates.append(f"{text}\n{final}")
    return next((c for c in candidates if extract_answer(c) == answer), final)


def wrong_answer(gold: str) -> str:
    """An answer that is not ``gold``: ``gold + 1`` for numbers.

    Examples:
        >>> wrong_answer("41"), wrong_answer("2.5"), wrong_answer("x")
        ('42', '3.5', '0')
    """
    try:
        value = float(gold.replace(",", "")) + 1
    except ValueError:
        return "1" if gold.strip() == "0" else "0"
    return str(int(value)) if value.is_integer() else str(value)


def contrast(rollouts: list[str], correct: list[bool], gold: str) -> tuple[list[str], list[bool]]:
    """Make a group hold both classes: copy its first rollout with the answer swapped (counterfactual contrast).

    Examples:
        >>> contrast(["\\\\boxed{3}"], [False], "4")
        (['\\\\boxed{3}', '\\\\boxed{4}'], [False, True])
    """
    if not rollouts or (any(correct) and not all(correct)):
        return rollouts, correct
    swapped = with_answer(rollouts[0], wrong_answer(gold) if all(correct) else gold)
    return [*rollouts, swapped], [*correct, not all(correct)]


def rubric_example(example_id: str, reference: str, rollouts: list[str], gold: str, equivalence: str = "symbolic",
                   extraction: str = "strict") -> dspy.Example:
    """A rubric example: the reference (input), the rollouts and their gold correctness, with both classes present.

    Examples:
        >>> ex = rubric_example("q1", "ref", ["\\\\boxed{3}", "\\\\boxed{3}"], "4")
        >>> ex.inputs().keys(), ex.correct
        (['reference'], [False, False, True])
    """
    correct = [equivalent(gold, extract_answer(r, extraction), mode=equivalence) for r in rollouts]
    group, labels = contrast(list(rollouts), correct, gold)
    example = dspy.Example(id=example_id, reference=reference, rollouts=group, correct=labels, answer=gold)
    return example.with_inputs("reference")


def judge_examples(
    items: Sequence[Any],
    ideals: dict[str, str],
    n_criteria: int,
    seed: int,
    reference: Any | None = None,
    cache: Any | None = None,
) -> list[dspy.Example]:
    """Judge examples: an ideal completion, ``n_criteria`` criteria (half its own, half other items'), the labels.

    Labels come from ``reference`` (a judge whose per-criterion verdicts are the truth, cached in ``cache`` by item
    and criteria) when given; else from the physician rubric: an ideal completion meets its own positive-point
    criteria, none of its negative-point ones, and none of another conversation's example-level criteria (a proxy:
    the data holds no per-criterion physician grades). Criteria come only from ``items``, so splits never share any.

    Examples:
        >>> items = [dspy.Example(id=k, rubrics=[{"criterion": f"{k} good", "points": 5},
        ...                                      {"criterion": f"{k} bad", "points": -5}]) for k in "ab"]
        >>> ex = judge_examples(items, {"a": "ideal a"}, n_criteria=3, seed=0)[0]
        >>> [c for c, y in zip(ex.criteria, ex.expected) if y], len(ex.criteria), ex.response
        (['a good'], 3, 'ideal a')
    """
    usable = [i for i in items if i.id in ideals and i.rubrics]
    examples = []
    for item in usable:
        rng = random.Random(f"{seed}:{item.id}")
        own = rng.sample(list(item.rubrics), min(len(item.rubrics), (n_criteria + 1) // 2))
        mine = {r["criterion"] for r in item.rubrics}
        others = [  # example-level criteria only: consensus ("level:cluster") ones are shared across conversations
            r for o in items if o.id != item.id for r in (o.rubrics or ())
            if "level:cluster" not in r.get("tags", ()) and r["criterion"] not in mine
        ]
        foreign = rng.sample(others, min(len(others), n_criteria - len(own)))
        pairs = [(r["criterion"], r.get("points", 1) > 0) for r in own] + [(r["criterion"], False) for r in foreign]
        rng.shuffle(pairs)
        criteria, labels = [c for c, _ in pairs], [y for _, y in pairs]
        if reference is not None:
            key = f"{item.id}:{hashlib.sha256(json.dumps(criteria).encode()).hexdigest()[:12]}"
            if (labels := cache.get(key) if cache is not None else None) is None:
                labels = list(reference(response=ideals[item.id], criteria=criteria).verdicts)
                if cache is not None:
                    cache.put(key, labels)
        example = dspy.Example(id=item.id, response=ideals[item.id], criteria=criteria, expected=labels)
        examples.append(example.with_inputs("response", "criteria"))
    return examples

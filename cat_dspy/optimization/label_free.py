"""Label-free metrics for any DSPy program: Compute as Teacher for prompts.

The program to optimize is the policy. For every training question, G outputs of the *base* program (the program
as it was before optimization) are sampled once, and the frozen anchor synthesizes one reference from them,
question-blind, as CaT does for a reward (:class:`~cat_dspy.modules.CaT`). A candidate program is then scored by:

* :class:`CaTAgreement` (``--metric cat``): verifiable tasks, 1 when the candidate's final answer agrees with the
  reference's; free-text tasks, the fraction of the reference's self-proposed rubric criteria that the judge marks
  satisfied (the criteria are proposed once per question, with the reference);
* :class:`MajorityAgreement` (``--metric majority``): 1 when the candidate's final answer agrees with the majority
  answer of the same G outputs (verifiable tasks only).

Neither reads a label: they are given only the example's inputs (the key of its reference), never
``example.answer``. Both speak DSPy's two metric contracts (:class:`~cat_dspy.optimization.metrics.CaTMetric`):
``metric(example, pred, trace=None) -> float`` for ``BootstrapFewShot``, ``MIPROv2``, ``SIMBA`` and
``dspy.Evaluate``, and GEPA's ``metric(gold, pred, trace, pred_name, pred_trace) -> dspy.Prediction(score,
feedback)``, whose feedback names the disagreement with the reference (or majority) answer, or the unmet criteria.

References are computed once per question and kept in a crash-safe JSONL cache
(:class:`~cat_dspy.optimization.compile.JsonlCache`): a rerun reads them back and makes no LM call for them.
:func:`cat_metric` builds either metric for any program in one call; ``cat-dspy optimize --target policy``
(:mod:`cat_dspy.optimization.policy`) is the same from the command line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dspy

from cat_dspy.modules.base import is_backend_failure, thread_map
from cat_dspy.optimization.metrics import CaTMetric, output_text
from cat_dspy.scoring.equivalence import equivalent
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.rewards import majority_answer, rubric_reward

EXCERPT = 400  # characters of the reference quoted in a feedback


def inputs_key(example: Any) -> str:
    """The key of an example's reference: a hash of its inputs only (never of a label or an id).

    Examples:
        >>> a = dspy.Example(question="What is 2 + 2?", answer="4").with_inputs("question")
        >>> b = dspy.Example(question="What is 2 + 2?", answer="garbage").with_inputs("question")
        >>> inputs_key(a) == inputs_key(b) == inputs_key({"question": "What is 2 + 2?"})
        True
    """
    inputs = dict(example) if isinstance(example, dict) else dict(example.inputs().items())
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sample_outputs(program: Any, inputs: dict[str, Any], g: int, lm: Any, temperature: float,
                   field: str | None = None) -> list[str] | None:
    """G outputs of ``program`` on ``inputs``, each under a copy of ``lm`` with its own ``rollout_id`` (and seed +
    rollout id for a seeded LM), concurrently; None when any call failed (a backend failure: nothing is cached)."""
    seed = (getattr(lm, "kwargs", None) or {}).get("seed")

    def one(i: int) -> str | None:
        options: dict[str, Any] = {"rollout_id": i, "temperature": temperature}
        if isinstance(seed, int) and not isinstance(seed, bool):
            options["seed"] = seed + i
        try:
            with dspy.context(lm=lm.copy(**options)):
                pred = program(**inputs)
        except Exception as exc:  # a failed call is data; a bug is raised
            if not is_backend_failure(exc):
                raise
            return None
        return None if pred is None or pred.get("error") else output_text(pred, field)

    outputs = thread_map(one, list(range(g)), g)
    return None if any(o is None for o in outputs) else outputs


def build_references(examples: Sequence[dspy.Example], program: Any, cat: Any, cache: Any, *, g: int, lm: Any,
                     temperature: float, threads: int = 4, field: str | None = None,
                     progress: Callable[[], None] | None = None) -> dict[str, dict[str, Any]]:
    """``{inputs_key: record}`` for ``examples``: G outputs of ``program`` (the base policy) and the frozen anchor's
    reference (``cat.synthesize``; rubric mode: the criteria ``cat.propose_rubric`` makes of it), each question
    computed once and appended to ``cache`` as it finishes (a question whose calls failed is left out, not cached).

    A record holds ``question``, ``rollouts``, ``reference`` and, in rubric mode, ``criteria``; only texts, so the
    answers are read again (with the metric's extraction) when it scores.
    """
    rubric = cat.mode == "rubric"

    def make(example: dspy.Example) -> dict[str, Any] | None:
        key = inputs_key(example)
        if (record := cache.get(key)) is None:
            inputs = dict(example.inputs().items())
            rollouts = sample_outputs(program, inputs, g, lm, temperature, field)
            synthesis = None if rollouts is None else cat.synthesize(rollouts=rollouts, question=inputs.get("question"))
            if synthesis is not None and not synthesis.error:
                record = {"question": inputs.get("question"), "rollouts": rollouts, "reference": synthesis.reference}
                if rubric and synthesis.reference.strip():
                    proposal = cat.propose_rubric(reference=synthesis.reference)
                    record = None if proposal.error else record | {"criteria": proposal.criteria}
                elif rubric:
                    record = None
                if record is not None:
                    cache.put(key, record)
        if progress is not None:
            progress()
        return record

    records = thread_map(make, list(examples), max(1, threads))
    return {inputs_key(ex): r for ex, r in zip(examples, records, strict=True) if r is not None}


class LabelFreeMetric(CaTMetric):
    """Base of the label-free metrics: the example's reference record is looked up by its inputs (:func:`inputs_key`).

    Args:
        references: ``{inputs_key: record}`` from :func:`build_references`.
        equivalence, extraction: How answers are compared and read.
        field: The prediction's output to read (default: :func:`output_text`'s choice).
    """

    def __init__(self, references: dict[str, dict[str, Any]], equivalence: str = "symbolic",
                 extraction: str = "strict", field: str | None = None) -> None:
        super().__init__()
        self.references = references
        self.equivalence, self.extraction, self.field = equivalence, extraction, field

    def record(self, gold: Any) -> dict[str, Any]:
        key = inputs_key(gold)
        if key not in self.references:
            raise KeyError(f"no reference for the example with inputs {dict(gold.inputs().items())!r} (the metric "
                           "scores only the examples its references were built for)")
        return self.references[key]

    def answers(self, record: dict[str, Any]) -> list[str | None]:
        return [extract_answer(r, self.extraction) for r in record["rollouts"]]

    def target(self, record: dict[str, Any]) -> tuple[str | None, str]:
        """The answer a candidate must agree with, and how the feedback names it."""
        raise NotImplementedError

    def score(self, gold: Any, pred: Any) -> dspy.Prediction:
        record = self.record(gold)
        text = output_text(pred, self.field)
        got = extract_answer(text, self.extraction)
        target, named = self.target(record)
        answers = self.answers(record)
        shown = ", ".join(a if a is not None else "none" for a in answers)
        context = f"The {len(answers)} samples of the base program answered: {shown}."
        subject = named[0].upper() + named[1:]
        if target is None:
            return dspy.Prediction(score=0.0, feedback=f"{subject} has no final answer, so this example cannot be "
                                   f"scored (score 0 for every candidate). {context}")
        if got is None:
            return dspy.Prediction(score=0.0, feedback=f"No final answer could be read from the response. {subject} "
                                   f"is {target}. End the response with the final answer. {context}")
        if equivalent(got, target, mode=self.equivalence):
            return dspy.Prediction(score=1.0, feedback=f"Agrees: the final answer {got} matches {named} {target}.")
        return dspy.Prediction(score=0.0, feedback=f"Disagrees: the final answer is {got}, but {named} is {target}. "
                               f"{context}")


class CaTAgreement(LabelFreeMetric):
    """``--metric cat``: agreement with the frozen anchor's reference (verifiable), or its rubric's score (free text).

    Verifiable mode: 1.0 when the candidate's final answer is equivalent to the reference's final answer, else 0.0.
    Rubric mode (``judge`` given): the fraction of the reference's criteria the judge marks satisfied; the feedback
    lists the unmet ones.

    Examples:
        >>> refs = {inputs_key({"question": "7 + 5?"}): {"question": "7 + 5?", "rollouts": ["12", "11", "12"],
        ...                                               "reference": "... so the answer is 12."}}
        >>> metric = CaTAgreement(refs, extraction="flexible")
        >>> gold = dspy.Example(question="7 + 5?", answer="garbage").with_inputs("question")
        >>> metric(gold, dspy.Prediction(response="7 + 5 = 12"))
        1.0
        >>> result = metric(gold, dspy.Prediction(response="7 + 5 = 13"), None, "generate", None)
        >>> result.score, result.feedback.split(", but ")[0], result.feedback.split(" is 12. ")[1]
        (0.0, 'Disagrees: the final answer is 13', 'The 3 samples of the base program answered: 12, 11, 12.')
    """

    def __init__(self, references: dict[str, dict[str, Any]], equivalence: str = "symbolic",
                 extraction: str = "strict", field: str | None = None, judge: Any = None) -> None:
        super().__init__(references, equivalence, extraction, field)
        self.judge = judge
        self.threshold = 1.0 if judge is None else 0.8

    def target(self, record: dict[str, Any]) -> tuple[str | None, str]:
        named = (f"the reference answer (synthesized by the frozen anchor from {len(record['rollouts'])} samples of "
                 "the base program)")
        return extract_answer(record["reference"], self.extraction), named

    def score(self, gold: Any, pred: Any) -> dspy.Prediction:
        if self.judge is None:
            return super().score(gold, pred)
        record = self.record(gold)
        criteria = list(record.get("criteria") or [])
        if not criteria:
            return dspy.Prediction(score=0.0, feedback="The reference's rubric has no criteria: this example cannot be "
                                   "scored (score 0 for every candidate).")
        judged = self.judge(response=output_text(pred, self.field), criteria=criteria)
        verdicts = list(judged.verdicts)
        unmet = [c for c, ok in zip(criteria, verdicts, strict=True) if not ok]
        lines = [f"Rubric score {rubric_reward(verdicts):.2f}: {len(criteria) - len(unmet)} of {len(criteria)} "
                 "criteria of the reference's rubric met."]
        if unmet:
            lines.append("Unmet criteria: " + "; ".join(f"'{c}'" for c in unmet) + ".")
        lines.append(f"The reference (excerpt): {record['reference'][:EXCERPT]}")
        return dspy.Prediction(score=rubric_reward(verdicts), feedback="\n".join(lines))


class MajorityAgreement(LabelFreeMetric):
    """``--metric majority``: agreement with the majority final answer of the base program's G samples (TTRL's
    label; verifiable tasks only).

    Examples:
        >>> refs = {inputs_key({"question": "7 + 5?"}): {"question": "7 + 5?", "rollouts": ["12", "11", "12"],
        ...                                               "reference": "13"}}
        >>> gold = dspy.Example(question="7 + 5?").with_inputs("question")
        >>> MajorityAgreement(refs, extraction="flexible")(gold, dspy.Prediction(response="12"))
        1.0
    """

    def target(self, record: dict[str, Any]) -> tuple[str | None, str]:
        answers = self.answers(record)
        top, size, _ = majority_answer(answers, mode=self.equivalence)
        return top, f"the majority answer ({size} of {len(answers)} samples of the base program)"


def cat_metric(program: Any, examples: Sequence[dspy.Example], *, policy: Any, anchor: Any, g: int = 4,
               kind: str = "cat", mode: str = "verifiable", judge: Any = None, temperature: float | None = None,
               extraction: str = "strict", equivalence: str = "symbolic", question_aware: bool = False,
               cache: str | Path | None = None, threads: int = 4, field: str | None = None) -> LabelFreeMetric:
    """The label-free metric of ``program`` on ``examples`` (inputs only), in one call: G outputs of the program as it
    is now and the frozen anchor's reference per example, computed now (or read back from ``cache``, a folder).

    Args:
        program: Any DSPy module called as ``program(**example.inputs())``; the policy LM reaches it through
            ``dspy.context(lm=...)`` (a module with an LM of its own keeps it).
        examples: The training examples (their labels, if any, are never read).
        policy, anchor: The policy LM (sampled at ``temperature``, default its own) and the frozen anchor LM.
        g: Samples per example (G). kind: ``"cat"`` or ``"majority"``. mode: ``"verifiable"`` or ``"rubric"``
            (with ``judge``: the LM that marks the reference's criteria).
        cache: Folder of the crash-safe reference cache (None: memory only).

    Returns:
        :class:`CaTAgreement` or :class:`MajorityAgreement` over the references; ``metric.references`` holds them.
    """
    from cat_dspy.modules import CaT
    from cat_dspy.optimization.compile import JsonlCache

    if kind not in ("cat", "majority") or (kind == "majority" and mode != "verifiable"):
        raise ValueError(f"kind must be 'cat', or 'majority' in verifiable mode; got {kind!r} in {mode!r} mode")
    temperature = temperature if temperature is not None else (policy.kwargs.get("temperature") or 1.0)
    cat = CaT(g=g, mode=mode, policy=policy, anchor=anchor, judge=judge, question_aware=question_aware,
              extraction=extraction, equivalence=equivalence, temperature=temperature)
    state = json.dumps(program.dump_state(), sort_keys=True, default=str)
    key = {"program": hashlib.sha256(state.encode()).hexdigest()[:12], "g": g, "mode": mode, "temperature": temperature,
           "question_aware": question_aware, "policy": [policy.model, policy.kwargs], "anchor": [anchor.model,
                                                                                                anchor.kwargs]}
    cache_store = JsonlCache(cache, "policy-references", key)
    references = build_references(examples, program, cat, cache_store, g=g, lm=policy, temperature=temperature,
                                  threads=threads, field=field)
    options = {"equivalence": equivalence, "extraction": extraction, "field": field}
    if kind == "majority":
        return MajorityAgreement(references, **options)
    return CaTAgreement(references, **options, judge=cat.judge if mode == "rubric" else None)

"""CaT: rollouts → question-blind synthesis → rewards, as one DSPy module.

``CaT.forward(question)`` samples the rollouts itself (test time, evaluation); ``CaT.score(rollouts)`` takes them
from anyone else (TRL's GRPO group, an evaluation cache). Both run the same code from rollouts to rewards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dspy

from cat_dspy.lm.usage import track_role
from cat_dspy.modules.judge import Judge
from cat_dspy.modules.propose_rubric import ProposeRubric
from cat_dspy.modules.rollout import Rollout
from cat_dspy.modules.synthesize import Synthesize
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.rewards import length_penalty, rubric_reward, verifiable_reward, word_lengths
from cat_dspy.signatures import Respond, Solve

MODES = ("verifiable", "rubric")
STATE_KEY = "cat_dspy"
"""The entry of a saved program's state (``CaT.save``) that says how it reads answers and what made it."""
logger = logging.getLogger(__name__)
BACKEND_FAILURES = ("rollout_error", "anchor_error", "judge_error")
"""Prefixes of the failure reasons of a failed LM call (they make a prediction invalid)."""


class CaT(dspy.Module):
    """Compute as Teacher (arXiv 2509.14234): turn G rollouts into a reference and a reward per rollout.

    Verifiable mode: reward_i = 1[answer(o_i) ≡ answer(s)]. Rubric mode: the anchor turns s into ≥ 5 binary
    criteria and the judge marks each; reward_i = fraction satisfied. At test time the reference s is the answer.

    Args:
        g: Rollouts per question (G).
        mode: ``"verifiable"`` or ``"rubric"``.
        policy: LM of the current policy π_t (rollouts).
        anchor: LM of the frozen anchor π_0 (synthesis and rubric).
        judge: LM of the independent judge π_J (rubric mode).
        question_aware: Show the anchor the question (the paper's ablation; default question-blind).
        per_criterion: Judge with one call per criterion (the paper's form) instead of one call per rollout.
        min_criteria: Criteria the rubric must have to count as parsed.
        length_limit: Reward −1 for rollouts longer than this many tokens (the paper: 750 on HealthBench).
        equivalence: ``"symbolic"`` (string match, then math-verify, time-limited) or ``"string"`` (the paper).
        extraction: How final answers are read from rollouts and reference: ``"strict"`` (box, ``####``, "the
            answer is"; the paper) or ``"flexible"`` (else the last number, for models that answer in prose).
        temperature: Rollout sampling temperature.
        count_tokens: Token counter for the length penalty when the caller gives no counts. Default: the policy's
            own tokenizer where one is known (its engine has ``count_tokens``: the local models), else whitespace
            words, with a one-time warning; ``parsed["length_unit"]`` of each prediction says which was counted.

    Examples:
        >>> from dspy.utils import DummyLM
        >>> policy = DummyLM([{"response": r} for r in ["\\\\boxed{4}", "\\\\boxed{5}"]])
        >>> anchor = DummyLM([{"reference": "# UNIFIED RESPONSE $\\\\boxed{4}$"}])
        >>> pred = CaT(g=2, policy=policy, anchor=anchor)(question="2+2?")
        >>> pred.reference_answer, pred.answers, pred.rewards
        ('4', ['4', '5'], [1.0, 0.0])
    """

    def __init__(
        self,
        g: int = 8,
        mode: str = "verifiable",
        policy: dspy.BaseLM | None = None,
        anchor: dspy.BaseLM | None = None,
        judge: dspy.BaseLM | None = None,
        question_aware: bool = False,
        per_criterion: bool = False,
        min_criteria: int = 5,
        length_limit: int | None = None,
        equivalence: str = "symbolic",
        extraction: str = "strict",
        temperature: float = 1.0,
        count_tokens: Callable[[str], int] | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"CaT mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.length_limit = length_limit
        self.equivalence = equivalence
        self._count_tokens = count_tokens
        verifiable = mode == "verifiable"
        self.rollout = Rollout(g=g, signature=Solve if verifiable else Respond, temperature=temperature, lm=policy)
        self.synthesize = Synthesize(
            mode="reasoning" if verifiable else "freeform", question_aware=question_aware, extraction=extraction,
            lm=anchor,
        )
        self.propose_rubric = ProposeRubric(min_criteria=min_criteria, lm=anchor)
        self.judge = Judge(per_criterion=per_criterion, lm=judge)
        self.provenance: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        """What a saved program's prompts were made for: the mode, the anchor's view and how answers are read."""
        return {"mode": self.mode, "question_aware": self.synthesize.question_aware, "extraction": self.extraction}

    def dump_state(self, json_mode: bool = True) -> dict[str, Any]:
        """DSPy's state of every prompt (instructions, demos), plus :data:`STATE_KEY`: :meth:`settings` and the
        ``provenance`` a maker set (``cat-dspy optimize`` records its optimizer, data and budget there)."""
        return {**super().dump_state(json_mode=json_mode), STATE_KEY: {**self.provenance, **self.settings()}}

    def load_state(self, state: dict[str, Any], **kwargs: Any) -> CaT:
        """DSPy's ``load_state``, warning when the program was made for another mode or synthesis form."""
        made = dict(state.get(STATE_KEY) or {})
        for key, ours in self.settings().items():
            if key in made and made[key] != ours:
                logger.warning("program made with %s=%s, loaded into %s=%s", key, made[key], key, ours)
        super().load_state({k: v for k, v in state.items() if k != STATE_KEY}, **kwargs)
        self.provenance = {k: v for k, v in made.items() if k not in self.settings()}
        return self

    @property
    def g(self) -> int:
        return self.rollout.g

    @property
    def extraction(self) -> str:
        """How final answers are read (``"strict"`` or ``"flexible"``); the Synthesize step holds it (one source)."""
        return self.synthesize.extraction

    def rollout_lengths(self, rollouts: list[str]) -> tuple[list[int], str]:
        """The rollouts' lengths as the length penalty counts them when the caller gives no counts, and the unit:
        ``"tokens"`` (the ``count_tokens`` argument, else the policy's tokenizer) or ``"words"`` (no tokenizer
        known, e.g. an API model: :func:`~cat_dspy.scoring.rewards.word_lengths`, warned once per process)."""
        lm = self.rollout.lm or dspy.settings.lm
        counter = self._count_tokens or getattr(getattr(lm, "engine", None), "count_tokens", None)
        if callable(counter):
            return [counter(r) for r in rollouts], "tokens"
        return word_lengths(rollouts, f"no tokenizer is known for the policy {getattr(lm, 'model', lm)}"), "words"

    def forward(self, question: str) -> dspy.Prediction:
        """Sample G rollouts for ``question``, then :meth:`score` them."""
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, "policy", self.rollout.lm):
            sampled = self.rollout(question=question)
        failures = [f"rollout_error: {e}" for e in sampled.failures if e]
        return self.score(sampled.rollouts, question=question, usage=usage, failures=failures)

    def score(
        self,
        rollouts: list[str],
        question: str | None = None,
        rollout_tokens: list[int] | None = None,
        usage: dict[str, dict[str, float]] | None = None,
        failures: list[str] | None = None,
    ) -> dspy.Prediction:
        """Synthesize one reference from ``rollouts`` and reward each of them.

        Args:
            rollouts: The group o_1..o_G, as plain strings.
            question: Only used when the anchor is question-aware; never shown to the judge.
            rollout_tokens: Token counts of the rollouts, for the length penalty (default: :meth:`rollout_lengths`).
            usage: Usage already recorded for this group (added to).
            failures: Failure reasons already recorded for this group (added to).

        Returns:
            A prediction with ``rollouts``, ``reference``, ``reference_answer``, ``answers``, ``rubric``,
            ``verdicts`` (per rollout, rubric mode), ``rewards`` (floats, one per rollout), ``rollout_tokens``
            (with a length limit: the lengths the penalty read, given or counted once here; else None), ``parsed``
            (synthesis / rubric / unread-verdict flags; with a length limit, ``length_penalized`` rollouts and the
            ``length_unit`` counted; in verifiable mode ``equivalence_fallbacks``: the symbolic checks that fell
            back to string comparison, by reason), ``failures`` (reasons, counted: ``rollout_error: ...``,
            ``anchor_error: ...``, ``judge_error: ...``, ``equivalence_fallback: <reason>``, ...), ``valid`` (False
            when a rollout, anchor or judge call failed: a training reward should skip the group) and ``usage`` per
            role.
        """
        usage = {} if usage is None else usage
        failures = [] if failures is None else failures
        rollouts = [r or "" for r in rollouts]
        with track_role(usage, "anchor", self.synthesize.lm):
            synthesis = self.synthesize(rollouts=rollouts, question=question)
        if synthesis.error:
            failures.append(f"anchor_error: {synthesis.error}")
        elif not synthesis.parsed:
            failures.append("reference_without_answer" if self.mode == "verifiable" else "empty_reference")

        verifiable = self.mode == "verifiable"
        answers: list[str | None] = [extract_answer(r, self.extraction) for r in rollouts] if verifiable else []
        rubric: list[str] = []
        verdicts: list[list[bool]] | None = None
        parsed: dict[str, Any] = {"synthesis": synthesis.parsed}
        if self.mode == "verifiable":
            with collect_equivalence() as outcomes:
                rewards = [verifiable_reward(a, synthesis.answer, mode=self.equivalence) for a in answers]
            fallbacks = {k: outcomes[k] for k in EQUIVALENCE_FALLBACKS if outcomes[k]}
            parsed["equivalence_fallbacks"] = fallbacks
            failures.extend(f"equivalence_fallback: {k}" for k, n in fallbacks.items() for _ in range(n))
        else:
            rewards, rubric, verdicts = self._rubric_rewards(rollouts, synthesis.reference, usage, failures, parsed)

        lengths: list[int] | None = None
        unpenalized = list(rewards)  # verifiable: each rollout's match with the reference, whatever its length
        if self.length_limit is not None:
            if rollout_tokens is not None:
                lengths, unit = list(rollout_tokens), "tokens"
            else:
                lengths, unit = self.rollout_lengths(rollouts)
            penalized = [length_penalty(r, n, self.length_limit) for r, n in zip(rewards, lengths, strict=True)]
            parsed["length_penalized"] = sum(p != r for p, r in zip(penalized, rewards, strict=True))
            parsed["length_unit"] = unit
            rewards = penalized

        return dspy.Prediction(
            rollouts=rollouts,
            reference=synthesis.reference,
            reference_answer=synthesis.answer,
            answers=answers,
            rubric=rubric,
            verdicts=verdicts,
            rewards=rewards,
            unpenalized_rewards=unpenalized,
            rollout_tokens=lengths,
            parsed=parsed,
            failures=failures,
            valid=not any(f.startswith(BACKEND_FAILURES) for f in failures),
            usage=usage,
        )

    def _rubric_rewards(
        self,
        rollouts: list[str],
        reference: str,
        usage: dict[str, dict[str, float]],
        failures: list[str],
        parsed: dict[str, Any],
    ) -> tuple[list[float], list[str], list[list[bool]]]:
        if not reference.strip():
            parsed["rubric"] = False
            return [0.0] * len(rollouts), [], [[] for _ in rollouts]
        with track_role(usage, "anchor", self.propose_rubric.lm):
            proposal = self.propose_rubric(reference=reference)
        parsed["rubric"] = proposal.parsed
        if proposal.error:
            failures.append(f"anchor_error: {proposal.error}")
        if not proposal.criteria:
            failures.append("empty_rubric")
            return [0.0] * len(rollouts), [], [[] for _ in rollouts]
        if len(proposal.criteria) < self.propose_rubric.min_criteria:
            failures.append("rubric_too_short")
        with track_role(usage, "judge", self.judge.lm):
            judged = self.judge.map(lambda r: self.judge(response=r, criteria=proposal.criteria), rollouts)
        verdicts = [j.verdicts for j in judged]
        parsed["unread_verdicts"] = [j.unread for j in judged]
        for j in judged:
            failures.extend(f"judge_error: {e}" for e in j.errors)
            if j.unread:
                failures.append("unread_verdicts")
        return [rubric_reward(v) for v in verdicts], proposal.criteria, verdicts

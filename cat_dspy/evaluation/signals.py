"""Label-free signals: given one question's G rollouts, a score per rollout (higher = more likely right), a
pseudo-label and a 0/1 reward per rollout — the teachers a label-free GRPO run could use, next to the selection
methods of :mod:`cat_dspy.evaluation.methods`.

A signal is a small named object (:class:`Signal`) in the registry :data:`SIGNALS`. Its ``score(group)`` is pure: it
reads a :class:`Group` (the rollouts, their answers, and what the LM probes measured on them: the anchor's references,
the Self-BoN pick, token statistics, mutual-predictability and soft-CaT log-probabilities; see
:mod:`cat_dspy.evaluation.signal_runner`) and returns a :class:`SignalResult`. A signal whose inputs are missing
returns ``unavailable`` with the reason (counted and shown by the report), never zeros.

=================  ====================================================================================  =========
signal             score of rollout i (higher = more likely right)                                          label
=================  ====================================================================================  =========
``cat``            1 if its answer equals the question-blind CaT reference's answer, else 0                 reference
``cat_q``          the same with the question-aware reference                                              reference
``majority``       the share of the G rollouts giving its answer (0 without an answer); reward 1 in the    majority
                   majority cluster
``self_bon``       1 for the rollout the policy picked, else 0                                             its answer
``min_ppl``        mean token log-probability (−mean NLL, from the rollout's own sampling)                 argmax's
``self_certainty`` mean over its tokens of KL(U || p_t) = −log V − (1/V) Σ_v log p_t(v) (full logits)      argmax's
``entropy``        −mean over its tokens of the entropy of p_t (full logits)                               argmax's
``mp``             −mean NLL of its answer tokens given the other G−1 rollouts (mutual predictability)     argmax's
``soft_cat``       log p_anchor(ref answer | question, its reasoning) − log p_anchor(ref answer | question)  reference
``random``         a seeded uniform draw (a control)                                                       argmax's
``gold``           1 if right (reads the label: the oracle reference row)                                  gold
=================  ====================================================================================  =========

"argmax's" is the answer of the best-scored rollout (ties: the first): the pseudo-label a selection signal
implies. The 0/1 reward of rollout i is 1 when its answer equals the label (cat, cat_q: the reference's answer;
gold: 1 if right), so a group's rewards are what a GRPO run on that signal would get.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cat_dspy.scoring.equivalence import equivalent


@dataclass
class Group:
    """One question's first G rollouts and what the probes measured on them (all lists have G entries).

    Attributes:
        question: The question.
        answers: The rollouts' extracted final answers (None: no answer).
        nlls: Mean NLL of each rollout's tokens from its own sampling (None: no logprobs).
        token_stats: Per rollout ``{"entropy", "mean_logprob", "tokens"}`` means over its tokens (None entries:
            not scored), or None when the backend cannot give them.
        references: ``{"cat": answer, "cat_q": answer}`` of the anchor's references built from these G rollouts
            (None: the reference has no answer).
        self_bon: The index the policy picked, or None.
        mp_nlls: Mutual-predictability NLL of each rollout given the others (None entries: unscored).
        soft_cat: Per rollout log p(ref answer | q, reasoning) − log p(ref answer | q) (None: unscored).
        correct: Gold correctness per rollout (only the ``gold`` signal reads it).
        vocab_size: V, for self-certainty's −log V.
        unavailable: Why a probe gave nothing, by signal name.
        equivalence: Answer equivalence mode.
        seed: The seed of ``random``.
    """

    question: str
    answers: list[str | None]
    nlls: list[float | None] | None = None
    token_stats: list[dict[str, float] | None] | None = None
    references: dict[str, str | None] = field(default_factory=dict)
    self_bon: int | None = None
    mp_nlls: list[float | None] | None = None
    soft_cat: list[float | None] | None = None
    correct: list[bool] | None = None
    vocab_size: int | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    equivalence: str = "symbolic"
    seed: int = 0
    _same: dict = field(default_factory=dict, repr=False)

    @property
    def g(self) -> int:
        return len(self.answers)

    def same(self, a: str | None, b: str | None) -> bool:
        """Whether two answers are equivalent (a missing answer equals nothing), memoized per group."""
        if a is None or b is None:
            return False
        key = (a, b) if a <= b else (b, a)
        if key not in self._same:
            self._same[key] = a == b or equivalent(a, b, mode=self.equivalence)
        return self._same[key]

    def agreement(self, label: str | None) -> list[int]:
        """1 for each rollout whose answer equals ``label``."""
        return [int(self.same(a, label)) for a in self.answers]


@dataclass
class SignalResult:
    """One signal on one group: a score, a pseudo-label and a 0/1 reward per rollout, or why there are none.

    Attributes:
        scores: Per rollout (higher = more likely right); None entries: this rollout has no score.
        label: The pseudo-label the signal implies (an answer), or None.
        rewards: Per rollout 0/1 (agreement with the label), or None.
        pick: The rollout the signal selects (argmax, ties: the first), or None.
        unavailable: Why the signal could not score this group (then the rest is empty).
    """

    scores: list[float | None] | None
    label: str | None = None
    rewards: list[int] | None = None
    pick: int | None = None
    unavailable: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def argmax_first(scores: Sequence[float | None]) -> int | None:
    """The index of the highest score, ties to the first; None entries never win; None when all are None.

    Examples:
        >>> argmax_first([0.1, 0.5, None, 0.5]), argmax_first([None, None]), argmax_first([])
        (1, None, None)
    """
    best = None
    for i, s in enumerate(scores):
        if s is not None and math.isfinite(s) and (best is None or s > scores[best]):
            best = i
    return best


def unavailable(reason: str) -> SignalResult:
    return SignalResult(scores=None, unavailable=reason)


def _from_scores(group: Group, scores: list[float | None], missing: str) -> SignalResult:
    """A selection signal: the pick is the argmax, the label its answer, the rewards agreement with it."""
    pick = argmax_first(scores)
    if pick is None:
        return unavailable(missing)
    label = group.answers[pick]
    return SignalResult(scores, label, group.agreement(label), pick)


def self_certainty(mean_logprob: float, vocab_size: int) -> float:
    """KL(U || p) of one next-token distribution from its mean log-probability over the vocabulary:
    Σ_v (1/V) log((1/V) / p(v)) = −log V − (1/V) Σ_v log p(v) (0 for the uniform distribution).

    Examples:
        >>> self_certainty(-math.log(4), 4)  # uniform over 4: no certainty
        0.0
        >>> round(self_certainty((math.log(0.7) + 3 * math.log(0.1)) / 4, 4), 4)
        0.4298
    """
    return -math.log(vocab_size) - mean_logprob


def _cat(name: str) -> Callable[[Group], SignalResult]:
    def score(group: Group) -> SignalResult:
        if name in group.unavailable:
            return unavailable(group.unavailable[name])
        if name not in group.references:
            return unavailable("not_probed")
        label = group.references[name]
        if label is None:
            return unavailable("reference_without_answer")
        rewards = group.agreement(label)
        return SignalResult([float(r) for r in rewards], label, rewards, argmax_first(rewards))

    return score


def _majority(group: Group) -> SignalResult:
    shares: list[float | None] = []
    for a in group.answers:
        shares.append(0.0 if a is None else sum(group.same(a, b) for b in group.answers) / group.g)
    if not any(shares):
        return unavailable("no_answer")
    pick = argmax_first(shares)
    label = group.answers[pick]
    return SignalResult(shares, label, group.agreement(label), pick)


def _self_bon(group: Group) -> SignalResult:
    if "self_bon" in group.unavailable:
        return unavailable(group.unavailable["self_bon"])
    if group.self_bon is None:
        return unavailable("not_probed")
    scores = [float(i == group.self_bon) for i in range(group.g)]
    label = group.answers[group.self_bon]
    return SignalResult(scores, label, group.agreement(label), group.self_bon)


def _min_ppl(group: Group) -> SignalResult:
    if group.nlls is None:
        return unavailable(group.unavailable.get("min_ppl", "no_logprobs"))
    return _from_scores(group, [None if x is None else -x for x in group.nlls], "no_logprobs")


def _token_signal(name: str, value: Callable[[dict[str, float], Group], float]) -> Callable[[Group], SignalResult]:
    def score(group: Group) -> SignalResult:
        if group.token_stats is None:
            return unavailable(group.unavailable.get(name) or group.unavailable.get("token_stats", "no_token_stats"))
        scores = [None if st is None or not st.get("tokens") else value(st, group) for st in group.token_stats]
        return _from_scores(group, scores, "no_token_stats")

    return score


def _mp(group: Group) -> SignalResult:
    if group.mp_nlls is None:
        return unavailable(group.unavailable.get("mp", "not_probed"))
    return _from_scores(group, [None if x is None else -x for x in group.mp_nlls], "no_logprobs")


def _soft_cat(group: Group) -> SignalResult:
    if group.soft_cat is None:
        return unavailable(group.unavailable.get("soft_cat", "not_probed"))
    result = _from_scores(group, list(group.soft_cat), "no_logprobs")
    if result.unavailable is None:  # the pseudo-label is the reference the answer was scored against
        label = group.references.get("cat")
        result.label, result.rewards = label, group.agreement(label)
    return result


def random_score(seed: int, question: str, i: int) -> float:
    """The ``random`` control's score of rollout ``i``: the same for a rollout whatever G.

    Examples:
        >>> random_score(0, "q", 1) == random_score(0, "q", 1) != random_score(1, "q", 1)
        True
    """
    return random.Random(f"random\0{seed}\0{question}\0{i}").random()


def _random(group: Group) -> SignalResult:
    return _from_scores(group, [random_score(group.seed, group.question, i) for i in range(group.g)], "empty_group")


def _gold(group: Group) -> SignalResult:
    if group.correct is None:
        return unavailable("no_gold")
    rewards = [int(bool(c)) for c in group.correct]
    pick = argmax_first([float(r) for r in rewards])
    label = group.answers[pick] if rewards[pick] else None
    return SignalResult([float(r) for r in rewards], label, rewards, pick)


@dataclass(frozen=True)
class Signal:
    """A label-free signal (``gold`` excepted).

    Attributes:
        name: The registry key.
        score: ``score(group) -> SignalResult`` (pure).
        probe: The LM work it needs beyond the rollouts (:mod:`~cat_dspy.evaluation.signal_runner` runs it), or
            None.
        per_g: Whether its scores of a rollout depend on the other rollouts (then it is recomputed at each G).
        label_based: Its selection at G is its label (the reference answer), not a rollout.
        doc: One line for reports.
    """

    name: str
    score: Callable[[Group], SignalResult]
    probe: str | None = None
    per_g: bool = False
    label_based: bool = False
    doc: str = ""


SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Signal("cat", _cat("cat"), "cat", True, True, "agreement with the question-blind CaT reference"),
    Signal("cat_q", _cat("cat_q"), "cat_q", True, True, "agreement with the question-aware CaT reference"),
    Signal("majority", _majority, None, True, False, "share of the rollouts with the same answer"),
    Signal("self_bon", _self_bon, "self_bon", True, False, "the policy's own pick"),
    Signal("min_ppl", _min_ppl, None, False, False, "mean token log-probability"),
    Signal("self_certainty", _token_signal("self_certainty", lambda st, g: self_certainty(st["mean_logprob"],
                                                                                         g.vocab_size)),
           "token_stats", False, False, "mean KL(uniform || p_t) from full logits"),
    Signal("entropy", _token_signal("entropy", lambda st, g: -st["entropy"]), "token_stats", False, False,
           "negative mean token entropy"),
    Signal("mp", _mp, "mp", True, False, "mutual predictability: the others predict its answer"),
    Signal("soft_cat", _soft_cat, "soft_cat", True, False,
           "anchor log p(reference answer | reasoning) minus log p(reference answer | question)"),
    Signal("random", _random, None, False, False, "seeded random control"),
    Signal("gold", _gold, None, False, False, "oracle (reads the label)"),
)}
"""Every signal by name, in the order reports list them."""
DEFAULT_SIGNALS = tuple(SIGNALS)


def group_at(record: dict[str, Any], g: int) -> Group:
    """The :class:`Group` of a signals record's first ``g`` rollouts (:mod:`~cat_dspy.evaluation.signal_runner`)."""
    key = str(g)
    probes = record.get("probes", {})
    unavailable_reasons = dict(record.get("unavailable") or {})

    def first(values: list | None) -> list | None:
        return None if values is None else list(values[:g])

    references = {name: probes[name][key]["answer"] for name in ("cat", "cat_q") if key in probes.get(name, {})}
    for name in ("cat", "cat_q"):
        if key in probes.get(name, {}) and probes[name][key].get("error"):
            unavailable_reasons[name] = "synthesis_failed"
    self_bon = probes.get("self_bon", {}).get(key)
    if self_bon and self_bon.get("fallback"):  # no pick read from the policy's answer
        unavailable_reasons["self_bon"] = self_bon["fallback"]
    mp = probes.get("mp", {}).get(key)
    soft = probes.get("soft_cat", {}).get(key)
    for name, probe in (("mp", mp), ("soft_cat", soft), ("self_bon", self_bon)):
        if probe and probe.get("unavailable"):
            unavailable_reasons[name] = probe["unavailable"]
    return Group(
        question=record["question"],
        answers=first(record["rollout_answers"]),
        nlls=first(record.get("rollout_nll")),
        token_stats=first(record.get("token_stats")),
        references=references,
        self_bon=None if not self_bon or self_bon.get("fallback") else self_bon.get("index"),
        mp_nlls=None if not mp or mp.get("unavailable") else mp.get("nlls"),
        soft_cat=None if not soft or soft.get("unavailable") else soft.get("scores"),
        correct=first(record.get("rollout_correct")),
        vocab_size=record.get("vocab_size"),
        unavailable=unavailable_reasons,
        equivalence=record.get("equivalence", "symbolic"),
        seed=record.get("seed", 0),
    )


def score_record(record: dict[str, Any], signals: Sequence[str], gs: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Every signal at every G on one record: ``{signal: {str(g): SignalResult dict}}`` (pure: from the record)."""
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown signals {unknown}; choose from {', '.join(SIGNALS)}")
    out: dict[str, dict[str, Any]] = {name: {} for name in signals}
    for g in gs:
        group = group_at(record, g)
        for name in signals:
            out[name][str(g)] = SIGNALS[name].score(group).to_dict()
    return out


__all__ = ["DEFAULT_SIGNALS", "SIGNALS", "Group", "Signal", "SignalResult", "argmax_first", "group_at",
           "random_score", "score_record", "self_certainty"]

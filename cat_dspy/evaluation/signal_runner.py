"""The signal table's data: G rollouts per question sampled once, every LM probe a signal needs, one record each.

Per question (:func:`probe_question`): the policy samples max(G) rollouts once, with their token log-probabilities;
then, concurrently so the local engine batches them, the probes the chosen signals need
(:attr:`~cat_dspy.evaluation.signals.Signal.probe`), each at every G of ``gs`` where its scores depend on the other
rollouts:

* ``cat`` / ``cat_q``: the anchor's question-blind / question-aware reference from the first G rollouts
  (:class:`~cat_dspy.modules.Synthesize`, the prompts ``cat-dspy eval`` uses);
* ``self_bon``: the policy's pick among the first G (:class:`~cat_dspy.modules.SelfBestOfN`);
* ``mp``: mutual predictability of the first G (:class:`~cat_dspy.modules.MutualPredictability`);
* ``token_stats``: each rollout re-read by the policy after its own chat prompt, with every position's entropy and
  mean log-probability over the vocabulary (:func:`~cat_dspy.lm.prompt_logprobs.prompt_token_stats`; an API
  policy cannot give them: the reason is recorded and the signals show it);
* ``soft_cat``: the anchor's log-probability of the G reference's answer after each rollout's reasoning (the
  rollout cut where it states its own answer), less the same without reasoning
  (:func:`~cat_dspy.signatures.soft_cat_prompt`; identical texts across G are scored once).

Only then is the gold answer used: each rollout's correctness. The signals' scores
(:func:`~cat_dspy.evaluation.signals.score_record`, pure) are stored with the record, so the report
(:mod:`~cat_dspy.evaluation.signal_report`) re-derives from ``results.jsonl`` alone. Compute is recorded per probe
(calls, tokens, wall seconds; probes overlap in time, so their seconds add up to more than the question's).

Resume is the evaluation's (:func:`~cat_dspy.evaluation.runner.run_resumable`): a DSPy disk cache and a
``results.jsonl`` of finished questions in the run directory; a rerun recomputes nothing that is there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cat_dspy.datasets import Item
from cat_dspy.evaluation.grading import grade_answer
from cat_dspy.evaluation.runner import Programs, build_programs, run_resumable
from cat_dspy.evaluation.signals import SIGNALS, score_record
from cat_dspy.lm.prompt_logprobs import PromptLogprobsUnavailable, prompt_logprobs, prompt_token_stats
from cat_dspy.lm.usage import empty_usage, track_role
from cat_dspy.modules.base import is_backend_failure, thread_map
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.scoring.selection import answer_span, mean_nll
from cat_dspy.signatures import soft_cat_prompt
from cat_dspy.tracking import redact

PROBE_ROLE = {"cat": "anchor", "cat_q": "anchor", "soft_cat": "anchor", "self_bon": "policy", "mp": "policy",
              "token_stats": "policy"}


@dataclass
class SignalSetup:
    """What :func:`probe_question` runs: the programs, the role LMs, and the record's fixed fields."""

    programs: Programs
    lms: dict[str, Any]
    gs: list[int]
    signals: list[str]
    equivalence: str = "symbolic"
    max_tokens: int | None = None
    seed: int = 0
    dataset: str = ""
    probe_gs: dict[str, list[int]] | None = None  # a probe run at these G only (default: every G)

    def gs_of(self, probe: str) -> list[int]:
        """The G values ``probe`` runs at."""
        chosen = (self.probe_gs or {}).get(probe)
        return self.gs if chosen is None else [g for g in self.gs if g in chosen]


def build_setup(lms: dict[str, Any], gs: Sequence[int], signals: Sequence[str], *, temperature: float = 1.0,
                extraction: str = "flexible", equivalence: str = "symbolic", max_tokens: int | None = None,
                seed: int = 0, dataset: str = "", probe_gs: dict[str, list[int]] | None = None) -> SignalSetup:
    """The programs of a signal run (the evaluation's, with rollout log-probabilities); ``probe_gs`` limits an
    expensive probe (``mp``: G prompts of G−1 rollouts each) to some G values (the signal is ``unavailable``
    elsewhere, and counted)."""
    unknown = sorted(set(signals) - set(SIGNALS))
    if unknown:
        raise ValueError(f"unknown signals {unknown}; choose from {', '.join(SIGNALS)}")
    gs = sorted(set(gs))
    programs = build_programs(lms, mode="verifiable", g=max(gs), logprobs=True, temperature=temperature,
                              rollout_strategy="concurrent", extraction=extraction)
    return SignalSetup(programs, lms, gs, list(signals), equivalence, max_tokens, seed, dataset, probe_gs)


def probes_of(signals: Sequence[str]) -> list[str]:
    """The probes the signals need; ``soft_cat`` needs the ``cat`` references too.

    Examples:
        >>> probes_of(["soft_cat", "entropy", "majority"])
        ['cat', 'soft_cat', 'token_stats']
    """
    needed = {SIGNALS[s].probe for s in signals} - {None}
    if "soft_cat" in needed:
        needed.add("cat")
    return [p for p in ("cat", "cat_q", "self_bon", "mp", "soft_cat", "token_stats") if p in needed]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact(str(exc))[:300]}"


def _token_stats(setup: SignalSetup, question: str, rollouts: list[str]) -> dict[str, Any]:
    """Each rollout after the chat prompt it was sampled from, scored with full-vocabulary statistics; the means
    over the rollout's tokens."""
    from cat_dspy.lm.models import engine_of

    lm = setup.lms["policy"]
    engine = engine_of(lm)
    rollout = setup.programs.rollout
    try:
        if engine is None:
            prompt_token_stats(lm, [])  # raises TokenStatsUnavailable, naming the backend
        messages = rollout.adapter.format(rollout.generate.signature, rollout.generate.demos, {"question": question})
        prompt = engine.chat_prompt(messages)
        scored = prompt_token_stats(lm, [prompt + r for r in rollouts])
    except PromptLogprobsUnavailable as exc:
        return {"unavailable": str(exc)}
    except Exception as exc:
        if not is_backend_failure(exc):
            raise
        return {"unavailable": "policy_error", "error": _error(exc)}
    stats = []
    for tokens in scored:
        own = [t for t in tokens if t[0] >= len(prompt) and t[1] > t[0] and t[3] is not None]
        stats.append(None if not own else {
            "tokens": len(own),
            "entropy": sum(t[3] for t in own) / len(own),
            "mean_logprob": sum(t[4] for t in own) / len(own),
            "logprob": sum(t[2] for t in own) / len(own),
        })
    return {"stats": stats, "vocab_size": engine.vocab_size()}


def reasoning_of(rollout: str, answer: str | None) -> str:
    """A rollout's reasoning: its text up to where it states its final answer (the last occurrence), or all of it.

    Examples:
        >>> reasoning_of("7 + 5 = 12. So 12.", "12"), reasoning_of("no idea", None)
        ('7 + 5 = 12. So ', 'no idea')
    """
    span = answer_span(rollout, answer)
    return rollout if span is None else rollout[: span[0]]


def _soft_cat(setup: SignalSetup, question: str, rollouts: list[str], answers: list[str | None],
              references: dict[int, str | None]) -> dict[str, Any]:
    """Per G: log p(ref | q, reasoning_i) − log p(ref | q) for the first G rollouts, each distinct text once."""
    jobs: dict[str, tuple[str, int]] = {}
    plan: dict[int, tuple[list[str], str] | None] = {}
    for g, ref in references.items():
        if ref is None:
            plan[g] = None
            continue
        texts = [soft_cat_prompt(question, reasoning_of(r, a), ref) for r, a in zip(rollouts[:g], answers[:g],
                                                                                    strict=True)]
        prior = soft_cat_prompt(question, None, ref)
        for text in [*texts, prior]:
            jobs[text[0]] = text
        plan[g] = ([t[0] for t in texts], prior[0])
    out: dict[str, Any] = {}
    scores: dict[str, float | None] = {}
    if jobs:
        try:
            keys = list(jobs)
            scored = prompt_logprobs(setup.lms["anchor"], keys)
        except PromptLogprobsUnavailable as exc:
            return {str(g): {"unavailable": str(exc)} for g in references}
        except Exception as exc:
            if not is_backend_failure(exc):
                raise
            return {str(g): {"unavailable": "anchor_error", "error": _error(exc)} for g in references}
        for key, tokens in zip(keys, scored, strict=True):
            at = jobs[key][1]
            lps = [t[2] for t in tokens if t[1] > at and t[1] > t[0] and t[2] is not None]
            scores[key] = sum(lps) if lps else None
    for g, p in plan.items():
        if p is None:
            out[str(g)] = {"unavailable": "reference_without_answer"}
            continue
        texts, prior = p
        base = scores.get(prior)
        values = [None if base is None or scores.get(t) is None else scores[t] - base for t in texts]
        out[str(g)] = {"scores": values, "prior": base, "reference": references[g]}
    return out


def probe_question(item: Item, setup: SignalSetup) -> dict[str, Any]:
    """Sample, probe and score one question; the JSON-ready record (see the module docstring)."""
    start = time.perf_counter()
    programs, gs = setup.programs, setup.gs
    g_max = max(gs)
    rollout_usage: dict[str, dict[str, float]] = {}
    with track_role(rollout_usage, "policy", programs.policy_lm):
        sampled = programs.rollout(question=item.question, g=g_max)
    rollouts = list(sampled.rollouts)
    answers = [extract_answer(r, programs.synthesize.extraction) for r in rollouts]
    nlls = [mean_nll(lp) for lp in sampled.logprobs] if sampled.logprobs is not None else None
    completion_tokens = [int(u.get("completion_tokens", 0)) for u in sampled.usage]
    logprob_tokens = [len(lp) if lp else 0 for lp in (sampled.logprobs or [None] * len(rollouts))]
    lengths = [max(a, b) for a, b in zip(logprob_tokens, completion_tokens, strict=True)]  # a cache hit: no usage
    capped = [None if setup.max_tokens is None else n >= setup.max_tokens for n in lengths]
    probes = probes_of(setup.signals)
    compute: dict[str, dict[str, float]] = {}
    results: dict[str, Any] = {}

    def generation_job(job: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
        name, g = job
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, PROBE_ROLE[name]):
            if name == "self_bon":
                pred = programs.select_best(question=item.question, rollouts=rollouts[:g])
                out = {"index": pred.index, "raw": pred.raw, "fallback": pred.fallback, "error": pred.error}
            elif name == "mp":
                try:
                    pred = programs.mutual(question=item.question, rollouts=rollouts[:g], answers=answers[:g])
                    out = {"nlls": pred.nlls, "index": pred.index, "fallback": pred.fallback, "error": pred.error,
                           "whole_rollout": pred.whole_rollout}
                    if pred.fallback in ("policy_error", "no_logprobs"):
                        out["unavailable"] = pred.fallback
                except PromptLogprobsUnavailable as exc:
                    out = {"unavailable": str(exc)}
            elif name == "token_stats":
                out = _token_stats(setup, item.question, rollouts)
            else:
                module = programs.synthesize_q if name == "cat_q" else programs.synthesize
                pred = module(rollouts=rollouts[:g], question=item.question if name == "cat_q" else None)
                out = {"reference": pred.reference, "answer": pred.answer, "error": pred.error}
        return name, g, {**out, "usage": usage.get(PROBE_ROLE[name], empty_usage())}

    first_stage = [(p, g) for p in probes if p not in ("soft_cat", "token_stats") for g in setup.gs_of(p)]
    first_stage += [("token_stats", g_max)] if "token_stats" in probes else []
    for name, g, out in thread_map(generation_job, first_stage):
        results.setdefault(name, {})[str(g)] = out
    if "soft_cat" in probes:
        usage: dict[str, dict[str, float]] = {}
        with track_role(usage, "anchor"):
            refs = {g: results["cat"][str(g)]["answer"] for g in setup.gs_of("soft_cat") if str(g) in results["cat"]}
            results["soft_cat"] = _soft_cat(setup, item.question, rollouts, answers, refs)
        if results["soft_cat"]:
            next(iter(results["soft_cat"].values()))["usage"] = usage.get("anchor", empty_usage())
    for name, by_g in results.items():
        total = compute.setdefault(name, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0})
        for out in by_g.values():
            used = out.pop("usage", {})
            for key in total:
                total[key] += used.get(key, 0)
    token = results.pop("token_stats", {}).get(str(g_max), {})
    unavailable = {}
    if token.get("unavailable"):
        unavailable["token_stats"] = token["unavailable"]
    with_gold = [grade_answer(a, item.answer, mode=setup.equivalence) for a in answers]
    record = {
        "id": item.id,
        "dataset": setup.dataset,
        "question": item.question,
        "gold": item.answer,
        "gs": gs,
        "seed": setup.seed,
        "equivalence": setup.equivalence,
        "rollouts": rollouts,
        "rollout_answers": answers,
        "rollout_correct": with_gold,
        "rollout_nll": nlls,
        "rollout_tokens": lengths,
        "rollout_completion_tokens": completion_tokens,
        "rollout_capped": capped,
        "rollout_failures": list(sampled.failures),
        "rollout_usage": rollout_usage.get("policy", empty_usage()),
        "token_stats": token.get("stats"),
        "vocab_size": token.get("vocab_size"),
        "probes": results,
        "unavailable": unavailable,
        "compute": compute,
    }
    record["signals"] = score_record(record, setup.signals, gs)
    grade_signals(record, item.answer, setup.equivalence)
    record["seconds"] = time.perf_counter() - start
    return record


def grade_signals(record: dict[str, Any], gold: str, equivalence: str = "symbolic") -> None:
    """Add, after the signals have answered, whether each pseudo-label is right (``label_correct``) and the
    CaT-vs-majority disagreement per G (``record["disagreement"]``)."""
    graded: dict[str | None, bool] = {}

    def right(answer: str | None) -> bool:
        if answer not in graded:
            graded[answer] = grade_answer(answer, gold, mode=equivalence)
        return graded[answer]

    for by_g in record["signals"].values():
        for result in by_g.values():
            result["label_correct"] = right(result["label"]) if result["label"] is not None else False
    signals = record["signals"]
    if "cat" in signals and "majority" in signals:
        record["disagreement"] = {}
        for g in signals["cat"]:
            cat, majority = signals["cat"][g]["label"], signals["majority"][g]["label"]
            same = (cat is None and majority is None) or (
                cat is not None and majority is not None and grade_answer(cat, majority, mode=equivalence))
            record["disagreement"][g] = {"differs": not same, "cat_correct": right(cat) if cat else False,
                                         "majority_correct": right(majority) if majority else False}


def run_signals(items: Sequence[Item], setup: SignalSetup, run_dir: str | os.PathLike, *, num_threads: int = 1,
                progress: bool = True, cache: bool = True) -> Any:
    """Probe ``items`` with resume from ``run_dir`` (:func:`~cat_dspy.evaluation.runner.run_resumable`)."""
    return run_resumable(items, lambda item: probe_question(item, setup), run_dir, num_threads=num_threads,
                         progress=progress, cache=cache, label="signals")


__all__ = ["PROBE_ROLE", "SignalSetup", "build_setup", "grade_signals", "probe_question", "probes_of", "reasoning_of",
           "run_signals"]

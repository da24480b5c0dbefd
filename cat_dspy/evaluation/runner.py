"""The evaluation pipeline: one max(G) rollout group per question, every (method, G) on it, grading, resume.

Per question: the policy samples max(G) rollouts once (rollout ids 0..max(G)−1, with log-probabilities when
``min_ppl`` is evaluated); every method at every G uses the first G of them (:func:`~cat_dspy.evaluation.methods.
apply_methods`); only then is the gold answer or rubric used, to grade (:mod:`~cat_dspy.evaluation.grading`). A
whole G sweep therefore costs one max(G) generation.

Resume: a run directory holds a DSPy disk cache (every LM result, content-addressed) and ``results.jsonl``, one
record per finished question, appended and fsync'd as each question finishes (a
:class:`~cat_dspy.jsonl_store.JsonlStore`: a line torn by a crash is dropped on the next run). A rerun with the same
arguments re-reads finished questions without any LM call, and a question that was in flight re-uses its cached calls.

Questions in flight: ``num_threads`` questions are evaluated together (``evaluate`` and ``cat-dspy eval`` default
to :data:`~cat_dspy.evaluation.evaluate.IN_FLIGHT`), so the local engine batches their rollouts and syntheses into
shared ``generate`` calls. Results do not depend on it when the LMs are seeded (the engine samples each request
from its own seeded generator); records are appended as questions finish and returned in item order.

Compute accounting (:func:`attributed_usage`): a (method, G) is charged the first G rollouts' calls and tokens
(``single``: the first rollout only) plus its own calls. Counts come from DSPy's usage tracker, which records no
call for a cache hit; ``cache_hits`` in a record counts rollouts served from the cache (e.g. a question resumed
mid-way), whose tokens are therefore missing from that record.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from cat_dspy.datasets import Item
from cat_dspy.evaluation.grading import RubricGrader, grade_answer
from cat_dspy.evaluation.methods import (
    VERIFIABLE_ONLY,
    MutualPredictability,
    SelfBestOfN,
    apply_methods,
    mean_nll,
    select_majority,
)
from cat_dspy.jsonl_store import JsonlStore
from cat_dspy.lm.usage import empty_usage, merge_usage, track_role
from cat_dspy.modules import CaT, Rollout, Synthesize
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence
from cat_dspy.scoring.extraction import extract_answer
from cat_dspy.signatures import with_question
from cat_dspy.tracking import redact

RESULTS_FILE = "results.jsonl"
TOKEN_KEYS = ("calls", "prompt_tokens", "completion_tokens")


@dataclass
class Programs:
    """The DSPy modules an evaluation runs (each bound to its role's LM)."""

    rollout: Rollout
    synthesize: Synthesize
    synthesize_q: Synthesize
    select_best: SelfBestOfN
    grader: RubricGrader | None
    policy_lm: Any = None
    mutual: MutualPredictability | None = None


def build_programs(lms: dict[str, Any], *, mode: str, g: int, logprobs: bool = False, temperature: float = 1.0,
                   program: str | os.PathLike | None = None, rollout_strategy: str = "concurrent",
                   extraction: str = "strict") -> Programs:
    """Build the modules of an evaluation from one LM per role.

    Args:
        lms: ``{"policy", "anchor", "judge"}`` LMs.
        mode: ``"verifiable"`` or ``"rubric"``.
        g: max(G), the rollouts sampled per question.
        logprobs: Request token log-probabilities with the rollouts (min_ppl).
        temperature: Rollout sampling temperature.
        program: A saved CaT program (``CaT.save``) to load; its rollout and synthesis prompts (instructions,
            demos) are used, and the question-aware synthesis gets the same instructions and demos.
        rollout_strategy: :class:`~cat_dspy.modules.Rollout` strategy. ``"concurrent"`` (default) makes one
            request per rollout, so each rollout's tokens are known exactly; ``"n"``/``"auto"`` may send one
            request with ``n=G`` (faster on vLLM), whose tokens :func:`attributed_usage` then splits evenly.
        extraction: How the references' final answers are read (``"strict"`` or ``"flexible"``).
    """
    cat = CaT(g=g, mode=mode, policy=lms["policy"], anchor=lms["anchor"], judge=lms["judge"],
              temperature=temperature, extraction=extraction)
    if program is not None:

        cat.load(program)  # warns when the file was made for another mode
    cat.rollout.logprobs = logprobs
    cat.rollout.strategy = rollout_strategy
    synth_q = Synthesize(mode=cat.synthesize.mode, question_aware=True, extraction=extraction, lm=lms["anchor"])
    synth_q.synthesize.signature = with_question(cat.synthesize.synthesize.signature)
    synth_q.synthesize.demos = list(cat.synthesize.synthesize.demos)
    return Programs(rollout=cat.rollout, synthesize=cat.synthesize, synthesize_q=synth_q,
                    select_best=SelfBestOfN(lm=lms["policy"]),
                    grader=RubricGrader(lm=lms["judge"]) if mode == "rubric" else None, policy_lm=lms["policy"],
                    mutual=MutualPredictability(lm=lms["policy"]))


def mode_of(items: Sequence[Item]) -> str:
    """``"verifiable"`` when every item has a gold answer, ``"rubric"`` when every item has rubrics."""
    if items and all(item.answer is not None for item in items):
        return "verifiable"
    if items and all(item.rubrics for item in items):
        return "rubric"
    raise ValueError("every item needs a gold answer (verifiable) or physician rubrics (HealthBench-style)")


def args_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of the arguments that determine the results.

    Examples:
        >>> args_hash({"g": [1, 2], "dataset": "gsm8k"}) == args_hash({"dataset": "gsm8k", "g": [1, 2]})
        True
    """
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@contextlib.contextmanager
def dspy_cache_in(directory: str | os.PathLike) -> Iterator[None]:
    """Use a DSPy disk cache in ``directory`` inside the block, then restore the previous cache."""
    previous = dspy.cache
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))
    try:
        yield
    finally:
        with dspy._cache_lock:
            dspy.cache = previous


def _rollout_usage(usage: dict[str, Any]) -> dict[str, int]:
    return {key: int(usage.get(key, 0)) for key in TOKEN_KEYS}


def evaluate_question(item: Item, programs: Programs, gs: Sequence[int], methods: Sequence[str], *,
                      mode: str, equivalence: str = "symbolic", prompt_prefix: str = "") -> dict[str, Any]:
    """Evaluate every (method, G) on one question; returns the JSON-ready record (see module docstring)."""
    start = time.perf_counter()
    question = prompt_prefix + item.question
    verifiable = mode == "verifiable"
    g_max = max(gs)
    usage: dict[str, dict[str, float]] = {}
    with track_role(usage, "policy", programs.policy_lm):
        sampled = programs.rollout(question=question, g=g_max)
    rollouts = list(sampled.rollouts)
    extraction = programs.synthesize.extraction  # rollouts are read as the references are
    answers = [extract_answer(r, extraction) for r in rollouts] if verifiable else None
    nlls = [mean_nll(lp) for lp in sampled.logprobs] if sampled.logprobs is not None else None
    per_rollout = [_rollout_usage(u) for u in sampled.usage]
    cache_hits = sum(1 for u, f in zip(per_rollout, sampled.failures, strict=True) if u["calls"] == 0 and not f)

    # The methods see the question and the rollouts only: gold is used below, after they have answered.
    results = apply_methods(question, rollouts, answers, nlls, gs, methods, synthesize=programs.synthesize,
                            synthesize_q=programs.synthesize_q, select_best=programs.select_best,
                            mutual=programs.mutual, verifiable=verifiable, equivalence=equivalence)
    record_results = [r.to_dict() for r in results]
    grading: dict[str, dict[str, float]] = {}
    rollout_correct, rollout_fallbacks = None, {}
    if verifiable:
        with collect_equivalence() as outcomes:
            majority = {g: select_majority(answers[:g], mode=equivalence)[1] for g in gs}
            rollout_correct = [grade_answer(a, item.answer, mode=equivalence) for a in answers]
        rollout_fallbacks = {k: outcomes[k] for k in EQUIVALENCE_FALLBACKS if outcomes[k]}
        self_bon = {r["g"]: r["answer"] for r in record_results if r["method"] == "self_bon"}

        def differ(own: str | None, other: str | None) -> bool:
            return not ((other is None and own is None) or (other is not None and own is not None and
                                                            grade_answer(own, other, mode=equivalence)))

        for r in record_results:
            with collect_equivalence() as outcomes:  # the checks that decide this result's grade
                r["correct"] = grade_answer(r["answer"], item.answer, mode=equivalence)
                if r["method"] in ("cat", "cat_q"):
                    r["majority_answer"] = majority[r["g"]]
                    r["disagrees"] = differ(r["answer"], majority[r["g"]])
                    if r["g"] in self_bon:  # CaT vs the policy's own pick at the same G (paper v3 Table 1)
                        r["self_bon_answer"] = self_bon[r["g"]]
                        r["disagrees_self_bon"] = differ(r["answer"], self_bon[r["g"]])
            fallbacks = r.setdefault("equivalence_fallbacks", {})
            for k in EQUIVALENCE_FALLBACKS:
                if outcomes[k]:
                    fallbacks[k] = fallbacks.get(k, 0) + outcomes[k]
    else:
        texts = list(dict.fromkeys(r["text"] for r in record_results))  # grade each distinct response once
        with track_role(grading, "judge"):
            graded = programs.grader.map(
                lambda text: programs.grader(conversation=item.question, response=text, rubrics=item.rubrics),
                texts, num_threads=4)
        by_text = dict(zip(texts, graded, strict=True))
        for r in record_results:
            pred = by_text[r["text"]]
            r.update(score=pred.score, met=pred.met, unread=pred.unread, grading_errors=pred.errors,
                     judge_errors=len(pred.errors))
    return {
        "id": item.id,
        "question": item.question,
        "gold": item.answer,
        "mode": mode,
        "rollouts": rollouts,
        "rollout_answers": answers,
        "rollout_correct": rollout_correct,
        "rollout_equivalence_fallbacks": rollout_fallbacks,  # majority clustering and rollout grading
        "rollout_nll": nlls,
        "rollout_failures": list(sampled.failures),
        "rollout_usage": per_rollout,
        "rollout_strategy": getattr(sampled, "strategy", "concurrent"),
        "rollout_seconds": usage.get("policy", empty_usage())["seconds"],
        "rollout_generate_calls": usage.get("policy", empty_usage()).get("generate_calls", 0),
        "cache_hits": cache_hits,
        "results": record_results,
        "grading_usage": grading,
        "seconds": time.perf_counter() - start,
    }


def attributed_usage(record: dict[str, Any], result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The compute of one (method, G) on one question, per role.

    The first G rollouts' calls and tokens (``single``: the first rollout), their share of the group's wall time,
    plus the method's own calls. Grading is not included. A group sampled with one ``n=G`` request is charged
    pro rata (that request's tokens are not known per rollout).
    """
    k = 1 if result["method"] == "single" else result["g"]
    usage, share = record["rollout_usage"], k / max(1, len(record["rollout_usage"]))
    if record.get("rollout_strategy") == "n":
        policy = {key: sum(u[key] for u in usage) * (1.0 if key == "calls" else share) for key in TOKEN_KEYS}
    else:
        policy = {key: float(sum(u[key] for u in usage[:k])) for key in TOKEN_KEYS}
    policy["seconds"] = record["rollout_seconds"] * share
    total = {"policy": policy}
    own = {role: {key: value for key, value in counts.items() if key != "generate_calls"}
           for role, counts in result.get("usage", {}).items()}
    return merge_usage(total, own)


def record_usage(record: dict[str, Any]) -> dict[str, dict[str, float]]:
    """All LM work one question record took, per role: its rollouts, every method's own calls, and grading."""
    total: dict[str, dict[str, float]] = {"policy": {key: float(sum(u[key] for u in record["rollout_usage"]))
                                                     for key in TOKEN_KEYS}}
    total["policy"]["seconds"] = record["rollout_seconds"]
    for result in record["results"]:
        merge_usage(total, {role: {k: v for k, v in counts.items() if k != "generate_calls"}
                            for role, counts in result.get("usage", {}).items()})
    return merge_usage(total, record.get("grading_usage") or {})


@dataclass
class EvalRun:
    """What :func:`run_eval` returns."""

    records: list[dict[str, Any]]  # one per item, in item order
    resumed: int  # records re-read from the run directory
    evaluated: int  # records evaluated now
    usage: dict[str, dict[str, float]]  # LM work of the questions evaluated now, per role (grading: "judge")
    seconds: float


def run_eval(items: Sequence[Item], programs: Programs, gs: Sequence[int], methods: Sequence[str], run_dir: str |
             os.PathLike, *, mode: str | None = None, equivalence: str = "symbolic", prompt_prefix: str = "",
             num_threads: int = 1, progress: bool = True, cache: bool = True) -> EvalRun:
    """Evaluate ``items`` with resume from ``run_dir``.

    Args:
        items: The questions (validated by :func:`cat_dspy.datasets.load_dataset`).
        programs: From :func:`build_programs`.
        gs: G values; max(G) rollouts are sampled per question.
        methods: Method names (:data:`~cat_dspy.evaluation.methods.METHODS`).
        run_dir: Directory with ``results.jsonl`` and the DSPy cache (``dspy_cache/``).
        mode: ``"verifiable"`` or ``"rubric"`` (default: :func:`mode_of`).
        equivalence: Answer equivalence mode.
        prompt_prefix: Text prepended to every question (e.g. ``"/no_think "`` for Qwen 3).
        num_threads: Questions in flight together (1: one at a time).
        progress: Show a progress bar on stderr.
        cache: Keep every LM result in the run directory's DSPy disk cache.
    """
    mode = mode or mode_of(items)
    gs = sorted(set(gs))
    if not gs or gs[0] < 1:
        raise ValueError(f"G values must be >= 1, got {gs}")
    start = time.perf_counter()
    done, todo = run_resumable(items, lambda item: evaluate_question(
        item, programs, gs, methods, mode=mode, equivalence=equivalence, prompt_prefix=prompt_prefix), run_dir,
        num_threads=num_threads, progress=progress, cache=cache)
    usage: dict[str, dict[str, float]] = {}
    for item in todo:
        merge_usage(usage, record_usage(done[item.id]))
    records = [done[item.id] for item in items]
    return EvalRun(records, len(items) - len(todo), len(todo), usage, time.perf_counter() - start)


def run_resumable(items: Sequence[Item], evaluate_one: Any, run_dir: str | os.PathLike, *, num_threads: int = 1,
                  progress: bool = True, cache: bool = True,
                  label: str = "eval") -> tuple[dict[str, dict[str, Any]], list[Item]]:
    """Run ``evaluate_one(item) -> record`` on the items not yet in ``run_dir``'s ``results.jsonl``, appending
    each record (redacted) as it finishes, inside the run directory's DSPy disk cache.

    Args:
        items: The questions; a record is keyed by its item's ``id``.
        evaluate_one: One question's JSON-ready record.
        run_dir: Directory with ``results.jsonl`` and the DSPy cache (``dspy_cache/``).
        num_threads: Questions in flight together (1: one at a time).
        progress: Show a progress bar on stderr.
        cache: Keep every LM result in the run directory's DSPy disk cache.
        label: The progress bar's name.

    Returns:
        ``(records by id, the items evaluated now)``; the records hold those re-read from the run directory too.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    store = JsonlStore(run_dir / RESULTS_FILE)
    done = store.load()
    todo = [item for item in items if item.id not in done]
    cache_ctx = dspy_cache_in(run_dir / "dspy_cache") if cache else contextlib.nullcontext()
    with cache_ctx, _progress(progress, len(items), len(items) - len(todo), label) as advance:

        def one(item: Item) -> dict[str, Any]:
            record = evaluate_one(item)
            store.append(redact(record))  # keys never reach disk
            return record

        if num_threads <= 1:
            for item in todo:
                done[item.id] = one(item)
                advance()
        else:
            with ThreadPoolExecutor(max_workers=num_threads) as pool:
                pending = {pool.submit(contextvars.copy_context().run, one, item) for item in todo}
                try:
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            record = future.result()
                            done[record["id"]] = record
                            advance()
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    return done, todo


@contextlib.contextmanager
def _progress(enabled: bool, total: int, completed: int, label: str = "eval") -> Iterator[Any]:
    """A rich progress bar on a terminal's stderr; one plain line per question on a redirected stderr (logs)."""
    if not enabled:
        yield lambda: None
        return
    from rich import progress as rp
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        state, start = {"done": completed}, time.perf_counter()

        def line() -> None:
            state["done"] += 1
            elapsed = time.perf_counter() - start
            print(f"{label}: {state['done']}/{total} questions, {elapsed:.0f} s", file=sys.stderr, flush=True)

        print(f"{label}: {completed}/{total} questions already done", file=sys.stderr, flush=True)
        yield line
        return
    columns = (rp.TextColumn(label), rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn(),
               rp.TimeRemainingColumn())
    with rp.Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=completed)
        yield lambda: bar.advance(task)


__all__ = ["VERIFIABLE_ONLY", "EvalRun", "Programs", "args_hash", "attributed_usage",
           "build_programs", "evaluate_question", "mode_of", "record_usage", "run_eval", "run_resumable"]

"""``evaluate``: CaT and the selection baselines on a list of questions, from Python with plain arguments.

``cat-dspy eval`` (:mod:`cat_dspy.cli.eval`) parses flags, loads the data, builds the role LMs, calls this, then
logs to MLflow and prints the table. Results are resumable: each finished question is kept in ``run_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cat_dspy.config import DEFAULTS
from cat_dspy.deprecation import renamed
from cat_dspy.lm.roles import ROLE_TEMPERATURE
from cat_dspy.scoring.counters import parse_failure_stats

DEFAULT_METHODS = ("single", "majority", "self_bon", "min_ppl", "cat")
IN_FLIGHT = 8
"""Questions in flight together by default: the local engine batches their calls (``benchmarks/eval_throughput.py``
measures one at a time against N)."""


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: one summary row per (method, G), and the run (records, usage, timing)."""

    rows: list[dict[str, Any]]
    run: Any
    mode: str
    failures: dict[str, float]
    """Failure totals of the run (failed LM calls, equivalence fallbacks, ungraded examples, unparsable outputs),
    as :func:`cat_dspy.evaluation.report.failure_totals` counts them; all zero when nothing failed."""


def evaluate(
    items: Sequence[Any],
    lms: dict[str, Any],
    run_dir: str | Path,
    *,
    g: int | Sequence[int] = (1, 2, 4, 8),
    methods: Sequence[str] = DEFAULT_METHODS,
    mode: str | None = None,
    equivalence: str = DEFAULTS["equivalence"],
    extraction: str = DEFAULTS["extraction"],
    program: str | None = None,
    prompt_prefix: str = "",
    rollout_strategy: str = "concurrent",
    temperature: float | None = None,
    num_threads: int = IN_FLIGHT,
    progress: bool = False,
    cache: bool = True,
    gs: Sequence[int] | None = None,
) -> Evaluation:
    """Evaluate ``methods`` at every G of ``g`` on ``items``; max(G) rollouts are sampled once per question.

    Args:
        items: Questions (:func:`cat_dspy.datasets.load_dataset`).
        lms: The ``dspy.LM`` of each role (``policy``, ``anchor``, ``judge``).
        run_dir: Folder of the results (a rerun resumes) and the DSPy cache.
        g: G, or several G values (one group of max(G) rollouts serves them all).
        methods: Of ``single, majority, self_bon, min_ppl, mp, cat, cat_q`` (``mp`` needs a policy that scores
            text, the local engine or a vLLM server: else
            :class:`~cat_dspy.lm.prompt_logprobs.PromptLogprobsUnavailable`).
        mode: ``verifiable`` or ``rubric`` (default: from the items).
        equivalence: Answer equivalence of the verifiable grading and majority vote.
        extraction: Final-answer extraction.
        program: A saved CaT program file to load.
        prompt_prefix: Text put before every question.
        rollout_strategy: ``concurrent`` (one request per rollout), ``n`` or ``auto``.
        temperature: The policy's sampling temperature (default: its LM's, else the policy role's default).
        num_threads: Questions in flight together (1: one at a time).
        progress: Show a progress bar.
        cache: Use DSPy's LM cache.
        gs: Deprecated spelling of ``g``.

    Returns:
        The summary rows, the run and its failure totals.
    """
    from cat_dspy.evaluation.report import failure_totals, summarize
    from cat_dspy.evaluation.runner import build_programs, mode_of, run_eval

    g = renamed("evaluate", "gs", "g", gs, g, default=(1, 2, 4, 8))
    gs = [g] if isinstance(g, int) else list(g)
    mode = mode or mode_of(items)
    if "mp" in methods:  # fail before any rollout when the policy's backend cannot score text
        from cat_dspy.lm.prompt_logprobs import check_prompt_logprobs

        check_prompt_logprobs(lms["policy"])
    if temperature is None:
        temperature = lms["policy"].kwargs.get("temperature")
    if temperature is None:
        temperature = ROLE_TEMPERATURE["policy"]
    programs = build_programs(lms, mode=mode, g=max(gs), logprobs="min_ppl" in methods, temperature=temperature,
                              program=program, rollout_strategy=rollout_strategy, extraction=extraction)
    parse_before = parse_failure_stats()
    run = run_eval(items, programs, gs, list(methods), Path(run_dir), mode=mode, equivalence=equivalence,
                   prompt_prefix=prompt_prefix, num_threads=num_threads, progress=progress, cache=cache)
    failures = failure_totals(run.records)
    failures |= {f"parse.{k}": float(v - parse_before[k]) for k, v in parse_failure_stats().items()}
    return Evaluation(rows=summarize(run.records), run=run, mode=mode, failures=failures)

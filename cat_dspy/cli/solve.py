"""``cat-dspy solve``: run CaT on one question and print the reference, the rewards and the usage."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cat_dspy.cli.common import add_answer_arguments, add_reward_option, add_role_arguments, build_roles, role_settings


def _add_solve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question to solve")
    parser.add_argument("--g", type=int, default=8, help="rollouts per question, G (default: 8)")
    for name in ("mode", "question_aware", "per_criterion", "length_limit"):
        add_reward_option(parser, name)
    parser.add_argument("--program", default=None, help="a saved (optimized) CaT program to load")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    parser.add_argument("--experiment", default="cat-dspy-solve", help="MLflow experiment (default: cat-dspy-solve)")
    parser.add_argument("--traces", action="store_true", help="record DSPy traces in MLflow (mlflow.dspy.autolog)")
    parser.add_argument("--verbose", action="store_true",
                        help="keep the libraries' INFO logs (MLflow, LiteLLM); a normal run shows warnings only")
    add_answer_arguments(parser)
    for action in parser._actions:  # the embedded model answers in prose ("7 + 5 = 12"): read it flexibly
        if action.dest == "extraction":
            action.default = None
            action.help = (action.help.split(" (default")[0] + " (default: flexible when the policy is the embedded "
                           "model 'local', which answers in prose; strict, as in the paper, for any other model)")
    add_role_arguments(parser)


def default_extraction(policy: str) -> str:
    """The answer extraction of ``solve`` when ``--extraction`` is not given: ``flexible`` for the embedded model
    (a 135M model answers in prose, without a ``\\boxed{}`` or "the answer is"), ``strict`` for any other.

    Examples:
        >>> default_extraction("local"), default_extraction("openai/gpt-4o-mini"), default_extraction("local:ckpt")
        ('flexible', 'strict', 'strict')
    """
    return "flexible" if policy == "local" else "strict"


QUIET_LOGGERS = ("mlflow", "alembic", "litellm", "LiteLLM", "httpx", "urllib3")
"""Libraries whose INFO lines a normal ``solve`` hides (``--verbose`` keeps them)."""


def quiet_libraries(verbose: bool) -> None:
    """Raise the libraries' loggers to WARNING (MLflow logs its database set-up and experiment creation at INFO)."""
    import logging

    if verbose:
        logging.getLogger().setLevel(logging.INFO)
        return
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _stage_status(console: Any) -> Any:
    """A DSPy callback showing which CaT stage is running, on stderr, and counting the LM calls each role's
    stages got answered (``answered``: cache hits included, which DSPy's usage tracker does not record)."""
    import threading

    from dspy.utils.callback import BaseCallback

    from cat_dspy.modules.base import RoleModule

    status = console.status("starting…")
    lock = threading.Lock()

    class StageStatus(BaseCallback):
        def __init__(self) -> None:
            self.role: str | None = None  # the role whose stage runs (CaT's stages run one after another)
            self.roles: dict[int, str] = {}  # id(LM) -> role
            self.answered: dict[str, int] = {}

        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            if isinstance(instance, RoleModule):
                self.role = self.roles.get(id(instance.lm), self.role)
                status.update(f"{type(instance).__name__} ({type(instance).__module__.rsplit('.', 1)[-1]})…")

        def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
            if exception is None and self.role is not None:
                with lock:
                    self.answered[self.role] = self.answered.get(self.role, 0) + 1

    return status, StageStatus()


def solve(args: argparse.Namespace) -> dict[str, Any]:
    """Run CaT on one question with the roles named in ``args``; returns the result as a plain dict."""
    import time

    import dspy
    import mlflow  # noqa: F401 (imported before its loggers are quieted: it sets their levels at import)
    from rich.console import Console

    from cat_dspy import tracking
    from cat_dspy.modules import CaT

    quiet_libraries(getattr(args, "verbose", False))
    if getattr(args, "extraction", None) is None:
        args.extraction = default_extraction(args.policy)
    console = Console(stderr=True, quiet=args.json and not sys.stderr.isatty())
    status, callback = _stage_status(console)
    with status:
        status.update("loading models…")
        load_start = time.perf_counter()
        lms = build_roles(args)
        load_seconds = time.perf_counter() - load_start
        callback.roles.update({id(lm): role for role, lm in reversed(lms.items())})
        cat = CaT(
            g=args.g,
            mode=args.mode,
            policy=lms["policy"],
            anchor=lms["anchor"],
            judge=lms["judge"],
            question_aware=args.question_aware,
            per_criterion=args.per_criterion,
            length_limit=args.length_limit,
            equivalence=args.equivalence,
            extraction=args.extraction,
            temperature=role_settings(args)["policy"]["temperature"],
        )
        if args.program:
            cat.load(args.program)
        params = {"g": args.g, "mode": args.mode, "question_aware": args.question_aware, "seed": args.seed,
                  "equivalence": args.equivalence, "extraction": args.extraction}
        params |= {f"{role}.{k}": v for role, opts in role_settings(args).items() for k, v in opts.items()}
        params["program"] = args.program
        with tracking.run(args.experiment, run_name="solve", traces=args.traces):
            tracking.log_params(params)
            start = time.perf_counter()
            with dspy.context(callbacks=[*dspy.settings.callbacks, callback]):
                pred = cat(question=args.question)
            seconds = time.perf_counter() - start
            result = {
                "question": args.question,
                "rollouts": pred.rollouts,
                "reference": pred.reference,
                "reference_answer": pred.reference_answer,
                "answers": pred.answers,
                "rubric": pred.rubric,
                "verdicts": pred.verdicts,
                "rewards": pred.rewards,
                "parsed": pred.parsed,
                "failures": pred.failures,
                "valid": bool(pred.valid),
                "failed_calls": failed_calls(pred.failures),
                "usage": pred.usage,
                "cache_hits": cache_hits(pred.usage, callback.answered),
                "seconds": {"solve": seconds, "model_load": load_seconds},
            }
            _log_result(result)
    return result


def cache_hits(usage: dict[str, dict[str, float]], answered: dict[str, int]) -> dict[str, int]:
    """LM calls per role that DSPy answered from its cache: the calls answered minus those the usage tracker
    recorded (it records only calls that reached a model).

    Examples:
        >>> cache_hits({"policy": {"calls": 0}, "anchor": {"calls": 1}}, {"policy": 4, "anchor": 1})
        {'policy': 4, 'anchor': 0}
    """
    return {role: max(0, answered.get(role, 0) - int(counts.get("calls", 0))) for role, counts in usage.items()}


def failed_calls(failures: list[str]) -> dict[str, int]:
    """Failed LM calls by role, from CaT's failure reasons (``rollout_error: ...``, ``anchor_error: ...``, ...).

    Examples:
        >>> failed_calls(["rollout_error: LMTimeoutError: t", "reference_without_answer", "anchor_error: x"])
        {'rollout': 1, 'anchor': 1, 'judge': 0}
    """
    return {role: sum(f.startswith(f"{role}_error") for f in failures) for role in ("rollout", "anchor", "judge")}


def unproduced(result: dict[str, Any]) -> str | None:
    """Why ``solve`` produced no result (every rollout call failed, or no reference), else None.

    Examples:
        >>> unproduced({"rollouts": ["", ""], "failed_calls": {"rollout": 2}, "reference": ""})
        'no rollout could be produced (2 of 2 rollout calls failed)'
        >>> unproduced({"rollouts": ["x"], "failed_calls": {"rollout": 0, "anchor": 1}, "reference": ""})
        'no reference could be produced (1 anchor call failed)'
    """
    g, failed = len(result["rollouts"]), result["failed_calls"]
    if failed.get("rollout", 0) >= g:
        return f"no rollout could be produced ({failed['rollout']} of {g} rollout calls failed)"
    if not (result["reference"] or "").strip():
        return f"no reference could be produced ({failed.get('anchor', 0)} anchor call failed)"
    return None


def outcome(result: dict[str, Any]) -> str:
    """One line saying what CaT did on this question: how many rollouts agree with the synthesized reference, and
    whether the reference is the rollouts' majority answer (verifiable mode), or the mean rubric reward.

    Examples:
        >>> r = {"answers": ["5", "5", "12", "3"], "reference_answer": "12", "rewards": [0, 0, 1, 0], "rubric": []}
        >>> print(outcome(r))
        1 of 4 rollouts agree with the reference answer 12 (reward 1); the others answered 5, 5, 3 (reward 0).
        The reference is not the rollouts' majority answer (5): the anchor sided with a minority.
        >>> r = {"answers": ["12", "12", "7", None], "reference_answer": "12", "rewards": [1, 1, 0, 0], "rubric": []}
        >>> print(outcome(r))
        2 of 4 rollouts agree with the reference answer 12 (reward 1); the others answered 7, none (reward 0).
        The reference is the rollouts' majority answer.
        >>> print(outcome({"answers": ["9", "8"], "reference_answer": "17", "rewards": [0, 0], "rubric": []}))
        0 of 2 rollouts agree with the reference answer 17 (reward 1); the others answered 9, 8 (reward 0).
        No rollout has the reference's answer: the anchor went beyond selecting one.
        >>> print(outcome({"answers": ["9", None], "reference_answer": None, "rewards": [0, 0], "rubric": []}))
        The reference has no final answer, so every rollout gets reward 0: this group gives no training signal.
        >>> print(outcome({"answers": [], "reference_answer": None, "rewards": [0.6, 0.2], "rubric": ["a"] * 5}))
        Mean reward 0.40 over 2 rollouts: the share of the 5 self-proposed criteria the judge marks satisfied.
    """
    from cat_dspy.scoring.rewards import majority_answer

    rewards, answers, reference = result["rewards"], result["answers"], result["reference_answer"]
    if not answers:
        criteria = len(result.get("rubric") or [])
        mean = sum(rewards) / len(rewards) if rewards else 0.0
        return (f"Mean reward {mean:.2f} over {len(rewards)} rollouts: the share of the {criteria} self-proposed "
                "criteria the judge marks satisfied.")
    if reference is None:
        return "The reference has no final answer, so every rollout gets reward 0: this group gives no training signal."
    agree = [i for i, r in enumerate(rewards) if r > 0]
    others = ", ".join("none" if answers[i] is None else str(answers[i]) for i in range(len(answers)) if i not in agree)
    line = (f"{len(agree)} of {len(rewards)} rollouts agree with the reference answer {reference} (reward 1)"
            + (f"; the others answered {others} (reward 0)." if others else "."))
    majority, _, members = majority_answer(list(answers))
    if not agree:
        return line + " No rollout has the reference's answer: the anchor went beyond selecting one."
    if set(agree) & set(members) and len(agree) >= len(members):
        return line + " The reference is the rollouts' majority answer."
    return line + f" The reference is not the rollouts' majority answer ({majority}): the anchor sided with a minority."


def _log_result(result: dict[str, Any]) -> None:
    import mlflow

    from cat_dspy import tracking

    rewards = result["rewards"]
    metrics = {
        "reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
        "reward_spread": (max(rewards) - min(rewards)) if rewards else 0.0,
        "synthesis_parsed": float(bool(result["parsed"].get("synthesis"))),
        "failures": float(len(result["failures"])),
        "valid": float(result["valid"]),
        "seconds": result["seconds"]["solve"],
    }
    metrics |= {f"{role}_errors": float(n) for role, n in result["failed_calls"].items()}
    for role, counts in result["usage"].items():
        metrics |= {f"{role}.{k}": float(v) for k, v in counts.items()}
    mlflow.log_metrics(metrics)
    tracking.log_json(result, "result.json")
    tracking.log_text(result["reference"], "reference.md")
    tracking.log_json({"rollouts": result["rollouts"]}, "rollouts.json")
    if result["rubric"]:
        tracking.log_json({"rubric": result["rubric"], "verdicts": result["verdicts"]}, "rubric.json")


def _print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    console = Console()
    for i, rollout in enumerate(result["rollouts"], 1):
        console.print(Panel(rollout or "[dim](empty)[/dim]", title=f"rollout {i}", title_align="left"))
    console.print(Panel(result["reference"] or "[dim](empty)[/dim]", title="reference (anchor synthesis)"))
    if result["rubric"]:
        console.print(Panel("\n".join(f"{i}. {c}" for i, c in enumerate(result["rubric"], 1)), title="rubric"))
    table = Table("rollout", "answer" if result["answers"] else "verdicts", "reward")
    for i, reward in enumerate(result["rewards"]):
        marks = "".join("✓" if v else "✗" for v in (result["verdicts"] or [[]] * (i + 1))[i])
        detail = result["answers"][i] if result["answers"] else marks
        table.add_row(str(i + 1), str(detail), f"{reward:.2f}")
    console.print(table)
    console.print(f"reference answer: {result['reference_answer']}   valid: {result['valid']}   "
                  f"failures: {result['failures'] or 'none'}")
    from cat_dspy.lm.usage import compute_summary

    seconds = result["seconds"]
    console.print(f"compute (solve {seconds['solve']:.1f} s, model load {seconds['model_load']:.1f} s):",
                  highlight=False)
    for line in compute_summary(result["usage"], result.get("cache_hits")):
        console.print("  " + line, highlight=False, markup=False, soft_wrap=True)  # one line per role
    console.print(f"[bold]{outcome(result)}[/bold]", highlight=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy solve``."""
    _add_solve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry of ``cat-dspy solve``: 0 on success; 1 when no rollout or no reference could be produced (every
    rollout call failed, or the anchor's synthesis failed). ``--json`` output carries ``valid`` (False when any
    rollout, anchor or judge call failed) and ``failed_calls`` per role either way."""
    result = solve(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, default=str))
    else:
        _print_report(result)
    missing = unproduced(result)
    if missing:
        print(f"cat-dspy solve: {missing}; failures: {result['failures']}", file=sys.stderr)
        return 1
    if not result["valid"]:
        print(f"cat-dspy solve: warning: invalid result (a backend call failed): {result['failures']}",
              file=sys.stderr)
    return 0

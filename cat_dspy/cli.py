"""The ``cat-dspy`` command line: solve | eval | compare | train | optimize | serve.

Each subcommand lives next to the code it drives and exposes ``add_arguments(parser)`` and ``run(args) -> int``;
this file holds the dispatcher, the options every command shares (one way to name a model for every role), and
``solve``. Heavy imports (torch, mlflow) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from cat_dspy.extraction import EXTRACTIONS

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROLES = ("policy", "anchor", "judge")
# Sampling defaults per role: the policy explores, the anchor reconciles, the judge decides.
ROLE_TEMPERATURE = {"policy": 1.0, "anchor": 0.7, "judge": 0.0}
COMMANDS = {
    "solve": "cat_dspy.cli",
    "eval": "cat_dspy.evaluation.cli",
    "compare": "cat_dspy.evaluation.compare",
    "train": "cat_dspy.train",
    "optimize": "cat_dspy.optimize",
    "serve": "cat_dspy.serve",
}


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--policy/--anchor/--judge`` model strings and per-role sampling options to ``parser``."""
    group = parser.add_argument_group(
        "models",
        "Every role takes a model string: 'local' (embedded SmolLM2-135M), 'local:<path>' (a transformers "
        "checkpoint), or any DSPy/LiteLLM string (openai/<m>, anthropic/<m>, hosted_vllm/<m>). API keys are read "
        "from the environment only. Per-role overrides: --{policy,anchor,judge}-{api-base,temperature,top-p,top-k,"
        "max-tokens}.",
    )
    for role in ROLES:
        group.add_argument(f"--{role}", default="local", metavar="MODEL", help=f"{role} model (default: local)")
    group.add_argument("--api-base", default=None, help="OpenAI-compatible base URL for every non-local role")
    group.add_argument("--max-tokens", type=int, default=256, help="max new tokens per call (default: 256)")
    group.add_argument("--temperature", type=float, default=None, help="policy sampling temperature (default 1.0)")
    group.add_argument("--seed", type=int, default=None, help="sampling seed (also separates cache entries)")
    group.add_argument("--no-cache", action="store_true", help="bypass DSPy's LM cache")
    for role in ROLES:
        group.add_argument(f"--{role}-api-base", default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-temperature", type=float, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-top-p", type=float, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-top-k", type=int, default=None, help=argparse.SUPPRESS)
        group.add_argument(f"--{role}-max-tokens", type=int, default=None, help=argparse.SUPPRESS)


def add_answer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--equivalence`` and ``--extraction``: how final answers are compared and read (verifiable mode)."""
    group = parser.add_argument_group("answers")
    group.add_argument("--equivalence", choices=("symbolic", "string"), default="symbolic",
                       help="answer matching: string match then math-verify (default), or string only (the paper)")
    group.add_argument("--extraction", choices=EXTRACTIONS, default="strict",
                       help="final answers: box, #### or 'the answer is' only (default), or else the last number")


def role_settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The model string and sampling options of each role, as parsed from ``args`` (no secrets, loggable)."""
    settings = {}
    for role in ROLES:
        temperature = getattr(args, f"{role}_temperature")
        if temperature is None:
            temperature = args.temperature if role == "policy" and args.temperature is not None else None
        if temperature is None:
            temperature = ROLE_TEMPERATURE[role]
        model = getattr(args, role)
        settings[role] = {
            "model": model,
            "api_base": None if model.startswith("local") else (getattr(args, f"{role}_api_base") or args.api_base),
            "temperature": temperature,
            "top_p": getattr(args, f"{role}_top_p"),
            "top_k": getattr(args, f"{role}_top_k"),
            "max_tokens": getattr(args, f"{role}_max_tokens") or args.max_tokens,
        }
    return settings


def build_roles(args: argparse.Namespace) -> dict[str, Any]:
    """One ``dspy.LM`` per role; roles naming the same local model share one loaded model and batcher."""
    from cat_dspy.lm.models import make_lm

    lms = {}
    for role, options in role_settings(args).items():
        extra = {"seed": args.seed} if args.seed is not None else {}
        lms[role] = make_lm(options.pop("model"), cache=not args.no_cache, **options, **extra)
    return lms


def _add_solve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question to solve")
    parser.add_argument("--g", type=int, default=8, help="rollouts per question, G (default: 8)")
    parser.add_argument("--mode", choices=("verifiable", "rubric"), default="verifiable")
    parser.add_argument("--question-aware", action="store_true", help="show the anchor the question (ablation)")
    parser.add_argument("--per-criterion", action="store_true", help="one judge call per criterion (paper form)")
    parser.add_argument("--length-limit", type=int, default=None, metavar="N",
                        help="reward -1 for rollouts over N tokens of the policy's tokenizer (local models); API "
                             "policies have no known tokenizer: whitespace words, with a warning (parsed.length_unit)")
    parser.add_argument("--program", default=None, help="a saved (optimized) CaT program to load")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a report")
    parser.add_argument("--experiment", default="cat-dspy-solve", help="MLflow experiment (default: cat-dspy-solve)")
    parser.add_argument("--traces", action="store_true", help="record DSPy traces in MLflow (mlflow.dspy.autolog)")
    add_answer_arguments(parser)
    add_role_arguments(parser)


def _stage_status(console: Any) -> Any:
    """A DSPy callback showing which CaT stage is running, on stderr."""
    from dspy.utils.callback import BaseCallback

    from cat_dspy.modules.base import RoleModule

    status = console.status("starting…")

    class StageStatus(BaseCallback):
        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            if isinstance(instance, RoleModule):
                status.update(f"{type(instance).__name__} ({type(instance).__module__.rsplit('.', 1)[-1]})…")

    return status, StageStatus()


def solve(args: argparse.Namespace) -> dict[str, Any]:
    """Run CaT on one question with the roles named in ``args``; returns the result as a plain dict."""
    import time

    import dspy
    from rich.console import Console

    from cat_dspy import tracking
    from cat_dspy.modules import CaT
    from cat_dspy.program_file import load_program

    console = Console(stderr=True, quiet=args.json and not sys.stderr.isatty())
    status, callback = _stage_status(console)
    with status:
        status.update("loading models…")
        load_start = time.perf_counter()
        lms = build_roles(args)
        load_seconds = time.perf_counter() - load_start
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
            load_program(cat, args.program)
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
                "seconds": {"solve": seconds, "model_load": load_seconds},
            }
            _log_result(result)
    return result


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
    console.print({role: {k: round(v, 2) for k, v in u.items()} for role, u in result["usage"].items()})


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


class WarnOnce(logging.Filter):
    """Let the first record starting with ``prefix`` through and drop the repeats (DSPy warns once per truncated
    completion: hundreds of identical lines in a run of small token budgets).

    Examples:
        >>> f = WarnOnce("LM response was truncated")
        >>> rec = lambda msg: logging.LogRecord("dspy", logging.WARNING, __file__, 1, msg, None, None)
        >>> [f.filter(rec(m)) for m in ("LM response was truncated", "LM response was truncated", "other")]
        [True, False, True]
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.seen = prefix, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.prefix):
            return True
        self.seen += 1
        return self.seen == 1


def main(argv: list[str] | None = None) -> int:
    """The ``cat-dspy`` console script."""
    logging.basicConfig(level=os.environ.get("CAT_DSPY_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    dspy_lm_logger = logging.getLogger("dspy.clients.lm")
    if not any(isinstance(f, WarnOnce) for f in dspy_lm_logger.filters):  # main() may run many times in a process
        dspy_lm_logger.addFilter(WarnOnce("LM response was truncated"))
    parser = argparse.ArgumentParser(prog="cat-dspy", description="Compute as Teacher as DSPy programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # command not installed in this build
        modules[name] = module
        doc = (module.run.__doc__ or "").strip().splitlines()[0] if name != "solve" else "Run CaT on one question."
        module.add_arguments(sub.add_parser(name, help=doc, description=doc))
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and hasattr(modules.get(argv[0]), "run_argv"):
        return modules[argv[0]].run_argv(argv[1:])  # a command with its own parser (train: TRL's TrlParser)
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

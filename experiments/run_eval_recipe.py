"""Run a test-time evaluation recipe (experiments/recipes/eval-*.yaml) through ``cat-dspy eval``.

    python experiments/run_eval_recipe.py experiments/recipes/eval-math500.yaml --family gemma3
    python experiments/run_eval_recipe.py experiments/recipes/eval-math500.yaml --smoke        # embedded model
    python experiments/run_eval_recipe.py experiments/recipes/eval-g-scaling.yaml --family qwen3 --dry-run
    python experiments/run_eval_recipe.py RECIPE --family llama31 -- --limit 100 --num-threads 8   # extra args

A recipe lists one or more ``runs`` (dataset, G values, methods, max tokens); ``eval-families.yaml`` gives each model
family's model string and the paper's sampling settings. ``--smoke`` runs every role on the embedded model with
the recipe's ``smoke`` overrides (few questions, small G, short completions) and the family's sampling settings.
Each run is logged to the MLflow experiment ``<recipe experiment>-<family>[-smoke]``; compare with
``cat-dspy compare --experiment <that name>``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
FAMILIES = HERE / "recipes" / "eval-families.yaml"


def _sampling_args(role: str, sampling: dict[str, Any]) -> list[str]:
    args = []
    for key in ("temperature", "top_k", "top_p"):
        if sampling.get(key) is not None:
            args += [f"--{role}-{key.replace('_', '-')}", str(sampling[key])]
    return args


def recipe_commands(recipe: dict[str, Any], families: dict[str, Any], family: str, smoke: bool = False,
                    extra: list[str] | None = None) -> list[list[str]]:
    """The ``cat-dspy eval`` argument lists of a recipe, one per run.

    Examples:
        >>> fams = {"families": {"f": {"model": "hosted_vllm/m", "sampling": {"temperature": 0.7, "top_k": 20}}},
        ...         "api_base": "http://h/v1", "judge": "openai/j", "judge_sampling": {"temperature": 0.0},
        ...         "smoke_model": "local"}
        >>> rec = {"experiment": "x", "runs": [{"dataset": "math500", "g": [8], "methods": ["cat"]}],
        ...        "smoke": {"limit": 2, "g": [1, 2], "max_tokens": 32}}
        >>> " ".join(recipe_commands(rec, fams, "f", smoke=True)[0])[:100]
        'eval --dataset math500 --g 1,2 --methods cat --experiment x-f-smoke --limit 2 --max-tokens 32 --poli'
    """
    if family not in families["families"]:
        raise SystemExit(f"unknown family {family!r}; choose from {', '.join(families['families'])}")
    fam = families["families"][family]
    commands = []
    for run in recipe["runs"]:
        spec = {**run, **(recipe.get("smoke", {}) if smoke else {})}
        argv = ["eval", "--dataset", str(spec["dataset"]), "--g", ",".join(map(str, spec["g"])),
                "--methods", ",".join(spec["methods"]),
                "--experiment", f"{recipe['experiment']}-{family}" + ("-smoke" if smoke else "")]
        if spec.get("limit") is not None:
            argv += ["--limit", str(spec["limit"])]
        if spec.get("max_tokens") is not None:
            argv += ["--max-tokens", str(spec["max_tokens"])]
        if smoke:
            model = families.get("smoke_model", "local")
            argv += ["--policy", model, "--anchor", model, "--judge", model]
        else:
            argv += ["--policy", fam["model"], "--anchor", fam["model"], "--judge", families["judge"]]
            if families.get("api_base"):  # the vLLM server serves policy and anchor; the judge is an API model
                argv += ["--policy-api-base", families["api_base"], "--anchor-api-base", families["api_base"]]
        argv += _sampling_args("policy", fam["sampling"]) + _sampling_args("anchor", fam["sampling"])
        argv += _sampling_args("judge", families.get("judge_sampling", {}))
        if fam.get("prompt_prefix"):
            argv += ["--prompt-prefix", fam["prompt_prefix"]]
        commands.append(argv + list(extra or []))
    return commands


def main(argv: list[str] | None = None) -> int:
    """Run (or print, with ``--dry-run``) every run of a recipe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path, help="an experiments/recipes/eval-*.yaml file")
    parser.add_argument("--family", default="gemma3", help="gemma3 | qwen3 | llama31 (default: gemma3)")
    parser.add_argument("--smoke", action="store_true", help="the small version on the embedded model")
    parser.add_argument("--dry-run", action="store_true", help="print the cat-dspy commands instead of running")
    parser.epilog = "Arguments after -- go to every cat-dspy eval command (e.g. -- --limit 50)."
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    recipe = yaml.safe_load(args.recipe.read_text())
    families = yaml.safe_load(FAMILIES.read_text())
    commands = recipe_commands(recipe, families, args.family, smoke=args.smoke, extra=extra)
    if args.dry_run:
        for command in commands:
            print(shlex.join(["cat-dspy", *command]))
        return 0
    from cat_dspy.cli import main as cat_dspy

    for command in commands:
        print("+ " + shlex.join(["cat-dspy", *command]), file=sys.stderr, flush=True)
        code = cat_dspy(command)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())

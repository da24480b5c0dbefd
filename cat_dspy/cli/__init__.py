"""The ``cat-dspy`` command line: solve | eval | signals | compare | train | sft | optimize | serve.

A static table maps each subcommand to its module, which exposes ``add_arguments(parser)`` and ``run(args) -> int``
(``train`` and ``sft`` have their own parser: ``run_argv``). The commands only parse arguments and call the library
(:mod:`cat_dspy.cli.common` holds the options they share). Heavy imports (torch, mlflow) happen inside the
commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = {
    "solve": "cat_dspy.cli.solve",
    "eval": "cat_dspy.cli.eval",
    "signals": "cat_dspy.cli.signals",
    "compare": "cat_dspy.evaluation.compare",
    "train": "cat_dspy.cli.train",
    "sft": "cat_dspy.cli.sft",
    "optimize": "cat_dspy.cli.optimize",
    "serve": "cat_dspy.cli.serve",
}


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
    from cat_dspy.lm.hf import EmbeddedModelMissing, LocalStackMissing

    try:
        if argv and hasattr(modules.get(argv[0]), "run_argv"):
            return modules[argv[0]].run_argv(argv[1:])  # a command with its own parser (train: TRL's TrlParser)
        args = parser.parse_args(argv)
        return modules[args.command].run(args)
    except (EmbeddedModelMissing, LocalStackMissing) as exc:  # an install step left out: one line with the fix
        print(f"cat-dspy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Run ``cat-dspy eval`` on scripted, slow LMs that log every call: the process the crash tests SIGKILL.

Usage: ``python eval_driver.py CALL_LOG DELAY_S -- <cat-dspy eval arguments>``. Every LM call appends one line
``pid<TAB>role<TAB>question<TAB>prompt-hash`` to CALL_LOG (flushed before the answer is returned), then sleeps
DELAY_S. The scripted answers are pure functions of the prompt, so a rerun gets the same answers and DSPy's
cache (in the run directory) can serve them.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time

_QID = re.compile(r"\bQ(\d+)\b")


def _logged(role: str, answer, log_path: str, delay: float):
    def script(prompt: str) -> str:
        qid = _QID.search(prompt)
        line = f"{os.getpid()}\t{role}\t{'Q' + qid.group(1) if qid else '-'}\t"
        line += hashlib.sha1(prompt.encode("utf-8", "replace")).hexdigest()[:12] + "\n"
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one O_APPEND write: whole lines even when the process is killed
        finally:
            os.close(fd)
        time.sleep(delay)
        return answer(prompt)

    return script


def _solve(prompt: str) -> str:
    if "best response" in prompt:  # self-BoN's SelectBest
        return "1"
    n = int(_QID.search(prompt).group(1))
    return f"Q{n}: {n} + {n} = {2 * n}. Therefore, the final answer is: $\\boxed{{{2 * n}}}$."


def _synthesize(prompt: str) -> str:
    qid = _QID.search(prompt)
    n = int(qid.group(1)) if qid else 0
    return f"# SUMMARY\nAll agree.\n# UNIFIED RESPONSE\nQ{n}: the final answer is: $\\boxed{{{2 * n}}}$."


def scripted_roles(log_path: str, delay: float, cache: bool = True) -> dict:
    """The three role LMs, cached by DSPy (as ``cat-dspy eval`` builds them) unless ``cache`` is False, answering
    from pure scripts."""
    from cat_dspy.testing import scripted_lm

    return {
        "policy": scripted_lm(_logged("policy", _solve, log_path, delay), cache=cache),
        "anchor": scripted_lm(_logged("anchor", _synthesize, log_path, delay), cache=cache),
        "judge": scripted_lm(_logged("judge", lambda p: "no", log_path, delay), cache=cache),
    }


def main(argv: list[str]) -> int:
    """Run ``cat-dspy eval`` with :func:`scripted_roles`; returns its exit code."""
    import argparse

    from cat_dspy.cli import common as cli
    from cat_dspy.cli import eval as eval_cli

    log_path, delay, sep, *rest = argv
    assert sep == "--", "usage: eval_driver.py CALL_LOG DELAY_S -- <eval arguments>"
    cli.build_roles = lambda args: scripted_roles(log_path, float(delay))
    parser = argparse.ArgumentParser(prog="cat-dspy eval")
    eval_cli.add_arguments(parser)
    return eval_cli.run(parser.parse_args(rest))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Evaluate and optimize CaT from Python with plain arguments: the library functions ``cat-dspy eval`` and
``cat-dspy optimize`` call (training: ``cat_dspy.rl.train.main(script_args, training_args, model_args)``).

Run: python programs/python_api.py [WORKDIR]   (the embedded model on CPU: a few minutes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cat_dspy import make_lm
from cat_dspy.datasets import load_dataset
from cat_dspy.evaluation.evaluate import evaluate
from cat_dspy.lm.roles import ROLE_TEMPERATURE, ROLES
from cat_dspy.optimization.compile import OptimizeConfig, optimize


def main(workdir: str | Path = "python_api_run", lms: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate single / majority / CaT on small sums, then optimize the synthesis prompt; returns both results."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(1, 7)))
    lms = lms or {role: make_lm("local", temperature=ROLE_TEMPERATURE[role], max_tokens=128) for role in ROLES}

    evaluation = evaluate(load_dataset(str(data)), lms, workdir / "eval", g=(1, 2),
                          methods=("single", "majority", "cat"))
    for row in evaluation.rows:
        print(f"{row['method']:>8} G={row['g']}: accuracy {row['accuracy']:.2f}")

    config = OptimizeConfig(target="synthesize", dataset=str(data), train=3, dev=1, g=2, cache="none",
                            out=str(workdir / "synthesize.json"), experiment="python-api")
    optimized = optimize(config, lms)
    print(f"optimized synthesis prompt saved to {optimized['out']}")
    return {"rows": evaluation.rows, "optimized": optimized}


if __name__ == "__main__":
    main(*sys.argv[1:2])

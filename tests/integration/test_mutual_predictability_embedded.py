"""``mp`` (mutual predictability) through ``cat-dspy eval`` and ``compare`` on the real embedded model: one question,
G=3, 24-token rollouts; its choice, its counted compute, and CaT's disagreement with Self-BoN in the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cat_dspy.cli import main
from cat_dspy.evaluation.methods import MutualPredictability, answer_span, span_nll
from cat_dspy.lm.models import make_lm

pytestmark = pytest.mark.integration


def test_mp_on_the_embedded_model(tiny_gsm8k, capsys):
    argv = ["eval", "--dataset", "gsm8k", "--data-dir", str(tiny_gsm8k), "--limit", "1", "--g", "3", "--methods",
            "single,self_bon,mp,cat", "--max-tokens", "24", "--experiment", "it-mp", "--no-progress",
            "--extraction", "flexible"]
    assert main(argv) == 0
    run_dir = Path(re.search(r"run dir: (\S+)", capsys.readouterr().out).group(1))
    [record] = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    mp = next(r for r in record["results"] if r["method"] == "mp")
    nlls = mp["extra"]["nll"]
    assert mp["usage"]["policy"]["calls"] == 3 and mp["usage"]["policy"]["prompt_tokens"] > 0
    scored = [i for i, v in enumerate(nlls) if v is not None]
    assert scored and mp["index"] == min(scored, key=nlls.__getitem__)
    unfound = [answer_span(r, a) is None for r, a in zip(record["rollouts"], record["rollout_answers"], strict=True)]
    assert mp["extra"]["whole_rollout"] == sum(unfound) and (mp["fallback"] == "no_answer_span") == any(unfound)
    # The same NLLs from the policy scoring the three prompts again, directly.
    module = MutualPredictability(lm=make_lm("local"))
    prompts, spans, _ = module.prompts(record["question"], record["rollouts"], record["rollout_answers"])
    again = [span_nll(t, a, b) for t, (a, b) in zip(module.lm.engine.score(prompts), spans, strict=True)]
    assert again == pytest.approx(nlls, abs=1e-3)

    assert main(["compare", "--experiment", "it-mp", "--json"]) == 0
    rows = {r["method"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["mp"]["policy.calls"] == 3 + 3  # its rollouts and its scored prompts
    assert rows["cat"]["disagree_self_bon_rate"] in (0.0, 1.0)

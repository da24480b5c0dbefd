"""``cat-dspy eval`` + ``compare`` on the real embedded model: tiny (2 questions of a generated GSM8K-format set,
G ∈ {1, 2}, 32 tokens)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cat_dspy.cli import main

pytestmark = pytest.mark.integration


def test_eval_on_the_embedded_model_then_compare_and_resume(tiny_gsm8k, capsys):
    argv = ["eval", "--dataset", "gsm8k", "--data-dir", str(tiny_gsm8k), "--limit", "2", "--g", "1,2", "--methods",
            "single,majority,self_bon,min_ppl,cat", "--max-tokens", "32", "--experiment", "it", "--no-progress",
            "--extraction", "flexible"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run_dir = Path(re.search(r"run dir: (\S+)", out).group(1))
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["gsm8k-test-0", "gsm8k-test-1"]  # in the order they finished
    for record in records:
        assert len(record["rollouts"]) == 2 and all(u["calls"] == 1 for u in record["rollout_usage"])
        assert all(nll is not None and nll >= 0 for nll in record["rollout_nll"])  # real logprobs reach min_ppl
        assert {(r["method"], r["g"]) for r in record["results"]} == {
            (m, g) for m in ("single", "majority", "self_bon", "min_ppl", "cat") for g in (1, 2)}
        assert not any(r["fallback"] == "no_logprobs" for r in record["results"])
        single = next(r for r in record["results"] if (r["method"], r["g"]) == ("single", 1))
        assert (single["answer"] is not None) == bool(re.search(r"\d", record["rollouts"][0]))  # flexible: last number
    assert (run_dir / "accuracy_vs_g.png").is_file()

    assert main(["compare", "--experiment", "it", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 10 and all(r["n"] == 2.0 for r in rows)
    cat = next(r for r in rows if r["method"] == "cat" and r["g"] == 2)
    assert cat["anchor.calls"] == 2 and cat["policy.calls"] == 4 and cat["tokens"] > 0

    assert main(argv) == 0  # resumed: both questions re-read
    assert "2 resumed" in capsys.readouterr().out

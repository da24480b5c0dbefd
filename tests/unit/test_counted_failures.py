"""No silent failure: every fallback of grading and rewards is a counted reason where the user sees numbers.

Equivalence-worker failures (start, crash, error, timeout, busy) are injected by replacing the worker's program;
backend failures by scripted engines that raise and by :mod:`cat_dspy.testing.faults`.
"""

from __future__ import annotations

import json
import logging
import queue

import pytest
from dspy import lm15

from cat_dspy import cli
from cat_dspy.datasets import Item
from cat_dspy.evaluation.report import failure_totals, row_metrics, summarize
from cat_dspy.evaluation.runner import build_programs, run_eval
from cat_dspy.modules import CaT, Synthesize
from cat_dspy.modules.base import is_backend_failure
from cat_dspy.rewards import CaTReward
from cat_dspy.scoring import equivalence as answers
from cat_dspy.scoring import extraction, parsing
from cat_dspy.scoring.counters import parse_failure_stats
from cat_dspy.scoring.equivalence import EQUIVALENCE_FALLBACKS, collect_equivalence, equivalence_stats, equivalent
from cat_dspy.testing import scripted_lm
from cat_dspy.testing.faults import faulty_lm

# Replacement worker programs (each one fails one way); the real one is restored after each test.
NO_START = "import sys; sys.stderr.write('math_verify is broken here'); sys.exit(3)"
CRASH = ("import sys\nprint('READY', flush=True)\nsys.stdin.readline()\n"
         "sys.stderr.write('worker died mid-request'); sys.stderr.flush()\nsys.exit(9)")
ERROR = ("import sys, json\nprint('READY', flush=True)\n"
         "for line in sys.stdin:\n    print(json.dumps({'e': 'ValueError(sympy blew up)'}), flush=True)")
HANG = "import sys, time\nprint('READY', flush=True)\nfor line in sys.stdin:\n    time.sleep(60)"
PAIR = (r"\sqrt{4}", "x")  # not equal as strings, not plain numbers: only math-verify can decide


@pytest.fixture
def short_timeout(monkeypatch):
    """Answer checks called without a timeout (the rewards, grading) get 0.3 s instead of 2 s."""
    monkeypatch.setitem(answers.equivalent.__kwdefaults__, "timeout", 0.3)


@pytest.fixture
def worker_program(monkeypatch):
    """Run the symbolic check with another worker program; the warn-once memory and workers are reset."""

    def use(code: str) -> None:
        answers.shutdown_equivalence_workers()
        monkeypatch.setattr(answers, "_WORKER_CODE", code)
        answers._stats._warned.clear()

    yield use
    answers.shutdown_equivalence_workers()  # the next check starts real workers again
    answers._stats._warned.clear()


def _delta(before: dict[str, int]) -> dict[str, int]:
    after = equivalence_stats()
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.mark.parametrize(("code", "reason", "cause"), [
    (NO_START, "start_fallback", "math_verify is broken here"),
    (CRASH, "crash_fallback", "worker died mid-request"),
    (ERROR, "error_fallback", "sympy blew up"),
    (HANG, "timeout_fallback", "no verdict within 0.3 s"),
])
def test_each_worker_failure_is_a_counted_reason_logged_once_with_its_cause(worker_program, caplog, code, reason,
                                                                            cause):
    worker_program(code)
    before = equivalence_stats()
    with caplog.at_level(logging.DEBUG, logger="cat_dspy.scoring.equivalence"), collect_equivalence() as mine:
        assert equivalent(*PAIR, timeout=0.3) is False
        assert equivalent(*PAIR, timeout=0.3) is False
    assert _delta(before) == {"calls": 2, reason: 2}
    assert mine == {"calls": 2, reason: 2}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0].getMessage() and cause in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG and reason in r.getMessage() for r in caplog.records)  # the repeat


def test_busy_pool_is_a_counted_reason(monkeypatch, caplog):
    monkeypatch.setattr(answers, "_pool", queue.LifoQueue())  # every worker taken
    monkeypatch.setattr(answers, "_BUSY_WAIT_MIN", 0.05)
    answers._stats._warned.discard("busy_fallback")
    before = equivalence_stats()
    with caplog.at_level(logging.WARNING, logger="cat_dspy.scoring.equivalence"):
        assert equivalent(*PAIR, timeout=0.01) is False
    assert _delta(before) == {"calls": 1, "busy_fallback": 1}
    assert "no free math-verify worker" in caplog.text


def test_worker_recovers_after_the_failure(worker_program):
    real = answers._WORKER_CODE
    worker_program(CRASH)
    assert not equivalent(r"\sqrt{9}", "3")
    worker_program(real)
    assert equivalent(r"\sqrt{9}", "3")


def test_workers_serve_a_process_with_many_open_files():
    """A long run holds many descriptors: the worker's pipe may be >= 1024, where select() fails (it used to,
    and every check then fell back, counted as an error)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip("the descriptor limit is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        answers.shutdown_equivalence_workers()  # the next worker gets descriptors above 1024
        before = equivalence_stats()
        assert equivalent(r"\sqrt{4}", "2")
        assert _delta(before) == {"calls": 1, "symbolic_match": 1}
    finally:
        for fd in fds:
            os.close(fd)
        answers.shutdown_equivalence_workers()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------------------------------ rewards
def test_cat_and_trl_reward_count_equivalence_fallbacks(worker_program, short_timeout):
    worker_program(HANG)
    anchor = scripted_lm(["# UNIFIED RESPONSE so $\\boxed{2}$"])
    pred = CaT(g=2, policy=scripted_lm(["unused"]), anchor=anchor).score(["\\boxed{\\sqrt{4}}", "\\boxed{2}"])
    assert pred.rewards == [0.0, 1.0]  # the symbolic check gave no verdict: the string result, counted
    assert pred.parsed["equivalence_fallbacks"] == {"timeout_fallback": 1}
    assert "equivalence_fallback: timeout_fallback" in pred.failures and pred.valid

    reward = CaTReward(anchor, g=2, artifacts=False)
    reward.cat.equivalence = "symbolic"
    logged = {}
    before = equivalence_stats()
    reward(prompts=["q"] * 4, completions=["\\boxed{\\sqrt{4}}", "\\boxed{2}"] * 2,
           log_metric=lambda k, v: logged.__setitem__(k, v))
    timeouts = _delta(before)["timeout_fallback"]
    assert timeouts >= 2  # each group's reward check (and the metrics' own checks)
    assert logged["cat/equivalence_timeout_fallback"] == timeouts == logged["cat/equivalence_fallbacks"]
    assert logged["cat/equivalence_busy_fallback"] == 0 and logged["cat/anchor_errors"] == 0


def test_trl_reward_counts_anchor_errors():
    def down(prompt):
        raise ConnectionError("anchor down")

    reward = CaTReward(scripted_lm(down), g=2, artifacts=False)
    logged = {}
    assert reward(prompts=["q"] * 4, completions=["\\boxed{1}"] * 4,
                  log_metric=lambda k, v: logged.__setitem__(k, v)) == [None] * 4
    assert logged["cat/anchor_errors"] == 2 == logged["cat/invalid_groups"]
    assert logged["cat/equivalence_fallbacks"] == 0


# ------------------------------------------------------------------------------------------------ module calls
def test_backend_failures_are_data_and_bugs_propagate():
    def context(prompt):
        raise lm15.ContextLengthError("1250000 prompt tokens exceed 131072")

    pred = Synthesize(lm=scripted_lm(context))(rollouts=["a"])
    assert pred.error.startswith("ContextWindowExceededError") and pred.reference == ""
    for bug in (TypeError("bad argument"), AttributeError("no such attribute"), NameError("undefined")):
        def engine_bug(prompt, bug=bug):
            raise bug

        with pytest.raises(Exception) as info:  # DSPy wraps it (LMUnexpectedError) but keeps the cause
            Synthesize(lm=scripted_lm(engine_bug))(rollouts=["a"])
        assert not is_backend_failure(info.value) and isinstance(info.value.__cause__, type(bug))
    for backend in (ConnectionError("reset"), RuntimeError("CUDA out of memory"), TimeoutError("slow")):
        def engine_down(prompt, backend=backend):
            raise backend

        assert Synthesize(lm=scripted_lm(engine_down))(rollouts=["a"]).error  # counted, not raised


def test_a_bug_outside_the_engine_propagates(monkeypatch):
    from cat_dspy.adapters import FreeTextAdapter

    def broken_format(*args, **kwargs):
        raise AttributeError("adapter bug")

    monkeypatch.setattr(FreeTextAdapter, "format", broken_format)
    with pytest.raises(AttributeError, match="adapter bug"):
        Synthesize(lm=scripted_lm(["\\boxed{1}"]))(rollouts=["a"])


# ------------------------------------------------------------------------------------------------ eval summary
def _by(rows, method, g):
    return next(r for r in rows if r["method"] == method and r["g"] == g)


def test_failed_rollout_and_anchor_calls_are_counted_in_every_row(tmp_path):
    def policy(prompt):
        if "Q1" in prompt:
            raise lm15.ContextLengthError("1250000 prompt tokens exceed 131072")
        return "\\boxed{2}"

    def anchor(prompt):
        if "<response" in prompt and "\\boxed{2}" in prompt:
            raise ConnectionError("anchor down")
        return "# UNIFIED RESPONSE \\boxed{2}"

    lms = {"policy": scripted_lm(policy), "anchor": scripted_lm(anchor), "judge": scripted_lm(["no"])}
    items = [Item("q1", "Q1: what?", "2"), Item("q2", "Q2: what?", "2")]
    run = run_eval(items, build_programs(lms, mode="verifiable", g=2), [1, 2], ["single", "majority", "cat"],
                   tmp_path / "run", equivalence="string", progress=False, cache=False)
    rows = summarize(run.records)
    single1 = _by(rows, "single", 1)
    assert single1["accuracy"] == 0.5 and single1["rollout_errors"] == 1 and single1["failed_calls"] == 1
    assert _by(rows, "majority", 2)["rollout_errors"] == 2
    cat2 = _by(rows, "cat", 2)  # q1: no rollout, so no anchor call failed; q2: the anchor failed
    assert cat2["rollout_errors"] == 2 and cat2["anchor_errors"] == 1 and cat2["failed_calls"] == 3
    assert row_metrics(cat2)["anchor_errors"] == 1.0 and row_metrics(single1)["rollout_errors"] == 1.0
    totals = failure_totals(run.records)
    assert totals["rollout_errors"] == 2 and totals["anchor_errors"] == 2  # cat at G=1 and G=2 on q2


def test_equivalence_fallbacks_reach_the_rows(tmp_path, worker_program, short_timeout):
    worker_program(HANG)
    answers_ = {"Q1": "\\boxed{\\sqrt{4}}"}
    lms = {"policy": scripted_lm(lambda p: answers_["Q1"]), "anchor": scripted_lm(["\\boxed{2}"]),
           "judge": scripted_lm(["no"])}
    run = run_eval([Item("q1", "Q1: what?", "2")], build_programs(lms, mode="verifiable", g=1), [1], ["single"],
                   tmp_path / "run", progress=False, cache=False)
    row = summarize(run.records)[0]
    assert row["accuracy"] == 0.0 and row["equivalence_fallbacks"] == 1
    assert row["equivalence_fallback_kinds"] == {"timeout_fallback": 1}
    assert row_metrics(row)["equivalence.timeout_fallback"] == 1.0
    assert failure_totals(run.records)["equivalence.timeout_fallback"] == 2  # the row's grade and the rollout's


RUBRICS = [{"criterion": "Advises rest.", "points": 5}, {"criterion": "Mentions ice.", "points": 3}]


def test_healthbench_judge_down_is_ungraded_not_zero(tmp_path):
    def judge(prompt):
        raise ConnectionError("judge down")

    lms = {"policy": scripted_lm(["Rest and ice."]), "anchor": scripted_lm(["Rest."]), "judge": scripted_lm(judge)}
    items = [Item(f"h{i}", f"My ankle hurts ({i}).", None, rubrics=tuple(RUBRICS)) for i in range(3)]
    run = run_eval(items, build_programs(lms, mode="rubric", g=1), [1], ["single"], tmp_path / "run",
                   progress=False, cache=False)
    row = summarize(run.records)[0]
    assert row["accuracy"] is None and row["n"] == 0  # no score, rather than a score of 0.0
    assert row["ungraded"] == 3 and row["judge_errors"] == 6 and row["failed_calls"] == 6
    assert all(r["judge_errors"] == 2 for rec in run.records for r in rec["results"])  # per example
    assert failure_totals(run.records)["judge_errors"] == 6


# ------------------------------------------------------------------------------------------------ the commands
@pytest.fixture
def roles(monkeypatch):
    made = {}

    def build_roles(args):
        return made

    for command in ("solve", "common"):  # solve binds it at import; eval looks it up in common when it runs
        monkeypatch.setattr(f"cat_dspy.cli.{command}.build_roles", build_roles)
    return made


def test_solve_json_carries_valid_and_exits_nonzero_when_nothing_was_produced(roles, capsys):
    argv = ["solve", "What is 2+2?", "--g", "2", "--json"]
    roles.update(policy=scripted_lm(["\\boxed{4}"]), anchor=scripted_lm(["\\boxed{4}"]), judge=scripted_lm(["no"]))
    assert cli.main(argv) == 0
    ok = json.loads(capsys.readouterr().out)
    assert ok["valid"] is True and ok["rewards"] == [1.0, 1.0]
    assert ok["failed_calls"] == {"rollout": 0, "anchor": 0, "judge": 0}

    for role in ("policy", "anchor", "judge"):  # every backend down
        roles[role] = faulty_lm(scripted_lm(["\\boxed{4}"]), rate=1.0, kinds=("connection",), num_retries=0)
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    down = json.loads(captured.out)
    assert down["valid"] is False and down["failed_calls"]["rollout"] == 2
    assert "no rollout could be produced" in captured.err

    roles["policy"] = scripted_lm(["\\boxed{4}"])  # rollouts fine, the anchor down
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed_calls"] == {"rollout": 0, "anchor": 1, "judge": 0}
    assert "no reference could be produced" in captured.err


def test_eval_command_reports_failures_in_rows_notes_and_mlflow(tmp_path, roles, capsys):
    import mlflow

    def policy(prompt):
        if "7+7" in prompt:
            raise lm15.ContextLengthError("1250000 prompt tokens exceed 131072")
        return "\\boxed{3}"

    roles.update(policy=scripted_lm(policy), anchor=scripted_lm(["\\boxed{3}"]), judge=scripted_lm(["no"]))
    data = tmp_path / "qs.jsonl"
    rows = [{"question": "1+2?", "answer": "3"}, {"question": "7+7?", "answer": "14"}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["eval", "--dataset", str(data), "--g", "1", "--methods", "single,cat", "--experiment", "fails",
            "--no-progress", "--json"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    single = next(r for r in rows if r["method"] == "single")
    assert single["accuracy"] == 0.5 and single["rollout_errors"] == 1 and single["failed_calls"] == 1
    assert "failed calls: 1 rollout_errors" in captured.err
    runs = mlflow.search_runs(experiment_names=["fails"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    child = next(r for r in runs if r.data.params.get("method") == "single")
    assert child.data.metrics["rollout_errors"] == 1.0 and child.data.metrics["failed_calls"] == 1.0
    assert parent.data.metrics["failures.rollout_errors"] == 1.0
    assert "rollout_errors" in parent.data.tags["notes"]


# ------------------------------------------------------------------------------------------------ parsers
@pytest.mark.parametrize(("module", "helper", "call", "empty"), [
    (extraction, "_extract", lambda: extraction.extract_answer("\\boxed{1}"), None),
    (parsing, "_xml_criteria", lambda: parsing.parse_criteria("<criterion>a</criterion>"), ([], False)),
    (parsing, "_classify", lambda: parsing.parse_verdict("yes"), None),
    (parsing, "_final_block", lambda: parsing.parse_verdicts("1. yes\n2. no", 2), ([False, False], 2)),
])
def test_parsers_count_unparsable_outputs_and_let_bugs_through(monkeypatch, caplog, module, helper, call, empty):
    name = {"_extract": "extract_answer", "_xml_criteria": "parse_criteria", "_classify": "parse_verdict",
            "_final_block": "parse_verdicts"}[helper]

    def too_deep(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(module, helper, too_deep)
    before = parse_failure_stats()[name]
    with caplog.at_level(logging.DEBUG, logger="cat_dspy.scoring.counters"):
        assert call() == empty
    assert parse_failure_stats()[name] == before + 1
    assert "maximum recursion depth" in caplog.text

    def bug(*args, **kwargs):
        raise TypeError("a bug, not an unparsable output")

    monkeypatch.setattr(module, helper, bug)
    with pytest.raises(TypeError, match="a bug"):
        call()


def test_every_fallback_reason_is_a_reward_metric():
    from cat_dspy.rl.reward import REWARD_METRICS

    assert {f"cat/equivalence_{r}" for r in EQUIVALENCE_FALLBACKS} <= set(REWARD_METRICS)
    assert {"cat/anchor_errors", "cat/equivalence_fallbacks", "cat/judge_errors"} <= set(REWARD_METRICS)

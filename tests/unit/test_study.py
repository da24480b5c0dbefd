"""experiments/study.py: the runner on a scripted path (eval in process on scripted LMs, training replaced by a
trainer_state.json) and the aggregator's statistics on hand-made result files."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import mlflow
import pytest

from cat_dspy import cli
from cat_dspy.cli import common
from cat_dspy.rl.train import make_parser
from cat_dspy.testing import scripted_lm

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load("study")


def questions(path: Path, n: int) -> Path:
    """A data file of n questions "What is a + 1?" (a = 1..n) with their answers."""
    path.write_text("".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)}) + "\n"
                            for a in range(1, n + 1)))
    return path


def fake_result(arm: str, seed: int, rollouts: list[float], cat: list[float], steps: int = 0) -> dict:
    ids = [f"q{i}" for i in range(len(rollouts))]
    training = None
    if steps:
        points = [{"step": s, "reward": 0.1 * s + seed} for s in range(1, steps + 1)]
        training = {"points": points}
    return {"study": "t", "arm": arm, "seed": seed, "started": 1000.0 + seed, "finished": 2000.0 + seed,
            "git": {"commit": "abc"}, "heldout": {"ids": ids, "g": 4, "rollouts": rollouts, "cat": cat},
            "training": training}


def test_compare_paired_differences_standard_errors_and_intervals():
    arms = {
        "base": {0: fake_result("base", 0, [0.0, 0.5, 0.25, 0.25], [0, 1, 0, 0]),
                 1: fake_result("base", 1, [0.0, 0.5, 0.75, 0.25], [0, 1, 1, 0])},
        "cat_rl": {0: fake_result("cat_rl", 0, [0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]),
                   1: fake_result("cat_rl", 1, [0.5, 1.0, 0.5, 0.5], [1, 1, 1, 1])},
        "majority_rl": {0: fake_result("majority_rl", 0, [0.25, 0.25, 0.25, 0.25], [0, 0, 0, 1])},
    }
    rows = {r["arm"]: r for r in study.compare(arms, "rollouts")}
    base, cat = rows["base"], rows["cat_rl"]
    # base: seed accuracies 0.25 and 0.375 -> mean 0.3125, se = sd/sqrt(2) = 0.0884/1.414 = 0.0625
    assert base["per_seed"] == {0: 0.25, 1: 0.375} and base["mean"] == pytest.approx(0.3125)
    assert base["se_seeds"] == pytest.approx(0.0625)
    assert (base["lo"], base["hi"]) == pytest.approx((0.3125 - 12.7062 * 0.0625, 0.3125 + 12.7062 * 0.0625), abs=1e-3)
    # cat_rl vs base by question: seed-averaged per question cat (0.5, 0.75, 0.5, 0.5) - base (0, 0.5, 0.5, 0.25)
    d = cat["vs_base_by_question"]
    diffs = [0.5, 0.25, 0.0, 0.25]
    mean = sum(diffs) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3 / 4)
    assert d["n"] == 4 and d["mean"] == pytest.approx(mean) and d["se"] == pytest.approx(se)
    assert d["lo"] == pytest.approx(mean - 3.1824 * se, abs=1e-3) and d["hi"] == pytest.approx(mean + 3.1824 * se,
                                                                                                abs=1e-3)
    # by seed: cat_rl (0.5, 0.625) - base (0.25, 0.375) = (0.25, 0.25): se 0
    assert cat["vs_base_by_seed"]["mean"] == pytest.approx(0.25) and cat["vs_base_by_seed"]["se"] == 0.0
    # against majority_rl: one seed in common (seed 0); by question over the 4 questions
    assert cat["vs_majority_rl_by_seed"]["n"] == 1 and cat["vs_majority_rl_by_seed"]["lo"] is None
    assert cat["vs_majority_rl_by_question"]["mean"] == pytest.approx((0.5 + 0.75 + 0.5 + 0.5) / 4 - 0.25)
    assert "vs_base_by_question" not in base and "vs_majority_rl_by_question" in base
    # a method's 0/1 correctness aggregates the same way
    cat_rows = {r["arm"]: r for r in study.compare(arms, "cat")}
    assert cat_rows["cat_rl"]["per_seed"] == {0: 0.5, 1: 1.0}
    assert cat_rows["cat_rl"]["vs_base_by_question"]["mean"] == pytest.approx(0.75 - 0.375)


def test_aggregate_writes_summary_plot_and_one_mlflow_parent_with_a_child_per_arm(tmp_path, capsys):
    folder = tmp_path / "results" / "t"
    folder.mkdir(parents=True)
    for arm, seed, steps in (("base", 0, 0), ("cat_rl", 0, 3), ("cat_rl", 1, 3)):
        result = fake_result(arm, seed, [0.25, 0.5, 0.75], [0, 1, 1], steps)
        (folder / f"{arm}-seed{seed}.json").write_text(json.dumps(result))
    spec = {"name": "t", "data": {}, "eval": {"g": [4], "methods": ["cat"]},
            "arms": {"base": {"recipe": None, "seeds": [0]}, "cat_rl": {"recipe": "r.yaml", "seeds": [0, 1]}}}
    summary = study.aggregate(spec, results=tmp_path / "results", experiment="study-t")
    assert set(summary["tables"]) == {"rollouts", "cat"}
    assert json.loads((folder / "summary.json").read_text())["arms"] == {"base": [0], "cat_rl": [0, 1]}
    assert (folder / "study.png").stat().st_size > 5000
    md = (folder / "summary.md").read_text().splitlines()
    assert md[0] == "| arm (seeds) | mean rollout accuracy | CaT at test time (G=4) |"
    assert md[2] == "| base (0) | 0.500 | 0.667 |"  # one seed: its value
    assert md[3] == "| cat_rl (0, 1) | 0.500 ± 0.000 (0.500, 0.500) | 0.667 ± 0.000 |"  # seeds: mean ± se (each)
    assert "| cat_rl − base | +0.000 (n=1) | +0.000 ± 0.000 [+0.000, +0.000] (n=3) |" in md
    assert md[-1].startswith("| cat_rl | ")  # the training table: first -> last steps of the trained arm
    out = capsys.readouterr().out
    assert re.search(r"cat_rl\s+seeds \[0, 1\]\s+0\.500 ± 0\.000", out)
    runs = mlflow.search_runs(experiment_names=["study-t"], output_format="list")
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"base", "cat_rl"}
    cat = children["cat_rl"]
    assert cat.info.start_time == 1000 * 1000 and cat.info.end_time == 2001 * 1000  # first start, last finish
    assert cat.data.metrics["rollouts/vs_base"] == pytest.approx(0.0)
    history = mlflow.MlflowClient().get_metric_history(cat.info.run_id, "train/reward")
    # reward at step s: 0.1 s + seed, averaged over seeds 0 and 1
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.6), (2, 0.7), (3, 0.8)]


def test_run_trains_evaluates_writes_one_result_and_skips_it_when_finished(tmp_path, monkeypatch):
    data = questions(tmp_path / "test.jsonl", 4)
    recipe = tmp_path / "arm.yaml"
    recipe.write_text("reward: majority\nmax_steps: 2\nuse_cpu: true\nbf16: false\n")
    spec = {"name": "t", "data": {"train": str(data), "test": str(data)},
            "eval": {"g": [1, 2], "methods": ["single", "majority", "cat"], "args": ["--max-tokens", "16"]},
            "arms": {"majority_rl": {"recipe": str(recipe), "seeds": [0]}}}

    def policy(prompt: str) -> str:  # right on questions 1 and 2 only
        a = int(re.findall(r"What is (\d+) \+ 1", prompt)[-1])
        return f"\\boxed{{{a + 1 if a <= 2 else 0}}}"

    monkeypatch.setattr(common, "build_roles", lambda args: {
        "policy": scripted_lm(policy), "anchor": scripted_lm(lambda p: "\\boxed{2}"),
        "judge": scripted_lm(lambda p: "no")})
    calls = []

    def execute(argv, local_runtime):
        assert local_runtime == "torch"  # the study's runtime: torch unless the study file names another
        calls.append(argv)
        if argv[0] == "train":  # training replaced: what TRL leaves in output_dir
            out = Path(argv[argv.index("--output_dir") + 1])
            out.mkdir(parents=True)
            log = [{"step": s, "reward": 0.25 * s, "completions/mean_length": 40 - s} for s in (1, 2)]
            (out / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [
                *log, {"step": 2, "train_runtime": 12.5}]}))
            return
        assert argv[0] == "eval" and "--policy" in argv and argv[argv.index("--policy") + 1].startswith("local:")
        assert cli.main(argv) == 0

    monkeypatch.setattr(study, "execute", execute)
    results = tmp_path / "results"
    path = study.run_one(spec, "majority_rl", 0, results=results, work=tmp_path)
    assert path == results / "t" / "majority_rl-seed0.json"
    result = json.loads(path.read_text())
    assert [c[0] for c in calls] == ["train", "eval"]
    assert calls[0][calls[0].index("--seed") + 1] == "0" and "--dataset_name" in calls[0]
    _, training_args, _ = make_parser().parse_args_and_config(calls[0][1:])  # what `cat-dspy train` makes of it
    assert training_args.save_total_limit == study.KEEP_CHECKPOINTS and training_args.max_steps == 2
    held = result["heldout"]
    assert held["g"] == 2 and len(held["ids"]) == 4
    assert held["single"] == [1.0, 1.0, 0.0, 0.0] and held["rollouts"] == [1.0, 1.0, 0.0, 0.0]
    assert held["cat"] == [1.0, 0.0, 0.0, 0.0]  # the scripted anchor always says 2: right on 1 + 1 only
    assert result["training"]["first"]["reward"] == pytest.approx(0.375)
    assert result["training"]["train_runtime"] == 12.5
    assert result["config"]["recipe_text"] == recipe.read_text()
    assert "runtime" not in result["config"]  # hashed only where the study file names one
    assert result["config_hash"] == study.config_hash(result["config"]) and result["git"]["commit"]

    # finished: skipped without any command; a changed configuration is refused, not overwritten
    assert study.run_one(spec, "majority_rl", 0, results=results, work=tmp_path) == path and len(calls) == 2
    recipe.write_text("reward: majority\nmax_steps: 3\n")
    with pytest.raises(SystemExit, match="another configuration"):
        study.run_one(spec, "majority_rl", 0, results=results, work=tmp_path)


def test_study_files_name_their_arms_recipes_and_a_reward_each(tmp_path, monkeypatch):
    import yaml

    from cat_dspy.rl.sft import make_parser as sft_parser

    parsers = {"train": make_parser, "sft": sft_parser}
    monkeypatch.chdir(ROOT)  # recipe paths are relative to the checkout, as `run` executes them
    for name in ("study_arith.yaml", "study_arith_ttrl.yaml"):
        spec = study.load_study(ROOT / "experiments" / "recipes" / name)
        assert {"base", "cat_rl", "majority_rl"} <= set(spec["arms"])
        assert min(len(a["seeds"]) for n, a in spec["arms"].items() if n not in ("gold_rl", "cat_sft")) >= 3
        for arm, a in spec["arms"].items():
            if not a["recipe"]:
                continue
            argv = study.train_argv(spec, arm, 0, tmp_path / arm)  # what `run` hands to cat-dspy, parsed by it
            _, args, _ = parsers[argv[0]]().parse_args_and_config(argv[1:])
            assert args.save_total_limit == study.KEEP_CHECKPOINTS and args.output_dir == str(tmp_path / arm)
            if argv[0] == "sft":  # CaT-SFT: the CaT arm's rollouts and anchor, references instead of a reward
                cat_rl = yaml.safe_load((ROOT / spec["arms"]["cat_rl"]["recipe"]).read_text())
                assert (args.num_generations, args.rollout_temperature, args.rollout_max_tokens) == (
                    cat_rl["num_generations"], cat_rl["temperature"], cat_rl["max_completion_length"])
                assert (args.anchor_temperature, args.anchor_max_tokens, args.extraction, args.mode) == (
                    cat_rl["anchor_temperature"], cat_rl["anchor_max_tokens"], cat_rl["extraction"], "verifiable")
            else:
                assert args.reward == arm.removesuffix("_rl"), arm
    ttrl = study.load_study(ROOT / "experiments" / "recipes" / "study_arith_ttrl.yaml")
    assert ttrl["data"]["train"] == ttrl["data"]["test"] and "gold_rl" not in ttrl["arms"]


def test_training_curve_of_an_sft_arm_is_its_loss(tmp_path):
    log = [{"step": 5 * i, "loss": 3.0 - 0.25 * i, "grad_norm": 1.0} for i in range(1, 9)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": [
        *log, {"step": 40, "train_runtime": 99.0, "train_loss": 2.0}]}))
    curve = study.training_curve(tmp_path)
    assert [p["step"] for p in curve["points"]] == [5 * i for i in range(1, 9)]  # not the closing summary entry
    assert curve["first"]["loss"] == pytest.approx(2.375) and curve["last"]["loss"] == pytest.approx(1.375)
    assert curve["first"]["reward"] is None and curve["train_runtime"] == 99.0


@pytest.mark.parametrize("name", ["study_arith.yaml", "study_arith_ttrl.yaml", "study_teachers.yaml"])
def test_committed_summary_is_what_the_result_files_give_and_the_docs_quote_it(name, tmp_path):
    """The study numbers the docs give cannot drift from the committed result files: aggregating them again gives the
    committed summary.json and summary.md, experiments/README.md (where the README's results table links) quotes
    summary.md's tables whole, and every study number the README itself gives is in that summary."""
    import shutil

    spec = study.load_study(ROOT / "experiments" / "recipes" / name)
    committed = study.RESULTS / spec["name"]
    if not (committed / "summary.json").is_file():
        pytest.skip(f"{committed}: no summary yet")
    shutil.copytree(committed, tmp_path / spec["name"], ignore=shutil.ignore_patterns("summary.*", "*.png"))
    study.aggregate(spec, results=tmp_path, log=False)
    assert json.loads((tmp_path / spec["name"] / "summary.json").read_text()) == json.loads(
        (committed / "summary.json").read_text()), f"{committed}: run `study.py aggregate --study {name}` again"
    table = (tmp_path / spec["name"] / "summary.md").read_text()
    assert table == (committed / "summary.md").read_text()
    docs = (ROOT / "experiments" / "README.md").read_text()
    assert table.split("\n\n")[0] in docs and table.split("\n\n")[1] in docs, f"quote {committed}/summary.md"
    readme = (ROOT / "README.md").read_text()
    assert "experiments/README.md#results" in readme and "\n## Results\n" in docs
    results = readme[readme.index("## Results"):readme.index("## Performance")]
    accuracies: dict[str, set[str]] = {}  # arm label -> the mean rollout accuracies the committed summaries give it
    for summary in study.RESULTS.glob("*/summary.md"):
        for line in summary.read_text().split("\n\n")[0].splitlines()[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            accuracies.setdefault(cells[0].split(" (")[0], set()).add(cells[1].split(" ")[0])
    labels = {"base": "base", "CaT-RL": "CaT-RL", "majority-RL": "majority-RL", "gold label reaches": "gold-RL"}
    quoted = re.findall(r"(base|CaT-RL|majority-RL|gold label reaches) (0\.\d{3})", results)
    assert len(quoted) >= 6, results
    for arm, value in quoted:  # the README's short table quotes only numbers the summaries hold
        assert value in accuracies[labels[arm]], (arm, value, accuracies)


def test_an_sft_arm_keeps_its_references_with_labels_and_aggregate_counts_them(tmp_path, monkeypatch):
    from cat_dspy.jsonl_store import JsonlStore

    data = questions(tmp_path / "train.jsonl", 3)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("max_steps: 2\n")
    spec = {"name": "t", "data": {"train": str(data), "test": str(data)},
            "eval": {"g": [1], "methods": ["single"], "args": ["--max-tokens", "16"]},
            "arms": {"base": {"recipe": None, "seeds": [0]},
                     "cat_sft": {"label": "CaT-SFT", "recipe": str(recipe), "command": "sft", "seeds": [0]}}}
    monkeypatch.setattr(common, "build_roles", lambda args: {
        "policy": scripted_lm(lambda p: "\\boxed{2}"), "anchor": scripted_lm(lambda p: "\\boxed{2}"),
        "judge": scripted_lm(lambda p: "no")})

    def execute(argv, local_runtime):
        if argv[0] == "sft":  # what cat-dspy sft leaves: the references it trained on, and TRL's state
            out = Path(argv[argv.index("--output_dir") + 1])
            out.mkdir(parents=True)
            store = JsonlStore(out / "references.jsonl", key="key")
            for a, answer in ((1, "2"), (2, "4"), (3, None)):  # right, wrong, no answer (not trained on)
                store.append({"key": f"k{a}", "id": f"train-{a}", "question": f"What is {a} + 1?",
                              "reference_answer": answer, "usable": answer is not None, "target": "..."})
            (out / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [
                {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "train_runtime": 3.0}]}))
            return
        assert cli.main(argv) == 0

    monkeypatch.setattr(study, "execute", execute)
    results = tmp_path / "results"
    assert study.train_argv(spec, "cat_sft", 0, tmp_path / "o")[0] == "sft"
    path = study.run_one(spec, "cat_sft", 0, results=results, work=tmp_path)
    study.run_one(spec, "base", 0, results=results, work=tmp_path)
    saved = [json.loads(line) for line in study.references_path(path).read_text().splitlines()]
    assert [(r["id"], r["label"]) for r in saved] == [("train-1", "2"), ("train-2", "3"), ("train-3", "4")]
    assert json.loads(path.read_text())["training"]["last"]["loss"] == pytest.approx(1.75)
    summary = study.aggregate(spec, results=results, log=False)
    assert summary["references"] == {"cat_sft": {0: {"references": 3, "with_answer": 2, "right": 1}}}
    assert "| CaT-SFT (0) | 0.333 | 0.333 |" in (results / "t" / "summary.md").read_text()


def test_a_study_file_names_its_references_and_each_arm_its_flags(tmp_path):
    good = {"name": "t", "data": {"train": "train.jsonl"}, "eval": {"g": [4], "methods": []}, "references": ["base"],
            "arms": {"base": {"recipe": None, "seeds": [0]},
                     "rl": {"recipe": "experiments/recipes/study_teachers_grpo.yaml", "args": ["--reward", "random"],
                            "seeds": [0]}}}
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(good))
    spec = study.load_study(path)
    assert study.references(spec) == ("base",)
    argv = study.train_argv(spec, "rl", 1, tmp_path / "out")
    assert argv[:5] == ["train", "--config", "experiments/recipes/study_teachers_grpo.yaml", "--reward", "random"]
    assert study.run_config(spec, "rl", 1)["args"] == ["--reward", "random"]  # the reward is in the hash
    for bad, message in (({"references": ["nope"]}, "not arms"),
                         ({"arms": {**good["arms"], "rl": {**good["arms"]["rl"], "args": "--reward gold"}}}, "list")):
        path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(SystemExit, match=message):
            study.load_study(path)

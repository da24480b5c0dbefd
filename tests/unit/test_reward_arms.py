"""The comparison rewards of CaT-RL (majority, judge, physician_rubric, gold, random, min_ppl) on scripted judges and
anchors: values, None for a group that could not be scored, metrics, grouping across two (fake) ranks, selection by
name, recipes."""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cat_dspy import rewards as rewards_module
from cat_dspy.rewards import (
    REWARD_FUNCS,
    GoldReward,
    JudgeReward,
    MajorityReward,
    PhysicianRubricReward,
    build_reward,
    dataset_columns,
)
from cat_dspy.rl import distributed
from cat_dspy.testing import scripted_lm

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "experiments" / "recipes"


class Log:
    def __init__(self):
        self.metrics: dict[str, float] = {}
        self.extra: dict[str, list] = {}

    def kwargs(self):
        return {"log_metric": self.metrics.__setitem__,
                "log_extra": lambda column, values: self.extra.setdefault(column, []).extend(values)}


def batch(groups: dict[str, list[str]]):
    """Conversational TRL inputs: each group's completions consecutive (``[g<k>]`` tags the group)."""
    prompts, completions = [], []
    for tag, answers in groups.items():
        for answer in answers:
            prompts.append([{"role": "system", "content": "Solve."}, {"role": "user", "content": f"Question {tag}?"}])
            completions.append([{"role": "assistant", "content": f"[{tag}] so \\boxed{{{answer}}}"}])
    return prompts, completions


class FakeModel:
    training = True


# -- majority ---------------------------------------------------------------------------------------------------


def test_majority_rewards_the_majority_cluster_and_counts():
    reward = MajorityReward(g=4)
    prompts, completions = batch({"g0": ["3", "3.0", "4", "3"], "g1": ["7", "8", "8", "9"]})
    completions[7] = [{"role": "assistant", "content": "[g1] no answer"}]
    completions += [[{"role": "assistant", "content": "none"}]] * 4
    prompts += [[{"role": "user", "content": "Question g2?"}]] * 4
    log = Log()
    out = reward(prompts=prompts, completions=completions, **log.kwargs())
    assert out == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    m = log.metrics
    assert m["majority/consensus"] == pytest.approx((3 / 4 + 2 / 4) / 2)  # g2 has no answer: not in the mean
    assert m["majority/no_answer_groups"] == 1.0 and m["majority/invalid_groups"] == 0.0
    assert m["majority/answer_extracted"] == pytest.approx(7 / 12)
    assert m["majority/zero_spread_groups"] == pytest.approx(1 / 3)
    assert "majority/label_accuracy" not in m and m["majority/reward_seconds"] > 0
    assert reward.__name__ == "majority_reward"


def test_majority_label_metrics_from_the_answer_column_and_string_equivalence():
    reward = MajorityReward(g=2, equivalence="string").bind(FakeModel())
    prompts, completions = batch({"g0": ["1/2", "0.5"], "g1": ["6", "6"]})
    gold = ["0.5", "0.5", "6", "6"]
    log = Log()
    assert reward(prompts=prompts, completions=completions, **log.kwargs()) == [1.0, 0.0, 1.0, 1.0]
    assert "majority/label_accuracy" not in log.metrics  # no labels given
    for training in (True, False):  # training on a labelled set (label_metrics) or evaluating: the same metrics
        reward._model.training = training
        log = Log()
        assert reward(prompts=prompts, completions=completions, answer=gold, **log.kwargs()) == [1.0, 0.0, 1.0, 1.0]
        assert log.metrics["majority/label_accuracy"] == 0.5  # g0's majority "1/2" is wrong in string mode, g1's right
        assert log.metrics["majority/reward_accuracy"] == 0.5  # g0: both rewards disagree with gold; g1: both agree


def test_majority_length_penalty_uses_completion_ids():
    reward = MajorityReward(g=3, length_limit=4)
    prompts, completions = batch({"g0": ["5", "5", "6"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, completion_ids=[[0] * 3, [0] * 9, [0] * 2], **log.kwargs())
    assert out == [1.0, -1.0, 0.0]
    assert log.metrics["majority/length_penalty_hits"] == pytest.approx(1 / 3)


# -- min_ppl ----------------------------------------------------------------------------------------------------


class FakeTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        assert not tokenize and add_generation_prompt
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + f"<assistant{kwargs}>"


class FakeTrainer:
    def __init__(self):
        self.model, self.processing_class = FakeModel(), FakeTokenizer()
        self.args = type("Args", (), {"num_generations": 2, "chat_template_kwargs": {"think": False}})()


def test_min_ppl_scores_each_completion_after_the_policys_prompt_and_labels_with_the_likeliest(monkeypatch):
    from cat_dspy.lm import prompt_logprobs as module
    from cat_dspy.rewards import MinPPLReward

    seen: list[str] = []

    def scores(lm, texts):  # one token per character; the completion's "x" characters are unlikely
        seen.extend(texts)
        return [[(i, i + 1, -5.0 if ch == "x" else -0.5) for i, ch in enumerate(text)] for text in texts]

    monkeypatch.setattr(module, "prompt_logprobs", scores)
    reward = MinPPLReward(anchor=None, extraction="flexible").bind(FakeTrainer())
    prompts = [[{"role": "user", "content": "2+3? xxxx"}]] * 2  # prompt tokens are unlikely too: never counted
    rewards = reward(prompts=prompts, completions=["xx 6", "it is 5"])
    assert seen[0] == "<user>2+3? xxxx<assistant{'think': False}>xx 6"  # the trainer's template and kwargs
    assert rewards == [0.0, 1.0]  # "it is 5" has the lower mean NLL: its answer is the label
    log = Log()
    assert reward(prompts=prompts, completions=["xx 6", "it is 5"], answer=["5", "5"], **log.kwargs()) == rewards
    assert log.metrics["min_ppl/label_accuracy"] == 1.0 and log.metrics["min_ppl/reward_accuracy"] == 1.0


def test_min_ppl_groups_the_anchor_cannot_score_are_none_and_counted():
    from cat_dspy.rewards import MinPPLReward

    anchor = scripted_lm(["unused"])  # a scripted LM has no local engine and no server: it cannot score text
    reward = MinPPLReward(anchor, g=2)
    log = Log()
    out = reward(prompts=["Q: 2+2? A:"] * 2, completions=["4", "5"], **log.kwargs())
    assert out == [None, None]
    assert log.metrics["min_ppl/anchor_errors"] == 1.0 and log.metrics["min_ppl/invalid_groups"] == 1.0


def test_random_reward_logs_its_reward_accuracy_with_labels():
    from cat_dspy.rewards import RandomReward

    log = Log()
    out = RandomReward(g=2, seed=3)(prompts=["2+2?"] * 2, completions=["\\boxed{4}", "\\boxed{5}"],
                                    answer=["4", "4"], **log.kwargs())
    gold = [1.0, 0.0]
    assert log.metrics["random/reward_accuracy"] == sum(r == g for r, g in zip(out, gold, strict=True)) / 2
    assert "random/label_accuracy" not in log.metrics  # a random draw has no pseudo-label


# -- gold -------------------------------------------------------------------------------------------------------


def test_gold_rewards_against_the_answer_column_and_missing_labels_are_none():
    reward = GoldReward(g=2)
    prompts, completions = batch({"g0": ["12", "13"], "g1": ["4", "4"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, answer=["12", "12", None, None], **log.kwargs())
    assert out == [1.0, 0.0, None, None]
    assert log.metrics["gold/missing_labels"] == 1.0 and log.metrics["gold/invalid_groups"] == 1.0
    assert log.metrics["gold/accuracy"] == 0.5
    with pytest.raises(ValueError, match="needs the dataset column 'answer'"):
        reward(prompts=prompts, completions=completions)


# -- judge ------------------------------------------------------------------------------------------------------


def tagged_anchor(fail: set[str] = frozenset(), empty: set[str] = frozenset()):
    calls: Counter = Counter()
    lock = threading.Lock()

    def fn(prompt: str) -> str:
        (tag,) = set(re.findall(r"\[(g\d+)\]", prompt))
        with lock:
            calls[tag] += 1
        if tag in fail:
            raise ConnectionError("anchor down")
        answer = {"g0": 3, "g1": 7, "g2": 1}[tag]
        return "  \n " if tag in empty else f"Reference {tag}: the answer is \\boxed{{{answer}}}."

    lm = scripted_lm(fn)
    lm.group_calls = calls
    return lm


def answer_judge(fail: bool = False, unreadable: str | None = None):
    """Says yes when the graded response's boxed answer is the reference's; ``unreadable`` answer: an odd verdict."""

    def fn(prompt: str) -> str:
        if fail:
            raise TimeoutError("judge timed out")
        reference = re.search(r"<reference>\n(.*?)\n</reference>", prompt, re.S).group(1)
        response = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1)
        if unreadable and f"boxed{{{unreadable}}}" in response:
            return "Hmm, hard to say."
        ref = re.search(r"boxed\{(\w+)\}", reference).group(1)
        return "Yes, equivalent." if f"boxed{{{ref}}}" in response else "No."

    return scripted_lm(fn)


def test_judge_reward_one_synthesis_per_group_binary_verdicts_metrics():
    anchor = tagged_anchor()
    reward = JudgeReward(anchor, answer_judge(unreadable="5"), g=3)
    prompts, completions = batch({"g0": ["3", "4", "5"], "g1": ["7", "7", "7"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, **log.kwargs())
    assert out == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert anchor.group_calls == {"g0": 1, "g1": 1}
    assert "Question g0?" not in anchor.engine_script.prompts[0]  # question-blind, as CaT
    m = log.metrics
    assert m["judge/equivalent_rate"] == pytest.approx(4 / 6) and m["judge/unread_verdicts"] == 1.0
    assert m["judge/synthesis_extracted"] == 1.0 and m["judge/zero_spread_groups"] == 0.5
    assert m["judge/anchor_errors"] == m["judge/judge_errors"] == m["judge/invalid_groups"] == 0.0
    assert "boxed{7}" in log.extra["judge_reference"][3]
    assert reward.usage["judge"]["calls"] == 6 and reward.usage["anchor"]["calls"] == 2


def test_judge_reward_failed_calls_make_the_group_none():
    reward = JudgeReward(tagged_anchor(fail={"g1"}), answer_judge(), g=2)
    prompts, completions = batch({"g0": ["3", "4"], "g1": ["7", "7"]})
    log = Log()
    assert reward(prompts=prompts, completions=completions, **log.kwargs()) == [1.0, 0.0, None, None]
    assert log.metrics["judge/anchor_errors"] == 1.0 and log.metrics["judge/invalid_groups"] == 1.0

    reward = JudgeReward(tagged_anchor(), answer_judge(fail=True), g=2)
    log = Log()
    assert reward(prompts=prompts, completions=completions, **log.kwargs()) == [None] * 4
    assert log.metrics["judge/judge_errors"] >= 2 and log.metrics["judge/invalid_groups"] == 2.0


def test_judge_reward_empty_reference_is_zero_or_skipped():
    prompts, completions = batch({"g0": ["3", "4"]})
    judge = answer_judge()
    assert JudgeReward(tagged_anchor(empty={"g0"}), judge, g=2)(
        prompts=prompts, completions=completions) == [0.0, 0.0]
    assert judge.engine_script.calls == 0  # nothing to compare with: no judge call
    log = Log()
    skip = JudgeReward(tagged_anchor(empty={"g0"}), judge, g=2, skip_unparsed=True)
    assert skip(prompts=prompts, completions=completions, **log.kwargs()) == [None, None]
    assert log.metrics["judge/skipped_groups"] == 1.0 and log.metrics["judge/invalid_groups"] == 0.0


# -- physician rubric -------------------------------------------------------------------------------------------

RUBRIC = [{"criterion": "Advises rest.", "points": 5}, {"criterion": "Mentions ice.", "points": 3},
          {"criterion": "Recommends surgery.", "points": -6}]


def rubric_judge(fail: bool = False):
    """Marks an item met when the reply mentions its key word (rest / ice / surgery)."""

    def fn(prompt: str) -> str:
        if fail:
            raise ConnectionError("grader down")
        reply = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1).lower()
        item = re.search(r"<criterion>\n(.*?)\n</criterion>", prompt, re.S).group(1).lower()
        word = next(w for w in ("rest", "ice", "surgery") if w in item)
        return "yes" if word in reply else "no"

    return scripted_lm(fn)


def test_physician_rubric_reward_is_the_clipped_simple_evals_score():
    judge = rubric_judge()
    reward = PhysicianRubricReward(judge, g=4)
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I sprained my ankle."},
              {"role": "assistant", "content": "Ouch."}, {"role": "user", "content": "What now?"}]
    replies = ["Rest and ice.", "Rest.", "Surgery, no rest.", "Surgery."]
    log = Log()
    out = reward(prompts=[prompt] * 4, completions=replies, rubrics=[json.dumps(RUBRIC)] * 4, **log.kwargs())
    assert out == [1.0, 0.625, 0.0, 0.0]  # 8/8, 5/8, (5-6)/8 clipped, -6/8 clipped
    m = log.metrics
    assert m["physician_rubric/raw_score"] == pytest.approx((1 + 0.625 - 0.125 - 0.75) / 4)
    assert m["physician_rubric/items_met"] == pytest.approx(6 / 12)
    assert m["physician_rubric/judge_errors"] == 0.0 and m["physician_rubric/invalid_groups"] == 0.0
    graded = judge.engine_script.prompts[0]
    assert "User: I sprained my ankle." in graded and "Be kind." not in graded  # the conversation, no system


def test_physician_rubric_failures_are_none_and_counted():
    prompts, replies = ["q"] * 2, ["Rest.", "Ice."]
    log = Log()
    out = PhysicianRubricReward(rubric_judge(fail=True), g=2)(
        prompts=prompts, completions=replies, rubrics=[RUBRIC] * 2, **log.kwargs())
    assert out == [None, None] and log.metrics["physician_rubric/judge_errors"] >= 1

    log = Log()
    negative_only = [{"criterion": "Recommends surgery.", "points": -1}]
    reward = PhysicianRubricReward(rubric_judge(), g=2)
    assert reward(prompts=prompts, completions=replies, rubrics=[negative_only] * 2, **log.kwargs()) == [None, None]
    assert log.metrics["physician_rubric/unscorable_rubrics"] == 1.0

    log = Log()
    assert reward(prompts=prompts, completions=replies, rubrics=[["not an item"]] * 2, **log.kwargs()) == [None, None]
    assert log.metrics["physician_rubric/reward_errors"] == 1.0  # bad data: logged with its traceback, counted
    with pytest.raises(ValueError, match="needs the dataset column 'rubrics'"):
        reward(prompts=prompts, completions=replies)


# -- grouping across two (fake) ranks ----------------------------------------------------------------------------


def run_on_two_fake_ranks(monkeypatch, make_reward, prompts, completions, **columns):
    """Each rank (a thread) calls its own reward on its half of the batch; all_gather is a two-thread exchange."""
    local = threading.local()
    box: dict[int, list] = {}
    barrier = threading.Barrier(2)

    def all_gather(obj):
        box[local.rank] = obj
        barrier.wait(timeout=20)
        out = [box[0], box[1]]
        barrier.wait(timeout=20)
        return out

    monkeypatch.setattr(distributed, "rank_and_world", lambda: (local.rank, 2))
    monkeypatch.setattr(distributed, "all_gather", all_gather)
    half = len(prompts) // 2
    results, rewards_made = {}, {}

    def rank(r):
        local.rank = r
        reward = rewards_made[r] = make_reward()
        part = slice(r * half, (r + 1) * half)
        results[r] = reward(prompts=prompts[part], completions=completions[part],
                            **{k: v[part] for k, v in columns.items()})

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results[0] + results[1], rewards_made


@pytest.mark.parametrize("arm", ["majority", "gold", "judge", "physician_rubric"])
def test_a_group_straddling_two_ranks_is_scored_once_and_matches_one_process(monkeypatch, arm):
    # three groups of 4 over two ranks of 6: g1 straddles them
    prompts, completions = batch({"g0": ["3", "3", "4", "3"], "g1": ["7", "8", "7", "7"], "g2": ["1", "2", "1", "3"]})
    columns = {"answer": ["3"] * 4 + ["8"] * 4 + ["1"] * 4} if arm == "gold" else {}
    if arm == "physician_rubric":
        completions = [[{"role": "assistant", "content": f"[{i // 4}] " + ("rest ice" if i % 2 else "rest")}]
                       for i in range(12)]
        columns = {"rubrics": [json.dumps(RUBRIC)] * 12}
    anchors: list = []

    def make():
        if arm == "majority":
            return MajorityReward(g=4)
        if arm == "gold":
            return GoldReward(g=4)
        if arm == "judge":
            anchors.append(tagged_anchor())
            return JudgeReward(anchors[-1], answer_judge(), g=4)
        return PhysicianRubricReward(rubric_judge(), g=4)

    expected = make()(prompts=prompts, completions=completions, **columns)
    anchors.clear()
    out, made = run_on_two_fake_ranks(monkeypatch, make, prompts, completions, **columns)
    assert out == expected and None not in out
    assert {k: v for k, v in made[0].last_metrics.items() if not k.endswith("seconds")} == {
        k: v for k, v in made[1].last_metrics.items() if not k.endswith("seconds")}
    if arm == "judge":  # each group synthesized exactly once, by its owner (round-robin: g0, g2 on rank 0)
        assert anchors[0].group_calls == {"g0": 1, "g2": 1} and anchors[1].group_calls == {"g1": 1}


# -- selection by name ------------------------------------------------------------------------------------------


def test_build_reward_by_name_builds_only_the_lms_an_arm_calls(monkeypatch, caplog):
    made = []
    monkeypatch.setattr("cat_dspy.lm.models.make_lm", lambda model, **kw: made.append(model) or scripted_lm(["x"]))
    for arm in ("majority", "gold"):
        reward = build_reward({"anchor": "hosted_vllm/x", "g": 4}, reward=arm)
        assert type(reward) is REWARD_FUNCS[arm] and reward.__name__ == f"{arm}_reward" and reward.anchor is None
    assert made == []  # no LM for the label-free vote or the gold answers
    with caplog.at_level(logging.WARNING):
        judge = build_reward({"anchor": "hosted_vllm/x", "anchor_api_base": "http://a/v1"}, reward="judge")
    assert made == ["hosted_vllm/x"] and judge.judge is judge.anchor and "no judge configured" in caplog.text
    physician = build_reward({"judge": "openai/gpt-4o", "length_limit": 750}, reward="physician_rubric")
    assert made[-1] == "openai/gpt-4o" and physician.length_limit == 750 and physician.anchor is None
    with pytest.raises(ValueError, match="unknown reward 'vote'"):
        build_reward({}, reward="vote")
    with pytest.raises(ValueError, match="program"):
        build_reward({"program": "p.json"}, reward="majority")
    assert dataset_columns("gold_reward") == ("answer",) and dataset_columns("judge") == ()


def test_env_configured_arms_resolve_like_trl(monkeypatch):
    monkeypatch.setenv("CAT_G", "2")
    monkeypatch.setenv("CAT_EXTRACTION", "flexible")
    from trl.trainer.utils import get_callable_name

    for name in ("majority_reward", "gold_reward"):
        fresh = rewards_module.EnvCaTReward(name, name.removesuffix("_reward"))  # leave the global ones alone
        monkeypatch.setattr(rewards_module, name, fresh)
        reward = getattr(importlib.import_module("cat_dspy.rewards"), name)  # what TRL's --reward_funcs does

        assert get_callable_name(reward) == name
        out = reward(prompts=["1+2?"] * 2, completions=["it is 2", "it is 3"], answer=["3", "3"])
        assert out == ([0.0, 1.0] if name == "gold_reward" else [1.0, 0.0])  # majority: a 1-1 tie, the first wins
        assert reward.reward.extraction == "flexible"


# -- recipes ----------------------------------------------------------------------------------------------------

ARM_RECIPES = {
    "arith_smollm2_cpu_majority": "arith_smollm2_cpu", "arith_smollm2_cpu_gold": "arith_smollm2_cpu",
    "gsm8k_smollm2_majority": "gsm8k_smollm2", "gsm8k_smollm2_gold": "gsm8k_smollm2",
    "qwen3_4b_math500_majority": "qwen3_4b_math500", "qwen3_4b_math500_gold": "qwen3_4b_math500",
    "qwen3_4b_math500_judge": "qwen3_4b_math500",
    "qwen3_4b_healthbench_judge": "qwen3_4b_healthbench",
    "qwen3_4b_healthbench_physician_rubric": "qwen3_4b_healthbench",
}
REWARD_FIELDS = {"reward", "mode", "anchor", "anchor_api_base", "anchor_temperature", "anchor_top_k",
                 "anchor_top_p", "anchor_max_tokens", "judge", "judge_temperature", "judge_max_tokens",
                 "per_criterion", "min_criteria", "equivalence", "extraction", "output_dir", "run_name"}


@pytest.mark.parametrize("name", sorted(ARM_RECIPES))
def test_arm_recipes_parse_and_differ_from_their_cat_recipe_only_in_the_reward(name):
    from cat_dspy.rl.train import make_parser

    arm = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    cat = yaml.safe_load((RECIPES / f"{ARM_RECIPES[name]}.yaml").read_text())
    differing = {k for k in arm.keys() | cat.keys() if arm.get(k) != cat.get(k)}
    assert differing <= REWARD_FIELDS, differing - REWARD_FIELDS
    assert arm["output_dir"] != cat["output_dir"] and arm["run_name"] != cat["run_name"]
    argv = ["--config", str(RECIPES / f"{name}.yaml")]
    if not arm.get("use_cpu"):
        argv += ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false", "--gradient_checkpointing", "false"]
    _, args, _ = make_parser().parse_args_and_config(argv)
    assert args.reward in REWARD_FUNCS and name.endswith(f"_{args.reward}")
    if args.reward in ("judge", "physician_rubric"):
        assert args.judge == "openai/gpt-4o"  # the paper's judge
    if args.reward == "judge":
        assert args.anchor == cat["anchor"]  # the same frozen anchor synthesizes the reference


def test_training_set_carries_the_columns_the_arm_reads(tmp_path, tiny_gsm8k):
    from cat_dspy.rl.train import build_datasets, make_parser

    def datasets(recipe, *extra):
        script_args, training_args, _ = make_parser().parse_args_and_config(
            ["--config", str(RECIPES / "cpu_smoke.yaml"), *recipe, *extra])
        return build_datasets(script_args, training_args)

    train, _ = datasets(["--data_dir", str(tiny_gsm8k)], "--reward", "gold")
    assert set(train.column_names) == {"prompt", "id", "answer"} and train[0]["answer"] == "8"
    train, _ = datasets(["--data_dir", str(tiny_gsm8k)], "--reward", "majority")
    assert set(train.column_names) == {"prompt", "id"}  # label-free: no answer column
    train, _ = datasets(["--data_dir", str(tiny_gsm8k)], "--reward", "majority", "--label_metrics", "true")
    assert set(train.column_names) == {"prompt", "id", "answer"}  # label_metrics: the answers, for the metrics only

    conv = tmp_path / "conv.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Pain {i}?"}], "rubrics": RUBRIC} for i in range(3)]
    conv.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, _ = datasets(["--dataset_name", str(conv), "--question_field", "prompt", "--mode", "rubric"],
                        "--reward", "physician_rubric")
    assert json.loads(train[0]["rubrics"]) == [{**item, "tags": []} for item in RUBRIC]  # as the loader reads them
    reward = PhysicianRubricReward(rubric_judge(), g=1)
    assert reward(prompts=train["prompt"][:1], completions=["Rest and ice."], rubrics=train["rubrics"][:1]) == [1.0]
    with pytest.raises(ValueError, match="needs the 'rubrics' of every question"):
        datasets(["--data_dir", str(tiny_gsm8k)], "--reward", "physician_rubric")


def test_lengths_in_words_are_warned_once_per_process_across_cat_and_the_training_rewards(caplog, fresh_word_warning):
    from cat_dspy.modules import CaT

    long = "many words " * 10 + "\\boxed{4}"
    cat = CaT(g=2, anchor=scripted_lm(["# UNIFIED RESPONSE \\boxed{4}"]), length_limit=5)
    majority = MajorityReward(g=2, length_limit=5)
    gold = GoldReward(g=2, length_limit=5)
    with caplog.at_level(logging.WARNING):
        assert cat.score(["\\boxed{4}", long]).rewards == [1.0, -1.0]
        assert majority(prompts=["2+2?"] * 2, completions=["\\boxed{4}", long]) == [1.0, -1.0]
        assert gold(prompts=["2+2?"] * 2, completions=["\\boxed{5}", long], answer=["4", "4"]) == [0.0, -1.0]
    warnings = [r.getMessage() for r in caplog.records if "counted in whitespace words" in r.getMessage()]
    assert len(warnings) == 1 and "no tokenizer is known for the policy" in warnings[0]


@pytest.mark.parametrize("name", sorted(REWARD_FUNCS))
def test_each_reward_scores_into_its_own_frozen_group_score(name):
    import dataclasses
    import pickle

    from cat_dspy.rl.group import GroupScore

    cls = REWARD_FUNCS[name]
    score_type = cls.score_type
    assert issubclass(score_type, GroupScore) and score_type.__dataclass_params__.frozen
    fields = {f.name for f in dataclasses.fields(score_type)}
    assert set(cls.artifact_fields) <= fields, f"{name}: artifact fields missing from {score_type.__name__}"
    invalid = score_type(valid=False, failures=["reward_error: x"])  # what a group that raised becomes
    with pytest.raises(dataclasses.FrozenInstanceError):
        invalid.valid = True
    assert pickle.loads(pickle.dumps(invalid)) == invalid  # results cross ranks through all_gather (pickle)


def test_a_reward_that_raises_on_one_group_keeps_its_metrics_typed(monkeypatch):
    reward = MajorityReward(g=2)
    score = reward.score_group
    monkeypatch.setattr(reward, "score_group",
                        lambda rows: 1 / 0 if rows[0].question == "bad?" else score(rows))
    out = reward(prompts=["2+2?"] * 2 + ["bad?"] * 2, completions=["\\boxed{4}", "\\boxed{4}", "1", "2"])
    assert out == [1.0, 1.0, None, None]
    m = reward.last_metrics
    assert m["majority/invalid_groups"] == 1.0 and m["majority/reward_errors"] == 1.0
    assert m["majority/consensus"] == 1.0 and m["majority/answer_extracted"] == 1.0  # the valid group only


def test_the_random_control_is_content_free_seeded_and_near_its_rate():
    from cat_dspy.rewards import REWARD_FUNCS, RandomReward

    assert REWARD_FUNCS["random"] is RandomReward
    texts = [f"rollout {i}: \\boxed{{{i % 3}}}" for i in range(400)]
    reward = RandomReward(g=4, p=0.25, seed=1)
    first = reward(prompts=[f"q{i // 4}" for i in range(400)], completions=texts)
    assert first == RandomReward(g=4, p=0.25, seed=1)(prompts=[f"q{i // 4}" for i in range(400)], completions=texts)
    assert first != RandomReward(g=4, p=0.25, seed=2)(prompts=[f"q{i // 4}" for i in range(400)], completions=texts)
    assert 0.18 < sum(first) / len(first) < 0.32 and reward.last_metrics["random/rate"] == sum(first) / 400
    assert RandomReward(g=2, p=0.0)(prompts=["q", "q"], completions=["4", "4"]) == [0.0, 0.0]
    assert RandomReward(g=2, p=1.0)(prompts=["q", "q"], completions=["4", "5"]) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        RandomReward(p=1.5)

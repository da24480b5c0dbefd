"""The CaT reward for TRL (``cat_dspy.rewards``, TRL section) on scripted anchors and judges."""

from __future__ import annotations

import importlib
import json
import logging
import re
import threading
from collections import Counter
from pathlib import Path

import dspy
import pytest

from cat_dspy import rewards as rewards_module
from cat_dspy.config import normalize_reward_options, reward_options_from_env
from cat_dspy.rewards import CaTReward, EnvCaTReward
from cat_dspy.rl.inputs import group_completions
from cat_dspy.testing import scripted_lm

REPO = Path(__file__).resolve().parents[2]
RUBRIC = "<rubric>" + "".join(f"<criterion>criterion {i}</criterion>" for i in range(1, 6)) + "</rubric>"


def group_anchor(answers: dict[str, str], fail: set[str] = frozenset(), barrier: threading.Barrier | None = None):
    """An anchor that answers per group: rollouts carry a ``[g<k>]`` tag; calls are counted per group."""
    calls: Counter = Counter()
    lock = threading.Lock()

    def fn(prompt: str) -> str:
        tags = set(re.findall(r"\[(g\d+)\]", prompt))
        assert len(tags) == 1, f"one group per synthesis, got {tags}"
        tag = tags.pop()
        with lock:
            calls[tag] += 1
        if barrier is not None:
            barrier.wait(timeout=10)  # every group of the call must be in flight at once
        if tag in fail:
            raise ConnectionError("anchor server down")
        return f"# SUMMARY ...\n# UNIFIED RESPONSE ... Therefore, the final answer is: $\\boxed{{{answers[tag]}}}$."

    lm = scripted_lm(fn)
    lm.group_calls = calls
    return lm


def batch(groups: dict[str, list[str]], conversational: bool = False):
    """TRL-style inputs: each group's completions consecutive, its prompt repeated."""
    prompts, completions = [], []
    for tag, answers in groups.items():
        for answer in answers:
            question = f"Question {tag}?"
            text = f"[{tag}] work... \\boxed{{{answer}}}"
            if conversational:
                prompts.append([{"role": "system", "content": "Solve."}, {"role": "user", "content": question}])
                completions.append([{"role": "assistant", "content": text}])
            else:
                prompts.append(question)
                completions.append(text)
    return prompts, completions


class Log:
    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def metric(self, name, value):
        self.metrics.setdefault(name, []).append(value)

    def extra_column(self, column, values):
        self.extra.setdefault(column, []).extend(values)

    def kwargs(self):
        return {"log_metric": self.metric, "log_extra": self.extra_column}


def test_one_synthesis_per_group_all_groups_concurrently():
    anchor = group_anchor({"g0": "3", "g1": "7", "g2": "1"}, barrier=threading.Barrier(3))
    reward = CaTReward(anchor, g=4)
    prompts, completions = batch({"g0": ["3", "3", "4", "3"], "g1": ["7", "8", "8", "8"], "g2": ["1", "1", "1", "1"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, **log.kwargs())
    assert out == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    assert anchor.group_calls == {"g0": 1, "g1": 1, "g2": 1}
    assert reward.__name__ == "cat_reward"
    m = {k: v[-1] for k, v in log.metrics.items()}
    assert m["cat/synthesis_extracted"] == 1.0 and m["cat/invalid_groups"] == 0.0
    assert m["cat/majority_disagreement"] == pytest.approx(1 / 3)  # g1: the reference (7) is not the majority (8)
    assert m["cat/reference_outside_rollouts"] == 0.0
    assert m["cat/zero_spread_groups"] == pytest.approx(1 / 3)  # g2: all agree, no GRPO signal
    assert m["cat/length_penalty_hits"] == 0.0 and m["cat/reward_seconds"] > 0
    assert "cat/label_accuracy" not in m  # training: labels are never looked at
    refs = log.extra["cat_reference"]
    assert len(refs) == 12 and "\\boxed{7}" in refs[4]


def test_conversational_inputs_and_question_blind_anchor():
    anchor = group_anchor({"g0": "5"})
    reward = CaTReward(anchor, g=2)
    prompts, completions = batch({"g0": ["5", "6"]}, conversational=True)
    assert reward(prompts=prompts, completions=completions) == [1.0, 0.0]
    assert "Question g0?" not in anchor.engine_script.prompts[0]

    aware_anchor = group_anchor({"g0": "5"})
    CaTReward(aware_anchor, g=2, question_aware=True)(prompts=prompts, completions=completions)
    prompt = aware_anchor.engine_script.prompts[0]
    assert "Question g0?" in prompt and "Solve." not in prompt  # the last user message, not the system prompt


def test_blocks_that_mix_prompts_are_regrouped_by_prompt(caplog):
    anchor = group_anchor({"g0": "1", "g1": "2"})
    reward = CaTReward(anchor, g=2)
    prompts, completions = batch({"g0": ["1", "9"], "g1": ["2", "9"]})
    order = [0, 2, 1, 3]  # interleaved: every block of 2 mixes the prompts
    with caplog.at_level(logging.WARNING, logger="cat_dspy.rl.reward"):
        out = reward(prompts=[prompts[i] for i in order], completions=[completions[i] for i in order])
    assert out == [1.0, 1.0, 0.0, 0.0]
    assert anchor.group_calls == {"g0": 1, "g1": 1}
    assert "grouping by prompt text" in caplog.text
    assert group_completions(["a"] * 3, 2) == ([[0, 1, 2]], False)  # not a multiple of G: by prompt as well


def test_failed_anchor_gives_none_for_its_group_only():
    anchor = group_anchor({"g0": "1", "g1": "2"}, fail={"g1"})
    reward = CaTReward(anchor, g=2)
    prompts, completions = batch({"g0": ["1", "0"], "g1": ["2", "2"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, **log.kwargs())
    assert out == [1.0, 0.0, None, None]
    assert log.metrics["cat/invalid_groups"] == [1.0]
    assert log.metrics["cat/synthesis_extracted"] == [0.5]


def test_unparsed_reference_is_zero_or_skipped():
    anchor = scripted_lm(["I cannot decide."])
    prompts, completions = batch({"g0": ["1", "2"]})
    assert CaTReward(anchor, g=2)(prompts=prompts, completions=completions) == [0.0, 0.0]
    log = Log()
    skip = CaTReward(anchor, g=2, skip_unparsed=True)
    assert skip(prompts=prompts, completions=completions, **log.kwargs()) == [None, None]
    assert log.metrics["cat/skipped_groups"] == [1.0] and log.metrics["cat/invalid_groups"] == [0.0]


def rubric_judge():
    def judge(prompt: str) -> str:  # satisfied criteria = the digits the graded response mentions
        response = re.search(r"<response>\n(.*?)\n</response>", prompt, re.S).group(1)
        covered = set(re.findall(r"\d", response))
        return "\n".join(f'<verdict id="{i}">{"yes" if str(i) in covered else "no"}</verdict>' for i in range(1, 6))

    return scripted_lm(judge)


def rubric_anchor():
    return scripted_lm(lambda p: RUBRIC if "rubric" in p.lower() and "criterion" in p else "Combined advice.")


def test_rubric_mode_rewards_and_metrics():
    reward = CaTReward(rubric_anchor(), judge=rubric_judge(), mode="rubric", g=3)
    prompt = [{"role": "user", "content": "How do I treat a sprain?"}]
    completions = [[{"role": "assistant", "content": c}] for c in ("covers 1 2 3", "covers 1", "covers nothing")]
    log = Log()
    out = reward(prompts=[prompt] * 3, completions=completions, **log.kwargs())
    assert out == pytest.approx([0.6, 0.2, 0.0])
    m = {k: v[-1] for k, v in log.metrics.items()}
    assert m["cat/rubric_size"] == 5.0
    assert m["cat/criterion_pass_rate"] == pytest.approx(4 / 15)
    assert m["cat/judge_errors"] == 0.0 and m["cat/synthesis_extracted"] == 1.0
    assert "cat/majority_disagreement" not in m


def test_rubric_mode_judge_failure_gives_none():
    def broken(prompt):
        raise TimeoutError("judge timed out")

    reward = CaTReward(rubric_anchor(), judge=scripted_lm(broken), mode="rubric", g=2)
    log = Log()
    assert reward(prompts=["q", "q"], completions=["a", "b"], **log.kwargs()) == [None, None]
    assert log.metrics["cat/judge_errors"][-1] >= 1 and log.metrics["cat/invalid_groups"] == [1.0]


@pytest.mark.parametrize("num_threads", [1, 2])
def test_num_threads_bounds_the_groups_in_flight_and_keeps_their_order(num_threads):
    in_flight, peak, lock = [0], [0], threading.Lock()
    barrier = threading.Barrier(num_threads)  # fails (a failed anchor call) unless num_threads groups run at once
    answers = {"g0": "3", "g1": "7", "g2": "1", "g3": "5"}

    def fn(prompt: str) -> str:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        barrier.wait(timeout=10)
        with lock:
            in_flight[0] -= 1
        tag = re.search(r"\[(g\d+)\]", prompt).group(1)
        return f"# UNIFIED RESPONSE $\\boxed{{{answers[tag]}}}$"

    reward = CaTReward(scripted_lm(fn), g=2, num_threads=num_threads)
    prompts, completions = batch({"g0": ["3", "4"], "g1": ["8", "7"], "g2": ["1", "1"], "g3": ["2", "5"]})
    assert reward(prompts=prompts, completions=completions) == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert peak[0] == num_threads


def test_a_group_that_raises_is_invalid_and_the_others_are_scored(monkeypatch):
    reward = CaTReward(group_anchor({"g0": "3", "g1": "7"}), g=2)
    score = reward.cat.score

    def flaky(rollouts, **kwargs):
        if "[g1]" in rollouts[0]:
            raise RuntimeError("a bug in scoring")
        return score(rollouts, **kwargs)

    monkeypatch.setattr(reward.cat, "score", flaky)
    log = Log()
    prompts, completions = batch({"g0": ["3", "4"], "g1": ["7", "7"]})
    assert reward(prompts=prompts, completions=completions, **log.kwargs()) == [1.0, 0.0, None, None]
    assert log.metrics["cat/reward_errors"] == [1.0] and log.metrics["cat/invalid_groups"] == [1.0]


def test_length_penalty_counts_completion_ids(monkeypatch):
    import cat_dspy.modules.cat as cat_module

    checked = []
    check = cat_module.verifiable_reward
    monkeypatch.setattr(cat_module, "verifiable_reward", lambda a, ref, **kw: checked.append(a) or check(a, ref, **kw))
    anchor = group_anchor({"g0": "3"})
    reward = CaTReward(anchor, g=3, length_limit=5)
    prompts, completions = batch({"g0": ["3", "3", "4"]})
    log = Log()
    out = reward(prompts=prompts, completions=completions, completion_ids=[[1] * 5, [1] * 6, [1] * 2], **log.kwargs())
    assert out == [1.0, -1.0, 0.0]
    assert log.metrics["cat/length_penalty_hits"] == [pytest.approx(1 / 3)]
    assert log.metrics["cat/reference_outside_rollouts"] == [0.0]  # the long rollout still matched
    assert checked == ["3", "3", "4"]  # each rollout's match checked once, by CaT.score, penalized or not


def test_without_completion_ids_each_rollout_is_tokenized_once_per_call():
    policy = scripted_lm(["unused"])  # its engine's tokenizer counts the lengths (as the local engine's would)
    counted: Counter = Counter()

    def count_tokens(text: str) -> int:
        counted[text] += 1
        return len(text.split())

    policy.engine.count_tokens = count_tokens
    completions = ["[g0] \\boxed{3}", "[g0] a long way to \\boxed{3}", "[g1] \\boxed{7}", "[g1] \\boxed{8}"]
    prompts = ["Question g0?"] * 2 + ["Question g1?"] * 2
    limited = CaTReward(group_anchor({"g0": "3", "g1": "7"}), g=2, length_limit=3)
    log = Log()
    with dspy.context(lm=policy):
        for _ in range(2):
            assert limited(prompts=prompts, completions=completions, **log.kwargs()) == [1.0, -1.0, 1.0, 0.0]
    assert counted == {text: 2 for text in completions}  # two calls: each rollout counted once per call
    assert log.metrics["cat/length_penalty_hits"] == [0.25, 0.25]
    counted.clear()
    unlimited = CaTReward(group_anchor({"g0": "3", "g1": "7"}), g=2)
    with dspy.context(lm=policy):
        assert unlimited(prompts=prompts, completions=completions) == [1.0, 1.0, 1.0, 0.0]
    assert not counted  # no length limit: nothing to count


class FakeModel:
    training = True


def test_labels_only_feed_label_metrics():
    anchor = group_anchor({"g0": "3", "g1": "7"})
    reward = CaTReward(anchor, g=2)
    model = FakeModel()
    reward.bind(model)
    prompts, completions = batch({"g0": ["3", "4"], "g1": ["7", "8"]})
    wrong_gold = ["4", "4", "8", "8"]  # gold disagrees with the references everywhere

    log = Log()
    unlabelled = reward(prompts=prompts, completions=completions, **log.kwargs())
    assert unlabelled == [1.0, 0.0, 1.0, 0.0]
    assert "cat/label_accuracy" not in log.metrics  # no answer column: nothing to measure against

    log = Log()  # training on a set that carries the answers (label_metrics): metrics only
    assert reward(prompts=prompts, completions=completions, answer=wrong_gold, **log.kwargs()) == unlabelled
    assert log.metrics["cat/label_accuracy"] == [0.0]
    assert log.metrics["cat/reward_accuracy"] == [0.0]  # every reward is the opposite of the gold one

    model.training = False  # TRL evaluates with the model in eval mode
    assert reward.evaluating
    log = Log()
    eval_out = reward(prompts=prompts, completions=completions, answer=["3", "3", "8", "8"], **log.kwargs())
    assert eval_out == unlabelled  # the reward itself never changes with the label
    assert log.metrics["cat/label_accuracy"] == [0.5]  # g0's reference is right, g1's is wrong
    assert log.metrics["cat/reward_accuracy"] == [0.5]  # CaT reward = gold reward for 2 of 4 completions


def test_eval_uses_g_eval():
    anchor = group_anchor({"g0": "1", "g1": "2"})
    reward = CaTReward(anchor, g=4, g_eval=2).bind(FakeModel())
    reward._model.training = False
    prompts, completions = batch({"g0": ["1", "0"], "g1": ["2", "2"]})
    assert reward(prompts=prompts, completions=completions) == [1.0, 0.0, 1.0, 1.0]
    assert anchor.group_calls == {"g0": 1, "g1": 1}


def test_references_as_artifacts_and_sampled_traces_in_the_active_mlflow_run():
    import mlflow

    anchor = group_anchor({"g0": "3", "g1": "5"})
    reward = CaTReward(anchor, g=2, trace_every=2)
    prompts, completions = batch({"g0": ["3", "4"], "g1": ["5", "5"]})

    class State:
        global_step = 7

    with mlflow.start_run() as run:
        for _ in range(3):  # calls 0 and 2 are traced
            reward(prompts=prompts, completions=completions, trainer_state=State())
    files = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "cat/train")]
    assert files == [f"cat/train/step_000007_call_{i:05d}.json" for i in range(3)]
    record = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{files[0]}")
    assert record["groups"][0]["reference_answer"] == "3" and record["groups"][0]["rewards"] == [1.0, 0.0]

    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(run_id=run.info.run_id, return_type="list")
    assert len(traces) == 2
    names = Counter(span.name for span in traces[0].data.spans)
    assert names["cat_reward"] == 1 and names["Synthesize.forward"] == 2  # both groups' threads, one trace


def test_rubric_mode_needs_a_judge_and_anchor_is_required():
    with pytest.raises(ValueError, match="judge"):
        CaTReward(scripted_lm(["x"]), mode="rubric")
    with pytest.raises(ValueError, match="anchor"):
        CaTReward(None)


def resolve_like_trl(dotted: str):
    """What ``trl/scripts/grpo.py`` does with ``--reward_funcs my.module.func``."""
    module_path, func_name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module_path), func_name)


def test_env_configured_cat_reward_resolves_like_trl(monkeypatch):
    made = []

    def fake_make_lm(model, **kwargs):
        made.append((model, kwargs))
        return group_anchor({"g0": "2"})

    monkeypatch.setattr("cat_dspy.lm.models.make_lm", fake_make_lm)
    monkeypatch.setenv("CAT_ANCHOR", "hosted_vllm/base-model")
    monkeypatch.setenv("CAT_ANCHOR_API_BASE", "http://anchor:8001/v1")
    monkeypatch.setenv("CAT_ANCHOR_MAX_TOKENS", "64")
    monkeypatch.setenv("CAT_G", "2")
    monkeypatch.setenv("CAT_LENGTH_LIMIT", "100")
    monkeypatch.setenv("CAT_EXTRACTION", "flexible")
    reward = resolve_like_trl("cat_dspy.rewards.cat_reward")
    assert reward is rewards_module.cat_reward and isinstance(reward, EnvCaTReward)
    monkeypatch.setattr(rewards_module, "cat_reward", EnvCaTReward())  # a fresh one: leave the global alone
    reward = resolve_like_trl("cat_dspy.rewards.cat_reward")

    from trl.trainer.utils import get_callable_name, is_async_callable

    assert get_callable_name(reward) == "cat_reward" and not is_async_callable(reward)
    prompts, completions = batch({"g0": ["2", "3"]}, conversational=True)
    assert reward(prompts=prompts, completions=completions, completion_ids=[[1], [2]]) == [1.0, 0.0]
    assert made == [("hosted_vllm/base-model",
                     {"temperature": 0.7, "max_tokens": 64, "api_base": "http://anchor:8001/v1"})]
    assert reward.reward.g == 2 and reward.reward.length_limit == 100
    assert reward.reward.cat.extraction == "flexible"


def test_reward_config_file_accepts_a_training_recipe(monkeypatch):
    recipe = REPO / "experiments" / "recipes" / "cpu_smoke.yaml"
    options = reward_options_from_env({"CAT_REWARD_CONFIG": str(recipe), "CAT_MODE": "verifiable"})
    assert options["anchor"] == "local" and options["g"] == 4 and options["anchor_max_tokens"] == 48
    with pytest.raises(ValueError, match="unknown CaT reward option"):
        normalize_reward_options({"anchr": "local"})
    with pytest.raises(ValueError, match="boolean"):
        reward_options_from_env({"CAT_QUESTION_AWARE": "maybe"})


def test_cat_reward_configure_and_reset():
    reward = EnvCaTReward()
    configured = reward.configure(anchor=group_anchor({"g0": "1"}), g=2, mode="verifiable")
    assert reward.reward is configured and configured.__name__ == "cat_reward"
    reward.reset()
    assert reward._reward is None


# -- cat_dspy.rl.train: the recipe side (no training here; tests/integration/test_train.py trains) -------------------


def parse_recipe(*overrides: str):
    from cat_dspy.rl.train import make_parser

    return make_parser().parse_args_and_config(["--config", str(REPO / "experiments/recipes/cpu_smoke.yaml"),
                                                *overrides])


def test_smoke_recipe_parses_into_the_three_dataclasses():
    from cat_dspy.rl.train import CaTGRPOConfig, reward_options

    script_args, training_args, model_args = parse_recipe("--max_steps", "5", "--length_limit", "750")
    assert isinstance(training_args, CaTGRPOConfig)
    assert (training_args.max_steps, training_args.num_generations, training_args.per_device_train_batch_size) == (
        5, 4, 4)
    assert training_args.use_cpu and not training_args.bf16 and not training_args.gradient_checkpointing
    assert training_args.report_to == ["mlflow"] and training_args.save_steps == 2
    assert script_args.dataset_name == "gsm8k" and script_args.dataset_limit == 8
    assert model_args.model_name_or_path is None  # the embedded model
    options = reward_options(training_args, "/models/init")
    assert options["anchor"] == "local" and options["anchor_max_tokens"] == 48
    assert options["length_limit"] == 750 and options["g"] == 4 and options["anchor_device"] == "cpu"


PAPER_MODELS = ("qwen3_4b", "gemma3_4b", "llama31_8b")
TRAINING_RECIPES = ["cpu_smoke", "gsm8k_smollm2",
                    *(f"{model}_{task}" for model in PAPER_MODELS for task in ("math500", "healthbench"))]


@pytest.mark.parametrize("name", TRAINING_RECIPES)
def test_training_recipes_parse(name):
    from cat_dspy.rl.train import make_parser

    argv = ["--config", str(REPO / "experiments" / "recipes" / f"{name}.yaml")]
    if name != "cpu_smoke":  # GPU recipes: parse them here without a GPU
        argv += ["--use_cpu", "true", "--bf16", "false", "--use_vllm", "false", "--gradient_checkpointing", "false"]
    script_args, args, _ = make_parser().parse_args_and_config(argv)
    assert args.mode in ("verifiable", "rubric")
    assert args.generation_batch_size % args.num_generations == 0
    if name.endswith(("math500", "healthbench")):  # the paper's settings (cat-paper.md §2.1, §2.3)
        assert (args.num_generations, args.learning_rate, args.beta, args.loss_type) == (8, 5e-7, 1e-3, "grpo")
        assert args.lr_scheduler_type == "constant" and args.warmup_steps == 0 and args.anchor_api_base
        sampling = (args.temperature, args.top_k, args.top_p)
        assert sampling == {"qwen3": (0.7, 20, 0.8), "gemma3": (1.0, 64, 0.95), "llama31": (0.7, 50, 0.9)}[
            name.split("_")[0]]
        assert (args.anchor_temperature, args.anchor_top_k, args.anchor_top_p) == sampling
        assert (script_args.prompt_prefix == "/no_think ") == name.startswith("qwen3")
        if name.endswith("healthbench"):
            assert (args.max_completion_length, args.length_limit, args.mode) == (1024, 750, "rubric")
        else:
            assert (args.max_completion_length, args.mode) == (1536, "verifiable")


def test_training_prompts_carry_no_labels_and_eval_keeps_gold(tiny_gsm8k):
    from cat_dspy.rl.train import build_datasets

    script_args, training_args, _ = parse_recipe("--data_dir", str(tiny_gsm8k), "--eval_strategy", "steps",
                                                 "--eval_steps", "1", "--holdout", "4", "--prompt_prefix", "/no_think ")
    train, evaluation = build_datasets(script_args, training_args)
    assert len(train) == 8 and set(train.column_names) == {"prompt", "id"}  # no answer column
    prompt = train[0]["prompt"]
    assert prompt[0]["role"] == "system" and "boxed" in prompt[0]["content"]
    assert prompt[1]["content"] == "/no_think Ann has 3 apples and buys 5 more. How many apples does she have now?"
    assert prompt[1]["role"] == "user" and len(prompt) == 2
    assert len(evaluation) == 4 and "answer" in evaluation.column_names  # gold: eval metrics only
    assert evaluation["answer"] == [str(2 * i + 8 + i) for i in range(12, 16)]  # the last 4 of 16, held out
    assert not {r["id"] for r in evaluation} & {r["id"] for r in train}


def test_last_checkpoint_is_found_for_resume(tmp_path):
    from cat_dspy.rl.train import last_checkpoint

    for step in (2, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path))
    assert last_checkpoint(training_args) == str(tmp_path / "checkpoint-10")
    assert last_checkpoint(training_args, auto_resume=False) is None
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path), "--resume_from_checkpoint", "false")
    assert last_checkpoint(training_args) is None


def test_resume_passes_over_a_checkpoint_cut_off_while_written(tmp_path, caplog):
    from cat_dspy.rl.train import last_checkpoint

    for step in (8, 16):  # whole: trainer_state.json is the Trainer's last file
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-24").mkdir()  # the disk filled while the optimizer state was written
    (tmp_path / "checkpoint-24" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "checkpoint-32").mkdir()  # killed while trainer_state.json itself was written
    (tmp_path / "checkpoint-32" / "trainer_state.json").write_text('{"global_st')
    (tmp_path / "checkpoint-final.txt").write_text("")  # not a checkpoint
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path))
    with caplog.at_level("WARNING"):
        assert last_checkpoint(training_args) == str(tmp_path / "checkpoint-16")
    assert "checkpoint-32 is incomplete" in caplog.text and "checkpoint-24 is incomplete" in caplog.text
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path), "--resume_from_checkpoint",
                                       str(tmp_path / "checkpoint-24"))
    with pytest.raises(ValueError, match="checkpoint-24: not a complete checkpoint"):
        last_checkpoint(training_args)
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path), "--resume_from_checkpoint",
                                       str(tmp_path / "checkpoint-32"))
    with pytest.raises(ValueError, match="checkpoint-32: not a complete checkpoint"):  # its state cut mid-write
        last_checkpoint(training_args)
    _, training_args, _ = parse_recipe("--output_dir", str(tmp_path / "nowhere"), "--resume_from_checkpoint", "last")
    assert last_checkpoint(training_args) is None


def test_cli_hands_every_argument_to_trl(monkeypatch):
    from cat_dspy import cli
    from cat_dspy.rl import train

    seen = {}

    class Trainer:
        def end(self):
            seen["ended"] = True

    monkeypatch.setattr(train, "main", lambda s, t, m: seen.update(s=s, t=t) or Trainer())
    recipe = str(REPO / "experiments/recipes/cpu_smoke.yaml")
    assert cli.main(["train", "--config", recipe, "--max_steps", "7", "--extraction", "flexible"]) == 0
    assert seen["t"].max_steps == 7 and seen["s"].dataset_limit == 8 and seen["ended"]
    assert train.reward_options(seen["t"], None)["extraction"] == "flexible"


def test_extraction_option_reaches_the_reward():
    reward = rewards_module.build_reward({"anchor": scripted_lm(["so 3 + 4 = 7"]), "extraction": "flexible",
                                          "g": 2})
    assert reward.cat.extraction == "flexible"
    assert reward(prompts=["3 + 4?", "3 + 4?"], completions=["7", "it is 8"]) == [1.0, 0.0]


def test_reward_loads_an_optimized_program(tmp_path, caplog):
    from cat_dspy.modules import CaT

    tuned = CaT(g=2, extraction="flexible")
    tuned.synthesize.synthesize.signature = tuned.synthesize.synthesize.signature.with_instructions("Reconcile: X")
    path = tmp_path / "synth.json"
    tuned.save(str(path))
    seen = []
    anchor = scripted_lm(lambda prompt: seen.append(prompt) or "so 3 + 4 = 7")
    reward = rewards_module.build_reward({"anchor": anchor, "g": 2, "program": str(path)})
    assert reward.cat.synthesize.synthesize.signature.instructions == "Reconcile: X"
    assert "extraction=flexible" in caplog.text  # the file was tuned for flexible answers, the reward reads strict
    assert reward(prompts=["q", "q"], completions=["\\boxed{7}", "\\boxed{8}"]) == [0.0, 0.0]  # strict: no answer
    assert "Reconcile: X" in seen[0]

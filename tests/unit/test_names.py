"""One spelling of G (``g``) and of each option: the former spellings still work, with a warning naming the new one,
and the training reward takes G from the trainer instead of asking the user to repeat it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dspy.utils import DummyLM

from cat_dspy.evaluation.evaluate import evaluate
from cat_dspy.modules import CaT, Rollout
from cat_dspy.rewards import CaTReward, MajorityReward
from cat_dspy.testing import scripted_lm


def test_rollout_takes_g_and_still_reads_n_with_a_warning():
    lm = DummyLM([{"response": f"\\boxed{{{i}}}"} for i in range(6)])
    assert Rollout(g=3, lm=lm).g == 3
    with pytest.warns(FutureWarning, match=r"Rollout\(n=\.\.\.\) is deprecated: use g="):
        old = Rollout(n=2, lm=lm)
    assert old.g == 2 and len(old(question="q").rollouts) == 2
    with pytest.warns(FutureWarning, match="use g="):
        assert len(Rollout(g=4, lm=lm)(question="q", n=1).rollouts) == 1
    with pytest.raises(TypeError, match="pass only g"):
        Rollout(g=3, n=2)


def test_cat_and_its_rollout_module_say_the_same_g():
    assert CaT(g=5).g == CaT(g=5).rollout.g == 5


def test_evaluate_reads_gs_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"evaluate\(gs=\.\.\.\) is deprecated: use g="), pytest.raises(ValueError):
        evaluate([], {}, tmp_path, gs=[1, 2])  # warned before anything runs (no items: refused)


def test_rewards_read_num_generations_with_a_warning_and_refuse_unknown_arguments():
    with pytest.warns(FutureWarning, match=r"MajorityReward\(num_generations=\.\.\.\) is deprecated: use g="):
        assert MajorityReward(num_generations=4).g == 4
    with pytest.warns(FutureWarning, match="use g_eval="):
        assert CaTReward(scripted_lm(["x"]), g=4, num_generations_eval=2).g_eval == 2
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['num_gens'\]"):
        MajorityReward(num_gens=4)


def test_the_reward_takes_g_from_the_trainer():
    trainer = SimpleNamespace(model=SimpleNamespace(training=True),
                              args=SimpleNamespace(num_generations=2, num_generations_eval=3))
    reward = CaTReward(scripted_lm(["so \\boxed{7}"] * 2)).bind(trainer)
    assert (reward.g, reward.g_eval) == (2, 3)
    prompts, completions = ["a", "a", "b", "b"], ["\\boxed{7}", "\\boxed{8}", "\\boxed{7}", "\\boxed{7}"]
    assert reward(prompts=prompts, completions=completions) == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="g=4 but the trainer's num_generations is 2"):
        CaTReward(scripted_lm(["x"]), g=4).bind(trainer)


def test_an_unbound_reward_without_g_groups_runs_of_one_prompt():
    reward = MajorityReward(extraction="flexible")
    assert reward.g is None
    rewards = reward(prompts=["a"] * 3 + ["b"] * 3, completions=["1", "1", "2", "5", "6", "6"])
    assert rewards == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]

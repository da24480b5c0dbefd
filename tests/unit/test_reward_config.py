"""Each CaT reward option is declared once (``CaTRewardConfig``); the recipe, the environment, ``CaTReward`` and the
CLI flags derive from it. These tests compare every place with the dataclass, so a second declaration that drifts
fails here."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest
from components import require_component

from cat_dspy.cli import eval as eval_cli
from cat_dspy.cli import optimize as optimize_cli
from cat_dspy.cli import solve as solve_cli
from cat_dspy.config import (
    DEFAULTS,
    ENV_PREFIX,
    OPTION_FIELDS,
    RENAMED,
    REWARD_OPTIONS,
    CaTRewardConfig,
    normalize_reward_options,
    reward_options_from_env,
)
from cat_dspy.optimization.compile import OptimizeConfig
from cat_dspy.rl.reward import CaTReward


def _parser(add) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add(parser)
    return parser


def _value_for(kind: type) -> tuple[str, object]:
    return {str: ("x", "x"), int: ("7", 7), float: ("0.25", 0.25), bool: ("true", True), dict: ('{"a": 1}', {"a": 1})}[
        kind
    ]


def test_every_option_is_read_from_its_environment_variable_and_recipe_field():
    for name, kind in REWARD_OPTIONS.items():
        text, value = _value_for(kind)
        assert reward_options_from_env({ENV_PREFIX + name.upper(): text}) == {name: value}, name
        assert normalize_reward_options({name: text}) == {name: value}, name  # one spelling: the recipe field's
    assert set(OPTION_FIELDS) <= set(REWARD_OPTIONS)


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_former_spelling_is_read_with_a_warning_naming_the_new_one(old):
    new = RENAMED[old]
    text, value = _value_for(REWARD_OPTIONS[new])
    with pytest.warns(FutureWarning, match=repr(new)):
        assert normalize_reward_options({old: text}) == {new: value}


def test_g_is_read_from_a_recipe_as_trl_spells_it_and_from_its_former_variable():
    assert normalize_reward_options({"num_generations": "4", "num_generations_eval": "2"}, recipe=True) == {
        "g": 4, "g_eval": 2}
    with pytest.warns(FutureWarning, match="CAT_G"):
        assert reward_options_from_env({"CAT_NUM_GENERATIONS": "4"}) == {"g": 4}


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ValueError, match="'anchor_modle'"):
        normalize_reward_options({"anchor_modle": "local"})
    assert {f.name for f in dataclasses.fields(CaTRewardConfig)} == {f.name for f in OPTION_FIELDS.values()}


def test_recipe_fields_are_the_dataclass_fields_with_the_same_defaults():
    require_component("trl")
    from trl import GRPOConfig

    from cat_dspy.rl import train

    config = train.CaTGRPOConfig
    assert issubclass(config, CaTRewardConfig) and issubclass(config, GRPOConfig)
    assert train.cat_fields() == [f.name for f in dataclasses.fields(CaTRewardConfig)]
    recipe = {f.name: f.default for f in dataclasses.fields(config)}
    for f in dataclasses.fields(CaTRewardConfig):
        assert recipe[f.name] == f.default, f.name


def test_catreward_arguments_default_to_the_dataclass():
    params = inspect.signature(CaTReward).parameters
    shared = [name for name in params if name in DEFAULTS and name not in ("anchor", "judge")]  # the LMs
    assert len(shared) >= 10, shared
    for name in shared:
        assert params[name].default == DEFAULTS[name], name
    missing = set(DEFAULTS) - set(params) - {"anchor_api_base", "anchor_temperature", "anchor_top_p", "anchor_top_k",
                                             "anchor_max_tokens", "anchor_device", "anchor_lm_kwargs",
                                             "judge_api_base", "judge_temperature", "judge_max_tokens",
                                             "judge_lm_kwargs", "program"}
    assert not missing, f"options CaTReward does not take: {missing}"  # the role LM options build anchor/judge


@pytest.mark.parametrize("add", [solve_cli.add_arguments, eval_cli.add_arguments, optimize_cli.add_arguments])
def test_overlapping_cli_flags_take_the_dataclass_defaults(add):
    parser = _parser(add)
    flags = {a.dest: a for a in parser._actions}  # argparse has no public listing of its actions
    # --anchor/--judge[-*] are the role flags of every command (cli.common.role_settings): the models default to
    # local (the reward's None means "the initial checkpoint", which only training has), the temperatures to the
    # same ROLE_TEMPERATURE (checked below), max tokens to the CLI's --max-tokens (a per-call limit).
    overlap = [name for name in DEFAULTS if name in flags and not name.startswith(("anchor", "judge"))]
    assert {"equivalence", "extraction"} <= set(overlap)
    for name in overlap:
        if add is optimize_cli.add_arguments and name == "mode":
            continue  # optimize: None means "the target's natural mode", not the reward's default
        if add is eval_cli.add_arguments and name == "num_threads":
            continue  # eval: questions evaluated concurrently, another option under the same name
        if add is solve_cli.add_arguments and name == "extraction":
            assert flags[name].default is None  # decided by the policy: flexible for the embedded model only
            assert solve_cli.default_extraction("openai/m") == DEFAULTS[name] != solve_cli.default_extraction("local")
            continue
        assert flags[name].default == DEFAULTS[name], name
        if choices := OPTION_FIELDS[name].metadata.get("choices"):
            assert list(flags[name].choices) == list(choices), name


def test_optimize_flags_default_to_optimize_config():
    args = _parser(optimize_cli.add_arguments).parse_args(["--target", "rubric", "--dataset", "d.jsonl"])
    for f in dataclasses.fields(OptimizeConfig):
        if f.default is not dataclasses.MISSING:
            assert getattr(args, f.name) == f.default, f.name


def test_cli_role_temperatures_are_the_reward_defaults():
    from cat_dspy.cli.common import role_settings

    args = _parser(solve_cli.add_arguments).parse_args(["2+2?"])
    settings = role_settings(args)
    assert settings["anchor"]["temperature"] == DEFAULTS["anchor_temperature"]
    assert settings["judge"]["temperature"] == DEFAULTS["judge_temperature"]

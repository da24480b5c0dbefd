"""The pure CaT rewards: verifiable, rubric, length penalty and majority answer."""

from __future__ import annotations

import pytest

from cat_dspy.scoring.rewards import length_penalty, majority_answer, rubric_reward, verifiable_reward


@pytest.fixture(autouse=True)
def _isolated_stores():
    """These tests touch no DSPy cache or MLflow store: skip conftest's per-test set-up."""
    yield


# ----------------------------------------------------------------------------------------- verifiable_reward
@pytest.mark.parametrize(
    ("rollout", "reference", "expected"),
    [
        ("72", "72", 1.0),
        ("72.0", "72", 1.0),
        ("1,000", "1000", 1.0),
        (r"\frac{1}{2}", "0.5", 1.0),
        (r"\sqrt{4}", "2", 1.0),
        ("73", "72", 0.0),
        (None, "72", 0.0),
        ("72", None, 0.0),
        (None, None, 0.0),
        ("", "", 0.0),
    ],
)
def test_verifiable_reward(rollout, reference, expected):
    assert verifiable_reward(rollout, reference) == expected


def test_verifiable_reward_string_mode():
    assert verifiable_reward("72.0", "72", mode="string") == 1.0
    assert verifiable_reward(r"\sqrt{4}", "2", mode="string") == 0.0


# ----------------------------------------------------------------------------------------- rubric_reward
@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [([], 0.0), ([True], 1.0), ([False], 0.0), ([True, True, True, True, False], 0.8), ([False] * 3 + [True], 0.25)],
)
def test_rubric_reward(verdicts, expected):
    assert rubric_reward(verdicts) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------- length_penalty
def test_length_penalty():
    assert length_penalty(0.8, 751, 750) == -1.0
    assert length_penalty(0.0, 751, 750) == -1.0
    assert length_penalty(0.8, 750, 750) == 0.8
    assert length_penalty(1.0, 0, 750) == 1.0
    assert length_penalty(0.5, 10**9, None) == 0.5


# ----------------------------------------------------------------------------------------- majority_answer
def test_majority_empty_and_all_none():
    assert majority_answer([]) == (None, 0, [])
    assert majority_answer([None, None, None]) == (None, 0, [])
    assert majority_answer([None, "", "  "]) == (None, 0, [])


def test_majority_clusters_by_equivalence():
    assert majority_answer(["3", r"\frac{1}{2}", "0.5", None, "0.50", "3"]) == (r"\frac{1}{2}", 3, [1, 2, 4])
    assert majority_answer([None, "2", r"\sqrt{4}", "2.0", "5"]) == ("2", 3, [1, 2, 3])


def test_majority_string_mode_does_not_merge_symbolic_forms():
    assert majority_answer([r"\sqrt{4}", "2", "2"], mode="string") == ("2", 2, [1, 2])


def test_majority_ties_go_to_the_earliest_cluster():
    assert majority_answer(["7", "5", "5", "7"]) == ("7", 2, [0, 3])
    assert majority_answer(["5", "7", "7", "5"]) == ("5", 2, [0, 3])
    assert majority_answer([None, "b", "a"]) == ("b", 1, [1])


def test_majority_nones_never_cluster():
    assert majority_answer([None, None, "1"]) == ("1", 1, [2])

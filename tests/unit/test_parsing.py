"""Lenient parsing of rubric criteria and judge verdicts."""

from __future__ import annotations

import time

import pytest

from cat_dspy.scoring.parsing import parse_criteria, parse_verdict, parse_verdicts


@pytest.fixture(autouse=True)
def _isolated_stores():
    """These tests touch no DSPy cache or MLflow store: skip conftest's per-test set-up."""
    yield


# ----------------------------------------------------------------------------------------- parse_criteria
@pytest.mark.parametrize(
    "text", [None, "", "   \n ", "The response is good.", "<rubric></rubric>", "<rubric>\n</rubric>"]
)
def test_criteria_nothing_parsed(text):
    assert parse_criteria(text) == ([], False)


def test_criteria_well_formed_xml():
    text = (
        "<rubric>\n  <criterion>States the answer 72</criterion>\n  <criterion>Shows the steps</criterion>\n</rubric>"
    )
    assert parse_criteria(text) == (["States the answer 72", "Shows the steps"], True)


def test_criteria_xml_with_entities_attributes_and_case():
    text = (
        '<Rubric><CRITERION id="1">Uses &lt;units&gt; &amp; labels</CRITERION><criterion id="2">Is **kind**</criterion>'
    )
    assert parse_criteria(text + "</Rubric>") == (["Uses <units> & labels", "Is kind"], True)


@pytest.mark.parametrize(
    "text",
    [
        "<rubric><criterion>A & B</criterion><criterion>C",  # bare & and unclosed last tag
        "Sure!\n<rubric>\n<criterion>A & B</criterion>\n<criterion>C</criterion>",  # unclosed rubric
        "<criterion>A & B<criterion>C</rubric>",  # no closing criterion tags at all
    ],
)
def test_criteria_broken_xml(text):
    assert parse_criteria(text) == (["A & B", "C"], True)


def test_criteria_xml_preferred_over_lists():
    text = "1. list item\n<rubric><criterion>xml item</criterion></rubric>\n- bullet"
    assert parse_criteria(text) == (["xml item"], True)


@pytest.mark.parametrize(
    "text",
    [
        "Rubric:\n1. Mentions a doctor\n2. Is empathetic\n",
        "1) Mentions a doctor\n2) Is empathetic",
        "(1) Mentions a doctor\n(2) Is empathetic",
        "**1.** **Mentions a doctor**\n**2.** Is empathetic",
        "- Mentions a doctor\n- Is empathetic",
        "* Mentions a doctor\n* Is empathetic",
        "• Mentions a doctor\n• Is empathetic",
        "Criterion 1: Mentions a doctor\nCriterion 2: Is empathetic",
    ],
)
def test_criteria_lists(text):
    assert parse_criteria(text) == (["Mentions a doctor", "Is empathetic"], True)


def test_criteria_numbered_preferred_over_bullets():
    text = "1. Main point\n   - a sub-bullet\n2. Second point"
    assert parse_criteria(text) == (["Main point", "Second point"], True)


def test_criteria_dedupe_and_drop_empty():
    text = "<rubric><criterion>Same</criterion><criterion> </criterion><criterion>same</criterion><criterion>Other"
    assert parse_criteria(text) == (["Same", "Other"], True)


def test_criteria_capped_keeping_the_first():
    text = "\n".join(f"{i}. criterion number {i}" for i in range(1, 51))
    criteria, ok = parse_criteria(text)
    assert ok and len(criteria) == 20 and criteria[0] == "criterion number 1" and criteria[-1] == "criterion number 20"
    xml = "<rubric>" + "".join(f"<criterion>c{i}</criterion>" for i in range(50)) + "</rubric>"
    assert parse_criteria(xml, max_criteria=5) == (["c0", "c1", "c2", "c3", "c4"], True)
    assert parse_criteria(xml, max_criteria=0) == ([], False)


@pytest.mark.parametrize(
    "text",
    ["<criterion" * 100_000, "<criterion>" + "x" * 1_000_000, "1." + " " * 1_000_000, "-" * 1_000_000, "\n" * 500_000],
)
def test_criteria_huge_inputs_are_fast(text):
    start = time.perf_counter()
    parse_criteria(text)
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------------------- parse_verdict
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        ("yes", True),
        ("**NO**", False),
        ("TRUE", True),
        ("false", False),
        ("Satisfied", True),
        ("not satisfied", False),
        ("Not Satisfied.", False),
        ("met", True),
        ("not met", False),
        ("PASS", True),
        ("Fail!", False),
        ("1", True),
        ("0", False),
        ("Verdict: yes", True),
        ("Final answer: **No**", False),
        ("<verdict>yes</verdict>", True),
        ("<VERDICT> No. </VERDICT>", False),
        ("Yes, there are no errors in it.", True),
        ("The response does not meet the criterion.", False),
        ("The criterion is not satisfied.", False),
        ("The response meets the criterion.", True),
    ],
)
def test_verdict_spellings(text, expected):
    assert parse_verdict(text) is expected


@pytest.mark.parametrize("text", [None, "", "  ", "maybe", "yes and no", "Yes/No", "<verdict></verdict>", "2"])
def test_verdict_cannot_tell(text):
    assert parse_verdict(text) is None


# ----------------------------------------------------------------------------------------- parse_verdicts
def test_verdicts_xml_in_order():
    text = "<verdicts><verdict>yes</verdict><verdict>no</verdict><verdict>satisfied</verdict></verdicts>"
    assert parse_verdicts(text, 3) == ([True, False, True], 0)


def test_verdicts_xml_ids_out_of_order_map_by_id():
    text = '<verdict id="3">no</verdict>\n<verdict id="1">yes</verdict>\n<verdict id="2">no</verdict>'
    assert parse_verdicts(text, 3) == ([True, False, False], 0)
    text = "<verdict id='2'>yes</verdict><verdict id='1'>no</verdict>"
    assert parse_verdicts(text, 3) == ([False, True, False], 1)


def test_verdicts_xml_zero_based_ids_and_out_of_range():
    assert parse_verdicts('<verdict id="1">no</verdict><verdict id="0">yes</verdict>', 2) == ([True, False], 0)
    assert parse_verdicts('<verdict id="7">yes</verdict><verdict id="1">yes</verdict>', 2) == ([True, False], 1)


def test_verdicts_broken_xml():
    assert parse_verdicts("<verdict>yes</verdict><verdict>no<verdict>yes", 3) == ([True, False, True], 0)


@pytest.mark.parametrize(
    "text",
    [
        "1. yes\n2. no\n3. yes",
        "1: Yes\n2: No\n3: TRUE",
        "Criterion 1 - satisfied\nCriterion 2 - not satisfied\nCriterion 3 - met",
        "(1) yes\n(2) no\n(3) yes",
        "**1.** Yes\n**2.** No\n**3.** Yes",
        "3. yes\n1. yes\n2. no",
        "Here you go:\n1. The response names a doctor: yes\n2. It is empathetic: no\n3. yes",
        "Yes\nNo\nYes",
        "yes, no, yes",
    ],
)
def test_verdicts_lines(text):
    assert parse_verdicts(text, 3) == ([True, False, True], 0)


def test_verdicts_wrong_length():
    assert parse_verdicts("1. yes\n2. yes", 4) == ([True, True, False, False], 2)
    assert parse_verdicts("1. yes\n2. no\n3. yes\n4. yes", 2) == ([True, False], 0)
    assert parse_verdicts("yes\nno\nyes\nyes", 2) == ([True, False], 0)
    assert parse_verdicts("yes", 0) == ([], 0)


def test_verdicts_unreadable_count_as_false():
    assert parse_verdicts("1. maybe\n2. yes\n3. ???", 3) == ([False, True, False], 2)
    assert parse_verdicts(None, 2) == ([False, False], 2)
    assert parse_verdicts("", 1) == ([False], 1)
    assert parse_verdicts("I refuse to answer.", 2) == ([False, False], 2)


@pytest.mark.parametrize(
    "text", ["<verdict" * 100_000, "1" * 1_000_000, " " * 1_000_000 + "x", "- " * 500_000, "yes " * 200_000]
)
def test_verdicts_huge_inputs_are_fast(text):
    start = time.perf_counter()
    verdicts, unread = parse_verdicts(text, 5)
    parse_verdict(text)
    assert len(verdicts) == 5 and 0 <= unread <= 5
    assert time.perf_counter() - start < 2.0


def test_verdicts_single_line_keeps_negations():
    assert parse_verdicts("The response does not meet the criterion.", 1) == ([False], 0)
    assert parse_verdicts("not met, yes; not satisfied", 3) == ([False, True, False], 0)
    assert parse_verdicts("yes no yes", 3) == ([True, False, True], 0)

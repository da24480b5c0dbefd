"""Final-answer extraction, normalization and time-limited equivalence."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cat_dspy.scoring.equivalence import (
    equivalence_stats,
    equivalent,
    normalize_answer,
    reset_equivalence_stats,
    shutdown_equivalence_workers,
)
from cat_dspy.scoring.extraction import extract_answer


@pytest.fixture(autouse=True)
def _isolated_stores():
    """These tests touch no DSPy cache or MLflow store: skip conftest's per-test set-up (about 0.13 s each)."""
    yield


# ----------------------------------------------------------------------------------------- extract_answer
@pytest.mark.parametrize("text", [None, "", "   \n\t ", "no answer in here", "#### ", r"\boxed{}", r"\boxed{  }"])
def test_extract_nothing(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{72}$.", "72"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{\left(2+\frac{1}{x}\right)}}", r"\frac{\sqrt{3}}{\left(2+\frac{1}{x}\right)}"),
        (r"first \boxed{1}, then \boxed{2}, finally \boxed{3}", "3"),
        (r"\fbox{7}", "7"),
        (r"\boxed {8}", "8"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{\boxed{5}}", "5"),
        (r"\boxed{4} then a truncated \boxed{\frac{1}{", "4"),
        (r"\boxed{ \boxed{9} and the outer box never closes", "9"),
        ("Janet sells 16 - 3 - 4 = 9 eggs.\n#### 1,234", "1,234"),
        ("#### 18\nextra", "18"),
        ("#### Step 1\nThe answer is 5.", "5"),
        ("The answer is 72.", "72"),
        ("so THE FINAL ANSWER IS **$3.5$**.", "3.5"),
        ("The answer is: 12\nlater text", "12"),
        ("the answer is 1. Then the answer is 2.", "2"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_box_beats_gsm8k_and_answer_is():
    assert extract_answer("The answer is 1.\n#### 2\n" + r"\boxed{3}") == "3"
    assert extract_answer("#### 2\nThe answer is 1.") == "2"


def test_truncated_box_falls_back_to_other_rules():
    assert extract_answer("The answer is 6.\n" + r"\boxed{\frac{1}{2") == "6"


@pytest.mark.parametrize(
    "text",
    [
        "x" * 1_000_000,
        r"\boxed{" * 150_000,
        r"\boxed{" + "{" * 300_000 + "}" * 300_000 + "}",
        "{" * 500_000 + r"\boxed{1}" + "}" * 500_000,
        "the answer is " + " " * 1_000_000,
        "#### " * 200_000,
        "the " * 250_000,
    ],
)
def test_extract_is_linear_on_huge_inputs(text):
    start = time.perf_counter()
    extract_answer(text)
    normalize_answer(text[:200_000])
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------------------- normalize_answer
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" 72 ", "72"),
        ("$72$", "72"),
        (r"\$1,000", "1000"),
        ("1,234,567", "1234567"),
        ("72.0", "72"),
        ("0.50", "0.5"),
        ("+5", "5"),
        ("5.", "5"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac12"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\text{(B)}", "(B)"),
        (r"\mathrm{ cm}", "cm"),
        (r"10\text{ apples}", "10apples"),
        (r"\pi r^2", r"\pi r^2"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_keeps_tuples_and_rightarrow():
    assert normalize_answer("1,2") == "1,2"
    assert normalize_answer(r"x \rightarrow 1") == r"x\rightarrow1"


# ----------------------------------------------------------------------------------------- equivalent
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("72", "72.0"),
        ("1,000", "1000"),
        (r"\frac{1}{2}", "0.5"),
        (r"\sqrt{4}", "2"),
        ("x+1", "1+x"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    ],
)
def test_equivalent_true(a, b):
    assert equivalent(a, b)
    assert equivalent(b, a)


@pytest.mark.parametrize(("a", "b"), [("72", "73"), (r"\frac{1}{2}", "0.6"), ("A", "B"), ("x", "y"), ("0.1", "0.2")])
def test_equivalent_false(a, b):
    assert not equivalent(a, b)


def test_equivalent_none_and_empty():
    assert not equivalent(None, "1")
    assert not equivalent("1", None)
    assert not equivalent(None, None)
    assert not equivalent("", "")


def test_string_mode_is_string_only():
    assert equivalent("72", "72.0", mode="string")
    assert not equivalent(r"\sqrt{4}", "2", mode="string")
    with pytest.raises(ValueError):
        equivalent("1", "1", mode="fuzzy")


def test_numeric_fast_path_skips_the_worker():
    reset_equivalence_stats()
    assert equivalent("3.0000000000001", "3")
    assert not equivalent("3.1", "3")
    stats = equivalence_stats()
    assert stats["numeric_match"] == 1 and stats["numeric_mismatch"] == 1
    assert stats["symbolic_match"] + stats["symbolic_mismatch"] + stats["timeout_fallback"] == 0


def test_stats_count_and_reset():
    reset_equivalence_stats()
    equivalent("2", "2")
    equivalent(None, "2")
    equivalent(r"\sqrt{4}", "2")
    stats = equivalence_stats()
    assert stats["calls"] == 3 and stats["string_match"] == 1 and stats["none_input"] == 1
    assert stats["symbolic_match"] == 1
    reset_equivalence_stats()
    assert set(equivalence_stats().values()) == {0}


@pytest.mark.parametrize("hostile", [r"9^{9^{9^{9}}}", "1000000!", r"2^{2^{2^{2^{2^{2}}}}}"])
def test_hostile_expression_is_cut_off_in_a_worker_thread(hostile):
    equivalent(r"\sqrt{9}", "3")  # make sure a worker is warm, so the limit is what we measure
    reset_equivalence_stats()
    timeout = 0.5
    with ThreadPoolExecutor(max_workers=1) as pool:
        start = time.perf_counter()
        result = pool.submit(equivalent, hostile, "1", timeout=timeout).result()
        elapsed = time.perf_counter() - start
    assert result is False
    assert elapsed < timeout + 2.0
    assert equivalence_stats()["timeout_fallback"] + equivalence_stats()["error_fallback"] == 1
    assert equivalent(r"\sqrt{16}", "4")  # the killed worker is replaced


def test_many_threads_share_the_workers():
    pairs = [(r"\sqrt{4}", "2"), (r"\frac{2}{4}", "0.5"), ("x+1", "1+x"), ("2", "3"), (r"\sqrt{2}", "1.5")] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: equivalent(*p), pairs))
    assert results == [True, True, True, False, False] * 4


def test_usable_from_asyncio():
    async def main():
        return await asyncio.gather(*(asyncio.to_thread(equivalent, r"\sqrt{9}", "3") for _ in range(3)))

    assert asyncio.run(main()) == [True, True, True]
    assert equivalent(r"\sqrt{9}", "3")  # also as a plain sync call


def test_too_long_answers_skip_the_worker():
    reset_equivalence_stats()
    assert not equivalent("x+" * 5000 + "1", "1+x")
    assert equivalence_stats()["too_long_fallback"] == 1


def test_shutdown_then_lazy_restart():
    shutdown_equivalence_workers()
    assert equivalent(r"\sqrt{25}", "5")


# ----------------------------------------------------------------------------------------- flexible extraction
@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        ("3 + 4 = 7", None, "7"),
        ("It costs $1,250, so 1,250.", None, "1,250"),
        ("Then -3.5 is left", None, "-3.5"),
        ("Count: 15, 16, 17,", None, "17"),
        (r"so \boxed{7}, not 8", "7", "7"),  # an explicit form still wins over the last number
        ("The answer is 9. Check: 9 + 1 = 10", "9", "9"),
        ("no digits at all", None, None),
    ],
)
def test_flexible_extraction_falls_back_to_the_last_number(text, strict, flexible):
    assert extract_answer(text) == strict
    assert extract_answer(text, "flexible") == flexible


def test_unknown_extraction_is_refused():
    with pytest.raises(ValueError, match="extraction must be one of"):
        extract_answer("7", "lenient")


# ----------------------------------------------------------------------------------------- peer-grader weak spots
@pytest.mark.parametrize("mode", ["symbolic", "string"])
@pytest.mark.parametrize(("a", "b"), [("3500", "(3, 500)"), ("3500", "(3,500)"), ("1000", "[1, 000]"),
                                      ("32349", "32, 349"), ("1000000", "1, 000, 000"), ("12345", "1,2345")])
def test_a_comma_that_is_not_a_thousands_separator_is_kept(a, b, mode):
    assert not equivalent(a, b, mode=mode)
    assert not equivalent(b, a, mode=mode)


@pytest.mark.parametrize("mode", ["symbolic", "string"])
@pytest.mark.parametrize(("a", "b"), [("1000", "1,000"), ("12345678", "12,345,678"), ("100000.5", "100,000.50"),
                                      ("1000", "1{,}000"), ("1250", r"\$1,250")])
def test_real_thousands_separators_still_match(a, b, mode):
    assert equivalent(a, b, mode=mode) and equivalent(b, a, mode=mode)


def test_pairs_and_intervals_keep_their_elements():
    assert equivalent("(3, 500)", "(3,500)")
    assert not equivalent("(3, 500)", "(3500)")
    assert normalize_answer("32, 349") == "32,349" and normalize_answer("(3,500)") == "(3,500)"


@pytest.mark.parametrize("mode", ["symbolic", "string"])
@pytest.mark.parametrize(("a", "b"), [("12", r"12\text{ cm}"), ("12", r"12\ \text{cm}^2"), ("5", r"\text{5 dollars}"),
                                      ("5", "5 dollars"), ("4", r"4 \mbox{ hours}"), ("16", r"\text{16 eggs}"),
                                      ("28", "28 percent"), (r"28\%", "28 percent"), ("28", r"28\%"),
                                      (r"50\%", r"50 \text{ percent}")])
def test_units_and_percent_words_do_not_make_equal_answers_unequal(a, b, mode):
    assert equivalent(a, b, mode=mode) and equivalent(b, a, mode=mode)


@pytest.mark.parametrize(("a", "b"), [("12", r"13\text{ cm}"), ("2xy", "2"), ("28", r"29\%"), ("0.28", "28"),
                                      (r"\text{(B)}", r"\text{(C)}")])
def test_units_and_percent_do_not_make_different_answers_equal(a, b):
    assert not equivalent(a, b) and not equivalent(b, a)


def test_percent_means_hundredths_in_symbolic_mode_only():
    assert equivalent(r"28\%", "0.28") and equivalent("0.05", r"5\%")
    assert not equivalent(r"28\%", "0.28", mode="string")
    assert normalize_answer("28 percent") == normalize_answer(r"28\%") == "28%"


def test_unit_words_are_dropped_only_after_a_number():
    assert equivalent(r"\text{Monday}", r"\text{Monday}") and not equivalent(r"\text{Monday}", r"\text{Tuesday}")
    assert equivalent("5", "5 square feet") and equivalent("5", "5 km/h")
    assert not equivalent("5", "5 " + "apples " * 6)  # a long tail of words is not a unit
    assert not equivalent("2", "2 pi") and not equivalent("10", r"10 \sqrt{2}")


@pytest.mark.parametrize(("number", "signed_bracket"), [
    ("2", "-[1, 2)"), ("2", "-[1,2)"), ("2", "-(1, 2)"), ("4", "-(3, 4]"), ("2", r"-\{1, 2\}"), ("500", "-[3, 500)"),
    ("2", r"-\left[1, 2\right)"), ("2", r"2 \cdot [1, 2)"), ("3", "1, -(2, 3)"), ("4", r"[1, 2) \cup -(3, 4)"),
])
def test_a_form_math_verify_cannot_read_whole_is_no_number(number, signed_bracket):
    # math-verify, failing to parse "-[1, 2)", would read the number after the spaced comma ("2") instead
    assert not equivalent(number, signed_bracket) and not equivalent(signed_bracket, number)
    assert not equivalent(number, signed_bracket, mode="string")


@pytest.mark.parametrize(("a", "b"), [("[1,2)", "[1, 2)"), ("(3,500)", "(3, 500)"), (r"\{1,2\}", r"\{2, 1\}"),
                                      ("(-1,2]", r"\left(-1, 2\right]"), ("-[1,2)", "-[1, 2)")])
def test_spacing_after_commas_does_not_change_a_tuple_or_interval(a, b):
    assert equivalent(a, b) and equivalent(b, a)


@pytest.mark.parametrize("mode", ["symbolic", "string"])
@pytest.mark.parametrize(("number", "written"), [
    ("45678", r"45,\! 678"), ("45678", r"45,\!678"), ("1234567", r"1,\! 234,\! 567"), ("1234567", r"1,\!234,\! 567"),
    ("12345", r"12,\!  345"), ("1000", r"1, \! 000"), ("100000.5", r"100,\! 000.5"),
])
def test_a_comma_with_a_negative_thin_space_separates_thousands(number, written, mode):
    assert normalize_answer(written) == number
    assert equivalent(number, written, mode=mode) and equivalent(written, number, mode=mode)


@pytest.mark.parametrize("mode", ["symbolic", "string"])
@pytest.mark.parametrize(("number", "written"), [("12", "1, 2"), ("12", r"1,\! 2"), ("1234", r"12,\! 34"),
                                                 ("45678", "45, 678"), ("1234", r"1,\! 2345")])
def test_other_commas_still_separate_elements(number, written, mode):
    assert not equivalent(number, written, mode=mode) and not equivalent(written, number, mode=mode)

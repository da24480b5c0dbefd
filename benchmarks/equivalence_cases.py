r"""Hand-written answer-checking cases: does a response state the reference answer?

Each case is a :class:`Case`: ``category``, ``reference``, ``response``, ``expected``, the equivalence ``mode``
(``"symbolic"`` unless given) and ``written``, when the case was written relative to the rule that decides it.
``expected`` is what a careful human grader decides: whether the answer the response states is the reference. The
cases were written for this project (not copied from a peer's test suite); they cover the ways peer graders
(Math-Verify, Qwen2.5-Math, lm-evaluation-harness' minerva_math, hendrycks MATH) are known to differ. Read by
``benchmarks/equivalence.py`` and ``tests/unit/test_equivalence_cases.py``.

``written`` keeps the agreement honest, since a case the rules were fitted to says little about cases they were not:

* ``"after"``: written together with, or after, the rule it tests, by the rule's author, and the rule was adjusted
  until the case passed. The categories up to "text answers" (written with the extraction and comparison rules),
  and the cases written with the fixes of the held-out regressions (more instances of each shape).
* ``"before"``: written before being run against the rules, which had not seen them: the "responses" group, whole
  typical responses written as a check afterwards. On the rules as they stood before the group was written, 17 of
  its 19 cases agree; the two others (an escaped ``\$`` inside ``$...$``, and "i.e." after an answer) got the rules
  that decide them afterwards.
* ``"held-out"``: regressions a held-out peer table found, in the shape it found them, added before their fix; none
  of them agreed before it (a signed interval read as a number, a final-answer line holding only an escaped
  quotation mark overriding a right box, ``45,\! 678`` read as two numbers, doubled-backslash boxes giving the
  first box).
"""

from __future__ import annotations

from typing import NamedTuple

B = r"\boxed"
BB = r"\\boxed"  # as written in JSON-escaped text
WRITTEN = ("after", "before", "held-out")
"""The values of :attr:`Case.written` (see the module docstring)."""


class Case(NamedTuple):
    """One answer-checking case."""

    category: str
    reference: str
    response: str
    expected: bool
    mode: str = "symbolic"
    written: str = "after"


_AFTER: list[tuple] = [
    # ------------------------------------------------------------------ thousands separators
    ("thousands", "1000", "The answer is 1,000.", True),
    ("thousands", "12345678", B + "{12,345,678}", True),
    ("thousands", "1234", "#### 1,234", True),
    ("thousands", "3500", B + "{(3, 500)}", False),
    ("thousands", "3500", B + "{(3,500)}", False),
    ("thousands", "1000", B + "{[1, 000]}", False),
    ("thousands", "32349", B + "{32, 349}", False),
    ("thousands", "32349", B + "{32, 349}", False, "string"),
    ("thousands", "1000", B + "{1,000}", True, "string"),
    ("thousands", "1000", B + "{1{,}000}", True),
    ("thousands", "1000000", B + r"{1\,000\,000}", True),
    ("thousands", "12345", B + "{1,2345}", False),
    ("thousands", "2.5", B + "{2,500}", False),
    ("thousands", "1000000", B + "{1,000,000}", True),
    ("thousands", "1000000", B + "{1, 000, 000}", False),
    ("thousands", "100000.5", B + "{100,000.50}", True),
    ("thousands", "1000", "The answer is 1,000 dollars.", True),
    ("thousands", "1250", "It costs \\$1,250 in total, so the answer is \\$1,250.", True),
    # ------------------------------------------------------------------ tuples, intervals, sets
    ("sets", "(3, 500)", B + "{(3,500)}", True),
    ("sets", "(1, 2)", B + "{(1,2)}", True),
    ("sets", "(1, 2)", B + "{(2,1)}", False),
    ("sets", r"\{1, 2\}", B + r"{\{2, 1\}}", True),
    ("sets", r"\{1, 2\}", B + "{1, 2}", True),
    ("sets", "1, 2", B + "{2, 1}", True),
    ("sets", "[1, 2]", B + "{(1, 2)}", False),
    ("sets", "[0, \\infty)", B + r"{[0,\infty)}", True),
    ("sets", "(-\\infty, 3)", B + r"{(-\infty, 3]}", False),
    ("sets", "1, 2, 3", B + "{1, 2}", False),
    ("sets", "(2, -1)", B + r"{\left(2, -1\right)}", True),
    ("sets", "-2, 2", B + r"{\pm 2}", True),
    ("sets", "[1, 2]", B + r"{x \in [1,2]}", True),
    # ------------------------------------------------------------------ multiple boxes
    ("multiple boxes", r"\{1, 2\}", B + "{1}, " + B + "{2}", True),
    ("multiple boxes", "1, 2", "$" + B + "{2}$ and $" + B + "{1}$", True),
    ("multiple boxes", "2", B + "{1}, " + B + "{2}", False),
    ("multiple boxes", "3", "First " + B + "{1}, then " + B + "{2}, finally " + B + "{3}.", True),
    ("multiple boxes", "5", "I guessed " + B + "{4} at first. After checking the units, " + B + "{5}.", True),
    ("multiple boxes", "7", B + "{7} " + B + "{7}", True),
    ("multiple boxes", r"-1, 3", "The roots are " + B + "{-1} and " + B + "{3}.", True),
    ("multiple boxes", "5", B + "{" + B + "{5}}", True),
    # ------------------------------------------------------------------ final-answer phrases
    ("final phrases", "5", B + "{3}, I think. Let me recheck.\nThe final answer is 5.", True),
    ("final phrases", "3", B + "{3}, I think. Let me recheck.\nThe final answer is 5.", False),
    ("final phrases", "5", B + "{3}\nWait, that used the wrong radius.\nFinal answer: 5", True),
    ("final phrases", "5", B + "{3}\nRechecking gives a different value.\nThe answer is 5.", True),
    ("final phrases", "3", "So we get " + B + "{3}, as the answer is the number of ways.", True),
    ("final phrases", "3", "The answer is $" + B + "{3}$. Note that the answer is positive.", True),
    ("final phrases", "72", "Final Answer: The final answer is $72$. I hope it is correct.", True),
    ("final phrases", "18", "She makes 9 * 2 = 18 dollars.\n#### 18", True),
    ("final phrases", "2", "the answer is 1. Then, correcting a slip, the answer is 2.", True),
    ("final phrases", "12", "**Answer:** 12", True),
    ("final phrases", "48", "Answer: Natalia sold 48/2 = 24 clips in May, 48 + 24 = 72 in all.", False),
    ("final phrases", "4", "So the answer is: $4$", True),
    ("final phrases", "9", "THE FINAL ANSWER IS **9**.", True),
    ("final phrases", "2", "#### 2\nQuestion: Tom has 3 apples. The answer is 1.", True),
    ("final phrases", "3", B + "{3}\n\nAnswer: the probability computed above.", True),
    ("final phrases", "3", "Final answer: x = 3", True),
    ("final phrases", "8", "The answer is: **$" + B + "{8}$**", True),
    ("final phrases", "42", "The answer is 42.\n\nQuestion: How many pens does Ann have? The answer is 7.", True),
    ("final phrases", "5", B + "{5}\n\nProblem 2: Find x if 2x = 14.\nSolution: " + B + "{7}", True),
    ("final phrases", "5", "Question: What is 2 + 3?\nThe answer is 5.", True),
    # ------------------------------------------------------------------ units and \text
    ("units", "12", B + r"{12\text{ cm}}", True),
    ("units", "12", B + r"{12\ \text{cm}^2}", True),
    ("units", "5", B + r"{\text{5 dollars}}", True),
    ("units", "5", "The answer is 5 dollars.", True),
    ("units", "16", "Janet makes \\$16 every day. The answer is 16 eggs", True),
    ("units", "90", B + r"{90^\circ}", True),
    ("units", "12", B + r"{13\text{ cm}}", False),
    ("units", r"\text{(B)}", B + "{(B)}", True),
    ("units", "4", B + r"{4 \mbox{ hours}}", True),
    ("units", "3.5", "The answer is 3.5 hours.", True),
    ("units", "2xy", B + "{2}", False),
    ("units", "12", B + r"{12\text{ cm}}", True, "string"),
    ("units", "12", B + r"{12\text{ m}^2}", True),
    ("units", "4", "The answer is 4 cm^2.", True),
    ("units", "5", B + r"{\$5}", True),
    ("units", "42", "The answer is $42$ apples.", True),
    # ------------------------------------------------------------------ percent
    ("percent", "28", "The answer is 28 percent.", True),
    ("percent", r"28\%", "The answer is 28 percent.", True),
    ("percent", "28", B + r"{28\%}", True),
    ("percent", r"28\%", B + "{0.28}", True),
    ("percent", "28", "The answer is 28 percent of the class.", True),
    ("percent", "28", B + r"{29\%}", False),
    ("percent", r"50\%", B + r"{50 \text{ percent}}", True),
    ("percent", "28", "The answer is 28 percent.", True, "string"),
    ("percent", "0.28", B + "{28}", False),
    # ------------------------------------------------------------------ fractions and decimals
    ("fractions", r"\frac{1}{2}", B + "{0.5}", True),
    ("fractions", r"\frac{1}{2}", B + "{1/2}", True),
    ("fractions", r"\frac{1}{2}", B + r"{\dfrac12}", True),
    ("fractions", r"\frac{2}{4}", B + r"{\frac{1}{2}}", True),
    ("fractions", r"\frac{1}{3}", B + "{0.33}", False),
    ("fractions", r"\frac{1}{3}", B + "{0.3333333333}", True),
    ("fractions", "72", B + "{72.0}", True),
    ("fractions", "0.5", B + "{.5}", True),
    ("fractions", "1.25", B + "{1.250}", True),
    ("fractions", r"\frac{7}{2}", B + r"{3\frac{1}{2}}", True),
    ("fractions", "3", B + "{3.1}", False),
    ("fractions", r"\frac{3}{4}", r"The answer is $\frac{3}{4}$ of the pie.", True),
    ("fractions", "0.5", r"The answer is \(\frac{1}{2}\).", True),
    ("fractions", "5", B + "{5.}", True),
    # ------------------------------------------------------------------ LaTeX forms
    ("latex", r"\sqrt{4}", B + "{2}", True),
    ("latex", r"2\sqrt{2}", B + r"{\sqrt{8}}", True),
    ("latex", r"\frac{\sqrt{3}}{2}", B + r"{\frac{\sqrt3}{2}}", True),
    ("latex", r"\pi", B + "{3.14}", False),
    ("latex", r"2\pi", B + r"{2 \pi}", True),
    ("latex", "x+1", B + "{1+x}", True),
    ("latex", r"x^2+2x+1", B + r"{(x+1)^2}", True),
    ("latex", r"\left(1, 2\right)", B + "{(1,2)}", True),
    ("latex", r"e^{i\pi}", B + "{-1}", True),
    ("latex", r"\sqrt{2}", B + "{1.414}", False),
    ("latex", r"\binom{5}{2}", B + "{10}", True),
    ("latex", r"10^{3}", B + "{1000}", True),
    ("latex", r"\frac{1}{200}", B + r"{0.5\%}", True),
    # ------------------------------------------------------------------ negative numbers and signs
    ("sign", "-3", B + "{-3}", True),
    ("sign", "-3", B + "{- 3}", True),
    ("sign", "-3", B + "{3}", False),
    ("sign", r"-\frac{1}{2}", B + r"{\frac{-1}{2}}", True),
    ("sign", "5", B + "{+5}", True),
    ("sign", "-0.5", "The answer is -0.5.", True),
    ("sign", "0", B + "{-0}", True),
    ("sign", "-2", "The answer is −2.", True),
    ("sign", "-0.75", B + r"{-\frac{3}{4}}", True),
    ("sign", "0.75", B + r"{\frac{-3}{-4}}", True),
    # ------------------------------------------------------------------ unclosed or malformed output
    ("malformed", "4", "The answer is " + B + "{4", True),
    ("malformed", "7", "so the result is " + B + "{7", True),
    ("malformed", "6", "The answer is 6.\n" + B + r"{\frac{1}{2", True),
    ("malformed", "3", B + r"{3} and then a cut-off " + B + r"{\frac{4", True),
    ("malformed", "9", B + "{ " + B + "{9} and the outer box never closes", True),
    ("malformed", "1", B + "{}", False),
    ("malformed", "1", "", False),
    ("malformed", "5", "$" + B + "{5}$.", True),
    # ------------------------------------------------------------------ prose after the answer
    ("prose tails", "2", "the answer is 2 What does this new scenario resolve?", True),
    ("prose tails", "7", "The answer is 7 because 3 + 4 = 7.", True),
    ("prose tails", "9", "The answer is 9. Check: 9 + 1 = 10", True),
    ("prose tails", "10", "The answer is 9. Check: 9 + 1 = 10", False),
    ("prose tails", r"\frac{1}{2}", r"The answer is \frac{1}{2} since half of them left.", True),
    ("prose tails", "3, 4", "The answer is $3$ and $4$.", True),
    ("prose tails", "1, 2", "The answer is 1 and 2", True),
    ("prose tails", "2", "So the answer is indeed 2, which matches.", True),
    ("prose tails", "2", "The answer is 2 x + 1 where x is the count.", False),
    ("prose tails", "5", "The answer is 5, since the other cases are impossible.", True),
    ("prose tails", "12", "The answer is twelve.", True),
    # ------------------------------------------------------------------ equations and variables
    ("equations", "3", B + "{x = 3}", True),
    ("equations", "x = 3", B + "{3}", True),
    ("equations", "3", B + "{x = 4}", False),
    ("equations", "y = 2x + 1", B + "{y=1+2x}", True),
    ("equations", "x > 2", B + "{(2, \\infty)}", True),
    ("equations", "x", B + "{y}", False),
    # ------------------------------------------------------------------ choices and text answers
    ("text answers", "B", "The answer is (B).", True),
    ("text answers", "B", "The answer is (C).", False),
    ("text answers", r"\text{(C)}", B + r"{\textbf{(C)}}", True),
    ("text answers", r"\text{Monday}", B + r"{\text{Monday}}", True),
    ("text answers", r"\text{Monday}", B + r"{\text{Tuesday}}", False),
    ("text answers", r"\text{Yes}", B + r"{\text{Yes}}", True),
    ("text answers", "(A)", r"The answer is: $" + B + r"{\text{(A)}}$", True),
    # ------------------------------------------------------------------ written with the held-out regressions' fixes
    ("sets", "[1,2)", B + "{[1, 2)}", True),
    ("sets", "(3,500)", B + "{(3, 500)}", True),
    ("sets", "3", B + "{1, -(2, 3)}", False),
    ("sets", "2", B + r"{2 \cdot [1, 2)}", False),
    ("final phrases", "5", B + "{5}\nFinal answer: (", True),
    ("final phrases", "5", B + "{5}\nFinal answer: .", True),
    ("final phrases", "5", B + '{3}\nFinal answer: \\"5\\"', True),
    ("thousands", "45678", B + r"{45,\!678}", True),
    ("thousands", "1000", r"The answer is 1,\! 000.", True),
    ("thousands", "12", B + r"{1,\! 2}", False),
    ("thousands", "12", B + "{1, 2}", False),
    ("multiple boxes", r"\frac{1}{2}", BB + r"{\\frac{1}{2}}", True),
    ("multiple boxes", "1, 2", BB + "{1}, " + BB + "{2}", True),
    ("multiple boxes", "4", r"The answer is \\boxed{4", True),
]

_BEFORE: list[tuple] = [
    # ------------------------------------------------------------------ typical full responses
    ("responses", "18", "She earns 9 * 2 = 18. The answer is $\\$18$.", True),
    ("responses", "18", "**Final Answer**\n\\[\n" + B + "{18}\n\\]", True),
    ("responses", "18", "So she makes " + B + r"{18 \text{ dollars}} a day.", True),
    ("responses", "18", B + r"{\$18.00}", True),
    ("responses", "(x-1)(x+1)", "Expanding, " + B + "{x^2 - 1}.", True),
    ("responses", r"\frac{1}{4}", "The answer is 0.25, i.e. 25% of the total.", True),
    ("responses", "45", B + "{4, 5}", False),
    ("responses", "0.75", "The answer is 3/4.", True),
    ("responses", "7", "So the final answer is $x = " + B + "{7}$.", True),
    ("responses", "1234", B + "{1{,}234}", True),
    ("responses", r"\{2, 3\}", B + "{2,3}", True),
    ("responses", "12500", B + "{12,500}", True),
    ("responses", r"-\infty", B + r"{-\infty}", True),
    ("responses", "5", r"The answer is \(" + B + r"{5}\).", True),
    ("responses", "-5", "Therefore, the answer is $" + B + "{-5}$.\nThe answer is -5.", True),
    ("responses", r"\frac{1}{2}", "The answer is 1/2 cup.", True),
    ("responses", "5", B + r"{5\text{ cm}^2}", True),
    ("responses", "3, 4", B + r"{3} \quad " + B + "{4}", True),
    ("responses", "6", "Let me compute: 2 * 3 = 6.\n\nFinal answer: 6 \n\nQuestion: What is 2 * 4?", True),
]

_HELD_OUT: list[tuple] = [
    ("sets", "2", B + "{-[1, 2)}", False),
    ("sets", "2", B + "{-(1, 2)}", False),
    ("sets", "4", B + "{-(3, 4]}", False),
    ("sets", "2", B + r"{-\{1, 2\}}", False),
    ("final phrases", "5", B + '{5}\nFinal answer: \\"', True),
    ("final phrases", "5", "Therefore the final answer is $" + B + '{5}$.\nThe final answer is \\"', True),
    ("thousands", "45678", B + r"{45,\! 678}", True),
    ("thousands", "1234567", B + r"{1,\! 234,\! 567}", True),
    ("multiple boxes", "2", BB + "{1} then " + BB + "{2}", True),
    ("multiple boxes", "3", "First " + BB + "{1}, then " + BB + "{2}, finally " + BB + "{3}.", True),
]

CASES: list[Case] = [
    Case(*case[:4], case[4] if len(case) > 4 else "symbolic", written)
    for written, group in (("after", _AFTER), ("before", _BEFORE), ("held-out", _HELD_OUT))
    for case in group
]
"""Every case, each with its ``written`` group."""

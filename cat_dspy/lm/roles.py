"""The three roles of CaT (paper §1.3) and their sampling defaults, declared once.

The policy explores (it samples the G rollouts), the anchor reconciles them into one reference, the judge decides
whether a response satisfies a criterion. Every command, the reward and the usage accounting use these names.
"""

from __future__ import annotations

from typing import Any

ROLES = ("policy", "anchor", "judge")
ROLE_TEMPERATURE = {"policy": 1.0, "anchor": 0.7, "judge": 0.0}


def role_lm(model: str, role: str, **options: Any) -> Any:
    """``make_lm(model, ...)`` with ``role``'s default temperature; options that are None keep the defaults.

    Args:
        model: A model string for :func:`cat_dspy.lm.models.make_lm` (``local``, ``openai/gpt-4o``, ...).
        role: One of :data:`ROLES`.
        **options: ``make_lm`` options (``temperature``, ``max_tokens``, ``api_base``, ...).

    Returns:
        The ``dspy.LM``.
    """
    from cat_dspy.lm.models import make_lm

    settings = {"temperature": ROLE_TEMPERATURE[role], **{k: v for k, v in options.items() if v is not None}}
    return make_lm(model, **settings)

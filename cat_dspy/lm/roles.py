"""The three roles of CaT (paper §1.3), their sampling defaults, and the one way a role's LM is built.

The policy explores (it samples the G rollouts), the anchor reconciles them into one reference, the judge decides
whether a response satisfies a criterion. Every command, the reward and the usage accounting use these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLES = ("policy", "anchor", "judge")
ROLE_TEMPERATURE = {"policy": 1.0, "anchor": 0.7, "judge": 0.0}
ROLE_OPTIONS = ("api_base", "temperature", "top_p", "top_k", "max_tokens", "device")
"""A role's sampling and placement options, spelled ``<role>_<option>`` in recipes, flags and reward options."""


def role_settings(role: str, model: str, options: Mapping[str, Any] | None = None,
                  shared: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``make_lm`` options of ``role`` from ``<role>_<option>`` entries (None: unset), then ``shared``
    ``<option>`` entries, then the role's default temperature; ``<role>_lm_kwargs`` are added as they are.

    A local model takes no ``api_base``; an API model no ``device``. Nothing secret is read: the result is loggable.

    Args:
        role: One of :data:`ROLES`.
        model: The role's model string (``local``, ``openai/gpt-4o``, ...).
        options: Per-role options (a recipe, reward options, parsed flags).
        shared: Options of every role (the CLI's ``--api-base``, ``--max-tokens``).

    Examples:
        >>> role_settings("anchor", "local", {"anchor_max_tokens": 64, "anchor_api_base": "http://x"},
        ...               shared={"max_tokens": 256})
        {'max_tokens': 64, 'temperature': 0.7}
        >>> role_settings("judge", "openai/gpt-4o", {"judge_lm_kwargs": {"seed": 1}}, {"api_base": "http://x"})
        {'api_base': 'http://x', 'temperature': 0.0, 'seed': 1}
    """
    options, shared = options or {}, shared or {}
    local = model.startswith("local")
    settings: dict[str, Any] = {}
    for key in ROLE_OPTIONS:
        if key == ("api_base" if local else "device"):
            continue
        value = options.get(f"{role}_{key}")
        if value is None:
            value = shared.get(key)
        if value is not None:
            settings[key] = value
    settings.setdefault("temperature", ROLE_TEMPERATURE[role])
    settings.update(options.get(f"{role}_lm_kwargs") or {})
    return settings


def role_lm(model: str, role: str, options: Mapping[str, Any] | None = None,
            shared: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """The ``dspy.LM`` of ``role``: ``make_lm(model, **role_settings(...))``, ``overrides`` that are not None last.

    Args:
        model: A model string for :func:`cat_dspy.lm.models.make_lm`.
        role: One of :data:`ROLES`.
        options: Per-role ``<role>_<option>`` entries (see :func:`role_settings`).
        shared: Options of every role.
        **overrides: ``make_lm`` options that win (``temperature``, ``max_tokens``, ``cache``, ``seed``, ...).

    Returns:
        The ``dspy.LM``.
    """
    from cat_dspy.lm.models import make_lm

    settings = role_settings(role, model, options, shared)
    return make_lm(model, **{**settings, **{k: v for k, v in overrides.items() if v is not None}})

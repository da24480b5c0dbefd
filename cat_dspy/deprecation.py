"""Renamed arguments: the old spelling still works for a while, with a ``FutureWarning`` that names the new one."""

from __future__ import annotations

import warnings
from typing import Any


def renamed(owner: str, old: str, new: str, old_value: Any, new_value: Any, default: Any = None, *,
            stacklevel: int = 3) -> Any:
    """The value of an argument renamed from ``old`` to ``new``.

    Args:
        owner: What takes the argument, for the message (``"Rollout"``, ``"evaluate"``).
        old: The deprecated name.
        new: The name to use.
        old_value: What was passed as ``old`` (None: not passed).
        new_value: What was passed as ``new``.
        default: ``new``'s default, so a value passed under both names is told apart from an unset ``new``.
        stacklevel: Frames from here to the caller's line (one more for a DSPy module's ``__init__``).

    Returns:
        ``old_value`` when it was passed (with a warning), else ``new_value``.

    Raises:
        TypeError: Both names were given different values.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     renamed("Rollout", "n", "g", 4, 8, default=8)
        4
        >>> str(caught[0].message)
        'Rollout(n=...) is deprecated: use g=...'
        >>> renamed("Rollout", "n", "g", None, 8, default=8)
        8
    """
    if old_value is None:
        return new_value
    warnings.warn(f"{owner}({old}=...) is deprecated: use {new}=...", FutureWarning, stacklevel=stacklevel)
    if new_value != default and new_value != old_value:
        raise TypeError(f"{owner} got both {old}={old_value!r} and {new}={new_value!r}; pass only {new}")
    return old_value

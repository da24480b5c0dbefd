"""What every CaT module shares: a role LM passed explicitly, the free-text adapter, and calls that fail softly.

CaT runs for hours on model outputs that are often malformed and on backends that fail. A module call therefore
never raises for a bad completion or an exhausted backend (DSPy has already retried it): it returns a defined
value and records why, so rewards can count failures instead of crashing a training run.

Which exceptions are *backend failures* (data) and which are bugs (raised) is decided by :func:`is_backend_failure`:

* data: DSPy's LM errors (``dspy.utils.exceptions.LMError``: timeouts, rate limits, transport and server errors,
  ``ContextWindowExceededError``, and ``LMUnexpectedError``, which DSPy raises for *any* exception inside an engine,
  e.g. a ``RuntimeError`` of the local model or an error injected by :mod:`cat_dspy.testing.faults`), DSPy's
  ``AdapterParseError`` (a completion that cannot become a prediction, e.g. an empty one), the engines' own
  ``dspy.lm15`` errors, the client libraries' exceptions (``litellm``, ``openai``, ``httpx``, ``httpcore``,
  ``requests``) and Python's ``TimeoutError`` / ``ConnectionError``;
* raised: everything else, and any of the above whose cause chain holds a programming error (:data:`PROGRAMMING_ERRORS`:
  ``TypeError``, ``AttributeError``, ``NameError``, ``AssertionError``, ``NotImplementedError``, ``ImportError``,
  ``SyntaxError``), so a bug in a module, an adapter or an engine stops the run instead of being counted as a
  backend failure.
"""

from __future__ import annotations

import contextvars
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dspy
from dspy import lm15
from dspy.utils.exceptions import AdapterParseError, LMError

from cat_dspy.adapters import FreeTextAdapter
from cat_dspy.tracking import redact

logger = logging.getLogger(__name__)

PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError, AttributeError, NameError, AssertionError, NotImplementedError, ImportError, SyntaxError,
)
"""Exceptions that mean a bug: never reported as a backend failure, even when an engine raised them."""
BACKEND_ERRORS: tuple[type[BaseException], ...] = (LMError, AdapterParseError, lm15.LM15Error, TimeoutError,
                                                   ConnectionError)
"""Exceptions that mean the backend (or its completion) failed."""
_CLIENT_MODULES = ("litellm", "openai", "httpx", "httpcore", "requests", "urllib3")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 20 and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def is_backend_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a module's LM call, is a backend failure (data) rather than a bug.

    Examples:
        >>> from dspy.utils.exceptions import ContextWindowExceededError, LMUnexpectedError
        >>> is_backend_failure(ContextWindowExceededError(message="too long")), is_backend_failure(TimeoutError())
        (True, True)
        >>> bug = LMUnexpectedError("engine bug"); bug.__cause__ = TypeError("bad argument")
        >>> is_backend_failure(bug), is_backend_failure(AttributeError("x")), is_backend_failure(KeyError("k"))
        (False, False, False)
    """
    chain = _causes(exc)
    if any(isinstance(e, PROGRAMMING_ERRORS) for e in chain):
        return False
    client = any(c.__module__.split(".")[0] in _CLIENT_MODULES for c in type(exc).__mro__)
    return client or isinstance(exc, BACKEND_ERRORS)


def thread_map(fn: Any, items: list[Any], num_threads: int | None = None) -> list[Any]:
    """Apply ``fn`` to ``items`` concurrently, each task in a copy of the caller's context.

    The copied context carries DSPy's settings (LM, adapter, callbacks) and the caller's usage tracker *by
    reference*, so usage recorded on worker threads is not lost (``dspy.Parallel`` deep-copies the tracker
    per thread), and MLflow trace spans nest under the caller. Concurrent calls are what the local engine
    batches into a single ``generate``; for API backends they are concurrent requests. ``fn`` should not
    raise (module calls return failures as data); if it does, the first exception propagates.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=num_threads or len(items)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        return [future.result() for future in futures]


class RoleModule(dspy.Module):
    """A DSPy module bound to one CaT role (policy, anchor or judge).

    Args:
        lm: The role's LM. ``None`` falls back to a predictor-level LM (``set_lm``) or ``dspy.settings.lm``.
        adapter: How prompts are rendered and completions parsed; defaults to :class:`FreeTextAdapter`.
    """

    def __init__(self, lm: dspy.BaseLM | None = None, adapter: dspy.Adapter | None = None):
        super().__init__()
        self.lm = lm
        self.adapter = adapter or FreeTextAdapter()

    def __deepcopy__(self, memo: dict[int, Any]) -> RoleModule:
        """Copy the module's prompts and state, but share its LM: optimizers deep-copy programs constantly, and
        copying an LM would copy its backend (for the local engine, the model weights and batcher)."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            setattr(new, name, value if name == "lm" else copy.deepcopy(value, memo))
        return new

    def call(
        self, predictor: dspy.Predict, config: dict[str, Any] | None = None, **inputs: Any
    ) -> tuple[Any, str | None]:
        """Run ``predictor`` on ``inputs`` with this role's LM and adapter.

        Returns:
            ``(prediction, None)`` on success, ``(None, "ErrorType: message")`` when the backend failed after
            its retries or the completion could not be turned into a prediction (e.g. an empty completion). The
            message (also logged) has secret environment values redacted.

        Raises:
            Exception: Any exception that is not a backend failure (:func:`is_backend_failure`): a bug propagates.
        """
        kwargs: dict[str, Any] = dict(inputs)
        if config:
            kwargs["config"] = config
        if self.lm is not None:
            kwargs["lm"] = self.lm
        try:
            with dspy.context(adapter=self.adapter):
                return predictor(**kwargs), None
        except Exception as exc:  # a failed call is data, not a crash: callers count it; a bug is raised
            if not is_backend_failure(exc):
                raise
            from cat_dspy.lm.models import explain_backend_error

            auth = explain_backend_error(exc)  # a rejected or missing key: say which variable to set
            kind = "LMAuthError" if auth else type(exc).__name__
            message = redact(auth or str(exc))  # backends echo keys in auth errors; the reason is logged and kept
            logger.warning("%s call failed: %s: %s", type(self).__name__, kind, message[:200])
            return None, f"{kind}: {message[:500]}"

    def map(self, fn: Any, items: list[Any], num_threads: int | None = None) -> list[Any]:
        """Apply ``fn`` to ``items`` concurrently (:func:`thread_map`)."""
        return thread_map(fn, items, num_threads)

"""Scripted LMs for tests and examples: a real DSPy 3.4 engine whose answers come from a script.

Unlike a mock, a scripted LM goes through DSPy's whole LM layer (adapter, cache, usage tracking, retries), so
tests exercise the same path as the embedded model. The script is a list of completions (served in order) or a
function of the rendered prompt, which lets a test build a judge that echoes the rollout it grades, a policy
whose answers depend on the question, or a backend that fails on purpose.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable

import dspy
from dspy.clients.engines.base import validate_request
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events


def prompt_text(request: Request) -> str:
    """The system and message texts of ``request``, joined (what a scripted function sees)."""
    system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system or ())
    return "\n".join([system or "", *(m.text or "" for m in request.messages)])


class ScriptedEngine:
    """An engine answering from ``script``: an iterable of strings, or ``fn(prompt_text) -> str``.

    Raise inside ``fn`` to simulate a backend fault. ``calls`` counts requests that reached the engine.

    Examples:
        >>> lm = scripted_lm(lambda prompt: "4" if "2+2" in prompt else "?")
        >>> lm("2+2?")
        ['4']
    """

    def __init__(self, script: Iterable[str] | Callable[[str], str]):
        self._fn = script if callable(script) else None
        self._answers = None if callable(script) else itertools.cycle(list(script))
        self._lock = threading.Lock()
        self.calls = 0
        self.prompts: list[str] = []

    def complete(self, request: Request) -> Response:
        validate_request(request)
        text = prompt_text(request)
        with self._lock:
            self.calls += 1
            self.prompts.append(text)
            answer = None if self._fn else next(self._answers)
        if self._fn is not None:
            answer = self._fn(text)
        tokens = len(answer.split())
        return Response(
            id=None,
            model="scripted",
            message=Message.assistant([TextPart(answer)]),
            finish_reason="stop",
            usage=Usage(input_tokens=len(text.split()), output_tokens=tokens, total_tokens=len(text.split()) + tokens),
        )

    def stream(self, request: Request):
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass


class AsyncScriptedEngine:
    """The async twin of :class:`ScriptedEngine` (same script, same counters)."""

    def __init__(self, sync: ScriptedEngine):
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        return self.sync.complete(request)

    async def stream(self, request: Request):
        for event in self.sync.stream(request):
            yield event

    async def aclose(self) -> None:
        pass


def scripted_lm(script: Iterable[str] | Callable[[str], str], *, cache: bool = False, **kwargs) -> dspy.LM:
    """A ``dspy.LM`` backed by a :class:`ScriptedEngine` (``lm.engine_script`` holds the engine)."""
    engine = ScriptedEngine(script)
    lm = dspy.LM("scripted/test", engine=engine, async_engine=AsyncScriptedEngine(engine), cache=cache,
                 num_retries=kwargs.pop("num_retries", 0), **kwargs)
    lm.engine_script = engine
    return lm

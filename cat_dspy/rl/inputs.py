"""What the TRL reward reads: the question of a TRL prompt, the text of a completion, and the groups of G."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the last assistant message of a conversational completion.

    Examples:
        >>> completion_text("42"), completion_text([{"role": "assistant", "content": "42"}])
        ('42', '42')
        >>> parts = [{"type": "text", "text": "4"}, {"type": "text", "text": "2"}]
        >>> completion_text([{"role": "assistant", "content": parts}])
        '42'
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    messages = [m for m in completion if isinstance(m, Mapping)]
    assistant = [m for m in messages if m.get("role") == "assistant"] or messages
    return _content_text(assistant[-1].get("content")) if assistant else ""


def prompt_question(prompt: Any) -> str:
    """The question of a TRL prompt: the string itself, or the content of the last user message.

    Examples:
        >>> prompt_question([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
        '2+2?'
    """
    if isinstance(prompt, str):
        return prompt
    messages = [m for m in prompt or [] if isinstance(m, Mapping)]
    users = [m for m in messages if m.get("role") == "user"] or messages
    return _content_text(users[-1].get("content")) if users else ""


def prompt_messages(prompt: Any) -> list[dict[str, str]]:
    """A TRL prompt as chat messages (``{"role", "content"}``, text contents): a string is one user message.

    Examples:
        >>> prompt_messages("2+2?")
        [{'role': 'user', 'content': '2+2?'}]
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m.get("role")), "content": _content_text(m.get("content"))}
            for m in prompt or [] if isinstance(m, Mapping)]


def prompt_conversation(prompt: Any) -> str:
    r"""The conversation of a TRL prompt as text, system messages left out: rendered as evaluation shows it to the
    physician-rubric grader (:attr:`cat_dspy.datasets.Item.question`: a lone user message as-is, else ``Role:
    content`` turns).

    Examples:
        >>> prompt_conversation([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
        'Hi'
        >>> prompt_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"},
        ...                      {"role": "user", "content": "Help"}])
        'User: Hi\n\nAssistant: Yes?\n\nUser: Help'
    """
    from cat_dspy.datasets import _render  # the one rendering of a conversation (Item.question)

    if isinstance(prompt, str):
        return prompt
    messages = [{"role": str(m.get("role")), "content": _content_text(m.get("content"))}
                for m in prompt or [] if isinstance(m, Mapping) and m.get("role") != "system"]
    return _render(messages) if messages else ""


def prompt_key(prompt: Any) -> str:
    """A canonical string identifying a prompt (whole conversation, system message included), for grouping."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False, default=str)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


def group_completions(keys: Sequence[str], g: int) -> tuple[list[list[int]], bool]:
    """Split completion indices into groups: consecutive blocks of ``g`` (TRL's layout; 0: G unknown).

    The blocks are verified to hold one prompt each; when they do not (or the count is not a multiple), the
    completions are grouped by prompt instead, in order of first appearance. With G unknown (``g=0``: no trainer
    bound the reward), each run of consecutive completions of one prompt is a group: TRL's sampler repeats a
    prompt G times in a row.

    Returns:
        ``(groups, blocks_ok)``.

    Examples:
        >>> group_completions(["a", "a", "b", "b"], 2)
        ([[0, 1], [2, 3]], True)
        >>> group_completions(["a", "b", "a", "b"], 2)
        ([[0, 2], [1, 3]], False)
        >>> group_completions(["a", "a", "a", "b", "b", "b"], 0)
        ([[0, 1, 2], [3, 4, 5]], True)
    """
    n = len(keys)
    if g == 0:
        runs: list[list[int]] = []
        for i, key in enumerate(keys):
            if runs and keys[runs[-1][0]] == key:
                runs[-1].append(i)
            else:
                runs.append([i])
        return runs, True
    if g > 0 and n % g == 0:
        blocks = [list(range(start, start + g)) for start in range(0, n, g)]
        if all(keys[i] == keys[block[0]] for block in blocks for i in block):
            return blocks, True
    by_prompt: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        by_prompt.setdefault(key, []).append(i)
    return list(by_prompt.values()), False



def gold_text(answer: Any) -> str | None:
    if answer is None:
        return None
    text = str(answer).strip()
    return text or None

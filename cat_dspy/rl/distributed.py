"""Whole GRPO groups across processes: the collectives the CaT reward needs, and nothing else.

TRL computes rewards per process on that process's slice of the generation batch, and a group of
``num_generations`` completions can straddle processes. The CaT reward therefore gathers every rank's slice
(:func:`all_gather`), has each group scored by exactly one rank (:func:`owned`), gathers the results and keeps its
own slice. Every function here is a no-op on one process, and every rank must call them in the same order.
"""

from __future__ import annotations

from typing import Any


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised ``torch.distributed`` group, else ``(0, 1)``.

    Examples:
        >>> rank_and_world()
        (0, 1)
    """
    import sys

    if "torch" not in sys.modules:  # never import torch just to learn that nothing is distributed
        return 0, 1
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` on one process); a collective on many.

    Uses :func:`accelerate.utils.gather_object` (gloo on CPU, NCCL on GPUs), falling back to
    ``torch.distributed.all_gather_object`` when accelerate's state does not know the process group.

    Examples:
        >>> all_gather({"rank": 0})
        [{'rank': 0}]
    """
    _, world = rank_and_world()
    if world == 1:
        return [obj]
    from accelerate.utils import gather_object

    gathered = gather_object([obj])
    if len(gathered) == world:
        return list(gathered)
    import torch.distributed as dist  # accelerate saw no distributed state: gather with torch directly

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def owned(n_items: int, rank: int, world: int) -> list[int]:
    """The items (e.g. groups) ``rank`` is responsible for: round-robin, so work is balanced across ranks.

    Examples:
        >>> owned(5, 0, 2), owned(5, 1, 2), owned(3, 0, 1)
        ([0, 2, 4], [1, 3], [0, 1, 2])
    """
    return list(range(rank, n_items, world))

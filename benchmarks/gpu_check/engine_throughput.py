"""GPU check, stage (a): decoding throughput of the in-process engine at several batch sizes.

The embedded SmolLM2-135M-Instruct behind ``make_lm("local")`` (converted from its GGUF on first use). On CUDA the
engine decodes in bf16 with the static KV cache (compiled decoding; the first batch of each shape compiles, so each
batch size gets one untimed warm-up batch). For each batch size B, B distinct prompts are sent as B concurrent
calls, which the engine coalesces into one ``generate`` (checked: ``generate_calls`` per batch). Sampled at
temperature 1 with ``cache=False``; tokens/s counts the generated tokens (no padding, EOS excluded) over the wall
time of the batch. Writes the JSON after every batch size, so a timeout keeps what was measured.

Run: python benchmarks/gpu_check/engine_throughput.py --batches 8 64 --max-tokens 256 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

QUESTIONS = [
    "A baker makes {a} rolls and sells {b} of them. How many rolls are left? Explain step by step.",
    "Tom has {a} marbles and wins {b} more. How many marbles does he have now? Explain step by step.",
    "A train travels {a} km in the morning and {b} km in the afternoon. How far does it travel? Show your work.",
    "Write a short story about a robot who counts {a} stars and then {b} more.",
]


def prompts(n: int) -> list[str]:
    """``n`` distinct prompts (distinct lengths too, so rows are left-padded as in real batches)."""
    return [QUESTIONS[i % len(QUESTIONS)].format(a=12 + 7 * i, b=3 + i) for i in range(n)]


async def one_batch(lm, batch: list[str]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(lm.acall(p) for p in batch))
    return time.perf_counter() - start


def measure(lm, engine, size: int, repeats: int) -> dict:
    batch = prompts(size)
    engine.reset_stats()
    warm = asyncio.run(one_batch(lm, batch))  # compiles this shape on CUDA (static cache)
    warm_stats = engine.stats
    runs = []
    for _ in range(repeats):
        engine.reset_stats()
        wall = asyncio.run(one_batch(lm, batch))
        stats = engine.stats
        runs.append({"wall_s": wall, "completion_tokens": stats["completion_tokens"], "rows": stats["rows"],
                     "generate_calls": stats["generate_calls"], "generate_s": stats["generate_seconds"],
                     "tok_per_s": stats["completion_tokens"] / wall})
    return {
        "batch": size,
        "warmup_s": warm,
        "warmup_generate_calls": warm_stats["generate_calls"],
        "runs": runs,
        "tok_per_s": statistics.median(r["tok_per_s"] for r in runs),
        "mean_completion_tokens": statistics.mean(r["completion_tokens"] / size for r in runs),
        "one_generate_per_batch": all(r["generate_calls"] == 1 for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the results here (after every batch size)")
    args = parser.parse_args()

    import torch

    from cat_dspy import make_lm

    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)  # "response was truncated": expected at max_tokens
    from cat_dspy.lm.models import engine_of

    lm = make_lm("local", temperature=1.0, max_tokens=args.max_tokens, cache=False,
                 max_batch_size=max(args.batches), runtime="torch")  # the torch engine (static cache on CUDA)
    engine = engine_of(lm)
    start = time.perf_counter()
    engine.load()  # converts the GGUF on first use (CAT_DSPY_CACHE), then loads
    result = {
        "device": str(engine.device),
        "gpu": torch.cuda.get_device_name(0) if engine.device.type == "cuda" else None,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "static_cache": engine.device.type == "cuda",  # LocalEngine uses cache_implementation="static" on CUDA
        "max_tokens": args.max_tokens,
        "load_s": time.perf_counter() - start,
        "batches": [],
    }
    print(f"engine on {result['device']} ({result['gpu'] or 'no GPU'}), {result['dtype']}, "
          f"static cache: {result['static_cache']}, load {result['load_s']:.1f} s", flush=True)
    for size in args.batches:
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)
        row = measure(lm, engine, size, args.repeats)
        if engine.device.type == "cuda":
            row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(engine.device) / 2**30, 2)
        result["batches"].append(row)
        print(f"batch {size:3d}: {row['tok_per_s']:8.1f} tok/s (median of {args.repeats}), "
              f"{row['mean_completion_tokens']:.0f} tokens per sequence, warm-up {row['warmup_s']:.1f} s, "
              f"one generate per batch: {row['one_generate_per_batch']}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

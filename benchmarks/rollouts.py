"""Benchmark: G rollouts through the batched local engine vs G sequential DSPy calls, and solve's overhead.

Prints, measured side by side in one run on the embedded model (CPU unless CUDA is present):
1. wall time of G=8 rollouts via ``Rollout`` (concurrent calls coalesced into one ``generate``) vs 8 sequential
   DSPy calls of the same predictor (one ``generate`` each); target ratio ≥ 4×;
2. ``CaT`` (G=4, verifiable) wall time ÷ time spent inside ``generate``; target ≤ 1.10 (one-time model loading
   reported separately).
Both paths use ``cache=False`` so every call really generates. On llama.cpp it also prints where each path's
generate time went (the engine's ``phase_stats``): prefill, decode steps (decoded tokens/s at 1 row per step vs G)
and the rest (sampling, bookkeeping); the decode tokens/s ratio is what batching the steps can give at most. The
engine is the default one for ``"local"`` (llama.cpp in process on a CPU with llama-cpp-python, else torch);
``--runtime torch|llamacpp`` pins it.

Run: python benchmarks/rollouts.py [--g 8] [--max-tokens 64] [--repeats 2] [--runtime auto|torch|llamacpp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import dspy

from cat_dspy import CaT, make_lm
from cat_dspy.adapters import FreeTextAdapter
from cat_dspy.lm.models import engine_of
from cat_dspy.modules import Rollout
from cat_dspy.signatures import Solve

QUESTION = "A baker makes 24 rolls and sells 3 bags of 5 rolls. How many rolls are left?"


def sequential(lm: dspy.LM, g: int, offset: int) -> float:
    predict = dspy.Predict(Solve)
    start = time.perf_counter()
    with dspy.context(adapter=FreeTextAdapter()):
        for i in range(g):
            predict(question=QUESTION, lm=lm, config={"rollout_id": offset + i, "temperature": 1.0})
    return time.perf_counter() - start


def batched(lm: dspy.LM, g: int, offset: int) -> float:
    start = time.perf_counter()
    Rollout(g=g, lm=lm, first_rollout_id=offset)(question=QUESTION)
    return time.perf_counter() - start


def phases(stats: dict[str, float]) -> str:
    """Where generate time went, from the llama.cpp engine's phase counters summed over repeats."""
    rest = stats["generate_seconds"] - stats["prefill_seconds"] - stats["decode_seconds"]
    return (f"prefill {stats['prefill_seconds']:.2f}s ({stats['prefill_tokens']} tok), decode "
            f"{stats['decode_seconds']:.2f}s ({stats['decode_steps']} steps, {stats['decode_rows']} tok, "
            f"{stats['decode_rows'] / max(stats['decode_seconds'], 1e-9):.0f} tok/s), rest {rest:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runtime", choices=("auto", "torch", "llamacpp"), help="default: $CAT_DSPY_RUNTIME or auto")
    args = parser.parse_args()

    options = {"runtime": args.runtime} if args.runtime else {}
    lm = make_lm("local", temperature=1.0, max_tokens=args.max_tokens, cache=False, **options)
    engine = engine_of(lm)
    start = time.perf_counter()
    engine.load()
    load_seconds = time.perf_counter() - start
    print(f"engine: {lm.model} ({engine.runtime})")
    lm("warm-up", max_tokens=4)  # first-call costs (allocator, kernels) stay out of both measurements

    rows = []
    for r in range(args.repeats):  # interleaved so machine noise hits both paths alike
        engine.reset_stats()
        t_seq = sequential(lm, args.g, offset=1000 * r)
        seq = engine.stats
        engine.reset_stats()
        t_bat = batched(lm, args.g, offset=1000 * r + 500)
        bat = engine.stats
        rows.append((t_seq, seq, t_bat, bat))
        print(
            f"repeat {r}: sequential {t_seq:6.1f}s ({seq['generate_calls']} generate, "
            f"{seq['completion_tokens']} tok) | batched {t_bat:6.1f}s ({bat['generate_calls']} generate, "
            f"{bat['completion_tokens']} tok) | speed-up {t_seq / t_bat:4.2f}x"
        )
    if "decode_seconds" in engine.phase_stats:
        for label, path in (("sequential", 1), ("batched", 3)):
            stats = {k: sum(row[path][k] for row in rows) for k in (*engine.phase_stats, "generate_seconds")}
            print(f"  {label:>10}: {phases(stats)}")
        seq_rate, bat_rate = (sum(row[p]["decode_rows"] for row in rows) / sum(row[p]["decode_seconds"] for row in rows)
                              for p in (1, 3))
        print(f"  decode steps of {args.g} rows give {bat_rate / seq_rate:.2f}x the tokens/s of 1-row steps: "
              "batching cannot give the whole more than that plus the saved prefills")
    speedups = [s / b for s, _, b, _ in rows]
    tok_rate = [(bs["completion_tokens"] / b) / (ss["completion_tokens"] / s) for s, ss, b, bs in rows]
    print(f"\nG={args.g} rollouts, batched vs sequential: wall speed-up {statistics.mean(speedups):.2f}x "
          f"(target >= 4x); completion-token throughput ratio {statistics.mean(tok_rate):.2f}x")

    policy = make_lm("local", temperature=1.0, max_tokens=args.max_tokens, cache=False, **options)
    anchor = make_lm("local", temperature=0.7, max_tokens=args.max_tokens, cache=False, **options)
    cat = CaT(g=4, policy=policy, anchor=anchor)
    engine.reset_stats()
    start = time.perf_counter()
    pred = cat(question=QUESTION)
    wall = time.perf_counter() - start
    inside = engine.stats["generate_seconds"]
    print(f"solve (CaT, G=4): wall {wall:.2f}s, inside generate {inside:.2f}s, ratio {wall / inside:.3f} "
          f"(target <= 1.10); generate calls: {engine.stats['generate_calls']}; model load (once) {load_seconds:.2f}s")
    print(f"usage: {pred.usage}")


if __name__ == "__main__":
    main()

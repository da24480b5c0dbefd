"""Benchmark: ``eval`` questions per minute, one question at a time vs N questions in flight, side by side in one run.

On the embedded model (CPU unless CUDA is present), the same generated arithmetic questions
(``experiments/make_arithmetic.py``, seeded) are evaluated twice with seeded LMs and no LM cache: once with one
question at a time (``num_threads=1``), once with N in flight (the ``eval`` default,
:data:`cat_dspy.evaluation.evaluate.IN_FLIGHT`), in separate run directories. Prints questions per minute of each,
their ratio (target ≥ 3×), the local engine's generate calls and rows per call, and checks that both runs gave
identical rollouts, method texts and answers (the engine samples each request from its own seeded generator, so
results must not depend on what shares a batch). On llama.cpp it also prints each mode's prefill and decode time
(the engine's ``phase_stats``) and the bound they set: prefill is exact only one prompt per ``llama_decode``, so N
in flight is at most (one-at-a-time seconds ÷ its own prefill seconds)× faster, with decoding and all else free (in
flight prefills less: prompts of a batch sharing a head, like every synthesis prompt, compute it once).
``--repeats`` runs each mode again, alternating which goes first. Writes the numbers to a small JSON file (default
``runs/benchmarks/eval_throughput.json``). The engine is the default one for ``"local"`` (llama.cpp in process on a
CPU with llama-cpp-python, else torch); ``--runtime`` pins it.

Run (the measurement): python benchmarks/eval_throughput.py --questions 16 --g 4 --max-tokens 32 --repeats 2
Dry run: python benchmarks/eval_throughput.py --questions 4 --max-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO / "experiments"))


def questions(n: int, seed: int) -> list:
    """``n`` generated arithmetic items (``make_arithmetic.make_items``), as evaluation items."""
    from make_arithmetic import make_items

    from cat_dspy.datasets import Item

    rows = make_items(n, random.Random(seed), set())
    return [Item(id=f"arith-{k}", question=row["question"], answer=row["answer"]) for k, row in enumerate(rows)]


def outcome(records: list[dict]) -> list[tuple]:
    """What must not depend on concurrency: per question its rollouts and every (method, G)'s text and answer."""
    return [(r["id"], r["rollouts"], [(x["method"], x["g"], x["text"], x["answer"]) for x in r["results"]])
            for r in records]


def main() -> int:
    from cat_dspy.evaluation.evaluate import DEFAULT_METHODS, IN_FLIGHT

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--g", default="4", help="G values, comma-separated (default: 4)")
    parser.add_argument("--max-tokens", type=int, default=32, help="per call, every role (default: 32)")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT, help=f"N (default: eval's {IN_FLIGHT})")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--seed", type=int, default=0, help="question generation and LM sampling seed")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternating order (default: 1)")
    parser.add_argument("--out", default=str(REPO / "runs" / "benchmarks" / "eval_throughput.json"))
    parser.add_argument("--runtime", choices=("auto", "torch", "llamacpp"), help="default: $CAT_DSPY_RUNTIME or auto")
    args = parser.parse_args()

    from cat_dspy.evaluation.report import summarize
    from cat_dspy.evaluation.runner import build_programs, run_eval
    from cat_dspy.lm.models import engine_of
    from cat_dspy.lm.roles import ROLES, role_lm

    items = questions(args.questions, args.seed)
    gs = sorted({int(x) for x in args.g.split(",")})
    methods = [m for m in args.methods.split(",") if m]
    lms = {role: role_lm("local", role, max_tokens=args.max_tokens, seed=args.seed, cache=False, runtime=args.runtime)
           for role in ROLES}
    engine = engine_of(lms["policy"])
    engine.load()
    lms["policy"]("warm-up", max_tokens=4)  # first-call costs stay out of both measurements

    runs: dict[str, dict] = {}
    outcomes: dict[str, list] = {}
    modes = [("one_at_a_time", 1), ("in_flight", args.in_flight)]
    with tempfile.TemporaryDirectory(prefix="cat-eval-throughput-") as tmp:
        for repeat in range(args.repeats):  # the order alternates, so a change of load hits both modes alike
            for label, in_flight in modes if repeat % 2 == 0 else modes[::-1]:
                programs = build_programs(lms, mode="verifiable", g=max(gs), logprobs="min_ppl" in methods)
                engine.reset_stats()
                start = time.perf_counter()
                run = run_eval(items, programs, gs, methods, Path(tmp) / f"{label}-{repeat}", num_threads=in_flight,
                               progress=False, cache=False)
                seconds = time.perf_counter() - start
                stats = engine.stats
                r = runs.setdefault(label, {"in_flight": in_flight, "seconds_each": [], **dict.fromkeys(stats, 0)})
                r["seconds_each"].append(seconds)
                for key, value in stats.items():
                    r[key] += value
                r["accuracy"] = {f"{x['method']}@{x['g']}": x["accuracy"] for x in summarize(run.records)}
                outcomes.setdefault(label, []).append(outcome(run.records))
    for r in runs.values():
        r["seconds"] = sum(r["seconds_each"])
        r["questions_per_minute"] = 60 * len(items) * len(r["seconds_each"]) / r["seconds"]
        r["rows_per_generate"] = r["rows"] / max(r["generate_calls"], 1)
    reference = outcomes["one_at_a_time"][0]
    all_runs = [o for label in outcomes for o in outcomes[label]]
    differing = sorted({a[0] for o in all_runs for a, b in zip(reference, o, strict=True) if a != b})
    one, many = runs["one_at_a_time"], runs["in_flight"]
    result = {
        "questions": len(items), "g": gs, "max_tokens": args.max_tokens, "methods": methods, "seed": args.seed,
        "model": lms["policy"].model,
        "runtime": engine.runtime,
        "device": str(getattr(engine, "device", "cpu")),
        "repeats": args.repeats,
        **runs,
        "ratio": many["questions_per_minute"] / one["questions_per_minute"],
        "identical": not differing,
        "differing_questions": differing,
        "target": 3.0,
    }
    print(f"eval throughput: {len(items)} arithmetic questions, G={args.g}, {args.max_tokens} tokens, "
          f"methods {','.join(methods)}, seed {args.seed}, {result['model']} ({result['runtime']}, {result['device']})")
    for label, r in runs.items():
        print(f"  {label:>13} (N={r['in_flight']}): {r['seconds']:7.1f} s  {r['questions_per_minute']:6.2f} "
              f"questions/min  {r['generate_calls']} generate calls, {r['rows_per_generate']:.1f} rows each, "
              f"{r['generate_seconds']:.1f} s inside generate")
    if "prefill_seconds" in many:  # llama.cpp: exact prefill is one prompt per llama_decode in both modes
        result["ratio_bound"] = one["seconds"] / many["prefill_seconds"]
        for label, r in runs.items():
            print(f"  {label:>13}: prefill {r['prefill_seconds']:.1f} s ({r['prefill_tokens']} tok, "
                  f"{r['prefill_seconds'] / r['seconds']:.0%} of the run), decode {r['decode_seconds']:.1f} s "
                  f"({r['decode_rows'] / max(r['decode_steps'], 1):.1f} rows per step)")
        print(f"  bound: one at a time's seconds / in flight's prefill seconds (the rest free): "
              f"{result['ratio_bound']:.2f}x")
    print(f"  ratio: {result['ratio']:.2f}x (target >= {result['target']:.0f}x)")
    print(f"  identical results: {result['identical']}" + (f" (differ: {', '.join(differing)})" if differing else ""))
    print(f"  accuracy one at a time: {one['accuracy']}\n  accuracy in flight:     {many['accuracy']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"  wrote {out}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())

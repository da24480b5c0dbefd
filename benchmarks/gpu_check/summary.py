"""GPU check, stage (d): one summary of the stages, printed and written as JSON (``<out>/gpu_check.json``).

Reads what the stages left in ``--results`` (stages.jsonl, env.json, engine.json) and the training logs in
``--logs`` (grpo.log, vllm.log: the dicts that ``cat-dspy train --disable_tqdm true`` prints at every logging step,
so a stage stopped by its timeout still reports the steps it finished).

Run: python benchmarks/gpu_check/summary.py --results WORK/results --logs OUT --out OUT
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
from pathlib import Path
from typing import Any


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_dicts(path: Path) -> list[dict[str, Any]]:
    """The ``{...}`` lines of a training log, parsed (values that read as numbers become floats)."""
    rows = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return rows
    for line in lines:
        line = line.strip()
        if not (line.startswith("{") and line.endswith("}")):
            continue
        try:
            row = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue
        if isinstance(row, dict):
            for key, value in row.items():
                try:
                    row[key] = float(value)
                except (TypeError, ValueError):
                    pass
            rows.append(row)
    return rows


def training(path: Path) -> dict[str, Any] | None:
    """Per-step times and CaT metrics of one `cat-dspy train` log."""
    rows = log_dicts(path)
    steps = [r for r in rows if "step_time" in r]
    final = next((r for r in rows if "train_runtime" in r), None)
    if not steps and final is None:
        return None
    step_s = [r["step_time"] for r in steps]
    reward_s = [r.get("cat/reward_seconds") for r in steps]
    out: dict[str, Any] = {
        "steps_logged": len(steps),
        "step_s": step_s,
        "reward_s": reward_s,
        "reward_mean": [r.get("reward") for r in steps],
        "completion_mean_tokens": [r.get("completions/mean_length") for r in steps],
        "synthesis_extracted": [r.get("cat/synthesis_extracted") for r in steps],
        "invalid_groups": sum(r.get("cat/invalid_groups") or 0 for r in steps),
        "anchor_errors": sum(r.get("cat/anchor_errors") or 0 for r in steps),
        "train_runtime_s": final.get("train_runtime") if final else None,
    }
    later = step_s[1:] or step_s
    out["first_step_s"] = step_s[0] if step_s else None
    out["median_later_step_s"] = statistics.median(later) if later else None
    timed = [(s, r) for s, r in zip(step_s, reward_s, strict=True) if r is not None]
    out["reward_share"] = sum(r for _, r in timed) / sum(s for s, _ in timed) if timed else None
    later_timed = timed[1:] or timed
    out["reward_share_later"] = (sum(r for _, r in later_timed) / sum(s for s, _ in later_timed)
                                 if later_timed else None)
    return out


def fmt(value: Any, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--logs", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", default="gpu")
    args = parser.parse_args()

    stages = []
    for line in (args.results / "stages.jsonl").read_text().splitlines() if (args.results / "stages.jsonl").exists() \
            else []:
        stages.append(json.loads(line))
    env = read_json(args.results / "env.json") or {}
    engine = read_json(args.results / "engine.json")
    logs = args.logs or args.out
    ran = {s["stage"] for s in stages if s.get("rc") is not None}
    summary = {"mode": args.mode, "env": env, "stages": stages, "engine": engine,
               "grpo": training(logs / "grpo.log") if "grpo" in ran else None,
               "vllm": training(logs / "vllm.log") if "vllm" in ran else None}

    pkgs = env.get("packages", {})
    print(f"cat-dspy GPU check ({args.mode}) on {env.get('gpu') or 'CPU'}: python {env.get('python')}, torch "
          f"{pkgs.get('torch')} (CUDA {env.get('torch_cuda')}), transformers {pkgs.get('transformers')}, trl "
          f"{pkgs.get('trl')}, dspy {pkgs.get('dspy')}, vllm {pkgs.get('vllm') or 'absent'}")
    for s in stages:
        status = ("skipped: " + s["skipped"] if s.get("skipped") else
                  "ok" if s["rc"] == 0 else "TIMEOUT" if s["rc"] in (124, 137) else f"FAILED (rc {s['rc']})")
        print(f"  stage {s['stage']:<7} {status:<12} {fmt(s.get('seconds'), '.1f'):>7} s")
    if engine:
        print(f"(a) engine on {engine['device']}, {engine['dtype']}, static cache {engine['static_cache']}, "
              f"{engine['max_tokens']} max tokens, load {engine['load_s']:.1f} s:")
        for row in engine["batches"]:
            print(f"      batch {row['batch']:3d}: {row['tok_per_s']:9.1f} tok/s, {row['mean_completion_tokens']:.0f} "
                  f"tokens/sequence, warm-up (compile) {row['warmup_s']:.1f} s, one generate per batch: "
                  f"{row['one_generate_per_batch']}"
                  + (f", peak GPU memory {row['peak_gpu_memory_gib']} GiB" if "peak_gpu_memory_gib" in row else ""))
    else:
        print("(a) engine: no result")
    for key, title in (("grpo", "(b) GRPO + CaT reward"), ("vllm", "(c) GRPO with TRL's vLLM generation")):
        run = summary[key]
        if run is None:
            record = next((s for s in stages if s["stage"] == key), None)
            print(f"{title}: " + ("not run" if record is None else "skipped: " + record["skipped"]
                                  if record.get("skipped") else "no step finished"))
            continue
        print(f"{title}: {run['steps_logged']} steps; first step {fmt(run['first_step_s'])} s, later steps median "
              f"{fmt(run['median_later_step_s'])} s; reward time / step time {fmt(run['reward_share'])} (later steps "
              f"{fmt(run['reward_share_later'])}); anchor errors {run['anchor_errors']:.0f}, invalid groups "
              f"{run['invalid_groups']:.0f}")
        print(f"      step s: {[round(x, 2) for x in run['step_s']]}")
        print(f"      reward: {[fmt(x) for x in run['reward_mean']]}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    print(f"summary JSON: {args.out / 'gpu_check.json'}")
    failed = [s["stage"] for s in stages if s.get("rc") not in (0, None) or s.get("budget")]
    if failed:
        print(f"not complete: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

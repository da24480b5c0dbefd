"""Benchmark: the HTTP server path vs the in-process path on the same model, and ``n=G`` vs G requests.

Prints, measured in one run on the embedded SmolLM2-135M-Instruct (same chat prompt for every path):
1. decode throughput (completion tokens/s, greedy, one stream) of a llama.cpp server reached through
   ``openai/`` + LiteLLM vs the in-process engine (``local``: its default runtime, llama.cpp in process on a CPU
   with llama-cpp-python, else torch; ``CAT_DSPY_RUNTIME=torch`` pins it), and their ratio;
2. G rollouts (``Rollout``, temperature 0.8) as one request with ``n=G`` vs G concurrent requests on the
   server (where it honours ``n``; llama-cpp-python's does not, which is measured and reported), and the
   in-process batched path for reference.
Each row gives wall-clock tokens/s and tokens per CPU-second (this process plus the server process it launched),
which stays meaningful on a busy machine. Every call uses ``cache=False``. ``--api-base``/``--model`` benchmark
another server (e.g. vLLM) instead of launching llama.cpp.

Run: python benchmarks/backends.py [--g 4] [--max-tokens 128] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENAI_API_KEY", "sk-local")  # the local server checks no key; LiteLLM wants one

import dspy

from cat_dspy import make_lm
from cat_dspy.lm.models import engine_of
from cat_dspy.lm.servers import EMBEDDED_ALIAS, Server, embedded_gguf, launch, stop
from cat_dspy.lm.usage import tracker_totals
from cat_dspy.modules import Rollout

PROMPT = "Explain step by step how to compute 17 * 24, then check the result another way."
QUESTION = "A baker makes 24 rolls and sells 3 bags of 5 rolls. How many rolls are left?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CpuClock:
    """CPU seconds used by this process plus, when given, a server process (robust to a busy machine)."""

    def __init__(self, pid: int | None = None):
        self.pid = pid

    def __call__(self) -> float:
        total = time.process_time()
        if self.pid is not None:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return total


def decode(lm: dspy.LM, max_tokens: int, cpu: CpuClock) -> tuple[int, float, float]:
    """One greedy completion of :data:`PROMPT`: (completion tokens, wall seconds, CPU seconds)."""
    start, cpu_start = time.perf_counter(), cpu()
    with dspy.track_usage() as tracker:
        lm(PROMPT, temperature=0.0, max_tokens=max_tokens)
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    tokens = tracker_totals(tracker)["completion_tokens"]
    return tokens, seconds, cpu_seconds


def rollouts(lm: dspy.LM, g: int, strategy: str, offset: int, cpu: CpuClock) -> tuple[int, float, float, int, str]:
    """G rollouts of :data:`QUESTION`: (completion tokens, wall s, CPU s, LM calls, strategy used)."""
    start, cpu_start = time.perf_counter(), cpu()
    pred = Rollout(g=g, lm=lm, temperature=0.8, strategy=strategy, first_rollout_id=offset)(question=QUESTION)
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    if any(pred.failures):
        raise RuntimeError(f"rollouts failed: {pred.failures}")
    tokens = sum(u["completion_tokens"] for u in pred.usage)
    return tokens, seconds, cpu_seconds, sum(u["calls"] for u in pred.usage), pred.strategy


def honours_n(lm: dspy.LM) -> bool:
    """Whether the server returned two choices for one request with ``n=2``."""
    outputs = lm("Say hi.", n=2, temperature=0.8, max_tokens=4)
    return len(outputs) == 2


def _rate(samples: list[tuple]) -> dict[str, float]:
    tokens, seconds, cpu_seconds = (sum(s[i] for s in samples) for i in range(3))
    fastest = min(samples, key=lambda s: s[1] / max(s[0], 1))  # the run a busy machine disturbed least
    return {"tokens": tokens, "seconds": round(seconds, 3), "tok_per_s": round(tokens / seconds, 2),
            "best_tok_per_s": round(fastest[0] / fastest[1], 2),
            "tok_per_cpu_s": round(tokens / cpu_seconds, 2) if cpu_seconds > 0 else None,
            "median_s": round(statistics.median(s[1] for s in samples), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--g", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--api-base", default=None, help="benchmark this server instead of launching llama.cpp")
    parser.add_argument("--model", default=f"openai/{EMBEDDED_ALIAS}", help="model string for --api-base")
    parser.add_argument("--n-threads", type=int, default=os.cpu_count() or 2, help="llama.cpp threads")
    parser.add_argument("--no-local", action="store_true", help="skip the in-process path")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    processes: list[subprocess.Popen] = []
    report: dict = {"g": args.g, "max_tokens": args.max_tokens, "repeats": args.repeats,
                    "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    try:
        url = args.api_base
        if url is None:
            port = _free_port()
            argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias",
                    EMBEDDED_ALIAS, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
                    "--n_threads", str(args.n_threads)]
            server = Server(["policy"], "local", EMBEDDED_ALIAS, port, argv)
            start = time.perf_counter()
            processes = launch([server], "127.0.0.1", timeout=120, output=subprocess.DEVNULL)
            report["server_start_s"] = round(time.perf_counter() - start, 2)
            url = server.url("127.0.0.1")
        remote = make_lm(args.model, api_base=url, max_tokens=args.max_tokens, cache=False)
        local = None if args.no_local else make_lm("local", max_tokens=args.max_tokens, cache=False)
        if local is not None:
            start = time.perf_counter()
            engine_of(local).load()
            report["local_load_s"] = round(time.perf_counter() - start, 2)
        remote_cpu, local_cpu = CpuClock(processes[0].pid if processes else None), CpuClock()
        for lm, cpu in ((remote, remote_cpu), (local, local_cpu)):
            if lm is not None:
                decode(lm, 8, cpu)  # warm-up: first-call costs stay out of the measurements

        report["server_honours_n"] = honours_n(remote)
        decode_runs: dict[str, list] = {"server": [], "local": []}
        g_runs: dict[str, list] = {}
        for repeat in range(args.repeats):  # interleaved so machine noise hits every path alike
            decode_runs["server"].append(decode(remote, args.max_tokens, remote_cpu))
            if local is not None:
                decode_runs["local"].append(decode(local, args.max_tokens, local_cpu))
            offset = 1000 * (repeat + 1)
            paths = [("server_n", remote, "n", remote_cpu)] if report["server_honours_n"] else []
            paths += [("server_concurrent", remote, "concurrent", remote_cpu)]
            paths += [("local_batched", local, "concurrent", local_cpu)] if local is not None else []
            for name, lm, strategy, cpu in paths:
                g_runs.setdefault(name, []).append(rollouts(lm, args.g, strategy, offset, cpu))
            print(f"repeat {repeat + 1}: decode {[r[-1][:3] for r in decode_runs.values() if r]}, "
                  f"G={args.g} {({k: v[-1][:3] for k, v in g_runs.items()})}", file=sys.stderr, flush=True)
        report["decode"] = {name: _rate(runs) for name, runs in decode_runs.items() if runs}
        if local is not None:
            server, there = report["decode"]["server"], report["decode"]["local"]
            report["decode"]["server_over_local"] = {
                key: round(server[key] / there[key], 2)
                for key in ("tok_per_s", "best_tok_per_s", "tok_per_cpu_s") if there[key]}
        report["rollouts"] = {
            name: {**_rate(runs), "calls_per_group": runs[0][3], "strategy_used": runs[0][4]}
            for name, runs in g_runs.items()
        }
        if "server_n" in report["rollouts"]:
            n_path, fan = report["rollouts"]["server_n"], report["rollouts"]["server_concurrent"]
            report["rollouts"]["n_over_concurrent_speedup"] = round(fan["median_s"] / n_path["median_s"], 2)
        else:
            report["rollouts"]["server_n"] = "not measured: the server ignores n (one choice per request)"
    finally:
        stop(processes)

    if args.json:
        print(json.dumps(report))
        return 0
    print(f"server: {args.model} at {url}   honours n: {report['server_honours_n']}   "
          f"load average before: {report['load_average']}")
    for name, row in report["decode"].items():
        print(f"decode {name:18s} {row}")
    for name, row in report["rollouts"].items():
        print(f"G={args.g} {name:20s} {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

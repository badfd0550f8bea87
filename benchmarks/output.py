"""What the one-table micro-benchmarks share: their command line (``--quick``, ``--out``)
and how they write a result (``<stem>.json`` with the machine, ``<stem>.md`` with the
table under a header, the table also printed)."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def parse_arguments(doc: str, quick_help: str) -> argparse.Namespace:
    """``--quick`` and ``--out`` (default ``benchmarks/results``); one thread from here on."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    return args


def package_versions() -> dict[str, str]:
    """The versions of the packages a BO trajectory depends on: with unpinned dependencies
    a fresh environment may install newer ones, and the same seed then follows another
    trajectory (session 29: the stored development runs did not reproduce)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "botorch", "gpytorch", "linear_operator", "scipy", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    """The CPU's model name, its architecture and the kernels torch picked for it (e.g.
    ``AMD EPYC, x86_64, AVX512 kernels, mkl``). A BO trajectory depends on it as on the
    package versions: the same code, packages and seed take other points on another CPU
    (session 39: runs recorded on one machine differed from the first rounds on another),
    because the BLAS and vectorized kernels round differently."""
    blas = "mkl" if torch.backends.mkl.is_available() else "no mkl"
    return (f"{cpu_model()}, {platform.machine()}, "
            f"{torch.backends.cpu.get_cpu_capability()} kernels, {blas}")


def machine(quick: bool) -> dict[str, Any]:
    """torch version, architecture, threads and whether the run was ``--quick``."""
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu": cpu_description(), "threads": torch.get_num_threads(), "quick": quick}


def write_result(out: str | Path, stem: str, payload: dict[str, Any], header: str,
                 table: str) -> None:
    """Print ``table``; write ``payload`` to ``out/stem.json`` and ``header + table`` to
    ``out/stem.md``."""
    print(table)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    (folder / f"{stem}.md").write_text(header + table + "\n")
    print(f"wrote {folder / (stem + '.json')} and {stem}.md")

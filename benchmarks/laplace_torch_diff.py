"""The same calls to this package's ``laplace`` and to laplace-torch 0.3: where they differ.

A behaviour probe (``laplace_torch_probe.py``) fits every weight subset (all, last layer)
and Hessian structure (full, Kronecker, diagonal) of a small float64 network on regression
and classification data, and many further variants, and records what a user reads:
defaults, the evidence terms, the log marginal likelihood with and without arguments, the
predictives, sample shapes, the state's keys, tuning, ``marglik_training`` and the
curvature backends, called directly and named in ``Laplace``. It runs once in this
project's environment and once in the cached laplace-torch environment
(``laplace_torch_env.py``); entries whose values differ by more than ``--rtol`` (or whose
shapes, dtypes, types or errors differ) are listed, and a second table loads each package's
saved states into the other (``laplace_torch_states.py``)::

    .venv/bin/python benchmarks/laplace_torch_diff.py

prints the table and writes ``benchmarks/results/laplace_torch_diff.{md,json}``. Every
listed difference should be one that ``docs/differences.md`` explains.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PROBE = Path(__file__).resolve().parent / "laplace_torch_probe.py"
STATES = Path(__file__).resolve().parent / "laplace_torch_states.py"


def _same(a: Any, b: Any, rtol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return (a["shape"] == b["shape"] and a["dtype"] == b["dtype"]
                and all(abs(x - y) <= rtol * max(1.0, abs(y))
                        for x, y in zip(a["values"], b["values"])))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rtol * max(1.0, abs(b))
    return a == b


def compare(ours: dict[str, Any], theirs: dict[str, Any], rtol: float = 1e-3
            ) -> list[dict[str, Any]]:
    """The entries (in either probe) whose summaries differ, ``{"key", "ours", "theirs"}``."""
    return [{"key": key, "ours": ours.get(key), "theirs": theirs.get(key)}
            for key in sorted(set(ours) | set(theirs))
            if not _same(ours.get(key), theirs.get(key), rtol)]


def _run_probe(python: str | Path) -> dict[str, Any]:
    """``laplace_torch_probe.probe()`` under ``python``, from a temporary folder (so that
    its own installed ``laplace`` is imported, not this repository's)."""
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run([str(python), str(PROBE)],
                              cwd=cwd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def cross_load(python_a: str | Path, python_b: str | Path) -> dict[str, Any]:
    """Each package's states loaded by the other (``laplace_torch_states.py``):
    ``{"a states in b": {variant: read}, "b states in a": ...}``."""
    with tempfile.TemporaryDirectory() as cwd:
        for name, python in (("a", python_a), ("b", python_b)):
            (Path(cwd) / name).mkdir()
            subprocess.run([str(python), str(STATES), "save", name], cwd=cwd, check=True,
                           capture_output=True)
        return {f"{saver} states in {loader}": json.loads(subprocess.run(
            [str(python), str(STATES), "load", saver], cwd=cwd, check=True,
            capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for saver, loader, python in (("a", "b", python_b), ("b", "a", python_a))}


def states_markdown(loads: dict[str, dict[str, Any]], rtol: float) -> str:
    """A table: per variant and direction, loaded (evidence and predictive equal to the
    saver's within ``rtol``), or the error."""
    def cell(read: Any) -> str:
        if read is None:
            return "—"
        if isinstance(read, str):
            return read
        same = (abs(read["lml"] - read["lml_saved"]) <= rtol * abs(read["lml_saved"])
                and read["predictive_max_abs_diff"] <= rtol)
        return ("same" if same else "differs") + (
            f" (evidence {read['lml']:.6g}, predictive ±{read['predictive_max_abs_diff']:.1e})")

    directions = list(loads)
    lines = ["## States across packages", "",
             "Each package's `state_dict()` of every weight-space variant loaded by the other "
             "(`laplace_torch_states.py`; a = this package, b = laplace-torch): the loaded LA's "
             "evidence and GLM predictive against the saver's.", "",
             "| variant | " + " | ".join(directions) + " |", "|---|" + "---|" * len(directions)]
    for variant in loads[directions[0]]:
        lines.append(f"| {variant} | " + " | ".join(cell(loads[d].get(variant))
                                                    for d in directions) + " |")
    return "\n".join(lines) + "\n"


def markdown(differences: list[dict[str, Any]], n_entries: int, versions: dict[str, str],
             rtol: float, commit: str = "") -> str:
    def cell(v: Any) -> str:
        text = json.dumps(v)
        return (text if len(text) <= 90 else text[:87] + "...").replace("|", "\\|")

    lines = [f"# `laplace` next to laplace-torch {versions.get('laplace-torch', '?')}", "",
             f"`benchmarks/laplace_torch_diff.py` at commit {commit or '?'}: {n_entries} "
             "reads of the same calls, "
             f"{len(differences)} differ (relative tolerance {rtol:g}); laplace-torch's "
             f"environment: {json.dumps(versions)}.", "",
             "| read | this package | laplace-torch |", "|---|---|---|"]
    for d in differences:
        ours, theirs = d["ours"], d["theirs"]
        if all(isinstance(v, list) and all(isinstance(x, str) for x in v)
               for v in (ours, theirs)):  # key lists: what each has that the other lacks
            ours, theirs = ({"only here": sorted(set(ours) - set(theirs))},
                            {"only there": sorted(set(theirs) - set(ours))})
        lines.append(f"| {d['key']} | {cell(ours)} | {cell(theirs)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtol", type=float, default=1e-3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.laplace_torch_env import ensure_laplace_torch_env

    lt_python, versions = ensure_laplace_torch_env()
    ours, theirs = _run_probe(sys.executable), _run_probe(lt_python)
    differences = compare(ours, theirs, args.rtol)
    loads = cross_load(sys.executable, lt_python)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    text = (markdown(differences, len(theirs), versions, args.rtol, commit) + "\n"
            + states_markdown(loads, args.rtol))
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "laplace_torch_diff.md").write_text(text)
    (RESULTS / "laplace_torch_diff.json").write_text(json.dumps(
        {"commit": commit, "versions": versions, "rtol": args.rtol, "differences": differences,
         "states_across_packages": loads,
         "ours": ours, "laplace_torch": theirs}, indent=1))


if __name__ == "__main__":
    main()

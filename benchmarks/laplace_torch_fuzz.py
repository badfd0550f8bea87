"""Randomized configurations through this package's ``laplace`` and laplace-torch 0.3 side by
side: where they differ.

``laplace_torch_diff.py`` probes a fixed list of calls; this draws ``--configs``
configurations from ``--seed`` (likelihood, weight subset, Hessian structure, backend,
dtype, data and batch sizes, prior precision per tensor or scalar, ``sigma_noise``,
temperature, a tuning run), runs each through both packages
(``laplace_torch_fuzz_probe.py``, laplace-torch from the cached environment of
``laplace_torch_env.py``) and lists every call whose result differs by more than
``--rtol`` (``--rtol32`` in float32), or where one raises and the other does not::

    .venv/bin/python benchmarks/laplace_torch_fuzz.py --seed 1 --configs 100

prints a table of the differences by call and kind, and writes
``benchmarks/results/laplace_torch_fuzz_seed<seed>.{md,json}``. Each difference should be
one that ``docs/differences.md`` explains; a new one is a defect of one package or the
other. Use a new seed to look further.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PROBE = HERE / "laplace_torch_fuzz_probe.py"
RESULTS = HERE / "results"
BACKENDS = (None, "CurvlinopsGGN", "CurvlinopsEF", "BackPackGGN", "BackPackEF", "AsdlGGN",
            "AsdlEF", "CurvlinopsHessian", "AsdlHessian")


def configurations(seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` configurations drawn from ``seed`` (the same list for the same arguments)."""
    r = random.Random(seed)
    out = []
    for _ in range(n):
        lik = r.choice(["regression", "regression", "classification"])
        hs = r.choice(["full", "kron", "diag", "lowrank", "gp"])
        sw = "all" if hs == "lowrank" else r.choice(["all", "last_layer", "subnetwork"])
        cfg = {"seed": r.randrange(1000), "lik": lik,
               "k": r.choice([1, 2]) if lik == "regression" else 3, "hs": hs, "sw": sw,
               "backend": r.choice(BACKENDS), "dtype": r.choice(["f64", "f64", "f32"]),
               "n": r.choice([8, 20]), "bs": r.choice([4, 7, 32]),
               "act": r.choice(["tanh", "relu"]),
               "sigma_noise": r.choice([None, 0.4]) if lik == "regression" else None,
               "temperature": r.choice([None, 0.5]), "pp": r.choice([None, 2.0, "layer"])}
        if cfg["pp"] == "layer":
            cfg["pp"] = [0.5, 1.0, 2.0, 3.0, 4.0, 5.0] if sw == "all" else [0.5, 2.0]
        if r.random() < 0.5:
            cfg["tune"] = {"n_steps": r.choice([5, 30]),
                           "prior_structure": r.choice(["scalar", "layerwise", "diag"])}
        out.append(cfg)
    return out


def run_probe(python: str | Path, configs: list[dict[str, Any]],
              probe: Path = PROBE) -> list[dict[str, tuple]]:
    """The results of ``probe`` under ``python``, from a temporary folder (so that the
    interpreter's own ``laplace`` is imported, not this repository's)."""
    with tempfile.TemporaryDirectory() as cwd:
        (Path(cwd) / "configs.json").write_text(json.dumps(configs))
        subprocess.run([str(python), str(probe), "configs.json", "results.pt"], cwd=cwd,
                       check=True, capture_output=True, text=True)
        return torch.load(Path(cwd) / "results.pt", weights_only=False)


def _difference(a: tuple, b: tuple, tol: float) -> str | None:
    """The kind of difference between two recorded results, or ``None``."""
    if a[0] != b[0]:
        return ("ours raises" if a[0] == "E" else "laplace-torch raises" if b[0] == "E"
                else "different types")
    if a[0] == "E":
        return None if a[1] == b[1] else "different errors"
    if a[0] == "T":
        if a[1].shape != b[1].shape:
            return "different shapes"
        close = torch.allclose(a[1], b[1], rtol=tol, atol=tol, equal_nan=True)
        return None if a[1].numel() == 0 or close else "different values"
    if a[0] == "L":
        if len(a[1]) != len(b[1]):
            return "different lengths"
        return next((d for d in (_difference(x, y, tol) for x, y in zip(a[1], b[1])) if d),
                    None)
    return None if a[1] == b[1] else "different values"


def _brief(result: tuple) -> str:
    if result[0] == "E":
        return f"{result[1]}: {result[2][:90]}"
    if result[0] == "T":
        return str([round(v, 5) for v in result[1].flatten()[:3].tolist()])
    return str(result[1])[:60]


def compare(configs: list[dict[str, Any]], ours: list[dict[str, tuple]],
            theirs: list[dict[str, tuple]], rtol: float = 1e-4, rtol32: float = 2e-3
            ) -> list[dict[str, Any]]:
    """One row per configuration and call whose results differ."""
    rows = []
    for i, (cfg, a, b) in enumerate(zip(configs, ours, theirs)):
        tol = rtol if cfg["dtype"] == "f64" else rtol32
        for call in sorted(set(a) | set(b)):
            if call not in a or call not in b:
                kind = "only laplace-torch runs it" if call in b else "only ours runs it"
            else:
                kind = _difference(a[call], b[call], tol)
            if kind:
                rows.append({"config": i, "call": call, "kind": kind,
                             "ours": _brief(a[call]) if call in a else "",
                             "laplace_torch": _brief(b[call]) if call in b else ""})
    return rows


def markdown(rows: list[dict[str, Any]], configs: list[dict[str, Any]], seed: int,
             commit: str, what: str = "`laplace`") -> str:
    counts = Counter((r["call"], r["kind"]) for r in rows)
    lines = [f"# {what} and laplace-torch 0.3 on {len(configs)} random configurations "
             f"(seed {seed}, commit {commit})", "",
             f"{len({r['config'] for r in rows})} of {len(configs)} configurations differ "
             "somewhere; each difference should be one `docs/differences.md` explains.", "",
             "| call | kind | configurations |", "|---|---|---:|"]
    lines += [f"| {call} | {kind} | {n} |" for (call, kind), n in counts.most_common()]
    lines += ["", "| config | call | kind | ours | laplace-torch |", "|---:|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['call']} | {r['kind']} | {r['ours']} | "
              f"{r['laplace_torch']} |".replace("\n", " ") for r in rows]
    return "\n".join(lines) + "\n"


def arguments(doc: str, configs: int, rtol: float) -> argparse.Namespace:
    """``--seed``, ``--configs``, ``--rtol`` and ``--rtol32`` of a side-by-side benchmark."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--configs", type=int, default=configs)
    parser.add_argument("--rtol", type=float, default=rtol)
    parser.add_argument("--rtol32", type=float, default=2e-3)
    return parser.parse_args()


def side_by_side(configs: list[dict[str, Any]], args: argparse.Namespace,
                 probe: Path = PROBE) -> list[dict[str, Any]]:
    """``probe`` on ``configs`` under this interpreter and laplace-torch's (its cached
    environment is created on first use); the rows where they differ."""
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.laplace_torch_env import ensure_laplace_torch_env

    lt_python, _ = ensure_laplace_torch_env()
    ours, theirs = run_probe(sys.executable, configs, probe), run_probe(lt_python, configs, probe)
    return compare(configs, ours, theirs, args.rtol, args.rtol32)


def main() -> None:
    args = arguments(__doc__, configs=100, rtol=1e-4)
    configs = configurations(args.seed, args.configs)
    write_report(side_by_side(configs, args), configs, args.seed, "laplace_torch_fuzz")


def write_report(rows: list[dict[str, Any]], configs: list[dict[str, Any]], seed: int,
                 name: str, what: str = "`laplace`") -> None:
    """Print the report and write ``results/<name>_seed<seed>.{md,json}``."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=HERE).stdout.strip()
    text = markdown(rows, configs, seed, commit, what)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{name}_seed{seed}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        {"commit": commit, "seed": seed, "configs": configs, "differences": rows}, indent=1))


if __name__ == "__main__":
    main()

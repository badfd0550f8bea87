"""Fit time of a Laplace approximation on 1 vs 2 processes (Gloo, CPU), with traffic.

One command::

    .venv/bin/python benchmarks/distributed_fit.py [--quick] [--out benchmarks/results]

The models are those of ``benchmarks/laplace_speed.py`` (float64): the digits MLP
(64→100→100→10, 17,610 weights) with the diagonal and Kronecker-factored GGN, and the
regression MLP (5→50→50→1, 2,901 weights) with the full GGN. Each process runs one
thread. "1 process" is ``la.fit(loader, distributed=False)`` on all the data; "2
processes" spawns a Gloo group in which each rank fits its contiguous half
(``fit`` auto-detects the group and all-reduces the curvature). Times are the median
of 3 fits after a warm-up (rank 0's wall time, which includes the reductions); the
traffic is the payload all-reduced by one rank per fit
(``laplace.utils.distributed.communication``); the last column is the largest
difference of the posterior precision to the one-process fit. Writes
``distributed_fit.json`` and ``distributed_fit.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Subset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.laplace_speed import build_problem, make_laplace  # noqa: E402
from laplace.utils import distributed as distributed_fit  # noqa: E402

CASES = (("classification", "diag"), ("classification", "kron"), ("regression", "full"))
REPEATS = 3


def fit_stats(problem_name: str, structure: str, quick: bool, shard: int | None,
              world: int) -> dict[str, Any]:
    """Median fit time, bytes all-reduced per fit and the dense posterior precision."""
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    problem = build_problem(problem_name, quick, 250)
    loader = problem.loader
    if shard is not None:
        n = len(loader.dataset)
        part = range(shard * n // world, (shard + 1) * n // world)
        loader = DataLoader(Subset(loader.dataset, part), batch_size=loader.batch_size)
    la = make_laplace(problem, structure)
    la.fit(loader)  # warm-up
    times: list[float] = []
    for _ in range(REPEATS):
        if shard is not None:
            dist.barrier()
        start = time.perf_counter()
        with distributed_fit.communication() as traffic:
            la.fit(loader, distributed=shard is not None)
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "bytes": traffic["bytes"],
            "calls": traffic["calls"], "precision": la._precision().to_matrix()}


def _rank(rank: int, world: int, port: int, case: tuple[str, str], quick: bool,
          out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    stats = fit_stats(*case, quick, rank, world)
    if distributed_fit.is_main_process():
        torch.save(stats, Path(out) / "rank0.pt")
    dist.destroy_process_group()


def distributed_stats(case: tuple[str, str], quick: bool, world: int = 2) -> dict[str, Any]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, port, case, quick, out), nprocs=world, join=True)
        return torch.load(Path(out) / "rank0.pt")


def run(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        one = fit_stats(*case, quick, None, 1)
        two = distributed_stats(case, quick)
        diff = (two["precision"] - one["precision"]).abs().max().item()
        P = one["precision"].shape[0]
        rows.append({"problem": case[0], "structure": case[1], "n_params": P,
                     "seconds_1": one["seconds"], "seconds_2": two["seconds"],
                     "speedup": one["seconds"] / two["seconds"], "bytes": two["bytes"],
                     "calls": two["calls"], "max_abs_difference": diff})
        print(f"{case[0]:>14} {case[1]:>4}: 1 proc {one['seconds']:.3f} s, 2 procs "
              f"{two['seconds']:.3f} s, {two['bytes'] / 1e6:.3f} MB in {two['calls']} "
              f"all_reduce calls, max diff {diff:.2g}", flush=True)
    return rows


def markdown(rows: list[dict[str, Any]], quick: bool) -> str:
    lines = ["# Distributed Laplace fit: 1 vs 2 processes (Gloo, CPU, 1 thread each)", "",
             f"`benchmarks/distributed_fit.py{' --quick' if quick else ''}`; median of "
             f"{REPEATS} fits, float64, batch size 250.", "",
             "| problem | structure | weights | 1 process (s) | 2 processes (s) | speed-up "
             "| all-reduced per fit | calls | max diff |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['structure']} | {r['n_params']:,} | {r['seconds_1']:.3f} "
            f"| {r['seconds_2']:.3f} | {r['speedup']:.2f}x | {r['bytes'] / 1e6:.3f} MB "
            f"| {r['calls']} | {r['max_abs_difference']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and models")
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    rows = run(args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed_fit.json").write_text(json.dumps({"quick": args.quick, "rows": rows},
                                                         indent=2))
    (out / "distributed_fit.md").write_text(markdown(rows, args.quick))


if __name__ == "__main__":
    main()

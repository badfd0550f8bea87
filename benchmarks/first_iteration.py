"""The first BO iterations in a fresh process: `LaplaceBNN` against `SingleTaskGP`.

One command::

    .venv/bin/python benchmarks/first_iteration.py [--quick] [--out benchmarks/results]

`benchmarks/bo.py` runs many seeds in one process, so what a process pays once (lazy
imports, first calls into LAPACK) hardly shows in its CPU per iteration. A user's script,
or a benchmark that starts one process per run, pays it in its first iteration. Each
cell here is a new Python process (`subprocess`, one thread) that imports BoTorch and
`lapbo`, then runs three iterations of the `bo.py` loop on a problem (fit on the
`2d + 2`-point Sobol design, `qLogExpectedImprovement` optimised with
`optimize_acqf(num_restarts=4, raw_samples=128)`, the new point added): CPU seconds
(`time.process_time`) of each iteration's fit and acquisition, after the imports, and
whether `torch._dynamo` was imported by then (constructing any `torch.optim` optimizer
imports it: 1.7 s of CPU on this machine; `LaplaceBNN`'s fits use `torch.optim.LBFGS`,
constructed without that import since session 47, `lapbo.lbfgs`; the GP's fit uses
scipy's L-BFGS-B). Median over three processes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import output  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: The code each fresh process runs: ``problem``, ``method`` and ``iterations`` are
#: formatted in; it prints one JSON line.
CHILD = """
import json, os, sys, time, warnings
os.environ["OMP_NUM_THREADS"] = "1"
warnings.simplefilter("ignore")
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from botorch.acquisition import qLogExpectedImprovement
from botorch.optim import optimize_acqf
from benchmarks import bo
problem = bo.PROBLEMS[{problem!r}]()
n0 = 2 * problem.dim + 2
X = bo.sobol_points(problem, n0, 0)
Y = problem(X).unsqueeze(-1)
bounds = problem.bounds.to(bo.DTYPE)
rows, model = [], None
for _ in range({iterations}):
    t0 = time.process_time()
    model = bo.fit_model({method!r}, {{}}, X, Y, problem, model, 0)
    t1 = time.process_time()
    acqf = qLogExpectedImprovement(model, best_f=Y.max())
    x, _ = optimize_acqf(acqf, bounds=bounds, q=1, num_restarts=4, raw_samples=128)
    t2 = time.process_time()
    rows.append([t1 - t0, t2 - t1])
    X, Y = torch.cat([X, x]), torch.cat([Y, problem(x).unsqueeze(-1)])
print(json.dumps({{"iterations": rows, "dynamo": "torch._dynamo" in sys.modules}}))
"""


def run_process(problem: str, method: str, iterations: int) -> dict[str, Any]:
    """One fresh process: ``{"iterations": [[fit s, acq s], ...], "dynamo": bool}``."""
    code = CHILD.format(root=str(ROOT), problem=problem, method=method,
                        iterations=iterations)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(problem: str, method: str, iterations: int, repeats: int) -> dict[str, Any]:
    """Medians over ``repeats`` processes of each iteration's fit and acquisition CPU."""
    runs = [run_process(problem, method, iterations) for _ in range(repeats)]
    per_iteration = [[statistics.median(run["iterations"][i][k] for run in runs)
                      for k in (0, 1)] for i in range(iterations)]
    return {"problem": problem, "method": method, "iterations": per_iteration,
            "first_s": sum(per_iteration[0]),
            "later_s": statistics.fmean(sum(it) for it in per_iteration[1:]),
            "dynamo": any(run["dynamo"] for run in runs)}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: first and later iterations' CPU per method, and the ratio to the GP."""
    gp = {r["problem"]: r for r in rows if r["method"] == "gp"}
    lines = ["| problem | method | first iteration CPU s (fit + acq) | later iterations CPU s "
             "| first / GP's first | torch._dynamo imported |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = r["first_s"] / gp[r["problem"]]["first_s"] if r["problem"] in gp else float("nan")
        fit, acq = r["iterations"][0]
        lines.append(f"| {r['problem']} | {r['method']} | {r['first_s']:.2f} ({fit:.2f} + "
                     f"{acq:.2f}) | {r['later_s']:.2f} | {ratio:.2f}× | "
                     f"{'yes' if r['dynamo'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    args = output.parse_arguments(__doc__, "one problem, one process per method")
    problems = ["branin"] if args.quick else ["branin", "drop_wave", "hartmann6"]
    repeats, iterations = (1, 2) if args.quick else (3, 3)
    rows = [measure(p, m, iterations, repeats) for p in problems for m in ("gp", "laplace")]
    meta = output.machine(args.quick)
    header = ("# The first BO iterations in a fresh process\n\n"
              "`benchmarks/first_iteration.py`: each cell a new process (one thread, "
              f"torch {meta['torch']}), {iterations} iterations of the `bo.py` loop after the "
              f"imports, median over {repeats} processes; `laplace` is `LaplaceBNN`'s "
              "defaults, `gp` BoTorch's `SingleTaskGP` fitted by `fit_gpytorch_mll`.\n\n")
    output.write_result(args.out, "first_iteration", {"meta": meta, "rows": rows}, header,
                        table(rows))


if __name__ == "__main__":
    main()

"""Noisy acquisition functions with ``LaplaceBNN``: the baseline computed once per query.

One command::

    .venv/bin/python benchmarks/noisy_acquisition.py [--quick] [--out benchmarks/results]

BoTorch's ``qLogNoisyExpectedImprovement`` (Ax's default acquisition for one outcome)
evaluates the joint posterior at ``[X_baseline; X]`` for every restart and raw sample of
its optimisation. ``LaplaceBNN`` computes the baseline points, the same in every batch
element and every call, once and keeps them for the next call
(``lapbo.shared_points``); before, every batch element paid for them again. Each setting
fits one ``LaplaceBNN`` and one ``SingleTaskGP`` on the same noisy Levy data (development
seed 0) and times ``optimize_acqf(qLogNoisyExpectedImprovement, num_restarts=4,
raw_samples=128)`` three ways, each from the same random state: ``LaplaceBNN`` as it is
(``shared``), ``LaplaceBNN`` with the sharing switched off (``unshared``: the computation
before, the alternative), and the GP (CPU seconds, ``time.process_time``, one thread).
The acquisition values of the two ``LaplaceBNN`` candidates are compared (the optimiser's
paths may part by rounding).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botorch.acquisition import qLogNoisyExpectedImprovement  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.models.transforms import Normalize  # noqa: E402
from botorch.optim import optimize_acqf  # noqa: E402
from botorch.test_functions import Levy  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from benchmarks.output import machine, parse_arguments, write_result  # noqa: E402
from lapbo import LaplaceBNN, linearized_model  # noqa: E402

DT = torch.float64
#: (inputs d, observations N, batch size q)
SETTINGS = [(6, 60, 1), (6, 300, 4), (12, 300, 4), (20, 1000, 10)]
QUICK_SETTINGS = [(6, 60, 1), (6, 150, 4)]


def _data(d: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    problem = Levy(dim=d, negate=True, noise_std=1.0)
    bounds = problem.bounds.to(DT)
    g = torch.Generator().manual_seed(0)
    X = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, d, generator=g, dtype=DT)
    torch.manual_seed(0)
    return X, problem(X).unsqueeze(-1), bounds


def _optimize(model: Any, X: torch.Tensor, bounds: torch.Tensor, q: int,
              shared: bool = True) -> dict[str, Any]:
    """CPU of one ``optimize_acqf`` of qLogNEI (pruning included), its posterior calls and
    the query points they held, from the same random state."""
    calls = {"calls": 0, "points": 0}
    posterior = model.posterior

    def counting(X: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls["calls"] += 1
        calls["points"] += X.shape[:-1].numel()
        return posterior(X, *args, **kwargs)

    model.posterior = counting
    switch = linearized_model.shared_points
    if not shared:
        linearized_model.shared_points = lambda *args, **kwargs: (0, 0)
    try:
        torch.manual_seed(1)
        start = time.process_time()
        acqf = qLogNoisyExpectedImprovement(model, X_baseline=X)
        candidate, value = optimize_acqf(acqf, bounds=bounds, q=q, num_restarts=4,
                                         raw_samples=128)
        cpu = time.process_time() - start
    finally:
        linearized_model.shared_points = switch
        del model.posterior
    return {"cpu_s": cpu, "value": float(value), "baseline": int(acqf.X_baseline.shape[0]),
            "candidate": candidate.tolist(), **calls}


def run_setting(d: int, n: int, q: int) -> dict[str, Any]:
    X, Y, bounds = _data(d, n)
    start = time.process_time()
    lbnn = LaplaceBNN(X, Y, input_transform=Normalize(d=d, bounds=bounds), seed=0).fit()
    fit_lbnn = time.process_time() - start
    start = time.process_time()
    gp = SingleTaskGP(X, Y, input_transform=Normalize(d=d, bounds=bounds))
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    fit_gp = time.process_time() - start
    row = {"d": d, "n": n, "q": q, "n_weights": int(lbnn.la.n_params),
           "fit_cpu_s": {"laplace": fit_lbnn, "gp": fit_gp},
           "shared": _optimize(lbnn, X, bounds, q),
           "unshared": _optimize(lbnn, X, bounds, q, shared=False),
           "gp": _optimize(gp, X, bounds, q)}
    print(f"d={d} N={n} q={q}: shared {row['shared']['cpu_s']:.2f} s, unshared "
          f"{row['unshared']['cpu_s']:.2f} s, GP {row['gp']['cpu_s']:.2f} s", flush=True)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| d | N | q | weights | baseline points | LaplaceBNN s (shared) | "
             "LaplaceBNN s (unshared) | unshared / shared | GP s | shared / GP | "
             "acquisition value shared, unshared |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s, u, g = r["shared"], r["unshared"], r["gp"]
        lines.append(
            f"| {r['d']} | {r['n']} | {r['q']} | {r['n_weights']:,} | {s['baseline']} | "
            f"{s['cpu_s']:.2f} | {u['cpu_s']:.2f} | {u['cpu_s'] / s['cpu_s']:.1f} | "
            f"{g['cpu_s']:.2f} | {s['cpu_s'] / g['cpu_s']:.1f} | "
            f"{s['value']:.4f}, {u['value']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_arguments(__doc__, "two small settings")
    warnings.simplefilter("ignore")
    rows = [run_setting(*setting) for setting in (QUICK_SETTINGS if args.quick else SETTINGS)]
    header = ("# qLogNoisyExpectedImprovement with `LaplaceBNN`: the baseline once per "
              "query\n\n`benchmarks/noisy_acquisition.py`"
              f"{' --quick' if args.quick else ''}; CPU seconds of one `optimize_acqf` "
              "(4 restarts, 128 raw samples; pruning of the baseline included), one "
              "thread, noisy Levy data (development seed 0).\n\n")
    write_result(args.out, "noisy_acquisition" + ("_quick" if args.quick else ""),
                 {"machine": machine(args.quick), "rows": rows}, header, table(rows))


if __name__ == "__main__":
    main()

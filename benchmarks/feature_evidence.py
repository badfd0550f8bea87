"""The random-feature evidence's length-scale gradient: closed form against autograd.

One command::

    .venv/bin/python benchmarks/feature_evidence.py [--quick] [--out benchmarks/results]

Every random-feature candidate of ``LaplaceBNN``'s default family fits its length scales,
``δ`` and ``σ`` by L-BFGS on the sample-space evidence; each step evaluates it with its
gradient. ``lapbo.feature_evidence.random_feature_evidence`` computes the gradient of the
feature Gram in closed form from the forward's ``cos z`` and ``sin z``; the alternative is
what one writes first, autograd through the design matrix ``[ψ_ℓ(X), T, 1]`` into
``laplace.linear_gaussian_evidence`` (the route before session 18, still taken where the
closed form does not apply). Two measurements, float64, one thread:

* ``evaluation``: one value with its gradient at ``n`` rows, ``d`` inputs, 4,096 features
  and the quadratic trend (best of 5 repeats of the mean over 100 calls);
* ``warm fit``: ``LaplaceBNN``'s default model refitted, warm-started, after each of 15
  added points from a ``2d + 2``-point design (Branin, Hartmann-6; mean CPU seconds per
  fit, ``time.process_time``), the autograd route obtained by switching the closed form
  off (``lengthscales._closed_form_inputs``).

Both routes give the same evidence (the largest relative difference is printed) and the
same fitted evidences of every candidate.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from botorch.models.transforms.input import Normalize  # noqa: E402
from botorch.test_functions import Branin, Hartmann  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import output  # noqa: E402
from lapbo import LaplaceBNN, lengthscales, networks  # noqa: E402
from lapbo.feature_evidence import random_feature_evidence  # noqa: E402
from laplace import linear_gaussian_evidence  # noqa: E402

DT = torch.float64


def evaluation_functions(n: int, d: int, seed: int = 0
                         ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """The closed-form and the autograd evidence of one random problem as functions of
    ``u = (log ℓ (d), log δ (2), log σ)``."""
    torch.manual_seed(seed)
    layer = networks.ScaledRandomFeatures(d, 4096, trend=True).to(DT)
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=DT)
    Y = torch.randn(n, 1, generator=g, dtype=DT)
    U = 2 * X - 1
    T = layer.trend_scale * torch.cat([U, U.square()], dim=-1)

    def closed(u: Tensor) -> Tensor:
        return random_feature_evidence(X, layer.omega, T, Y, u[:d], u[d:d + 2].exp(),
                                       (2 * u[-1]).exp().expand(n))

    def autograd(u: Tensor) -> Tensor:
        phi = layer.features(X, u[:d].exp())
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1)
        return linear_gaussian_evidence(phi, Y, u[d:d + 2].exp(), (2 * u[-1]).exp().expand(n),
                                        [phi.shape[-1] - 1, 1])

    return closed, autograd


def time_evaluation(f: Callable[[Tensor], Tensor], u: Tensor, calls: int, repeats: int
                    ) -> float:
    """Best over ``repeats`` of the mean wall milliseconds of ``f(u).backward()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            u.grad = None
            f(u).backward()
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def measure_evaluation(n: int, d: int, calls: int, repeats: int) -> dict[str, Any]:
    closed, autograd = evaluation_functions(n, d)
    u = torch.zeros(d + 3, dtype=DT, requires_grad=True)
    with torch.no_grad():
        a, b = float(closed(u)), float(autograd(u))
    times = {name: time_evaluation(f, u, calls, repeats)
             for name, f in (("autograd", autograd), ("closed_form", closed))}
    return {"n": n, "d": d, "autograd_ms": times["autograd"],
            "closed_form_ms": times["closed_form"],
            "speedup": times["autograd"] / times["closed_form"],
            "max_rel_difference": abs(a - b) / abs(b)}


def warm_fit_cpu(problem: Any, closed_form: bool, added: int = 15) -> tuple[float, list]:
    """Mean CPU seconds of ``added`` warm-started fits and the last fit's evidences."""
    original = lengthscales._closed_form_inputs
    if not closed_form:
        lengthscales._closed_form_inputs = lambda *args, **kwargs: None
    try:
        d, bounds = problem.dim, problem.bounds.to(DT)
        n0 = 2 * d + 2
        g = torch.Generator().manual_seed(0)
        X = bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n0 + added, d, generator=g,
                                                             dtype=DT)
        Y = problem(X).unsqueeze(-1)
        model = LaplaceBNN(X[:n0], Y[:n0], input_transform=Normalize(d=d, bounds=bounds),
                           seed=0).fit()
        seconds = []
        for n in range(n0 + 1, n0 + added + 1):
            start = time.process_time()
            model = LaplaceBNN(X[:n], Y[:n], input_transform=Normalize(d=d, bounds=bounds),
                               seed=0, warm_start=model).fit()
            seconds.append(time.process_time() - start)
        return sum(seconds) / len(seconds), [s.log_marginal_likelihood for s in model.selection]
    finally:
        lengthscales._closed_form_inputs = original


def measure_fit(name: str, problem: Any, added: int = 15) -> dict[str, Any]:
    auto_s, auto_lml = warm_fit_cpu(problem, closed_form=False, added=added)
    closed_s, closed_lml = warm_fit_cpu(problem, closed_form=True, added=added)
    return {"problem": name, "autograd_s": auto_s, "closed_form_s": closed_s,
            "speedup": auto_s / closed_s,
            "max_evidence_difference": max(abs(a - b) for a, b in zip(auto_lml, closed_lml))}


def table(evaluations: list[dict[str, Any]], fits: list[dict[str, Any]]) -> str:
    lines = ["| n | d | autograd ms | closed form ms | speed-up | rel. difference |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']} | {r['d']} | {r['autograd_ms']:.2f} | {r['closed_form_ms']:.2f} "
              f"| {r['speedup']:.2f}× | {r['max_rel_difference']:.1e} |" for r in evaluations]
    lines += ["", "| warm fit | autograd CPU s | closed form CPU s | speed-up "
              "| largest evidence difference (nats) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['problem']} | {r['autograd_s']:.3f} | {r['closed_form_s']:.3f} "
              f"| {r['speedup']:.2f}× | {r['max_evidence_difference']:.1e} |" for r in fits]
    return "\n".join(lines)


def main() -> None:
    args = output.parse_arguments(__doc__, "two small settings, no fits")
    settings = [(8, 2), (20, 2)] if args.quick else [
        (8, 2), (20, 2), (20, 6), (40, 10), (60, 20), (100, 20)]
    evaluations = [measure_evaluation(n, d, 20 if args.quick else 100,
                                      2 if args.quick else 5) for n, d in settings]
    fits = [] if args.quick else [
        measure_fit("branin", Branin(negate=True)),
        measure_fit("hartmann6", Hartmann(dim=6, negate=True))]
    meta = output.machine(args.quick)
    header = ("# Random-feature evidence: the length-scale gradient in closed form against "
              "autograd\n\n`benchmarks/feature_evidence.py`: float64, "
              f"{meta['threads']} thread, torch {meta['torch']}. One evaluation with its "
              "gradient (4,096 features and the quadratic trend; best of 5 repeats of 100 "
              "calls, wall ms), and the mean CPU of 15 warm-started fits of `LaplaceBNN`'s "
              "default family. Speed-up = autograd / closed form.\n\n")
    output.write_result(args.out, "feature_evidence",
                        {"meta": meta, "evaluations": evaluations, "fits": fits}, header,
                        table(evaluations, fits))


if __name__ == "__main__":
    main()

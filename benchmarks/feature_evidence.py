"""The random-feature evidence with its gradient: three routes, the same numbers.

One command::

    .venv/bin/python benchmarks/feature_evidence.py [--quick] [--out benchmarks/results]

Every random-feature candidate of ``LaplaceBNN``'s default family fits its length scales,
``δ`` and ``σ`` by L-BFGS on the sample-space evidence; each step evaluates it with its
gradient. Three routes, float64, one thread:

* ``design``: what one writes first, autograd through the design matrix ``[ψ_ℓ(X), T, 1]``
  into ``laplace.linear_gaussian_evidence`` (before session 18; still taken where the
  closed forms do not apply);
* ``gram``: autograd with the feature Gram's backward in closed form
  (``lapbo.feature_evidence.random_feature_evidence``, session 18);
* ``closed``: value and gradient without autograd
  (``random_feature_evidence_gradients``: ``laplace.gram_evidence_gradients`` and the
  same feature backward; with the hyperpriors in closed form, the fit's objective since
  session 23).

Two measurements:

* ``evaluation``: one value with its gradient at ``n`` rows, ``d`` inputs, 4,096 features
  and the quadratic trend (best of 5 repeats of the mean over 100 calls, wall ms);
* ``warm fit``: ``LaplaceBNN``'s default model refitted, warm-started, after each of 15
  added points from a ``2d + 2``-point design (Branin, Drop-Wave, Hartmann-6; mean CPU
  seconds per fit, ``time.process_time``), the other routes obtained by switching the
  closed forms off (``lengthscales._closed_form_inputs``, ``_minimize``'s ``gradient``).

All routes give the same evidence (the largest relative difference is printed) and the
same fitted evidences of every candidate (largest difference against ``design``).
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
from botorch.test_functions import Branin, DropWave, Hartmann  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import output  # noqa: E402
from lapbo import LaplaceBNN, lengthscales, networks  # noqa: E402
from lapbo.feature_evidence import (  # noqa: E402
    random_feature_evidence,
    random_feature_evidence_gradients,
)
from laplace import linear_gaussian_evidence  # noqa: E402

DT = torch.float64


ROUTES = ("design", "gram", "closed")


def evaluation_functions(n: int, d: int, seed: int = 0
                         ) -> dict[str, Callable[[Tensor], tuple[float, Tensor]]]:
    """Each route's ``u ↦ (evidence, gradient)`` of one random problem,
    ``u = (log ℓ (d), log δ (2), log σ)``."""
    torch.manual_seed(seed)
    layer = networks.ScaledRandomFeatures(d, 4096, trend=True).to(DT)
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=DT)
    Y = torch.randn(n, 1, generator=g, dtype=DT)
    U = 2 * X - 1
    T = layer.trend_scale * torch.cat([U, U.square()], dim=-1)

    def with_autograd(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], tuple]:
        def value_and_grad(u: Tensor) -> tuple[float, Tensor]:
            x = u.detach().clone().requires_grad_(True)
            value = f(x)
            return float(value.detach()), torch.autograd.grad(value, x)[0]
        return value_and_grad

    def design(u: Tensor) -> Tensor:
        phi = layer.features(X, u[:d].exp())
        phi = torch.cat([phi, torch.ones_like(phi[:, :1])], dim=-1)
        return linear_gaussian_evidence(phi, Y, u[d:d + 2].exp(), (2 * u[-1]).exp().expand(n),
                                        [phi.shape[-1] - 1, 1])

    def gram(u: Tensor) -> Tensor:
        return random_feature_evidence(X, layer.omega, T, Y, u[:d], u[d:d + 2].exp(),
                                       (2 * u[-1]).exp().expand(n))

    def closed(u: Tensor) -> tuple[float, Tensor]:
        prior, noise = u[d:d + 2].exp(), (2 * u[-1]).exp()
        value, d_ls, d_prior, d_noise = random_feature_evidence_gradients(
            X, layer.omega, T, Y, u[:d], prior, noise.expand(n))
        return float(value), torch.cat([d_ls, d_prior * prior, 2 * noise[None] * d_noise.sum()])

    return {"design": with_autograd(design), "gram": with_autograd(gram), "closed": closed}


def time_evaluation(f: Callable[[Tensor], tuple[float, Tensor]], u: Tensor, calls: int,
                    repeats: int) -> float:
    """Best over ``repeats`` of the mean wall milliseconds of ``f(u)``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            f(u)
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def measure_evaluation(n: int, d: int, calls: int, repeats: int) -> dict[str, Any]:
    routes = evaluation_functions(n, d)
    u = torch.zeros(d + 3, dtype=DT)
    values = {name: f(u) for name, f in routes.items()}
    reference, reference_grad = values["design"]
    row: dict[str, Any] = {"n": n, "d": d}
    for name, f in routes.items():
        row[f"{name}_ms"] = time_evaluation(f, u, calls, repeats)
    row["max_rel_difference"] = max(abs(v - reference) / abs(reference)
                                    for v, _ in values.values())
    row["max_grad_difference"] = max(float((g - reference_grad).abs().max())
                                     for _, g in values.values())
    return row


def warm_fit_cpu(problem: Any, route: str, added: int = 15) -> tuple[float, list]:
    """Mean CPU seconds of ``added`` warm-started fits by ``route`` and the last fit's
    evidences."""
    inputs, minimize = lengthscales._closed_form_inputs, lengthscales._minimize
    if route == "design":
        lengthscales._closed_form_inputs = lambda *args, **kwargs: None
    if route == "gram":
        lengthscales._minimize = lambda objective, start, bounds, max_iter, gradient=None: \
            minimize(objective, start, bounds, max_iter)
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
        lengthscales._closed_form_inputs, lengthscales._minimize = inputs, minimize


def measure_fit(name: str, problem: Any, added: int = 15) -> dict[str, Any]:
    results = {route: warm_fit_cpu(problem, route, added) for route in ROUTES}
    row: dict[str, Any] = {"problem": name}
    for route, (seconds, _) in results.items():
        row[f"{route}_s"] = seconds
    row["max_evidence_difference"] = max(
        abs(a - b) for route in ROUTES for a, b in zip(results[route][1], results["design"][1]))
    return row


def table(evaluations: list[dict[str, Any]], fits: list[dict[str, Any]]) -> str:
    lines = ["| n | d | design ms | gram ms | closed ms | design / closed | gram / closed "
             "| rel. value difference | gradient difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']} | {r['d']} | {r['design_ms']:.2f} | {r['gram_ms']:.2f} "
              f"| {r['closed_ms']:.2f} | {r['design_ms'] / r['closed_ms']:.2f}× "
              f"| {r['gram_ms'] / r['closed_ms']:.2f}× | {r['max_rel_difference']:.1e} "
              f"| {r['max_grad_difference']:.1e} |" for r in evaluations]
    lines += ["", "| warm fit | design CPU s | gram CPU s | closed CPU s | design / closed "
              "| gram / closed | largest evidence difference (nats) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['problem']} | {r['design_s']:.3f} | {r['gram_s']:.3f} "
              f"| {r['closed_s']:.3f} | {r['design_s'] / r['closed_s']:.2f}× "
              f"| {r['gram_s'] / r['closed_s']:.2f}× | {r['max_evidence_difference']:.1e} |"
              for r in fits]
    return "\n".join(lines)


def main() -> None:
    args = output.parse_arguments(__doc__, "two small settings, no fits")
    settings = [(8, 2), (20, 2)] if args.quick else [
        (8, 2), (20, 2), (20, 6), (40, 10), (60, 20), (100, 20)]
    evaluations = [measure_evaluation(n, d, 20 if args.quick else 100,
                                      2 if args.quick else 5) for n, d in settings]
    fits = [] if args.quick else [
        measure_fit("branin", Branin(negate=True)),
        measure_fit("drop_wave", DropWave(negate=True)),
        measure_fit("hartmann6", Hartmann(dim=6, negate=True))]
    meta = output.machine(args.quick)
    header = ("# Random-feature evidence with its gradient: autograd through the design, "
              "autograd through the feature Gram, closed form\n\n"
              "`benchmarks/feature_evidence.py`: float64, "
              f"{meta['threads']} thread, torch {meta['torch']}. One evaluation with its "
              "gradient (4,096 features and the quadratic trend; best of 5 repeats of 100 "
              "calls, wall ms), and the mean CPU of 15 warm-started fits of `LaplaceBNN`'s "
              "default family.\n\n")
    output.write_result(args.out, "feature_evidence",
                        {"meta": meta, "evaluations": evaluations, "fits": fits}, header,
                        table(evaluations, fits))


if __name__ == "__main__":
    main()

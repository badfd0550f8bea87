"""Per-point network Jacobians: ``vmap(jacrev)`` against ``linear_layer_jacobians``.

One command::

    .venv/bin/python benchmarks/jacobians.py [--quick] [--out benchmarks/results]

``laplace.curvature.network_jacobians`` computes ``J`` ``(n, K, P)`` of every weight by
``torch.func`` (``vmap(jacrev)``: what a user of ``torch.func`` would write) or, when the
caller vouches that the rows of a batch do not interact and every weight sits in an
``nn.Linear`` applied once (``independent_samples=True``), from one forward and ``K``
backward passes (``linear_layer_jacobians``). ``LaplaceBNN`` takes the second route for
its default network: in every evidence refit (no graph) and every acquisition call
(graph to the inputs, differentiated once more by the acquisition optimiser).

Setting: float64, one thread, ``LaplaceBNN``'s default network (2 × 50 Gaussian-bump MLP,
quadratic trend and 100 random Fourier features in the output layer) with ``d`` inputs
and ``K`` outputs at random (untrained) weights. Timed (``time.perf_counter``, median
of 15 repeats, 3 for n > 100, after two warm-up calls):

* ``refit``: ``J`` at ``n`` training points under ``torch.no_grad()``;
* ``acquisition``: ``J`` at ``n`` query points that require grad, then
  ``∂(Σ J² + Σ f)/∂X`` (a stand-in for a posterior variance's input gradient).

Both routes return the same numbers (checked here: the largest difference is printed).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import output  # noqa: E402
from lapbo.networks import default_network  # noqa: E402
from laplace.curvature import jacobians_by_autodiff, linear_layer_jacobians  # noqa: E402

ROUTES: dict[str, Callable] = {"vmap_jacrev": jacobians_by_autodiff,
                               "linear_layers": linear_layer_jacobians}


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(d: int, K: int, n: int, repeats: int) -> dict[str, Any]:
    """Times of both routes for one ``(d, K, n)`` setting, and their largest difference."""
    torch.manual_seed(0)
    net = default_network(d, K, activation=("gauss", "gauss"), init_scale=1.25,
                          trend="quadratic", random_features=100,
                          random_feature_lengthscale=(0.2, 1.0))
    X = torch.rand(n, d, dtype=torch.float64)
    row: dict[str, Any] = {"d": d, "K": K, "n": n,
                           "P": sum(p.numel() for p in net.parameters())}
    for name, route in ROUTES.items():
        def refit(route: Callable = route) -> Any:
            with torch.no_grad():
                return route(net, X)

        def acquisition(route: Callable = route) -> Any:
            Xq = X.clone().requires_grad_()
            J, f = route(net, Xq)
            return torch.autograd.grad(J.square().sum() + f.sum(), Xq)[0]

        row[f"{name}_refit_ms"] = median_ms(refit, repeats)
        row[f"{name}_acquisition_ms"] = median_ms(acquisition, repeats)
    with torch.no_grad():
        diff = (jacobians_by_autodiff(net, X)[0] - linear_layer_jacobians(net, X)[0]).abs()
    row["max_abs_difference"] = float(diff.max())
    for kind in ("refit", "acquisition"):
        row[f"{kind}_speedup"] = row[f"vmap_jacrev_{kind}_ms"] / row[f"linear_layers_{kind}_ms"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| d | K | n | P | refit: vmap ms | refit: linear layers ms | speed-up "
             "| acquisition: vmap ms | acquisition: linear layers ms | speed-up | max diff |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['K']} | {r['n']} | {r['P']} | {r['vmap_jacrev_refit_ms']:.2f} "
            f"| {r['linear_layers_refit_ms']:.2f} | {r['refit_speedup']:.1f}× "
            f"| {r['vmap_jacrev_acquisition_ms']:.2f} | {r['linear_layers_acquisition_ms']:.2f} "
            f"| {r['acquisition_speedup']:.1f}× | {r['max_abs_difference']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    args = output.parse_arguments(__doc__, "two small settings, 3 repeats")
    settings = [(2, 1, 20), (6, 1, 40)] if args.quick else [
        (2, 1, 20), (6, 1, 40), (20, 1, 60), (6, 2, 40), (20, 1, 1000), (20, 1, 2000)]
    rows = [measure(d, K, n, 3 if args.quick or n > 100 else 15) for d, K, n in settings]
    meta = output.machine(args.quick)
    header = ("# Network Jacobians: `vmap(jacrev)` against `linear_layer_jacobians`\n\n"
              "`benchmarks/jacobians.py`: `LaplaceBNN`'s default network at random weights, "
              f"float64, {meta['threads']} thread, torch {meta['torch']}; median wall time "
              "of one call (refit: no graph; acquisition: graph to the inputs and one input "
              "gradient). Speed-up = vmap time / linear-layer time.\n\n")
    output.write_result(args.out, "jacobians", {"meta": meta, "rows": rows}, header,
                        table(rows))


if __name__ == "__main__":
    main()

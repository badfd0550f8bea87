"""Bayesian optimisation in BoTorch with a Laplace BNN surrogate, written out step by step.

This script maximises a BoTorch test function (Branin by default, or Hartmann-6) with
``lapbo.LaplaceBNN``: a neural network whose linearized Laplace posterior is a
Gaussian process, so every BoTorch acquisition function works on it. It spells out
what ``lapbo.loop.run_bo`` does, one step at a time:

1. **Initial design.** ``draw_sobol_samples`` gives ``2d + 2`` quasi-random points in
   the box; the function is evaluated there (negated: BoTorch maximises).
2. **Surrogate.** Each round, ``LaplaceBNN(X, Y, input_transform=Normalize(...),
   warm_start=previous).fit()`` trains the MAP network (inputs scaled to the unit cube,
   outputs standardized), fits the Laplace posterior and refits the prior precision
   ``δ`` and the noise ``σ`` by the marginal likelihood. From the second round on,
   ``warm_start`` starts from the previous round's weights and hyperparameters, and a
   shorter training (``n_epochs_warm_start``) suffices.
3. **Acquisition.** ``qLogExpectedImprovement`` on the model's joint posterior,
   maximised by ``optimize_acqf`` (gradients flow through the network Jacobians to the
   inputs). The candidate is evaluated and appended to the data.
4. **Thompson sampling.** After the qLogEI rounds, one extra step draws posterior sample
   paths ``f_s(x) = f(x; θ*) + J(x)(θ_s − θ*)`` with ``lapbo.sampling.draw_pathwise_samples``;
   each path is a deterministic, differentiable function of ``x``, so the first path is
   maximised with ``optimize_acqf`` like an acquisition function. The model's
   posterior mean and standard deviation at the proposed point are printed next to the
   sampled value there.
5. **Plot.** The best value found against the number of evaluations (and the simple
   regret on a log scale) is saved as ``convergence.png`` in ``--out``.

Run ``.venv/bin/python tutorials/botorch_laplace_bnn.py --iterations 15``; ``--help``
lists the options. The defaults take well under a minute on a laptop CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction, qLogExpectedImprovement
from botorch.models.transforms import Normalize
from botorch.optim import optimize_acqf
from botorch.test_functions import Branin, Hartmann
from botorch.utils.sampling import draw_sobol_samples
from torch import Tensor

from lapbo import LaplaceBNN
from lapbo.sampling import PathwiseSamples, draw_pathwise_samples

PROBLEMS = {"branin": lambda: Branin(negate=True), "hartmann": lambda: Hartmann(dim=6, negate=True)}


class SamplePathAcquisition(AcquisitionFunction):
    """One Thompson sample path as an acquisition function (``q = 1``).

    ``optimize_acqf`` calls ``forward`` with ``X`` of shape ``(b, 1, d)`` and expects
    ``(b,)`` values; the path ``index`` of ``paths`` gives them.
    """

    def __init__(self, model: LaplaceBNN, paths: PathwiseSamples, index: int = 0) -> None:
        super().__init__(model)
        self.paths, self.index = paths, index

    def forward(self, X: Tensor) -> Tensor:
        return self.paths(X)[self.index].squeeze(-1).squeeze(-1)  # (S, b, 1, 1) -> (b,)


def fit_model(X: Tensor, Y: Tensor, bounds: Tensor, previous: LaplaceBNN | None,
              width: int, epochs: int, seed: int) -> LaplaceBNN:
    """Step 2: a LaplaceBNN on all data so far, warm-started from the previous round."""
    model = LaplaceBNN(
        X, Y, input_transform=Normalize(d=X.shape[-1], bounds=bounds), warm_start=previous,
        width=width, n_epochs=epochs, n_epochs_warm_start=max(epochs // 3, 1), seed=seed,
    )
    return model.fit()


def posterior_mean_std(model: LaplaceBNN, x: Tensor) -> tuple[float, float]:
    """Posterior mean and standard deviation of ``f`` at one point ``x`` ``(1, d)``."""
    with torch.no_grad():
        post = model.posterior(x)
    return float(post.mean.squeeze()), float(post.variance.sqrt().squeeze())


def run(problem: str = "branin", iterations: int = 15, seed: int = 0, width: int = 50,
        epochs: int = 300, num_restarts: int = 4, raw_samples: int = 256,
        n_paths: int = 16, out: str | Path = "outputs/botorch_tutorial") -> dict[str, Any]:
    """Run the loop and the Thompson step; returns the history and the plot path."""
    torch.manual_seed(seed)
    f = PROBLEMS[problem]().to(torch.float64)
    bounds, d = f.bounds, f.dim
    optimum = float(f.optimal_value)  # of the negated function (BoTorch maximises)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Initial design: 2d + 2 Sobol points.
    n_init = 2 * d + 2
    X = draw_sobol_samples(bounds, n=n_init, q=1, seed=seed).squeeze(1)
    Y = f(X).unsqueeze(-1)
    sources = ["sobol"] * n_init
    print(f"{problem} ({d}-D), {n_init} Sobol points: best {Y.max().item():.4f} "
          f"(optimum {optimum:.4f})")

    # 2.-3. Fit, maximise qLogEI, evaluate; repeat.
    model: LaplaceBNN | None = None
    rounds = []
    for i in range(iterations):
        model = fit_model(X, Y, bounds, model, width, epochs, seed + i)
        acqf = qLogExpectedImprovement(model, best_f=Y.max())
        candidate, acq_value = optimize_acqf(
            acqf, bounds=bounds, q=1, num_restarts=num_restarts, raw_samples=raw_samples,
        )
        mean, std = posterior_mean_std(model, candidate)
        y_new = f(candidate).unsqueeze(-1)
        X, Y = torch.cat([X, candidate]), torch.cat([Y, y_new])
        sources.append("qLogEI")
        rounds.append({
            "round": i + 1, "sigma_noise": float(model.sigma_noise),
            "prior_precision": float(model.prior_precision), "log_ei": float(acq_value),
            "mean": mean, "std": std, "y": float(y_new), "best": float(Y.max()),
        })
        print(f"round {i + 1:2d}: σ={model.sigma_noise.item():.3g} "
              f"δ={model.prior_precision.item():.3g} logEI={acq_value.item():7.3f} "
              f"μ±σ={mean:8.3f}±{std:.3f}  y={y_new.item():8.3f}  best={Y.max().item():.4f}")

    # 4. One Thompson-sampling step on a model fitted to all data.
    model = fit_model(X, Y, bounds, model, width, epochs, seed + iterations)
    generator = torch.Generator().manual_seed(seed)
    paths = draw_pathwise_samples(model, n_paths, generator=generator)
    ts_candidate, ts_value = optimize_acqf(
        SamplePathAcquisition(model, paths), bounds=bounds, q=1,
        num_restarts=num_restarts, raw_samples=raw_samples,
    )
    ts_mean, ts_std = posterior_mean_std(model, ts_candidate)
    with torch.no_grad():
        spread = paths(ts_candidate).squeeze()  # every path at the proposed point
    ts_y = f(ts_candidate).unsqueeze(-1)
    X, Y = torch.cat([X, ts_candidate]), torch.cat([Y, ts_y])
    sources.append("thompson")
    print(f"Thompson step ({n_paths} paths): x={[round(v, 4) for v in ts_candidate[0].tolist()]}")
    print(f"  sample path 0 there: {ts_value.item():.4f}; all paths: "
          f"{spread.mean().item():.4f} ± {spread.std().item():.4f}")
    print(f"  posterior mean ± std there: {ts_mean:.4f} ± {ts_std:.4f}; "
          f"observed {ts_y.item():.4f}")

    # 5. Convergence plot.
    best = torch.cummax(Y.squeeze(-1), dim=0).values
    regret = (optimum - best).clamp_min(1e-12)
    plot = out / "convergence.png"
    _plot(Y, best, regret, sources, optimum, problem, plot)
    print(f"best value {best[-1].item():.4f} after {len(Y)} evaluations "
          f"(regret {regret[-1].item():.3g}); plot: {plot}")
    return {
        "problem": problem, "X": X, "Y": Y, "sources": sources, "best_value": float(best[-1]),
        "optimum": optimum, "regret": regret.tolist(), "rounds": rounds,
        "thompson": {"candidate": ts_candidate, "path_value": float(ts_value),
                     "mean": ts_mean, "std": ts_std, "observed": float(ts_y)},
        "plot": plot,
    }


def _plot(Y: Tensor, best: Tensor, regret: Tensor, sources: list[str], optimum: float,
          problem: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = torch.arange(1, len(best) + 1)
    y = Y.squeeze(-1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, best, "-", color="k", lw=1.5, drawstyle="steps-post", label="best so far")
    colors = {"sobol": "C7", "qLogEI": "C0", "thompson": "C3"}
    for source, color in colors.items():
        idx = [i for i, s in enumerate(sources) if s == source]
        if idx:
            ax1.plot(n[idx], y[idx], "o", color=color, ms=4, label=f"{source} evaluations")
    ax1.axhline(optimum, color="k", ls="--", lw=1, label="optimum")
    low, high = float(best[0]), optimum
    pad = 0.1 * (high - low + 1e-9)
    ax1.set_ylim(low - pad, high + pad)  # very poor evaluations fall below the axis
    ax1.set(xlabel="evaluation", ylabel="value (maximised)", title=problem)
    ax1.legend(fontsize=8, loc="lower right")
    ax2.semilogy(n, regret, "-o", ms=3)
    ax2.set(xlabel="evaluation", ylabel="simple regret", title="regret of the best so far")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="branin")
    parser.add_argument("--iterations", type=int, default=15, help="qLogEI rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=50, help="hidden units per layer")
    parser.add_argument("--epochs", type=int, default=300,
                        help="MAP training iterations of the first fit (a third when warm)")
    parser.add_argument("--restarts", type=int, default=4, help="optimize_acqf restarts")
    parser.add_argument("--raw-samples", type=int, default=256,
                        help="optimize_acqf raw samples")
    parser.add_argument("--paths", type=int, default=16, help="Thompson sample paths")
    parser.add_argument("--out", default="outputs/botorch_tutorial", help="output folder")
    args = parser.parse_args(argv)
    return run(problem=args.problem, iterations=args.iterations, seed=args.seed,
               width=args.width, epochs=args.epochs, num_restarts=args.restarts,
               raw_samples=args.raw_samples, n_paths=args.paths, out=args.out)


if __name__ == "__main__":
    main()

"""Laplace regression: predictive bands of a small MLP on 1-D toy data.

The classic first use of the ``laplace`` package (as in laplace-torch's README):

1. **Data.** ``y = sin(x) + ε``, ``ε ~ N(0, 0.3²)``, with ``x`` uniform on ``[0, 8]``
   except a gap ``(3, 5)`` without data; predictions are made on ``[-4, 12]``.
2. **MAP.** A tanh MLP ``1 → width → width → 1`` is trained with Adam on the squared
   error (the MAP under a Gaussian likelihood; the prior enters through the Laplace
   approximation afterwards).
3. **Laplace.** ``Laplace(model, "regression", "all", "full")`` with ``la.fit(loader)``:
   a Gaussian ``N(θ*, Σ)`` over all weights with the full generalized Gauss-Newton
   curvature, ``Σ⁻¹ = H/σ² + δI``.
4. **Hyperparameters.** ``la.optimize_prior_precision(method="marglik",
   prior_structure="scalar")`` tunes one prior precision ``δ`` by the marginal
   likelihood (noise fixed); then ``δ`` and the noise
   ``σ`` are refit together with Adam steps on
   ``-la.log_marginal_likelihood(prior_precision, sigma_noise)``, which is
   differentiable in both (on log scale, so they stay positive).
5. **Predictive.** ``f_mu, f_var = la(x)`` is the linearized (GLM) predictive of the
   latent function; adding ``σ²`` gives the predictive of observations. The plot shows
   the mean ± 2 standard deviations with observation noise (and the epistemic part
   alone, which widens in the gap and away from the data), saved with the numbers
   (``regression.png``, ``regression.json``) in ``--out``.

Run ``.venv/bin/python tutorials/laplace_regression.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

NOISE_STD = 0.3


def toy_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points ``x ∈ [0, 3] ∪ [5, 8]``, ``y = sin(x) + N(0, 0.3²)``; shapes ``(n, 1)``."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 1, generator=g, dtype=torch.float64) * 6
    x = torch.where(u < 3, u, u + 2)  # leave out (3, 5)
    y = torch.sin(x) + NOISE_STD * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, y


def make_mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
    ).double()


def train_map(model: nn.Module, loader: DataLoader, epochs: int, lr: float = 1e-2) -> float:
    """Adam on the mean squared error; returns the final training MSE."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
    X, Y = loader.dataset.tensors
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(X), Y))


def tune_hyperparameters(la: Any, steps: int, lr: float = 0.1) -> list[float]:
    """Adam on ``(log δ, log σ)`` maximising the log marginal likelihood; returns its trace."""
    log_prior = la.prior_precision.detach().log().clone().requires_grad_(True)
    log_sigma = la.sigma_noise.detach().log().reshape(1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([log_prior, log_sigma], lr=lr)
    trace = []
    for _ in range(steps):
        optimizer.zero_grad()
        neg_marglik = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
        neg_marglik.backward()
        optimizer.step()
        trace.append(-neg_marglik.item())
    # Store the final values on the LA (log_marginal_likelihood sets what it is given).
    la.prior_precision = log_prior.detach().exp()
    la.sigma_noise = log_sigma.detach().exp().squeeze()
    return trace


def run(n: int = 150, width: int = 50, epochs: int = 1000, marglik_steps: int = 100,
        seed: int = 0, out: str | Path = "outputs/laplace_regression") -> dict[str, Any]:
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Data.
    X, y = toy_data(n, seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=min(n, 256), shuffle=True)

    # 2. MAP network.
    model = make_mlp(width)
    mse = train_map(model, loader, epochs)
    print(f"MAP: {sum(p.numel() for p in model.parameters())} weights, train MSE {mse:.4f} "
          f"(noise variance {NOISE_STD ** 2:.4f})")

    # 3. Full-GGN Laplace over all weights.
    la = Laplace(model, "regression", subset_of_weights="all", hessian_structure="full")
    la.fit(loader)
    lml_fit = la.log_marginal_likelihood().item()

    # 4a. Prior precision by the marginal likelihood (σ fixed at its initial 1.0).
    # A scalar δ keeps each step cheap: the full LA eigendecomposes H once and reuses it,
    # in 4b as well (the default prior_structure, "diag", refactorises Σ⁻¹ every step).
    la.optimize_prior_precision(method="marglik", n_steps=marglik_steps,
                                prior_structure="scalar")
    lml_prior = la.log_marginal_likelihood().item()
    prior_only = la.prior_precision.item()
    # 4b. Prior precision and noise together, by gradient steps on the marginal likelihood.
    trace = tune_hyperparameters(la, marglik_steps)
    sigma, prior = la.sigma_noise.item(), la.prior_precision.item()
    lml = la.log_marginal_likelihood().item()
    print(f"log marginal likelihood: {lml_fit:.2f} (δ=1, σ=1) -> {lml_prior:.2f} "
          f"(δ={prior_only:.3g}) -> {lml:.2f} (δ={prior:.3g}, σ={sigma:.3f}; "
          f"true σ {NOISE_STD})")

    # 5. Predictive: latent variance + observation noise.
    x_test = torch.linspace(-4, 12, 400, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        f_mu, f_var = la(x_test)
    f_mu, f_var = f_mu.squeeze(-1), f_var.reshape(-1)
    epistemic_std = f_var.sqrt()
    pred_std = (f_var + sigma**2).sqrt()
    xt = x_test.squeeze(-1)
    near = ((xt >= 0) & (xt <= 3)) | ((xt >= 5) & (xt <= 8))
    gap, outside = (xt > 3) & (xt < 5), (xt < 0) | (xt > 8)
    X_val, y_val = toy_data(1000, seed + 1)
    with torch.no_grad():
        v_mu, v_var = la(X_val)
    v_std = (v_var.reshape(-1) + sigma**2).sqrt()
    z = (y_val.squeeze(-1) - v_mu.squeeze(-1)) / v_std
    coverage = float((z.abs() <= 2).double().mean())
    test_nll = float((0.5 * z**2 + v_std.log() + 0.5 * math.log(2 * math.pi)).mean())
    numbers = {
        "n_params": la.n_params, "train_mse": mse, "sigma_noise": sigma,
        "prior_precision": prior, "prior_precision_sigma_fixed": prior_only,
        "log_marglik": {"fit": lml_fit, "prior_tuned": lml_prior, "both_tuned": lml},
        "marglik_trace": trace,
        "epistemic_std": {"data": float(epistemic_std[near].mean()),
                          "gap": float(epistemic_std[gap].mean()),
                          "outside": float(epistemic_std[outside].mean())},
        "held_out": {"coverage_2std": coverage, "nll": test_nll},
    }
    print(f"mean epistemic std: {numbers['epistemic_std']['data']:.3f} near data, "
          f"{numbers['epistemic_std']['gap']:.3f} in the gap, "
          f"{numbers['epistemic_std']['outside']:.3f} outside [0, 8]")
    print(f"held-out data in [0, 3] ∪ [5, 8]: {100 * coverage:.1f}% within ±2 std, "
          f"NLL {test_nll:.3f}")

    plot = out / "regression.png"
    _plot(X, y, x_test, f_mu, pred_std, epistemic_std, plot)
    (out / "regression.json").write_text(json.dumps(numbers, indent=2))
    print(f"plot: {plot}")
    return {**numbers, "x_test": x_test, "mean": f_mu, "pred_std": pred_std,
            "epistemic": epistemic_std, "plot": plot, "json": out / "regression.json"}


def _plot(X: Tensor, y: Tensor, x: Tensor, mu: Tensor, std: Tensor, epi: Tensor,
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x.squeeze(-1)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(x, mu - 2 * std, mu + 2 * std, color="C0", alpha=0.2,
                    label="± 2 std (with observation noise)")
    ax.fill_between(x, mu - 2 * epi, mu + 2 * epi, color="C0", alpha=0.35,
                    label="± 2 std (epistemic)")
    ax.plot(x, mu, color="C0", label="predictive mean")
    ax.plot(x, torch.sin(x), "k--", lw=1, label="sin(x)")
    ax.plot(X.squeeze(-1), y.squeeze(-1), ".", color="C1", ms=4, label="training data")
    ax.set_ylim(-4, 4)
    ax.set(xlabel="x", ylabel="y", title="Full Laplace, marginal-likelihood δ and σ")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="training points")
    parser.add_argument("--width", type=int, default=50, help="hidden units per layer")
    parser.add_argument("--epochs", type=int, default=1000, help="MAP training epochs")
    parser.add_argument("--marglik-steps", type=int, default=100,
                        help="Adam steps of each hyperparameter optimisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/laplace_regression", help="output folder")
    args = parser.parse_args(argv)
    return run(n=args.n, width=args.width, epochs=args.epochs,
               marglik_steps=args.marglik_steps, seed=args.seed, out=args.out)


if __name__ == "__main__":
    main()

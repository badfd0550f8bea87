"""Subnetwork Laplace: a full-covariance posterior over a few chosen weights.

Instead of a crude (diagonal, last-layer) approximation over many weights, subnetwork
inference (Daxberger et al. 2021) keeps a *full* covariance over a small subset of the
weights and fixes all others at their MAP values.

1. **Data.** scikit-learn's two moons (``make_moons``, generated, no download).
2. **MAP.** A ReLU MLP ``2 → width → width → 2`` trained with Adam (small weight decay).
3. **Subnetwork.** ``LargestMagnitudeSubnetMask(model, n_params_subnet=S).select()``
   returns the positions of the ``S`` largest-magnitude weights in
   ``parameters_to_vector(model.parameters())``. (Other masks: ``RandomSubnetMask``,
   ``LargestVarianceDiagLaplaceSubnetMask``, ``ModuleNameSubnetMask``, ...)
4. **Laplace.** ``Laplace(model, "classification", subset_of_weights="subnetwork",
   hessian_structure="full", subnetwork_indices=indices)``; ``la.fit(loader)`` computes the
   GGN only for the ``S`` chosen weights (an ``S × S`` posterior precision), then
   ``la.optimize_prior_precision(method="marglik")``.
5. **Predictive.** The probit GLM predictive on a grid around the data: far from the
   training data the MAP stays (over)confident while the subnetwork Laplace predictive
   reverts towards uniform. ``subnetwork.png`` (confidence maps) and ``subnetwork.json``
   are written to ``--out``.

Run ``.venv/bin/python tutorials/laplace_subnetwork.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import make_moons
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils import LargestMagnitudeSubnetMask


def moons(n: int, seed: int) -> tuple[Tensor, Tensor]:
    X, y = make_moons(n_samples=n, noise=0.15, random_state=seed)
    return torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.long)


def make_mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
    ).double()


def train_map(model: nn.Module, loader: DataLoader, epochs: int, lr: float = 1e-2) -> float:
    """Adam with a small weight decay; returns the training accuracy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    X, y = loader.dataset.tensors
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).double().mean())


def run(n: int = 200, width: int = 50, n_subnet: int = 128, epochs: int = 300,
        grid_size: int = 81, seed: int = 0,
        out: str | Path = "outputs/laplace_subnetwork") -> dict[str, Any]:
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # 1.-2. Data and MAP network.
    X, y = moons(n, seed)
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
    model = make_mlp(width)
    train_acc = train_map(model, loader, epochs)
    model.eval()
    n_total = sum(p.numel() for p in model.parameters())

    # 3. The n_subnet weights of largest magnitude.
    mask = LargestMagnitudeSubnetMask(model, n_params_subnet=n_subnet)
    indices = mask.select()

    # 4. Full-covariance Laplace over just those weights.
    la = Laplace(model, "classification", subset_of_weights="subnetwork",
                 hessian_structure="full", subnetwork_indices=indices)
    la.fit(loader)
    la.optimize_prior_precision(method="marglik")
    precision = la.posterior_precision
    print(f"MAP: {n_total} weights, training accuracy {train_acc:.3f}")
    print(f"subnetwork: {la.n_params_subnet} of {la.n_params} weights "
          f"(|θ| ≥ {mask.parameter_vector.abs()[indices].min().item():.3f}); posterior "
          f"precision {tuple(precision.shape)}, marginal variances "
          f"{tuple(la.posterior_variance.shape)}")
    prior = la.prior_precision
    print(f"prior precision ({prior.numel()} values): "
          f"{prior.min().item():.3g} … {prior.max().item():.3g}")

    # 5. Predictive on a grid: confidence near and far from the data.
    gx, gy = torch.meshgrid(torch.linspace(-3.5, 4.5, grid_size, dtype=torch.float64),
                            torch.linspace(-3.75, 4.25, grid_size, dtype=torch.float64),
                            indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    with torch.no_grad():
        map_conf = torch.softmax(model(grid), -1).max(-1).values
        # In chunks: the GLM predictive holds one Jacobian (2 × touched weights) per point.
        la_conf = torch.cat([la(chunk, pred_type="glm", link_approx="probit").max(-1).values
                             for chunk in grid.split(2048)])
        la_train = la(X, pred_type="glm", link_approx="probit")
    dist = torch.cdist(grid, X).min(-1).values
    far = dist > 1.5
    numbers = {
        "n_params": la.n_params, "n_params_subnet": la.n_params_subnet,
        "subnetwork_indices": indices.tolist(), "train_accuracy_map": train_acc,
        "train_accuracy_laplace": float((la_train.argmax(-1) == y).double().mean()),
        "prior_precision": prior.tolist(),
        "mean_confidence_far": {"MAP": float(map_conf[far].mean()),
                                "Laplace": float(la_conf[far].mean())},
        "mean_confidence_near": {"MAP": float(map_conf[dist < 0.3].mean()),
                                 "Laplace": float(la_conf[dist < 0.3].mean())},
    }
    print(f"mean confidence near the data: MAP {numbers['mean_confidence_near']['MAP']:.3f}, "
          f"subnetwork LA {numbers['mean_confidence_near']['Laplace']:.3f}; "
          f"far from it (> 1.5): MAP {numbers['mean_confidence_far']['MAP']:.3f}, "
          f"subnetwork LA {numbers['mean_confidence_far']['Laplace']:.3f}")

    plot = out / "subnetwork.png"
    _plot(X, y, gx, gy, map_conf.reshape(gx.shape), la_conf.reshape(gx.shape), la, plot)
    (out / "subnetwork.json").write_text(json.dumps(numbers, indent=2))
    print(f"plot: {plot}")
    return {**numbers, "la": la, "indices": indices, "posterior_precision": precision,
            "plot": plot, "json": out / "subnetwork.json"}


def _plot(X: Tensor, y: Tensor, gx: Tensor, gy: Tensor, map_conf: Tensor, la_conf: Tensor,
          la: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    titles = ["MAP", f"subnetwork Laplace ({la.n_params_subnet} of {la.n_params} weights)"]
    for ax, conf, title in zip(axes, (map_conf, la_conf), titles):
        im = ax.contourf(gx, gy, conf, levels=torch.linspace(0.5, 1.0, 11).tolist(),
                         cmap="viridis")
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", s=8, edgecolors="k",
                   linewidths=0.3)
        ax.set(title=title, xlabel="x₁")
    axes[0].set_ylabel("x₂")
    fig.colorbar(im, ax=axes, label="confidence (max class probability)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="training points")
    parser.add_argument("--width", type=int, default=50, help="hidden units per layer")
    parser.add_argument("--subnet", type=int, default=128,
                        help="number of weights in the subnetwork")
    parser.add_argument("--epochs", type=int, default=300, help="MAP training epochs")
    parser.add_argument("--grid", type=int, default=81, help="plot grid points per axis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/laplace_subnetwork", help="output folder")
    args = parser.parse_args(argv)
    return run(n=args.n, width=args.width, n_subnet=args.subnet, epochs=args.epochs,
               grid_size=args.grid, seed=args.seed, out=args.out)


if __name__ == "__main__":
    main()

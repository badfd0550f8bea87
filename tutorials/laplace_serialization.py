"""Saving and loading a fitted Laplace approximation: ``state_dict`` and pickle.

Two ways, as in laplace-torch:

* **``state_dict``** (long-term storage, sharing): save the network's and the Laplace
  object's state dicts separately; later rebuild the network, load its weights, create
  a fresh ``Laplace`` with the same options and call ``la.load_state_dict(...)``. The
  Laplace state holds only tensors, numbers and strings, so
  ``torch.load(path, weights_only=True)`` (the safe loader) reads it.
* **pickle** (quick save/load cycles): ``pickle.dump(la, f)`` stores the object and its
  model in one file; loading needs the model's class importable.

For four variants — regression with a full Hessian over all weights, classification
with a diagonal Hessian over all weights, a last-layer KFAC Laplace and a full
subnetwork Laplace — the script:

1. trains a small MLP (two moons for classification, a sine for regression), fits the
   Laplace approximation and tunes its prior precision by the marginal likelihood;
2. saves ``model.state_dict()`` and ``la.state_dict()`` with ``torch.save``, loads them
   with ``torch.load(..., weights_only=True)`` into a fresh network and a fresh
   ``Laplace``, and pickles/unpickles the fitted object;
3. checks that all three predict the same on new inputs (maximum absolute difference),
   and that the restored marginal likelihood matches.

The files and ``serialization.json`` (sizes and differences) are written to ``--out``.

Run ``.venv/bin/python tutorials/laplace_serialization.py``; ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import make_moons
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace
from laplace.utils import LargestMagnitudeSubnetMask

# name: (likelihood, subset_of_weights, hessian_structure)
VARIANTS = {
    "regression_full": ("regression", "all", "full"),
    "classification_diag": ("classification", "all", "diag"),
    "last_layer_kron": ("classification", "last_layer", "kron"),
    "subnetwork_full": ("classification", "subnetwork", "full"),
}


def make_mlp(d_in: int, d_out: int, width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, d_out),
    ).double()


def data(likelihood: str, n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Training inputs and targets, and new inputs to predict at."""
    g = torch.Generator().manual_seed(seed)
    if likelihood == "regression":
        X = torch.rand(n, 1, generator=g, dtype=torch.float64) * 8
        y = torch.sin(X) + 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
        return X, y, torch.linspace(-2, 10, 50, dtype=torch.float64).unsqueeze(-1)
    X, y = make_moons(n_samples=n, noise=0.15, random_state=seed)
    X_new = torch.rand(50, 2, generator=g, dtype=torch.float64) * 6 - 2.5
    return torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.long), X_new


def train_map(model: nn.Module, X: Tensor, y: Tensor, likelihood: str, epochs: int) -> None:
    loss_fn = nn.functional.mse_loss if likelihood == "regression" else nn.functional.cross_entropy
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss_fn(model(X), y).backward()
        optimizer.step()
    model.eval()


def predict(la: Any, X: Tensor) -> Tensor:
    """Predictive as one tensor: ``[mean, variance]`` (regression) or probabilities."""
    with torch.no_grad():
        out = la(X, pred_type="glm", link_approx="probit")
    if isinstance(out, tuple):
        return torch.cat([out[0].reshape(-1), out[1].reshape(-1)])
    return out


def roundtrip(name: str, width: int, n: int, epochs: int, seed: int, out: Path
              ) -> dict[str, Any]:
    likelihood, subset, structure = VARIANTS[name]
    torch.manual_seed(seed)

    # 1. Train, fit, tune.
    X, y, X_new = data(likelihood, n, seed)
    d_in, d_out = X.shape[1], (1 if likelihood == "regression" else 2)
    model = make_mlp(d_in, d_out, width)
    train_map(model, X, y, likelihood, epochs)
    options: dict[str, Any] = {}
    if subset == "subnetwork":
        options["subnetwork_indices"] = LargestMagnitudeSubnetMask(
            model, n_params_subnet=64).select()
    la = Laplace(model, likelihood, subset_of_weights=subset, hessian_structure=structure,
                 **options)
    la.fit(DataLoader(TensorDataset(X, y), batch_size=64))
    la.optimize_prior_precision(method="marglik", prior_structure="scalar")
    reference = predict(la, X_new)
    lml = la.log_marginal_likelihood().item()

    # 2a. state_dicts: save both, load into a fresh network and a fresh Laplace.
    model_path, la_path = out / f"{name}_model.pt", out / f"{name}_la.pt"
    torch.save(model.state_dict(), model_path)
    torch.save(la.state_dict(), la_path)
    model2 = make_mlp(d_in, d_out, width)
    model2.load_state_dict(torch.load(model_path, weights_only=True))
    model2.eval()
    la2 = Laplace(model2, likelihood, subset_of_weights=subset, hessian_structure=structure,
                  **options)
    la2.load_state_dict(torch.load(la_path, weights_only=True))

    # 2b. pickle the fitted object (model included).
    pickle_path = out / f"{name}.pkl"
    with open(pickle_path, "wb") as f:
        pickle.dump(la, f)
    with open(pickle_path, "rb") as f:
        la3 = pickle.load(f)

    # 3. Same predictions, same marginal likelihood.
    row = {
        "variant": f"{likelihood}, {subset}, {structure}", "n_params": la.n_params,
        "state_dict_bytes": la_path.stat().st_size, "pickle_bytes": pickle_path.stat().st_size,
        "max_diff_state_dict": float((predict(la2, X_new) - reference).abs().max()),
        "max_diff_pickle": float((predict(la3, X_new) - reference).abs().max()),
        "log_marglik": lml,
        "log_marglik_diff_state_dict": abs(la2.log_marginal_likelihood().item() - lml),
        "log_marglik_diff_pickle": abs(la3.log_marginal_likelihood().item() - lml),
        "prior_precision": la2.prior_precision.tolist(),
    }
    return row


def run(width: int = 20, n: int = 200, epochs: int = 300, seed: int = 0,
        variants: list[str] | None = None,
        out: str | Path = "outputs/laplace_serialization") -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {name: roundtrip(name, width, n, epochs, seed, out)
            for name in (variants or list(VARIANTS))}
    print(f"{'variant':22s} {'params':>6s} {'state KB':>8s} {'pickle KB':>9s} "
          f"{'Δ state_dict':>12s} {'Δ pickle':>9s} {'Δ log ML':>9s}")
    for name, r in rows.items():
        d_lml = max(r["log_marglik_diff_state_dict"], r["log_marglik_diff_pickle"])
        print(f"{name:22s} {r['n_params']:6d} {r['state_dict_bytes'] / 1024:8.1f} "
              f"{r['pickle_bytes'] / 1024:9.1f} {r['max_diff_state_dict']:12.2e} "
              f"{r['max_diff_pickle']:9.2e} {d_lml:9.2e}")
    (out / "serialization.json").write_text(json.dumps(rows, indent=2))
    print(f"files and serialization.json in {out}")
    return {"variants": rows, "json": out / "serialization.json"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=20, help="hidden units per layer")
    parser.add_argument("--n", type=int, default=200, help="training points")
    parser.add_argument("--epochs", type=int, default=300, help="MAP training iterations")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/laplace_serialization", help="output folder")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    return run(width=args.width, n=args.n, epochs=args.epochs, seed=args.seed,
               variants=variants, out=args.out)


if __name__ == "__main__":
    main()

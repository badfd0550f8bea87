"""One randomized ``marglik_training`` run through whichever ``laplace`` is importable (this
package's or laplace-torch 0.3's): ``marglik_training_fuzz.py`` runs it under both and
compares the trajectories and the result.

    python marglik_training_fuzz_probe.py configs.json results.pt

Each configuration (``marglik_training_fuzz.configurations``) names a likelihood, a
Hessian structure, a backend, the prior structure, epochs, hyperparameter steps, the
marginal-likelihood frequency and burn-in, the temperature, whether the noise is fixed and
the dtype; results are recorded as in ``laplace_torch_fuzz_probe`` (``("T", tensor)``,
``("E", exception type, message)``, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

D_IN, HIDDEN, N_DATA, BATCH = 3, 6, 24, 8


def build(cfg: dict[str, Any]) -> tuple[nn.Module, DataLoader]:
    """The network (``3 → 6 → k``) and a fixed-order training loader."""
    torch.manual_seed(cfg["seed"])
    dtype = torch.float64 if cfg["dtype"] == "f64" else torch.float32
    X = torch.randn(N_DATA, D_IN, dtype=dtype)
    if cfg["lik"] == "regression":
        k, y = 1, torch.sin(X.sum(1, keepdim=True))
    else:
        k, y = 3, (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, k)).to(dtype)
    return model, DataLoader(TensorDataset(X, y), batch_size=BATCH)


def run(cfg: dict[str, Any]) -> dict[str, tuple]:
    import laplace.curvature as curvature
    from laplace.marglik_training import marglik_training

    model, loader = build(cfg)
    try:
        la, model, margliks, losses = marglik_training(
            model, loader, likelihood=cfg["lik"], hessian_structure=cfg["hs"],
            backend=getattr(curvature, cfg["backend"]), n_epochs=cfg["n_epochs"],
            prior_structure=cfg["prior_structure"], n_hypersteps=cfg["n_hypersteps"],
            marglik_frequency=cfg["frequency"], n_epochs_burnin=cfg["burnin"],
            temperature=cfg["temperature"], fix_sigma_noise=cfg["fix_sigma_noise"],
            optimizer_kwargs={"lr": 1e-2})
    except Exception as e:  # noqa: BLE001 (the error is the result)
        return {"marglik_training": ("E", type(e).__name__, str(e)[:200])}
    as_tensor = lambda values: ("T", torch.tensor([float(v) for v in values],  # noqa: E731
                                                  dtype=torch.float64))
    return {
        "marglik_training": ("V", None),
        "losses": as_tensor(losses),
        "margliks": as_tensor(margliks),
        "prior_precision": ("T", torch.as_tensor(la.prior_precision).detach().double()
                            .flatten()),
        "sigma_noise": ("T", torch.as_tensor(la.sigma_noise).detach().double().reshape(1)),
        "log_marginal_likelihood": ("T", la.log_marginal_likelihood().detach().double()),
        "weights": ("T", torch.cat([p.detach().flatten() for p in model.parameters()])
                    .double()),
    }


if __name__ == "__main__":
    from laplace_torch_fuzz_probe import main  # beside this file (run from a temp folder)

    main(run)

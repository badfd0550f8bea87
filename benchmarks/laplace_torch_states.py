"""States across packages, for ``laplace_torch_diff.py``: a state saved by one ``laplace``
loaded by the other.

``python benchmarks/laplace_torch_states.py save DIR`` fits every weight subset (all, last
layer) × structure (full, Kronecker, diagonal) × likelihood on the probe's data and writes
``DIR/states.pt``: each LA's ``state_dict()`` (and this package's full LAs'
``state_dict(dense=True)`` too), its network's weights, evidence and predictive.
``... load DIR`` loads those states into fresh LAs of whichever ``laplace`` is importable
and prints, as one JSON line, each variant's evidence and largest predictive difference
from the saving package's, or ``"error: Type"``. Like the probe it imports nothing from
this repository.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace

VARIANTS = [(likelihood, subset, structure) for likelihood in ("regression", "classification")
            for subset in ("all", "last_layer") for structure in ("full", "kron", "diag")]


def _data(likelihood: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The probe's 24 inputs ``(24, 3)`` and their targets (one output or two classes)."""
    X = torch.randn(24, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = X.sin().sum(-1, keepdim=True) if likelihood == "regression" else (X[:, 0] > 0).long()
    return X, y


def _net(likelihood: str) -> nn.Module:
    """The 3-5-k tanh network: 26 weights for one output, fewer than 24 rows' curvature
    needs for a dense full GGN, so the full regression LA here keeps its rows."""
    torch.manual_seed(1)
    k = 1 if likelihood == "regression" else 2
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, k)).double()


def _predictive(la: Any, X: torch.Tensor) -> torch.Tensor:
    out = la(X[:3])
    return torch.cat([t.flatten() for t in out]) if isinstance(out, tuple) else out.flatten()


def save(folder: Path) -> None:
    saved = {}
    for likelihood, subset, structure in VARIANTS:
        X, y = _data(likelihood)
        net = _net(likelihood)
        la = Laplace(net, likelihood, subset_of_weights=subset, hessian_structure=structure)
        la.fit(DataLoader(TensorDataset(X, y), batch_size=8))
        la.prior_precision = 0.7
        common = {"variant": (likelihood, subset, structure), "net": net.state_dict(),
                  "lml": float(la.log_marginal_likelihood()), "predictive": _predictive(la, X)}
        key = "/".join((likelihood, subset, structure))
        saved[key] = {"state": la.state_dict(), **common}
        if structure == "full" and _takes_dense(la):  # this package: H (P, P) on request
            saved[key + " (dense=True)"] = {"state": la.state_dict(dense=True), **common}
    torch.save(saved, folder / "states.pt")


def _takes_dense(la: Any) -> bool:
    """Whether ``la.state_dict`` has this package's ``dense`` option (laplace-torch's has
    none)."""
    import inspect

    return "dense" in inspect.signature(la.state_dict).parameters or "kwargs" in (
        inspect.signature(la.state_dict).parameters)


def _load_one(entry: dict[str, Any]) -> dict[str, float]:
    likelihood, subset, structure = entry["variant"]
    X, _ = _data(likelihood)
    net = _net(likelihood)
    net.load_state_dict(entry["net"])
    la = Laplace(net, likelihood, subset_of_weights=subset, hessian_structure=structure)
    la.load_state_dict(entry["state"])
    difference = (_predictive(la, X) - entry["predictive"]).abs().max()
    return {"lml": float(la.log_marginal_likelihood()), "lml_saved": entry["lml"],
            "predictive_max_abs_diff": float(difference)}


def load(folder: Path) -> dict[str, Any]:
    saved = torch.load(folder / "states.pt", weights_only=False)
    out: dict[str, Any] = {}
    for key, entry in saved.items():
        try:
            out[key] = _load_one(entry)
        except Exception as e:  # noqa: BLE001 (the error's type is the observation)
            out[key] = f"error: {type(e).__name__}"
    return out


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    command, folder = sys.argv[1], Path(sys.argv[2])
    if command == "save":
        save(folder)
    else:
        print(json.dumps(load(folder)))

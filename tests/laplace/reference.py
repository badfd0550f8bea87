"""Access to the laplace-torch 0.3 reference fixtures copied into ``tests/fixtures``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "laplace_torch_0.3"
PROBLEMS = ("reg1", "reg2", "cls3", "cnn3")


@cache
def problem(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}_problem.json").read_text())


@cache
def results(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}_results.json").read_text())


@cache
def _arrays(name: str) -> Any:
    return np.load(FIXTURES / f"{name}_results.npz")


def data(name: str) -> dict[str, torch.Tensor]:
    arrays = np.load(FIXTURES / f"{name}_data.npz")
    return {k: torch.tensor(arrays[k]) for k in arrays.files}


def build_model(name: str) -> nn.Module:
    """The fixture's MAP network (float64, eval mode)."""
    layers = []
    for spec in problem(name)["architecture"]["layers"]:
        kind = spec["type"]
        if kind == "Linear":
            layers.append(nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"]))
        elif kind == "Conv2d":
            layers.append(nn.Conv2d(
                spec["in_channels"], spec["out_channels"], kernel_size=tuple(spec["kernel_size"]),
                stride=tuple(spec["stride"]), padding=tuple(spec["padding"]), bias=spec["bias"],
            ))
        elif kind in ("Tanh", "ReLU"):
            layers.append(getattr(nn, kind)())
        elif kind == "Flatten":
            layers.append(nn.Flatten(spec["start_dim"], spec["end_dim"]))
        else:
            raise ValueError(kind)
    model = nn.Sequential(*layers).double()
    sd = np.load(FIXTURES / f"{name}_state_dict.npz")
    model.load_state_dict({k: torch.tensor(sd[k]) for k in sd.files}, strict=True)
    return model.eval()


def loaders(name: str) -> tuple[DataLoader, DataLoader]:
    d = data(name)
    train = DataLoader(TensorDataset(d["X_train"], d["y_train"]), batch_size=32, shuffle=False)
    val = DataLoader(TensorDataset(d["X_test"], d["y_test"]), batch_size=32, shuffle=False)
    return train, val


def likelihood(name: str) -> str:
    return problem(name)["likelihood"]


def decode(name: str, value: Any) -> Any:
    """Resolve npz references and non-finite strings of a results field."""
    if isinstance(value, dict) and "npz_key" in value:
        return torch.tensor(_arrays(name)[value["npz_key"]])
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf").replace("NaN", "nan"))
    if isinstance(value, list):
        return torch.tensor(np.array(value, dtype=np.float64))
    return value


def combo(name: str, key: str) -> dict[str, Any]:
    record = results(name)["combos"][key]
    if "alias_of" in record:
        record = results(name)["combos"][record["alias_of"]]
    return record


def probe_vector(n: int) -> torch.Tensor:
    return torch.tensor(np.sin(1.0 + 0.6180339887498949 * np.arange(n)))


def close(actual: Any, expected: Any, rtol: float = 1e-6) -> None:
    """Relative closeness scaled by the largest reference magnitude (the README's rule)."""
    actual = torch.as_tensor(actual, dtype=torch.float64).detach()
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def check_glm_predictive(name: str, pred: dict[str, Any], la: Any) -> None:
    """A record's predictive: regression moments (also joint) or classification links."""
    X = data(name)["X_test"]
    if likelihood(name) == "regression":
        f_mu, f_var = la(X, pred_type="glm")
        close(f_mu, decode(name, pred["f_mu"]))
        close(f_var, decode(name, pred["f_var"]))
        jm, jc = la(X[:6], pred_type="glm", joint=True)
        close(jm, decode(name, pred["joint_f_mu"]))
        close(jc, decode(name, pred["joint_f_cov"]))
        return
    f_mu, f_var = la._glm_predictive_distribution(X)
    close(f_mu, decode(name, pred["f_mu"]))
    close(f_var, decode(name, pred["f_var"]))
    for link in ("probit", "bridge", "bridge_norm"):
        close(la(X, pred_type="glm", link_approx=link), decode(name, pred[f"probs_{link}"]))


def check_kron_factors(name: str, record: dict[str, Any], la: Any) -> None:
    """``kron(B, A)`` per parameter tensor (only the product is convention-free)."""
    for ours, theirs in zip(la.H_facs.kfacs, record["posterior"]["kron_factors"], strict=True):
        mats = [decode(name, t["matrix"]) if t["matrix"] is not None else None for t in theirs]
        actual = ours[0] if len(ours) == 1 else torch.kron(ours[0], ours[1])
        if any(m is None for m in mats):  # large factors: diag and Frobenius norm stored
            diag = decode(name, theirs[0]["diag"])
            for t in theirs[1:]:
                diag = torch.outer(diag, decode(name, t["diag"])).flatten()
            close(actual.diagonal(), diag)
            close(torch.linalg.matrix_norm(actual),
                  torch.tensor([t["frobenius_norm"] for t in theirs]).prod())
            continue
        close(actual, mats[0] if len(mats) == 1 else torch.kron(mats[0], mats[1]))

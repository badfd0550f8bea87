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

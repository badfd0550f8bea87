"""What the probes of ``laplace_torch_diff.py`` share: the JSON summary of a read, the
small network, a sequence model and the regression problem. Like the probe it imports
nothing from this repository (it runs under laplace-torch's interpreter too)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from laplace import Laplace


def _record(value: Any) -> Any:
    """A JSON-able summary: tensors as shape, dtype and their first six values."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return {"shape": list(value.shape), "dtype": str(value.dtype),
                "values": [float(v) for v in value.flatten()[:6]]}
    if isinstance(value, (tuple, list)):
        return [_record(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return type(value).__name__


def _read_into(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """``out[key]``: the summary of ``fn()``, or ``"error: Type"`` where it raises."""
    try:
        out[key] = _record(fn())
    except Exception as e:  # noqa: BLE001 (the error's type is the observation)
        out[key] = f"error: {type(e).__name__}"


def _net(k: int = 1, *middle: nn.Module) -> nn.Module:
    """The probe's 3-5-k tanh network (seed 1, float64), ``middle`` modules before its head."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), *middle, nn.Linear(5, k)).double()


class _Positions(nn.Module):
    """A sequence model: ``(n, 4, 3)`` inputs, the 3-5-1 head at every position (seed 1),
    its outputs read at the last position or averaged over them: ``(n, 1)``."""

    def __init__(self, pool: str) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body, self.head, self.pool = nn.Linear(3, 5).double(), nn.Linear(5, 1).double(), pool

    def forward(self, x: Any) -> Any:
        out = self.head(torch.tanh(self.body(x)))
        return out[:, -1] if self.pool == "last" else out.mean(1)


class Problem:
    """The regression data of the further variants and their small network."""

    def __init__(self, X: Any) -> None:
        self.X, self.y = X, X.sin().sum(-1, keepdim=True)

    def loader(self) -> Any:
        return DataLoader(TensorDataset(self.X, self.y), batch_size=8)

    def fitted(self, subset: str, structure: str, **kwargs: Any) -> Any:
        """A regression LA of the 3-5-1 tanh network (seed 1), fitted."""
        model = _net(1)
        la = Laplace(model, "regression", subset_of_weights=subset,
                     hessian_structure=structure, **kwargs)
        la.fit(self.loader())
        return la

    def reads(self, la: Any, name: str) -> dict[str, Any]:
        """Its evidence and predictives (``name`` prefixes the keys)."""
        return {f"{name} log_marginal_likelihood()": _record(la.log_marginal_likelihood()),
                f"{name} la(x)": _record(la(self.X[:3])),
                f"{name} la(x, joint=True)": _record(la(self.X[:3], joint=True))}



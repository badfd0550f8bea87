"""``FeatureExtractor``: a model wrapper that also returns last-layer features.

The wrapped model is used in place (no copy); a forward hook on the last layer reads
its input ``φ(x)``. ``FeatureReduction`` pools ``(batch, seq, features)`` features of
sequence models (e.g. Hugging Face language models) to ``(batch, features)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.utils.data import Inputs
from laplace.utils.enums import _StrEnum
from laplace.utils.errors import MissingKeyError


class FeatureReduction(_StrEnum):
    PICK_FIRST = "pick_first"
    PICK_LAST = "pick_last"
    AVERAGE = "average"


def reduce_features(phi: Tensor, reduction: FeatureReduction | str | None) -> Tensor:
    """Pool sequence features ``(batch, seq, D)`` to ``(batch, D)``; others unchanged."""
    if reduction is None or phi.ndim < 3:
        return phi
    reduction = FeatureReduction(reduction)
    if reduction == FeatureReduction.PICK_FIRST:
        return phi[:, 0]
    if reduction == FeatureReduction.PICK_LAST:
        return phi[:, -1]
    return phi.mean(dim=1)


class FeatureExtractor(nn.Module):
    """Wrap ``model`` to expose its last layer and features.

    Args:
        model: the network; not modified or copied.
        last_layer_name: name of the last layer in ``model.named_modules()``;
            found automatically (the last ``nn.Linear`` to run) when ``None``.
        enable_backprop: keep the graph of the features.
        feature_reduction: ``"pick_first"``, ``"pick_last"`` or ``"average"`` for
            sequence features; the output is then ``last_layer(reduced features)``.
    """

    def __init__(
        self,
        model: nn.Module,
        last_layer_name: str | None = None,
        enable_backprop: bool = False,
        feature_reduction: FeatureReduction | str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.enable_backprop = enable_backprop
        self.feature_reduction = feature_reduction
        self.last_layer_name = last_layer_name
        # Kept outside the module registry: it is already a submodule of ``model``.
        object.__setattr__(self, "_last_layer", None)
        if last_layer_name is not None:
            self.set_last_layer(last_layer_name)

    def set_last_layer(self, name: str) -> None:
        modules = dict(self.model.named_modules())
        if name not in modules:
            raise MissingKeyError(f"The model has no module named {name!r} (last_layer_name).")
        layer = modules[name]
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"The last layer {name!r} is a {type(layer).__name__}; last-layer Laplace "
                "needs an nn.Linear output layer."
            )
        self.last_layer_name = name
        object.__setattr__(self, "_last_layer", layer)

    @property
    def last_layer(self) -> nn.Linear | None:
        """The last ``nn.Linear`` (``None`` until found)."""
        return self._last_layer

    @property
    def last_layer_param_prefix(self) -> str:
        """Prefix of the last layer's parameter names within this wrapper."""
        return f"model.{self.last_layer_name}." if self.last_layer_name else "model."

    def find_last_layer(self, x: Inputs) -> None:
        """Run ``x`` once and take the last ``nn.Linear`` that executed."""
        order: list[str] = []
        handles = [
            m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
            for n, m in self.model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        if not order:
            raise ValueError("Last-layer Laplace needs a model with an nn.Linear output layer.")
        self.set_last_layer(order[-1])

    def forward(self, x: Inputs) -> Tensor:
        if self.feature_reduction is not None:
            return self.forward_with_features(x)[0]
        return self.model(x)

    def forward_with_features(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Outputs ``(n, K)`` and last-layer features ``(n, D)``."""
        if self.last_layer is None:
            self.find_last_layer(x)
        store: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            store["phi"] = inputs[0]

        handle = self.last_layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(self.enable_backprop or torch.is_grad_enabled()):
                out = self.model(x)
        finally:
            handle.remove()
        phi = store["phi"]
        if self.feature_reduction is not None and phi.ndim >= 3:
            phi = reduce_features(phi, self.feature_reduction)
            out = self.last_layer(phi)
        return out, phi

    def forward_features(self, x: Inputs) -> Tensor:
        return self.forward_with_features(x)[1]

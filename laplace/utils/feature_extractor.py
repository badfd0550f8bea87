"""``FeatureExtractor``: a model wrapper that also returns last-layer features.

The wrapped model is used in place (no copy); a forward hook on the last layer reads
its input ``φ(x)``. ``FeatureReduction`` pools ``(batch, ..., features)`` features of
sequence models (e.g. Hugging Face language models) to ``(batch, features)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from laplace.utils import checks
from laplace.utils.data import Inputs
from laplace.utils.enums import _StrEnum, parse_option
from laplace.utils.errors import MissingKeyError


class FeatureReduction(_StrEnum):
    PICK_FIRST = "pick_first"
    PICK_LAST = "pick_last"
    AVERAGE = "average"


def reduce_features(phi: Tensor, reduction: FeatureReduction | str | None) -> Tensor:
    """Pool features ``(batch, d₁, …, d_k, D)`` over every dimension between the batch
    and the features to ``(batch, D)``; 2-D features are returned unchanged.

    ``pick_first`` / ``pick_last`` take index ``0`` / ``-1`` along each pooled
    dimension, ``average`` their mean.
    """
    if reduction is None or phi.ndim < 3:
        return phi
    reduction = FeatureReduction(reduction)
    middle = tuple(range(1, phi.ndim - 1))
    if reduction == FeatureReduction.AVERAGE:
        return phi.mean(dim=middle)
    index = 0 if reduction == FeatureReduction.PICK_FIRST else -1
    return phi[(slice(None), *([index] * len(middle)), slice(None))]


class FeatureExtractor(nn.Module):
    """Wrap ``model`` to expose its last layer and features.

    Args:
        model: the network; not modified or copied.
        last_layer_name: name of the last layer in ``model.named_modules()``;
            found on the first batch (``find_last_layer``) when ``None``.
        enable_backprop: keep the graph of the features.
        feature_reduction: ``"pick_first"``, ``"pick_last"`` or ``"average"``: how
            features ``(batch, ..., D)`` are pooled to ``(batch, D)`` (see
            ``reduce_features``). The output is always the model's own output.
    """

    def __init__(
        self,
        model: nn.Module,
        last_layer_name: str | None = None,
        enable_backprop: bool = False,
        feature_reduction: FeatureReduction | str | None = None,
    ) -> None:
        super().__init__()
        checks.torch_module(model)
        self.model = model
        self.enable_backprop = enable_backprop
        if feature_reduction is not None:
            feature_reduction = parse_option(FeatureReduction, feature_reduction,
                                             "feature_reduction")
        self.feature_reduction = feature_reduction
        self.last_layer_name = last_layer_name
        # Kept outside the module registry: it is already a submodule of ``model``.
        object.__setattr__(self, "_last_layer", None)
        if last_layer_name is not None:
            self.set_last_layer(last_layer_name)

    def set_last_layer(self, last_layer_name: str) -> None:
        """Use the module ``last_layer_name`` (an ``nn.Linear``) as the last layer."""
        name = last_layer_name
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

    def find_last_layer(self, x: Inputs) -> Tensor:
        """Run ``x`` once and take, in execution order, the last ``nn.Linear`` whose
        output is the model output (the last ``nn.Linear`` to run if none is, e.g. when
        the model pools the head's per-token outputs). Returns the model output."""
        calls: list[tuple[str, Any]] = []
        handles = [
            m.register_forward_hook(lambda mod, i, o, n=n: calls.append((n, o)))
            for n, m in self.model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            with torch.no_grad():
                out = self.model(x)
        finally:
            for h in handles:
                h.remove()
        if not calls:
            raise ValueError("Last-layer Laplace needs a model with an nn.Linear output layer.")
        name = next((n for n, o in reversed(calls) if _same_tensor(o, out)), calls[-1][0])
        self.set_last_layer(name)
        return out

    def forward(self, x: Inputs) -> Tensor:
        return self.model(x)

    def forward_with_features(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """The model's outputs ``(n, ..., K)`` and the last layer's input features,
        ``(n, D)`` after ``feature_reduction``."""
        if self.last_layer is None:
            self.find_last_layer(x)
        store: dict[str, Tensor] = {}

        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Tensor) -> None:
            store["phi"], store["shape"] = inputs[0], output.shape

        handle = self.last_layer.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(self.enable_backprop or torch.is_grad_enabled()):
                out = self.model(x)
        finally:
            handle.remove()
        if "phi" not in store:
            raise ValueError(f"The last layer {self.last_layer_name!r} was not called in the "
                             "model's forward pass: last_layer_name must name the layer that "
                             "produces the output.")
        shape = store["shape"]
        if self.feature_reduction is None and isinstance(out, Tensor) and out.shape != shape \
                and out.numel() == shape.numel() and out.ndim and out.shape[0] == shape[0]:
            # the output is the layer's, reshaped (head(φ).squeeze(-1) for (n,) regression
            # outputs, as laplace-torch accepts): in the layer's shape, one row per φ
            out = out.reshape(shape)
        return out, reduce_features(store["phi"], self.feature_reduction)

    def forward_features(self, x: Inputs) -> Tensor:
        return self.forward_with_features(x)[1]


def _same_tensor(a: Any, b: Any) -> bool:
    """``a`` and ``b`` are tensors holding the same values (a layer's output *is* ``b``)."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return False
    return a is b or (a.shape == b.shape and bool(torch.equal(a, b)))

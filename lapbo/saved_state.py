"""Loading a saved ``LaplaceBNN`` state into a model whose fit chose another member of the
default family: the network (random features with or without the trend, another number of
features, or the MLP) and the prior's structure (one ``δ`` or one per weight tensor) are
rebuilt from the saved tensors' names and shapes before ``load_state_dict`` fills them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from botorch.exceptions.errors import UnsupportedError
from torch import Tensor

from lapbo import networks, training

if TYPE_CHECKING:
    from lapbo.model import LaplaceBNN


def mlp_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``networks.default_network`` options among ``LaplaceBNN``'s network options."""
    return {k: v for k, v in options.items()
            if k not in ("random_feature_kernel", "lengthscale_prior")}


def match_prior_structure(model: LaplaceBNN, state_dict: Mapping[str, Tensor]) -> None:
    """Take the saved model's ``prior_structure`` (one ``δ``, or one per weight tensor:
    the candidates of a family may differ in it) from the shape of its
    ``prior_precision``, and shape this model's buffer to match."""
    saved = state_dict.get("prior_precision")
    if saved is None:
        return
    structure = "layerwise" if saved.ndim == 1 else "scalar"
    if structure == "layerwise" and (
        saved.numel() != len(list(model.net.parameters()))
        or model.subset_of_weights != "all" or model.hessian_structure != "full"
        or model.backend is not None
    ):
        raise UnsupportedError(
            f"The saved state has one prior precision per weight tensor ({saved.numel()}); "
            "prior_structure='layerwise' needs as many weight tensors, "
            "subset_of_weights='all' and the full GGN (native backend).")
    model.__dict__["prior_structure"] = structure  # fixed for users (LaplaceBNN.__setattr__)
    if saved.shape != model.prior_precision.shape:
        model.register_buffer("prior_precision",
                              torch.empty_like(saved).to(model.sigma_noise))


def check_inputs(model: LaplaceBNN, state_dict: Mapping[str, Tensor]) -> None:
    """A default-family state (random features or the default MLP) was saved from a model
    with as many inputs as this one has (after its input transform), else a ``ValueError``
    that says so, instead of ``load_state_dict``'s size mismatch of an inner tensor."""
    if "net.0.omega" in state_dict:
        saved = state_dict["net.0.omega"].shape[0]
    elif "net.features.0.weight" in state_dict:
        saved = state_dict["net.features.0.weight"].shape[-1]
    else:
        return
    d = model._train_X.shape[-1]
    if saved != d and isinstance(model.net, torch.nn.Module) and model._net_options is not None:
        raise ValueError(f"The saved state is of a LaplaceBNN with {saved} inputs; this model "
                         f"has {d}: load states between models of the same inputs.")


def match_network(model: LaplaceBNN, state_dict: Mapping[str, Tensor]) -> None:
    """Rebuild ``model.net`` (and the shapes of its prior buffers) when ``state_dict``
    holds another default-family architecture (a random-feature network with or
    without its trend or with another number of features, or the MLP); a given
    network is left alone."""
    saved_rf = "net.0.lengthscale" in state_dict and "net.0.omega" in state_dict
    saved = (saved_rf, saved_rf and "net.0.trend_scale" in state_dict,
             state_dict["net.0.omega"].shape[-1] if saved_rf else 0)
    layer = networks.random_feature_layer(model.net)
    current = (layer is not None, layer is not None and layer.has_trend,
               layer.omega.shape[-1] if layer is not None else 0)
    if model._net_options is None or saved == current:
        return
    d, m = model._train_X.shape[-1], model._num_net_outputs
    like = model.sigma_noise
    if saved_rf:
        n_features = 2 * state_dict["net.0.omega"].shape[-1]
        index = state_dict.get("net.0.kernel_index")  # absent from states saved before
        kernel = "rbf" if index is None else networks.RANDOM_FEATURE_KERNELS[int(index)]
        net = networks.random_feature_network(d, m, n_features, dtype=torch.float64,
                                              kernel=kernel,
                                              trend="quadratic" if saved[1] else None)
    else:
        net = networks.default_network(d, m, **mlp_options(model._net_options),
                                       dtype=like.dtype)
    model.net = net.to(device=like.device)
    model._param_names = training.posterior_parameter_names(model.net, model.subset_of_weights)
    for name in ("prior_mean", "prior_precision"):
        if name in state_dict and hasattr(model, name):
            model.register_buffer(name, torch.empty_like(state_dict[name]).to(like))

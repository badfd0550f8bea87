"""Link approximations: from a Gaussian over logits to class probabilities.

All take the latent mean ``f_mu`` ``(n, C)`` and covariance ``f_var`` ``(n, C, C)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from laplace.utils.utils import gaussian_samples


def probit(f_mu: Tensor, f_var: Tensor) -> Tensor:
    """Probit (MacKay) approximation ``softmax(f_mu / sqrt(1 + π/8 · diag f_var))``."""
    var = f_var.diagonal(dim1=-2, dim2=-1) if f_var.ndim == f_mu.ndim + 1 else f_var
    kappa = 1 / torch.sqrt(1 + math.pi / 8 * var)
    return torch.softmax(kappa * f_mu, dim=-1)


def bridge(f_mu: Tensor, f_var: Tensor, normalize: bool = False) -> Tensor:
    """Laplace bridge to a Dirichlet; returns its mean ``(n, C)``.

    The Gaussian is first projected to zero-sum logits (the bridge assumes it);
    ``normalize=True`` is the ``bridge_norm`` variant that rescales the variances.
    """
    var_sum = f_var.sum(-1)  # (n, C)
    total = f_var.sum(dim=(-2, -1)).unsqueeze(-1)  # (n, 1)
    f_mu = f_mu - var_sum * f_mu.sum(-1, keepdim=True) / total
    f_var = f_var - torch.einsum("bi,bj->bij", var_sum, f_var.sum(-2)) / total.unsqueeze(-1)
    K = f_mu.shape[-1]
    var_diag = f_var.diagonal(dim1=-2, dim2=-1)
    if normalize:
        mean_var = var_diag.mean(dim=-1) / math.sqrt(K / 2)
        f_mu = f_mu / mean_var.sqrt().unsqueeze(-1)
        var_diag = var_diag / mean_var.unsqueeze(-1)
    sum_exp = torch.exp(-f_mu).sum(dim=-1, keepdim=True)
    alpha = (1 - 2 / K + f_mu.exp() / K**2 * sum_exp) / var_diag
    return torch.nan_to_num(alpha / alpha.sum(dim=-1, keepdim=True), nan=1.0)


def monte_carlo(
    f_mu: Tensor, f_var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Monte Carlo average of ``softmax`` over Gaussian logit draws."""
    return torch.softmax(gaussian_samples(f_mu, f_var, n_samples, generator), dim=-1).mean(0)

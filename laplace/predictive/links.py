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
    ``normalize=True`` is the ``bridge_norm`` variant that rescales the variances. The
    concentrations ``α_k = (1 − 2/C + e^{f_k} Σ_l e^{−f_l} / C²) / Σ_kk`` are formed in
    log space (``e^{f_k} Σ_l e^{−f_l}`` overflows in float32 once the logits span ~88).
    A row without variance (the Gaussian is a point mass) gets ``softmax(f_mu)``, the
    exact predictive there, where the bridge's formula would divide by zero.
    """
    var_sum = f_var.sum(-1)  # (n, C)
    total = f_var.sum(dim=(-2, -1)).unsqueeze(-1)  # (n, 1)
    point_mass = (total <= 0).squeeze(-1)
    total = torch.where(total > 0, total, torch.ones_like(total))
    f_mu0 = f_mu
    f_mu = f_mu - var_sum * f_mu.sum(-1, keepdim=True) / total
    f_var = f_var - torch.einsum("bi,bj->bij", var_sum, f_var.sum(-2)) / total.unsqueeze(-1)
    K = f_mu.shape[-1]
    var_diag = f_var.diagonal(dim1=-2, dim2=-1)
    if normalize:
        mean_var = var_diag.mean(dim=-1) / math.sqrt(K / 2)
        f_mu = f_mu / mean_var.sqrt().unsqueeze(-1)
        var_diag = var_diag / mean_var.unsqueeze(-1)
    # log(e^{f_k} Σ_l e^{−f_l} / K²) and log(1 − 2/K) (−inf for two classes)
    log_tail = f_mu + torch.logsumexp(-f_mu, dim=-1, keepdim=True) - 2 * math.log(K)
    log_head = torch.full_like(log_tail, math.log(1 - 2 / K) if K > 2 else -math.inf)
    log_alpha = torch.logaddexp(log_head, log_tail) - var_diag.log()
    probs = torch.softmax(log_alpha, dim=-1)
    degenerate = point_mass | ~torch.isfinite(log_alpha).all(-1)
    if bool(degenerate.any()):
        probs = torch.where(degenerate.unsqueeze(-1), torch.softmax(f_mu0, dim=-1), probs)
    return probs


def monte_carlo(
    f_mu: Tensor, f_var: Tensor, n_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Monte Carlo average of ``softmax`` over Gaussian logit draws."""
    return torch.softmax(gaussian_samples(f_mu, f_var, n_samples, generator), dim=-1).mean(0)

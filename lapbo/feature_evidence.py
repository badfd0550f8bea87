"""The evidence of a random-feature network with the features' gradient in closed form.

For ``f(x) = W ψ_ℓ(x) + b`` with ``ψ_ℓ(x) = [cos z, sin z] / √M, z = (x / ℓ) Ω``
(``M`` frequencies, ``networks.ScaledRandomFeatures``), optional fixed trend features
``T`` and the bias column, the evidence of targets ``Y`` ``(n, C)`` (columns sharing the
noise) in its sample-space form depends on ``ℓ`` only through the Gram matrix

    Ψ Ψᵀ_ij = Σ_m cos(z_im − z_jm) / M   (n, n),

and ``laplace.gram_evidence`` evaluates it from the Gram matrices of the column groups.
Autograd through the feature map differentiates ``cos`` and ``sin`` by recomputing
``sin`` and ``cos`` and keeps a dozen ``(n, M)`` intermediates; ``_FeatureGram`` maps the
Gram's gradient ``H`` to the length scales reusing the forward's ``cos z`` and ``sin z``:

    ∂/∂z = (cos z ⊙ (H + Hᵀ) sin z − sin z ⊙ (H + Hᵀ) cos z) / M,
    ∂/∂log ℓ_k = −Σ_i X_ik (∂/∂z Ωᵀ)_ik / ℓ_k.

With the Gaussian algebra in ``laplace`` (``gram_evidence``), an evaluation with its
gradient costs about half of autograd's through the design matrix at the ``n`` of a BO
loop, and equals it to rounding (``tests/lapbo/test_feature_evidence.py``).
``lengthscales.fit_random_feature_network`` uses it whenever the sample-space form
applies: no more rows than weights, one noise variance per row, a prior mean whose
feature weights are zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace import gram_evidence


def random_feature_evidence(X: Tensor, omega: Tensor, trend: Tensor | None, Y: Tensor,
                            log_lengthscale: Tensor, prior_precision: Tensor,
                            noise_var: Tensor) -> Tensor:
    """``Σ_c log N(y_c; 0, v_w (Ψ Ψᵀ + T Tᵀ) + v_b 1 1ᵀ + diag(σ²))`` (0-d), ``v = 1/δ``,
    differentiable in the hyperparameters.

    Args:
        X: ``(n, d)`` inputs; omega: ``Ω`` ``(d, M)`` frequencies.
        trend: ``(n, t)`` fixed (scaled) trend features, or ``None``.
        Y: ``(n, C)`` targets (a prior mean's constant already subtracted).
        log_lengthscale: ``log ℓ`` ``(d,)``.
        prior_precision: ``δ`` ``(1,)`` (every weight) or ``(2,)`` (weights, bias).
        noise_var: ``σ²`` per row ``(n,)``.
    """
    gram = _FeatureGram.apply(log_lengthscale, X, omega)
    if trend is not None:
        gram = gram + trend @ trend.mT
    ones = torch.ones_like(gram)
    grams = [gram + ones] if prior_precision.numel() == 1 else [gram, ones]
    return gram_evidence(grams, Y, prior_precision, noise_var)


class _FeatureGram(torch.autograd.Function):
    """``Ψ Ψᵀ`` ``(n, n)`` of the random features at ``log ℓ``, with the closed-form
    backward above."""

    @staticmethod
    def forward(ctx, log_ls: Tensor, X: Tensor, omega: Tensor) -> Tensor:  # noqa: ANN001
        z = (X / log_ls.exp()) @ omega
        cos, sin = z.cos(), z.sin()
        ctx.save_for_backward(log_ls, X, omega, cos, sin)
        return (cos @ cos.mT + sin @ sin.mT) / omega.shape[-1]

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        log_ls, X, omega, cos, sin = ctx.saved_tensors
        H = grad + grad.mT
        d_z = (cos * (H @ sin) - sin * (H @ cos)) / omega.shape[-1]
        return -(X * (d_z @ omega.mT)).sum(0) / log_ls.exp(), None, None

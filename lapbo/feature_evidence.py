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

``limit_feature_evidence`` is the same evidence with ``Ψ Ψᵀ`` replaced by its limit as the
features grow, the kernel ``k((x − x')/ℓ)`` that they approximate: ``O(n³)`` per
evaluation whatever the feature count, the objective of the length scales between
``lengthscales.EXACT_FIT_ROWS`` and ``lengthscales.FULL_FEATURE_ROWS`` rows from
``lengthscales.LIMIT_KERNEL_DIM`` inputs on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from laplace import gram_evidence, gram_evidence_gradients


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
    return gram_evidence(_grams(gram, trend, prior_precision.numel()), Y, prior_precision,
                         noise_var)


def limit_feature_evidence(X: Tensor, kernel: str, trend: Tensor | None, Y: Tensor,
                           log_lengthscale: Tensor, prior_precision: Tensor,
                           noise_var: Tensor) -> Tensor:
    """``random_feature_evidence`` of infinitely many features: ``Ψ Ψᵀ`` replaced by the
    kernel matrix ``feature_kernel(X, X)`` (0-d, differentiable by autograd).

    Args:
        kernel: the features' kernel (``networks.RANDOM_FEATURE_KERNELS``); the other
            arguments as ``random_feature_evidence`` (no ``Ω``).
    """
    gram = feature_kernel(X, X, log_lengthscale.exp(), kernel)
    return gram_evidence(_grams(gram, trend, prior_precision.numel()), Y, prior_precision,
                         noise_var)


def feature_kernel(X1: Tensor, X2: Tensor, lengthscale: Tensor, kernel: str) -> Tensor:
    """``k((x₁ − x₂)/ℓ)`` ``(n₁, n₂)``: the limit of ``ψ(x₁)ᵀψ(x₂)`` of
    ``networks.ScaledRandomFeatures`` as its frequencies grow in number —
    ``exp(−r²/2)`` (``"rbf"``) or GPyTorch's Matérn kernel of smoothness ``ν``
    (``"matern12"``, ``"matern32"``, ``"matern52"``), ``r = ‖(x₁ − x₂)/ℓ‖``."""
    from lapbo.networks import MATERN_NU  # networks imports this module's users

    A, B = X1 / lengthscale, X2 / lengthscale
    sq = (A.square().sum(-1, keepdim=True) - 2 * A @ B.mT
          + B.square().sum(-1).unsqueeze(-2)).clamp_min(0.0)
    if kernel == "rbf":
        return (-0.5 * sq).exp()
    nu = MATERN_NU.get(kernel)
    if nu is None:
        raise ValueError(f"Unknown random-feature kernel {kernel!r}.")
    s = (2 * nu * sq).clamp_min(1e-30).sqrt() * (sq > 0)  # √(2ν) r, zero gradient at r = 0
    polynomial = {0.5: 1.0, 1.5: 1 + s, 2.5: 1 + s + s.square() / 3}[nu]
    return polynomial * (-s).exp()


def random_feature_evidence_gradients(
    X: Tensor, omega: Tensor, trend: Tensor | None, Y: Tensor, log_lengthscale: Tensor,
    prior_precision: Tensor, noise_var: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``random_feature_evidence`` and its gradients in closed form, without autograd
    (``laplace.gram_evidence_gradients``, then the feature map's backward above): what a
    hyperparameter fit needs at each of its ~20 evaluations per candidate, without the
    graph's per-operation cost. Arguments as ``random_feature_evidence`` (no gradients).

    Returns:
        ``(value (0-d), ∂/∂log ℓ (d,), ∂/∂δ (G,), ∂/∂σ² (n,))``.
    """
    gram, cos, sin = _feature_gram(log_lengthscale, X, omega)
    value, d_prior, d_noise, d_cov = gram_evidence_gradients(
        _grams(gram, trend, prior_precision.numel()), Y, prior_precision, noise_var)
    d_gram = d_cov / prior_precision.reshape(-1)[0]
    d_log_ls = _lengthscale_gradient(d_gram, log_lengthscale, X, omega, cos, sin)
    return value, d_log_ls, d_prior, d_noise


def _grams(gram: Tensor, trend: Tensor | None, n_groups: int) -> list[Tensor]:
    """The Gram matrices of the column groups ``[features (+ trend) (+ bias)]`` or
    ``[features (+ trend), bias]`` (``n_groups`` = 1 or 2)."""
    if trend is not None:
        gram = gram + trend @ trend.mT
    ones = torch.ones_like(gram)
    return [gram + ones] if n_groups == 1 else [gram, ones]


def _feature_gram(log_ls: Tensor, X: Tensor, omega: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(Ψ Ψᵀ (n, n), cos z (n, M), sin z (n, M))`` at ``log ℓ``."""
    z = (X / log_ls.exp()) @ omega
    cos, sin = z.cos(), z.sin()
    return (cos @ cos.mT + sin @ sin.mT) / omega.shape[-1], cos, sin


def _lengthscale_gradient(grad: Tensor, log_ls: Tensor, X: Tensor, omega: Tensor,
                          cos: Tensor, sin: Tensor) -> Tensor:
    """``∂/∂log ℓ`` ``(d,)`` of a function whose gradient in ``Ψ Ψᵀ`` is ``grad`` ``(n, n)``."""
    return -(X * _z_gradient(grad, omega, cos, sin)).sum(0) / log_ls.exp()


def _z_gradient(grad: Tensor, omega: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``∂/∂z Ωᵀ`` ``(n, d)``, ``z = (X/ℓ)Ω``, of a function whose gradient in ``Ψ Ψᵀ`` is
    ``grad`` ``(n, n)``; divided by ``ℓ`` it is the gradient in ``X``."""
    H = grad + grad.mT
    d_z = (cos * (H @ sin) - sin * (H @ cos)) / omega.shape[-1]
    return d_z @ omega.mT


class _FeatureGram(torch.autograd.Function):
    """``Ψ Ψᵀ`` ``(n, n)`` of the random features at ``log ℓ``, with the closed-form
    backward above (in ``log ℓ`` and in the inputs ``X``, which a learned input warp
    moves: ``lapbo.warping``)."""

    @staticmethod
    def forward(ctx, log_ls: Tensor, X: Tensor, omega: Tensor) -> Tensor:  # noqa: ANN001
        gram, cos, sin = _feature_gram(log_ls, X, omega)
        ctx.save_for_backward(log_ls, X, omega, cos, sin)
        return gram

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        log_ls, X, omega, cos, sin = ctx.saved_tensors
        d_zw = _z_gradient(grad, omega, cos, sin)
        return (-(X * d_zw).sum(0) / log_ls.exp() if ctx.needs_input_grad[0] else None,
                d_zw / log_ls.exp() if ctx.needs_input_grad[1] else None, None)

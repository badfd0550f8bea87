"""Exact evidence and posterior mean of a model linear in its weights.

For ``f = Rθ`` with rows ``R`` ``(M, P)``, the prior ``θ ~ N(0, D⁻¹)`` (``D`` diagonal:
one precision, or one per group of columns) and Gaussian noise of variances ``v`` ``(M,)``,
the Laplace approximation is exact:

    log p(y) = log N(y; 0, R D⁻¹ Rᵀ + diag(v)),
    E[θ | y] = (RᵀV⁻¹R + D)⁻¹ RᵀV⁻¹ y = D⁻¹Rᵀ(R D⁻¹ Rᵀ + V)⁻¹ y.

Unlike ``SampleSpaceEvidence``, which treats the rows as constants and is evaluated for
many ``(δ, σ)``, these functions are differentiable in the rows too: the objective of
type-II maximum likelihood for hyperparameters *inside* the features (the length scales
of a random-feature network). A prior mean ``θ₀`` is handled by the caller
(``y − Rθ₀`` and ``θ₀ + E[θ | y − Rθ₀]``). Targets may have ``C`` columns that share
the rows, the prior and the noise (independent outputs of one feature map). The
``M × M`` (sample-space) form is used when ``M ≤ P``, the ``P × P`` form otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from laplace.utils.cholesky import jittered_cholesky


def linear_gaussian_evidence(rows: Tensor, targets: Tensor, prior_precision: Tensor,
                             noise_var: Tensor, groups: Sequence[int] | None = None) -> Tensor:
    """``Σ_c log N(y_c; 0, R D⁻¹ Rᵀ + diag(v))`` (0-d), differentiable in every input.

    Args:
        rows: ``R`` ``(M, P)``.
        targets: ``y`` ``(M,)`` or ``(M, C)``.
        prior_precision: ``δ`` 0-d (``D = δI``) or ``(G,)`` with ``groups``.
        noise_var: ``v`` ``(M,)`` or 0-d (positive).
        groups: sizes of the ``G`` column groups of ``R`` (summing to ``P``), or ``None``.
    """
    y, prior_var, noise = _check(rows, targets, prior_precision, noise_var, groups)
    M, P = rows.shape
    C = y.shape[-1]
    const = 0.5 * M * C * math.log(2 * math.pi)
    if M <= P:
        chol = _cholesky((rows * prior_var) @ rows.mT + torch.diag_embed(noise))
        white = torch.linalg.solve_triangular(chol, y, upper=False)
        logdet = 2 * chol.diagonal().log().sum()
        return -0.5 * white.square().sum() - 0.5 * C * logdet - const
    scale = noise.rsqrt().unsqueeze(-1)
    W, z = rows * scale, y * scale  # whitened rows and targets
    chol = _cholesky(_Gram.apply(W) + torch.diag_embed(1 / prior_var))
    b = torch.linalg.solve_triangular(chol, W.mT @ z, upper=False)
    quad = z.square().sum() - b.square().sum()
    logdet = 2 * chol.diagonal().log().sum() + noise.log().sum() + prior_var.log().sum()
    return -0.5 * quad - 0.5 * C * logdet - const


def group_grams(rows: Tensor, groups: Sequence[int] | None = None) -> list[Tensor]:
    """The Gram matrices ``R_g R_gᵀ`` ``(M, M)`` of the column groups of ``rows``
    ``(M, P)`` (one matrix without ``groups``): computed once, ``O(M² P)``, they let
    ``gram_evidence`` evaluate the evidence at many ``(δ, v)`` for ``O(M³)`` each."""
    if groups is None:
        return [rows @ rows.mT]
    blocks = torch.split(rows, list(groups), dim=-1)
    return [block @ block.mT for block in blocks]


def gram_evidence(grams: Sequence[Tensor], targets: Tensor, prior_precision: Tensor,
                  noise_var: Tensor) -> Tensor:
    """``linear_gaussian_evidence`` from ``group_grams`` (0-d), differentiable in the
    prior precisions ``(G,)`` (or 0-d for one group) and noise variances ``(M,)`` / 0-d."""
    prior = torch.as_tensor(prior_precision).to(grams[0]).reshape(-1)
    if prior.numel() != len(grams):
        raise ValueError(f"{prior.numel()} prior precisions for {len(grams)} Gram matrices.")
    if not bool((prior.detach() > 0).all()):
        raise ValueError("prior_precision must be positive.")
    y, _, noise = _check(grams[0], targets, prior[:1], noise_var, None)
    M, C = y.shape
    cov = sum(G / p for G, p in zip(grams, prior)) + torch.diag_embed(noise)
    chol = _cholesky(cov)
    white = torch.linalg.solve_triangular(chol, y, upper=False)
    logdet = 2 * chol.diagonal().log().sum()
    return -0.5 * white.square().sum() - 0.5 * C * logdet - 0.5 * M * C * math.log(2 * math.pi)


def gram_evidence_gradients(grams: Sequence[Tensor], targets: Tensor, prior_precision: Tensor,
                            noise_var: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``gram_evidence`` with its gradients in closed form (no autograd graph: the
    objective of a hyperparameter fit evaluated many times at small ``M``).

    With ``Σ = Σ_g K_g / δ_g + diag(v)`` and ``A = Σ⁻¹ y`` ``(M, C)``, the gradient with
    respect to ``Σ`` is ``W = ½ (A Aᵀ − C Σ⁻¹)`` (symmetric), so ``∂/∂K_g = W / δ_g``,
    ``∂/∂δ_g = −⟨W, K_g⟩ / δ_g²`` and ``∂/∂v = diag W``.

    Returns:
        ``(value (0-d), ∂/∂δ (G,), ∂/∂v (M,), W (M, M))``; arguments as ``gram_evidence``.
    """
    prior = torch.as_tensor(prior_precision).to(grams[0]).reshape(-1)
    if prior.numel() != len(grams):
        raise ValueError(f"{prior.numel()} prior precisions for {len(grams)} Gram matrices.")
    if not bool((prior > 0).all()):
        raise ValueError("prior_precision must be positive.")
    y, _, noise = _check(grams[0], targets, prior[:1], noise_var, None)
    M, C = y.shape
    cov = sum(G / p for G, p in zip(grams, prior)) + torch.diag_embed(noise)
    chol = _cholesky(cov)
    A = torch.cholesky_solve(y, chol)
    logdet = 2 * chol.diagonal().log().sum()
    value = -0.5 * (y * A).sum() - 0.5 * C * logdet - 0.5 * M * C * math.log(2 * math.pi)
    W = 0.5 * (A @ A.mT - C * torch.cholesky_inverse(chol))
    d_prior = torch.stack([-(W * G).sum() / p.square() for G, p in zip(grams, prior)])
    return value, d_prior, W.diagonal().clone(), W


class _Gram(torch.autograd.Function):
    """``WᵀW`` ``(P, P)`` for ``W`` ``(M, P)`` whose backward is one product,
    ``W (Ḡ + Ḡᵀ)``, where autograd's ``W.mT @ W`` takes two: the ``M·P²`` products are
    the cost of the weight-space evidence for many rows."""

    @staticmethod
    def forward(ctx, W: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(W)
        return W.mT @ W

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (W,) = ctx.saved_tensors
        return W @ (grad + grad.mT)


def linear_gaussian_posterior_mean(rows: Tensor, targets: Tensor, prior_precision: Tensor,
                                   noise_var: Tensor,
                                   groups: Sequence[int] | None = None) -> Tensor:
    """``E[θ | y]`` ``(P,)`` or ``(P, C)`` (the shape of ``targets`` with ``M → P``);
    arguments as for ``linear_gaussian_evidence``."""
    y, prior_var, noise = _check(rows, targets, prior_precision, noise_var, groups)
    M, P = rows.shape
    if M <= P:
        chol = _cholesky((rows * prior_var) @ rows.mT + torch.diag_embed(noise))
        mean = prior_var.unsqueeze(-1) * (rows.mT @ torch.cholesky_solve(y, chol))
    else:
        scaled = rows / noise.unsqueeze(-1)
        chol = _cholesky(rows.mT @ scaled + torch.diag_embed(1 / prior_var))
        mean = torch.cholesky_solve(scaled.mT @ y, chol)
    return mean.squeeze(-1) if targets.ndim == 1 else mean


def _cholesky(matrix: Tensor) -> Tensor:
    """The Cholesky factor; if the matrix is numerically singular, with a jitter of
    1e-8, 1e-6, then 1e-4 × its mean diagonal (the first that succeeds)."""
    factor = jittered_cholesky(matrix, (1e-8, 1e-6, 1e-4),
                               matrix.diagonal().mean().detach().abs())
    if factor is not None:
        return factor[0]
    raise ValueError("The Gram matrix is not positive definite even with a jitter of 1e-4 x "
                     "its mean diagonal: check the rows, prior_precision and noise_var for "
                     "non-finite values.")


def _check(rows: Tensor, targets: Tensor, prior_precision: Tensor, noise_var: Tensor,
           groups: Sequence[int] | None) -> tuple[Tensor, Tensor, Tensor]:
    """``y (M, C)``, prior variances ``(P,)`` and noise variances ``(M,)``."""
    if not isinstance(rows, Tensor) or rows.ndim != 2 or not rows.is_floating_point():
        raise ValueError("rows must be a floating-point tensor of shape (M, P).")
    M, P = rows.shape
    if not isinstance(targets, Tensor) or targets.ndim not in (1, 2) or targets.shape[0] != M:
        raise ValueError(f"targets must be a tensor of shape ({M},) or ({M}, C).")
    noise = torch.as_tensor(noise_var).to(rows)
    if noise.ndim == 0:
        noise = noise.expand(M)
    if noise.shape != (M,):
        raise ValueError(f"noise_var must be 0-d or of shape ({M},), got {tuple(noise.shape)}.")
    prior = torch.as_tensor(prior_precision).to(rows).reshape(-1)
    if groups is None:
        if prior.numel() != 1:
            raise ValueError("prior_precision must be 0-d without groups.")
        prior_var = (1 / prior).expand(P)
    else:
        sizes = list(groups)
        if sum(sizes) != P or len(sizes) != prior.numel() or min(sizes, default=0) < 1:
            raise ValueError(f"groups {sizes} must be positive sizes summing to the {P} "
                             f"columns, one per prior precision ({prior.numel()}).")
        counts = torch.tensor(sizes, device=rows.device)
        prior_var = torch.repeat_interleave(1 / prior, counts)
    if not bool((noise.detach() > 0).all()) or not bool((prior.detach() > 0).all()):
        raise ValueError("noise_var and prior_precision must be positive.")
    y = targets.to(rows)
    return (y if y.ndim == 2 else y.unsqueeze(-1)), prior_var, noise

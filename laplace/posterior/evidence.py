"""``SampleSpaceEvidence``: the Gaussian-likelihood evidence from square-root rows.

For regression the GGN of the summed loss at ``θ*`` is ``H = RᵀR`` with the Jacobian
rows ``R`` ``(M, P)`` (``M = N·K``). With residuals ``r = f(x; θ*) − y`` ``(M,)``, the
offset ``Δ = θ* − θ₀`` ``(P,)`` and the prior ``N(θ₀, D⁻¹)`` the Laplace evidence is

    log p(y | δ, σ) ≈ −½‖r‖²/σ² − M log σ − ½M log 2π − ½ log det(I + R D⁻¹ Rᵀ/σ²)
                      − ½ Δᵀ D Δ,

which is ``FullLaplace.log_marginal_likelihood`` of a regression posterior. Here it is
evaluated for any ``(δ, σ)`` from objects built once (the hyperparameter loops of an
online marginal-likelihood training call it hundreds of times):

* a scalar ``δ``: one eigendecomposition of ``R Rᵀ`` (``M × M``), or of ``RᵀR``
  (``P × P``) when ``M > P`` (``GramSpectrum``);
* one ``δ_g`` per parameter tensor (``groups``): the sample-space precision
  ``WoodburyPrecision`` at each setting (one ``M × M`` Cholesky factor per call).

Two options go beyond ``FullLaplace``:

* ``noise_var``: known per-row noise variances ``v`` ``(M,)`` instead of one ``σ²``
  (``σ`` is then ignored): the rows and residuals are divided by ``√v`` and the
  normaliser gains ``−½ Σ log v``;
* ``linearized=True``: the exact evidence of the linearized model
  ``y = f(θ*) + R(θ − θ*) + ε``, ``θ ~ N(θ₀, D⁻¹)``, i.e. the Gaussian-process marginal
  ``N(e; 0, R D⁻¹ Rᵀ + σ²I)`` of ``e = y − f(θ*) + RΔ``. With ``RRᵀ = E diag(λ) Eᵀ``
  and a scalar ``δ`` it is ``−½ Σᵢ (Eᵀe)ᵢ²/(λᵢ/δ + σ²) − ½ Σᵢ log(λᵢ/δ + σ²) −
  ½M log 2π``; it equals the Laplace evidence at an exact MAP and is the evidence of the
  linearized posterior mean when the MAP is not converged.

``reference_precision = mean_i ‖rᵢ‖²`` (over the unscaled rows) is the prior precision
at which the prior function variance ``‖r‖²/δ`` at the data is 1: a natural centre of a
log-normal hyperprior on ``δ`` for standardized outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from laplace.precision import GramSpectrum, WoodburyPrecision


class SampleSpaceEvidence:
    """``log p(y | δ, σ)`` of a Gaussian-likelihood model from its rows (module docstring).

    Args:
        rows: Jacobian rows ``R`` ``(M, P)`` at ``θ*`` (treated as constants).
        residuals: ``f(x; θ*) − y`` ``(M,)``.
        offset: ``θ* − θ₀`` ``(P,)``.
        noise_var: known noise variances ``v`` ``(M,)`` (positive), or ``None``.
        groups: sizes ``P_g`` of the ``G`` parameter tensors (columns of ``R`` in that
            order, summing to ``P``) for one ``δ_g`` per tensor, or ``None`` (scalar).
        linearized: the evidence of the linearized model (module docstring).
    """

    def __init__(self, rows: Tensor, residuals: Tensor, offset: Tensor,
                 noise_var: Tensor | None = None, groups: Sequence[int] | None = None,
                 linearized: bool = False) -> None:
        rows, residuals, offset = _check_inputs(rows, residuals, offset)
        M, P = rows.shape
        self.n_rows, self.n_params = M, P
        self.reference_precision = float(rows.square().sum(-1).mean()) if M else 1.0
        self.noise_var = None if noise_var is None else _check_noise(noise_var, M, rows)
        self.groups = None if groups is None else _check_groups(groups, P)
        self.linearized = bool(linearized)
        e = -residuals
        if self.linearized:
            e = e + rows @ offset
        if self.noise_var is not None:
            scale = self.noise_var.sqrt()
            rows, e = rows / scale.unsqueeze(-1), e / scale
            self.log_noise = self.noise_var.log().sum()
        self.sse = residuals.square().sum() if self.noise_var is None else (
            (residuals.square() / self.noise_var).sum())
        self.target = e  # the (whitened) linearized target, or the negative residuals
        if self.groups is None:
            self.offset_sq = offset.square().sum()
            self.spectrum = GramSpectrum(rows)
            if self.linearized:
                self._eig, self.proj_sq, self._sizes = self.spectrum.projections(e)
        else:
            self.offset_sq = torch.stack([v.square().sum() for v in offset.split(self.groups)])
            self.rows = rows
            self._base: WoodburyPrecision | None = None

    def __call__(self, prior: Tensor, sigma: Tensor) -> Tensor:
        """The evidence at ``δ`` (0-d, or ``(G,)`` with ``groups``) and ``σ`` (0-d;
        ignored with ``noise_var``): a 0-d tensor, differentiable in both."""
        known = self.noise_var is not None
        s2 = sigma.new_ones(()) if known else sigma.square()
        c = self.n_rows * math.log(2 * math.pi)
        if self.linearized:
            out = -0.5 * (self._linearized_terms(prior, s2) + c)
            return out - 0.5 * self.log_noise if known else out
        if known:
            loglik = -0.5 * self.sse - 0.5 * self.log_noise - 0.5 * c
        else:
            loglik = -0.5 * self.sse / s2 - self.n_rows * sigma.log() - 0.5 * c
        return loglik - 0.5 * (self.log_det_ratio(prior, s2) + (prior * self.offset_sq).sum())

    def log_det_ratio(self, prior: Tensor, s2: Tensor) -> Tensor:
        """``log det(I + R D⁻¹ Rᵀ/σ²) = log det Σ⁻¹ − log det D`` (0-d)."""
        if self.groups is None:
            return self.spectrum.log_det_ratio(1 / s2, prior.reshape(()))
        prior = prior.reshape(-1)
        sizes = prior.new_tensor(self.groups)
        return self._precision(prior, s2).logdet() - (sizes * prior.log()).sum()

    def _precision(self, prior: Tensor, s2: Tensor) -> WoodburyPrecision:
        """``RᵀR/σ² + D`` with ``D`` expanded from the per-tensor ``prior`` ``(G,)``."""
        counts = torch.tensor(self.groups, device=prior.device)
        D = torch.repeat_interleave(prior, counts)
        if self._base is None:  # the rows are checked once
            self._base = WoodburyPrecision(self.rows, 1 / s2.detach(), D.detach())
        return self._base.with_hyperparameters(1 / s2, D)

    def _linearized_terms(self, prior: Tensor, s2: Tensor) -> Tensor:
        """``eᵀ(R D⁻¹ Rᵀ + σ²I)⁻¹ e + log det(R D⁻¹ Rᵀ + σ²I)`` (0-d)."""
        if self.groups is None:
            var = self._eig / prior.reshape(()) + s2
            return ((self.proj_sq / var).sum() + (self._sizes * var.log()).sum()).to(
                self.spectrum.dtype)
        # R D⁻¹ Rᵀ + σ²I = σ² C, C the capacitance of Σ⁻¹ = RᵀR/σ² + D
        prior = prior.reshape(-1)
        quad = self._precision(prior, s2).capacitance_inv_square_form(self.target) / s2
        return quad + self.log_det_ratio(prior, s2) + self.n_rows * s2.log()


def _check_inputs(rows: Tensor, residuals: Tensor, offset: Tensor) -> tuple[Tensor, ...]:
    if not isinstance(rows, Tensor) or rows.ndim != 2 or not rows.is_floating_point():
        raise ValueError("rows must be a floating-point tensor of shape (M, P).")
    M, P = rows.shape
    if not isinstance(residuals, Tensor) or residuals.shape != (M,):
        raise ValueError(f"residuals must be a tensor of shape ({M},) for rows {(M, P)}.")
    if not isinstance(offset, Tensor) or offset.shape != (P,):
        raise ValueError(f"offset must be a tensor of shape ({P},) for rows {(M, P)}.")
    return rows.detach(), residuals.detach().to(rows), offset.detach().to(rows)


def _check_noise(noise_var: Tensor, M: int, rows: Tensor) -> Tensor:
    if not isinstance(noise_var, Tensor) or noise_var.shape != (M,):
        raise ValueError(f"noise_var must be None or a tensor of shape ({M},).")
    noise_var = noise_var.detach().to(rows)
    if not bool(torch.isfinite(noise_var).all()) or not bool((noise_var > 0).all()):
        raise ValueError("noise_var must be positive and finite.")
    return noise_var


def _check_groups(groups: Sequence[int], P: int) -> list[int]:
    sizes = list(groups)
    if not sizes or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in sizes) \
            or sum(sizes) != P:
        raise ValueError(f"groups must be positive ints summing to the {P} columns of rows, "
                         f"got {groups!r}.")
    return sizes

"""``LinearizedGaussian``: the weight posterior of a linearized network, in whitened
coordinates, with exact low-rank conditioning.

The linearized network ``f_lin(x; θ) = f(x; θ*) + J(x)(θ − θ*)`` with a Gaussian weight
posterior is a Gaussian process with mean ``f(x; θ*)`` and kernel ``J(x) Σ J(x')ᵀ``.
``LinearizedGaussian`` holds that Gaussian in *whitened* weight coordinates
``z = Lᵀ(θ − θ*)``:

    θ − θ* = L⁻ᵀ z,    z ~ N(m, M),    M = I − Σᵢ Wᵢ Wᵢᵀ,

where ``L`` is a base factor of a precision (``√δ·I`` for a scalar or per-weight prior,
or a dense Cholesky factor) and each ``Wᵢ`` ``(…, P, rᵢ)`` is a low-rank downdate left by
conditioning on ``rᵢ`` observations. With ``V = J L⁻ᵀ`` (whitened Jacobians):

    mean = f + V m,        cov = V Vᵀ − Σᵢ (V Wᵢ)(V Wᵢ)ᵀ.

Unlike the ``laplace.precision`` classes (one unbatched precision per Laplace fit) it
carries a mean shift and batched downdates, which is what BoTorch's conditioning and
fantasies need; ``LaplaceBNN`` builds it either from Jacobian rows (Woodbury, no
``P × P`` matrix) or from a Laplace object's dense precision.
"""

from __future__ import annotations

import torch
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor


class LinearizedGaussian:
    """``z ~ N(m, I − Σ WᵢWᵢᵀ)`` in whitened weights ``z = Lᵀ(θ − θ*)`` (module docstring).

    Args:
        n_params: ``P``.
        scale: ``√δ`` when ``L = √δ·I`` (scalar tensor), else ``None``.
        chol: dense lower-triangular ``L`` ``(P, P)`` when ``scale`` is ``None``.
        shift: ``m`` ``(*batch, P)`` or ``None`` (zero).
        downdates: ``Wᵢ`` ``(*batch_i, P, rᵢ)``.
    """

    def __init__(
        self, n_params: int, scale: Tensor | None = None, chol: Tensor | None = None,
        shift: Tensor | None = None, downdates: list[Tensor] | None = None,
    ) -> None:
        if (scale is None) == (chol is None):
            raise ValueError("Give exactly one of scale and chol.")
        self.n_params = n_params
        self.scale, self.chol, self.shift = scale, chol, shift
        self.downdates = list(downdates or [])

    @classmethod
    def from_rows(
        cls, rows: Tensor, noise_var: Tensor, prior_precision: Tensor
    ) -> LinearizedGaussian:
        """Posterior of ``N(0, I/δ)`` given Jacobian rows ``(r, P)`` with noise ``(r,)``.

        Low rank (one downdate) when ``r < P``; a dense Cholesky factor of
        ``δI + Rᵀ diag(1/noise) R`` otherwise. The mean shift is zero: the Laplace mean is
        the MAP ``θ*``.
        """
        r, P = rows.shape
        if r >= P:
            prec = (rows.mT / noise_var) @ rows
            prec.diagonal().add_(prior_precision)
            return cls(P, chol=psd_safe_cholesky(0.5 * (prec + prec.mT)))
        scale = prior_precision.sqrt()
        V = rows / scale
        A = V @ V.mT
        A.diagonal().add_(noise_var)
        C = psd_safe_cholesky(A)
        W = torch.linalg.solve_triangular(C, V, upper=False).mT
        return cls(P, scale=scale, downdates=[W])

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [W.shape[:-2] for W in self.downdates]
        if self.shift is not None:
            shapes.append(self.shift.shape[:-1])
        return torch.broadcast_shapes(*shapes) if shapes else torch.Size()

    def whiten(self, J: Tensor) -> Tensor:
        """``V = J L⁻ᵀ`` for ``J`` ``(..., k, P)``."""
        if self.scale is not None:
            return J / self.scale
        return torch.linalg.solve_triangular(self.chol.mT, J, upper=True, left=False)

    def unwhiten(self, z: Tensor) -> Tensor:
        """Weight offsets ``θ − θ* = L⁻ᵀ z`` for rows ``z`` ``(..., P)``."""
        if self.scale is not None:
            return z / self.scale
        return torch.linalg.solve_triangular(
            self.chol.mT, z.unsqueeze(-1), upper=True
        ).squeeze(-1)

    def with_mean_step(self, v: Tensor) -> LinearizedGaussian:
        """The Gaussian moved by ``Σ v`` in weight space: shift ``m = M L⁻¹ v`` for
        ``v`` ``(P,)`` (a Gauss–Newton step ``v = −∇loss`` lands on the posterior mean of
        the linearized model)."""
        if self.scale is not None:
            z = v / self.scale
        else:
            z = torch.linalg.solve_triangular(self.chol, v.unsqueeze(-1), upper=False).squeeze(-1)
        m = self._apply_M(z.unsqueeze(-2)).squeeze(-2)
        shift = m if self.shift is None else self.shift + m
        return LinearizedGaussian(self.n_params, self.scale, self.chol, shift, self.downdates)

    def _apply_M(self, V: Tensor) -> Tensor:
        """Rows of ``V M`` for ``V`` ``(..., k, P)``."""
        out = V
        for W in self.downdates:
            out = out - (V @ W) @ W.mT
        return out

    def predict(self, J: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, k)`` and covariance ``(*b, k, k)`` of ``f_lin`` at ``J`` ``(*bx, k, P)``.

        ``*b`` broadcasts the input batch ``*bx`` with the batch shape of the Gaussian.
        """
        V = self.whiten(J)
        mean = f
        if self.shift is not None:
            mean = f + (V @ self.shift.unsqueeze(-1)).squeeze(-1)
        cov = V @ V.mT
        for W in self.downdates:
            U = V @ W
            cov = cov - U @ U.mT
        cov = 0.5 * (cov + cov.mT)
        k = f.shape[-1]
        batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
        return mean.expand(*batch, k), cov.expand(*batch, k, k)

    def condition(self, J: Tensor, resid: Tensor, noise_var: Tensor) -> LinearizedGaussian:
        """Exact update on observations ``y = f + J(θ − θ*) + ε``.

        Args:
            J: ``(*bx, k, P)`` Jacobians of the observations.
            resid: ``y − f(x; θ*)`` ``(*by, k)``.
            noise_var: ``(*bn, k)`` noise variances.
        """
        V = self.whiten(J)
        VM = self._apply_M(V)
        A = VM @ V.mT + torch.diag_embed(noise_var)
        C = psd_safe_cholesky(0.5 * (A + A.mT))
        W = torch.linalg.solve_triangular(C, VM, upper=False).mT  # (*b, P, k)
        if self.shift is not None:
            resid = resid - (V @ self.shift.unsqueeze(-1)).squeeze(-1)
        batch = torch.broadcast_shapes(C.shape[:-2], resid.shape[:-1])
        C = C.expand(*batch, *C.shape[-2:])
        alpha = torch.linalg.solve_triangular(
            C, resid.expand(*batch, resid.shape[-1]).unsqueeze(-1), upper=False
        )
        shift = (W @ alpha).squeeze(-1)
        if self.shift is not None:
            shift = shift + self.shift
        return LinearizedGaussian(
            self.n_params, self.scale, self.chol, shift, self.downdates + [W]
        )

    def sample_offsets(
        self, n_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Weight offsets ``θ_s − θ*`` ``(n_samples, *batch, P)`` of posterior draws.

        ``M^{1/2} = I − W E diag(1/(1+√(1−μ))) Eᵀ Wᵀ`` with ``WᵀW = E diag(μ) Eᵀ``.
        """
        ref = self.chol if self.chol is not None else self.scale
        batch = self.batch_shape
        eps = torch.randn(
            n_samples, *batch, self.n_params, generator=generator, device=ref.device,
            dtype=ref.dtype,
        )
        z = eps
        if self.downdates:
            W = torch.cat([W.expand(*batch, *W.shape[-2:]) for W in self.downdates], dim=-1)
            mu, E = torch.linalg.eigh(W.mT @ W)
            coef = 1.0 / (1.0 + (1.0 - mu.clamp(0.0, 1.0)).sqrt())
            proj = (eps.unsqueeze(-2) @ W @ E).squeeze(-2) * coef  # (S, *batch, R)
            z = eps - (W @ (E @ proj.unsqueeze(-1))).squeeze(-1)
        if self.shift is not None:
            z = z + self.shift
        return self.unwhiten(z)

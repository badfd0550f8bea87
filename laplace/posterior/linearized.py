"""``LinearizedPosterior``: the weight posterior of a linearized network, batched exact
conditioning (fantasies) and pathwise samples.

The linearized network ``f_lin(x; θ) = f(x; θ*) + J(x)(θ − θ*)`` under a Gaussian weight
posterior is a Gaussian process with mean ``f(x; θ*) + J(x) m`` and kernel
``J(x) Σ J(x')ᵀ``. ``LinearizedPosterior`` holds

    θ − θ* ~ N(m, Σ),    Σ = Σ₀ − Σᵢ Wᵢ Wᵢᵀ,

where ``Σ₀`` is the covariance of a base precision (``WoodburyPrecision`` for square-root
rows, ``DensePrecision`` for any other storage; unbatched) and each downdate ``Wᵢ``
``(*bᵢ, P, kᵢ)`` was left by conditioning on ``kᵢ`` observations
``y = f(x; θ*) + J(θ − θ*) + ε``, ``ε ~ N(0, diag v)`` (Bayes' rule, exact):

    Uᵢ = Σ_{i−1} Jᵀ,   Cᵢ Cᵢᵀ = J Uᵢ + diag v,   Wᵢ = Uᵢ Cᵢ⁻ᵀ,
    m ← m + Wᵢ Cᵢ⁻¹ (y − f(x; θ*) − J m).

Leading batch dimensions of ``J``, ``y`` and ``v`` give a batch of posteriors (one per
fantasy) sharing ``Σ₀``: a downdate costs ``O(batch·P·k)`` memory, not a copy of ``Σ₀``.
Predictions cost ``J Σ₀ Jᵀ`` plus ``(J Wᵢ)(J Wᵢ)ᵀ`` per downdate; samples are drawn from
``Σ₀`` and moved by Matheron's rule through each conditioning step,
``θ ← θ − Wᵢ Cᵢ⁻¹ (J θ + ε)``, ``ε ~ N(0, diag v)``, which has exactly the conditioned
distribution. This is ``FullLaplace.condition`` (a new precision and a GLM mean step) for
many fantasies at once, without a new Laplace object per fantasy.

A base in a dtype narrower than float64 (float32) is held, and every step computed, in
float64; ``predict``, ``condition`` and ``sample_offsets`` take and return the base's
dtype. In float32 the subtraction ``J Σ₀ Jᵀ − UUᵀ`` of a sample-space base lost every
digit where the data pin the function down (negative variances at the training inputs
with noise 10⁻², 240 % off elsewhere) and a conditioning step at noise 10⁻³ failed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from laplace.precision import (
    DensePrecision,
    NotPositiveDefiniteError,
    PrecisionMatrix,
    WoodburyPrecision,
)
from laplace.precision.base import not_pd_message
from laplace.precision.cancellation import wide_dtype


def _base_dtype(base: PrecisionMatrix) -> torch.dtype:
    return base.rows.dtype if isinstance(base, WoodburyPrecision) else base.H.dtype


def _widened(base: PrecisionMatrix) -> PrecisionMatrix:
    """``base`` itself in float64 (or wider), else its float64 twin."""
    tensor = base.rows if isinstance(base, WoodburyPrecision) else base.H
    wide = wide_dtype(tensor)
    if tensor.dtype == wide or tensor.dtype.itemsize >= 8:
        return base
    if isinstance(base, WoodburyPrecision):
        return base._float64()
    return DensePrecision(base.H.to(wide), base.scale.to(wide), base.prior.to(wide),
                          None if base.spectrum is None else base.spectrum.to(wide))


class SharedRows(NamedTuple):
    """Rows shared by every query of a batch (``LinearizedPosterior.shared_rows``), in the
    posterior's wide dtype: mean ``(*b, k_s)``, ``Σ Jᵀ`` ``(*b, P, k_s)``, covariance
    ``(*b, k_s, k_s)``."""

    mean: Tensor
    cov_times: Tensor
    cov: Tensor


class _Step:
    """One conditioning step: ``J`` ``(*b, k, P)``, noise ``v`` ``(*b, k)``, lower ``C``
    ``(*b, k, k)`` and ``W = U C⁻ᵀ`` ``(*b, P, k)``."""

    def __init__(self, J: Tensor, noise: Tensor, C: Tensor, W: Tensor) -> None:
        self.J, self.noise, self.C, self.W = J, noise, C, W


class LinearizedPosterior:
    """``θ − θ* ~ N(m, Σ₀ − Σ WᵢWᵢᵀ)`` (module docstring).

    Args:
        base: the unbatched base precision ``Σ₀⁻¹`` over ``P`` weights; it must answer
            ``inv_square_form`` for ``J`` ``(*b, k, P)``, ``solve`` and ``sample``
            (``WoodburyPrecision``, ``DensePrecision``).
        shift: ``m`` ``(*b, P)`` or ``None`` (zero).
    """

    def __init__(self, base: PrecisionMatrix, shift: Tensor | None = None,
                 steps: list[_Step] | None = None) -> None:
        if not isinstance(base, (WoodburyPrecision, DensePrecision)) or (
            isinstance(base, WoodburyPrecision) and base.batch_shape
        ):
            raise ValueError("base must be an unbatched WoodburyPrecision or a DensePrecision.")
        self._dtype = _base_dtype(base)  # what the public methods take and return
        self.base = _widened(base)
        self._wide = _base_dtype(self.base)
        self.shift = None if shift is None else shift.to(self._wide)
        self.steps = list(steps or [])
        self.n_params = base.n_params
        self._factor: tuple[Tensor, Tensor] | None = None

    def _derive(self, shift: Tensor | None, steps: list[_Step]) -> LinearizedPosterior:
        """A posterior on the same base (sharing its factor) with ``shift`` and ``steps``."""
        out = LinearizedPosterior(self.base, shift, steps)
        out._factor, out._dtype = self._factor, self._dtype
        return out

    def _woodbury_factor(self) -> tuple[Tensor, Tensor] | None:
        """``(1/δ (0-d or P,), B (M, P))``, ``Σ₀ = diag(1/δ) − BᵀB``, for a sample-space base
        (computed once and shared by every conditioned posterior), else ``None``."""
        if not isinstance(self.base, WoodburyPrecision):
            return None
        if self._factor is None:  # 1/δ as a 0-d tensor for a scalar prior (cheaper products)
            prior = self.base.prior
            var = prior.reshape(()).reciprocal() if prior.numel() == 1 else self.base.D.reciprocal()
            self._factor = (var, self.base.covariance_factor())
        return self._factor

    def _base_inv_square_form(self, J: Tensor) -> Tensor:
        """``J Σ₀ Jᵀ`` ``(*bj, k, k)`` for ``J`` ``(*bj, k, P)``."""
        factor = self._woodbury_factor()
        if factor is None:
            return self.base.inv_square_form(J)
        var, B = factor
        U = J @ B.mT
        if var.ndim == 0:
            prior_part = (J @ J.mT) * var
        else:
            V = J * var.sqrt()
            prior_part = V @ V.mT
        return prior_part - U @ U.mT

    def _base_solve(self, J: Tensor) -> Tensor:
        """``J Σ₀`` ``(*bj, k, P)`` (rows ``Σ₀ jᵢ``) for ``J`` ``(*bj, k, P)``."""
        factor = self._woodbury_factor()
        if factor is None:
            return self.base.solve(J)
        var, B = factor
        return J * var - (J @ B.mT) @ B

    @classmethod
    def from_rows(cls, rows: Tensor, noise_var: Tensor, prior: Tensor) -> LinearizedPosterior:
        """The posterior of ``N(θ*, D⁻¹)`` given Jacobian rows ``R`` ``(M, P)`` observed with
        noise variances ``noise_var`` ``(M,)``: ``Σ₀⁻¹ = Rᵀ diag(1/v) R + D`` (``prior``:
        ``δ`` as a number, ``(1,)`` or ``(P,)``), in the sample-space form when ``M ≤ P``
        (predictions cost ``O(M·P)`` per row), else as the dense ``P × P`` matrix
        (``O(P²)`` per row, and no ``M × M`` factor)."""
        if not isinstance(noise_var, Tensor) or noise_var.shape != rows.shape[:1]:
            raise ValueError(f"noise_var must be a tensor of shape {tuple(rows.shape[:1])}.")
        scaled = rows / noise_var.sqrt().unsqueeze(-1)
        prior = torch.as_tensor(prior, dtype=rows.dtype, device=rows.device).reshape(-1)
        M, P = rows.shape
        if M <= P:
            return cls(WoodburyPrecision(scaled, 1.0, prior))
        precision = scaled.mT @ scaled + torch.diag(prior.expand(P))
        return cls.from_precision_matrix(precision)

    @classmethod
    def from_precision_matrix(cls, precision: Tensor) -> LinearizedPosterior:
        """The posterior with a dense precision ``Σ₀⁻¹`` ``(P, P)`` (any Laplace storage,
        materialised: ``la.posterior_precision`` of a Kronecker or diagonal LA)."""
        if not isinstance(precision, Tensor) or precision.ndim != 2 or (
            precision.shape[0] != precision.shape[1]
        ):
            raise ValueError("precision must be a square (P, P) tensor.")
        sym = 0.5 * (precision + precision.mT)
        return cls(DensePrecision(sym, sym.new_ones(()), sym.new_zeros(1)))

    @classmethod
    def from_laplace(cls, la: Any) -> LinearizedPosterior:
        """The posterior of a fitted parametric Laplace object ``la`` over its posterior
        weights: its own sample-space precision when it keeps rows, else its precision
        materialised as a dense ``(P, P)`` matrix (Kronecker, diagonal, dense full); the
        mean shift of ``la.condition`` is carried over."""
        precision = la._precision()
        if isinstance(precision, WoodburyPrecision) and not precision.batch_shape:
            post = cls(precision)
        else:
            post = cls.from_precision_matrix(precision.to_matrix())
        offset = getattr(la, "_glm_offset", None)
        return post if offset is None else post._derive(post._in(offset.detach()), post.steps)

    @property
    def batch_shape(self) -> torch.Size:
        shapes = [s.W.shape[:-2] for s in self.steps]
        if self.shift is not None:
            shapes.append(self.shift.shape[:-1])
        return torch.broadcast_shapes(*shapes) if shapes else torch.Size()

    # ------------------------------------------------------------ moments
    def _cov_times(self, J: Tensor) -> Tensor:
        """``Σ Jᵀ`` ``(*b, P, k)`` for ``J`` ``(*bj, k, P)``."""
        U = self._base_solve(J).mT
        for s in self.steps:
            U = U - s.W @ (J @ s.W).mT
        return U

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the base precision as given, in which ``predict``, ``condition``
        and ``sample_offsets`` take and return tensors (computed in float64 when it is
        narrower)."""
        return self._dtype

    def _in(self, T: Tensor) -> Tensor:
        return T.to(self._wide)

    def _out(self, T: Tensor) -> Tensor:
        return T.to(self._dtype)

    def predict(self, J: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(*b, k)`` and covariance ``(*b, k, k)`` of ``f_lin`` at ``J`` ``(*bx, k, P)``
        with ``f = f(x; θ*)`` ``(*bx, k)``; ``*b`` broadcasts ``*bx`` with ``batch_shape``.
        Differentiable in ``J`` and ``f``."""
        mean, cov = self._moments(self._in(J), self._in(f))
        k = f.shape[-1]
        batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
        return self._out(mean.expand(*batch, k)), self._out(cov.expand(*batch, k, k))

    def _moments(self, J: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """``predict``'s mean and covariance in the wide dtype, not yet broadcast."""
        mean = f if self.shift is None else f + (J @ self.shift.unsqueeze(-1)).squeeze(-1)
        cov = self._base_inv_square_form(J)
        for s in self.steps:
            U = J @ s.W
            cov = cov - U @ U.mT
        return mean, 0.5 * (cov + cov.mT)

    def shared_rows(self, J: Tensor, f: Tensor) -> SharedRows:
        """What ``predict_with_shared`` reuses for rows ``J`` ``(k_s, P)`` (values ``f``
        ``(k_s,)``) that lead every query of a batch, such as the baseline points of an
        acquisition function that evaluates ``[baseline; candidates]``: ``Σ Jᵀ`` and the
        rows' own moments, computed once (not differentiable)."""
        J, f = self._in(J.detach()), self._in(f.detach())
        cov_times = self._cov_times(J)  # (*b, P, k_s)
        mean = f if self.shift is None else f + (J @ self.shift.unsqueeze(-1)).squeeze(-1)
        cov = J @ cov_times
        return SharedRows(mean, cov_times, 0.5 * (cov + cov.mT))

    def predict_with_shared(self, shared: SharedRows, J: Tensor, f: Tensor,
                            lead: int | None = None) -> tuple[Tensor, Tensor]:
        """``predict`` at the rows ``[shared rows[:lead]; J; shared rows[lead:]]``: mean
        ``(*b, k_s + k)`` and covariance ``(*b, k_s + k, k_s + k)`` for ``J`` ``(*bx, k, P)``,
        ``f`` ``(*bx, k)`` (``lead``: how many shared rows come first, default all). Equal
        to ``predict`` of the joined rows up to rounding; the shared rows cost nothing more
        here, and each query row ``O(P·k_s)`` more than its own moments. Differentiable in
        ``J`` and ``f`` (not in the shared rows)."""
        if not isinstance(shared, SharedRows):
            raise ValueError(f"shared must be the SharedRows of shared_rows, not "
                             f"{type(shared).__name__}.")
        k_s = shared.mean.shape[-1]
        a = k_s if lead is None else lead
        if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a <= k_s:
            raise ValueError(f"lead must be an int from 0 to the {k_s} shared rows, not {a!r}.")
        J, f = self._in(J), self._in(f)
        mean, cov = self._moments(J, f)
        cross = J @ shared.cov_times  # (*b, k, k_s)
        k = f.shape[-1]
        batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2], cross.shape[:-2],
                                       shared.mean.shape[:-1], shared.cov.shape[:-2])
        m_s, c_s = shared.mean.expand(*batch, k_s), shared.cov.expand(*batch, k_s, k_s)
        cross = cross.expand(*batch, k, k_s)
        mean = torch.cat([m_s[..., :a], mean.expand(*batch, k), m_s[..., a:]], dim=-1)
        cov = torch.cat([
            torch.cat([c_s[..., :a, :a], cross[..., :a].mT, c_s[..., :a, a:]], dim=-1),
            torch.cat([cross[..., :a], cov.expand(*batch, k, k), cross[..., a:]], dim=-1),
            torch.cat([c_s[..., a:, :a], cross[..., a:].mT, c_s[..., a:, a:]], dim=-1),
        ], dim=-2)
        return self._out(mean), self._out(cov)

    def with_mean_step(self, v: Tensor) -> LinearizedPosterior:
        """The posterior moved by ``Σ v`` for ``v`` ``(P,)`` (a Gauss–Newton step
        ``v = −∇loss`` at ``θ*`` lands on the posterior mean of the linearized model)."""
        step = self._cov_times(self._in(v).unsqueeze(-2)).squeeze(-1)
        shift = step if self.shift is None else self.shift + step
        return self._derive(shift, self.steps)

    def condition(self, J: Tensor, residual: Tensor, noise_var: Tensor) -> LinearizedPosterior:
        """Exact update on observations ``y = f(x; θ*) + J(θ − θ*) + ε``.

        Args:
            J: ``(*bx, k, P)`` Jacobians of the observations.
            residual: ``y − f(x; θ*)`` ``(*by, k)``.
            noise_var: ``(*bn, k)`` positive noise variances.
        Returns:
            A posterior with batch shape ``broadcast(*bx, *by, *bn, batch_shape)``.
        """
        if not isinstance(noise_var, Tensor) or noise_var.ndim < 1 or not bool(
            (noise_var.detach() > 0).all()
        ):
            raise ValueError("noise_var must be a positive tensor (*b, k).")
        J, residual, noise_var = self._in(J), self._in(residual), self._in(noise_var)
        U = self._cov_times(J)  # (*b, P, k)
        A = J @ U + torch.diag_embed(noise_var)
        C, info = torch.linalg.cholesky_ex(0.5 * (A + A.mT))
        if bool((info != 0).any()):
            raise NotPositiveDefiniteError(
                not_pd_message("linearized", " (the conditioning update failed)"))
        W = torch.linalg.solve_triangular(C, U.mT, upper=False).mT  # (*b, P, k)
        if self.shift is not None:
            residual = residual - (J @ self.shift.unsqueeze(-1)).squeeze(-1)
        batch = torch.broadcast_shapes(C.shape[:-2], residual.shape[:-1])
        alpha = torch.linalg.solve_triangular(
            C.expand(*batch, *C.shape[-2:]),
            residual.expand(*batch, residual.shape[-1]).unsqueeze(-1), upper=False)
        shift = (W @ alpha).squeeze(-1)
        if self.shift is not None:
            shift = shift + self.shift
        return self._derive(shift, [*self.steps, _Step(J, noise_var, C, W)])

    # ------------------------------------------------------------ samples
    def sample_offsets(self, n_samples: int,
                       generator: torch.Generator | None = None) -> Tensor:
        """Weight offsets ``θ_s − θ*`` ``(n_samples, *batch_shape, P)`` of posterior draws:
        ``Σ₀^{1/2} ε`` moved through each conditioning step by Matheron's rule."""
        theta = self.base.sample(n_samples, generator=generator)  # (S, P)
        for s in self.steps:
            batch = torch.broadcast_shapes(theta.shape[1:-1], s.W.shape[:-2], s.J.shape[:-2],
                                           s.noise.shape[:-1])
            pad = [1] * (len(batch) - (theta.ndim - 2))
            theta = theta.reshape(n_samples, *pad, *theta.shape[1:])  # (S, *batch, P)
            eps = torch.randn(n_samples, *batch, s.noise.shape[-1], generator=generator,
                              dtype=theta.dtype, device=theta.device)
            r = (theta.unsqueeze(-2) @ s.J.mT).squeeze(-2) + eps * s.noise.sqrt()  # (S, *b, k)
            alpha = torch.linalg.solve_triangular(s.C, r.unsqueeze(-1), upper=False)
            theta = theta - (s.W @ alpha).squeeze(-1)
        batch = self.batch_shape
        theta = theta.reshape(n_samples, *[1] * (len(batch) - (theta.ndim - 2)), *theta.shape[1:])
        if self.shift is not None:
            theta = theta + self.shift
        return self._out(theta.expand(n_samples, *batch, self.n_params))

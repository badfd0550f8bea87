"""Sample-space posterior precision: ``Σ⁻¹ = s·RᵀR + diag(δ)`` from square-root rows.

``R`` ``(M, P)`` holds the square-root curvature rows (``M = N·K`` for ``N`` points and
``K`` outputs, ``H = RᵀR``). With fewer rows than parameters every quantity goes through
``M × M`` matrices and ``(M, P)`` products; no ``P × P`` matrix is formed unless
``to_matrix`` is asked for. With ``W = √s·R`` and ``D = diag(δ)``:

* capacitance ``C = I + W D⁻¹ Wᵀ = L Lᵀ`` ``(M, M)``;
* ``log det Σ⁻¹ = Σ log δ + log det C`` (matrix determinant lemma);
* ``Σ = D⁻¹ − D⁻¹Wᵀ C⁻¹ W D⁻¹`` (Woodbury), so
  ``J Σ Jᵀ = J D⁻¹ Jᵀ − (J D⁻¹ Rᵀ)(I/s + R D⁻¹ Rᵀ)⁻¹(R D⁻¹ Jᵀ)``.

Rows may carry leading batch dimensions ``(*b, M, P)`` (one precision per fantasy, as
``condition`` makes them); every result then gains the leading ``*b``.

Conditioning on new observations ``y = f(x; θ*) + J(θ − θ*) + ε``, ``ε ~ N(0, diag(v))``
of the linearized model is exact: the precision gains the rows ``J/√(s·v)`` (so that
``s·RᵀR`` gains ``Jᵀ diag(1/v) J``; ``condition``) and the mean moves by the GLM step

    θ_new = θ* + Σ_new Jᵀ diag(1/v) (y − f(x; θ*))      (``mean_shift``, via ``solve``).
"""

from __future__ import annotations

import warnings
from functools import cached_property

import torch
from torch import Tensor

from laplace.precision import lastlayer
from laplace.precision.base import NotPositiveDefiniteError, PrecisionMatrix, not_pd_message
from laplace.precision.cancellation import guard_narrow, guard_subtraction, wide_dtype
from laplace.utils import checks
from laplace.utils.cholesky import jittered_cholesky

#: Jitters, relative to the mean diagonal of ``W D⁻¹ Wᵀ``, added in turn to the
#: capacitance when its Cholesky factorisation fails. ``C = I + W D⁻¹ Wᵀ`` is positive
#: definite by construction (finite rows, positive ``s`` and ``δ``), so a failure is
#: rounding: with ``s/δ`` of 10¹² (a noise SD of 10⁻⁶) and hundreds of nearly collinear
#: rows the errors of ``W D⁻¹ Wᵀ`` exceed the identity. A jitter ``ε`` times that mean
#: diagonal acts as an observation noise variance of ``ε`` times the prior's function
#: variance, as GPyTorch's ``psd_safe_cholesky`` adds 10⁻⁸ and more to a kernel matrix.
CAPACITANCE_JITTERS = (1e-10, 1e-8, 1e-6)


def _check_rows(rows: Tensor, name: str = "rows") -> Tensor:
    if not isinstance(rows, Tensor) or not rows.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor.")
    if rows.ndim < 2 or rows.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., M, P) with P > 0, got "
                         f"{tuple(rows.shape)}.")
    if not _all_finite(rows.detach()):
        raise ValueError(f"{name} must be finite.")
    return rows


def _all_finite(T: Tensor) -> bool:
    """Whether every entry is finite, without an ``(M, P)`` temporary: a NaN or inf entry
    makes the sum non-finite; only then is it checked entry by entry (a finite sum cannot
    hide one, an overflowing sum of finite entries is rechecked)."""
    if T.numel() == 0 or bool(torch.isfinite(T.sum())):
        return True
    return bool(torch.isfinite(T).all())


def _check_prior(prior: Tensor, n_params: int, ref: Tensor) -> Tensor:
    lengths = [(1, "a scalar"), (n_params, "one value per parameter")]
    prior = checks.precision_vector(prior, "prior", lengths, ref.device, ref.dtype)
    if not bool((prior.detach() > 0).all()):
        raise NotPositiveDefiniteError(
            not_pd_message("sample-space", " (the prior precision must be positive)")
        )
    return prior


def _unit_plus_psd_cholesky(M: Tensor, where: str = " (the capacitance Cholesky failed)"
                            ) -> tuple[Tensor, float]:
    """Lower Cholesky factor of ``M = I + A`` ``(*b, n, n)``, ``A`` positive semi-definite
    up to rounding, and the jitter used (0.0): if rounding breaks it, of
    ``M + ε·mean(diag A)·I`` for the first ``ε`` of ``CAPACITANCE_JITTERS`` at which it
    exists, with a ``RuntimeWarning``;
    ``NotPositiveDefiniteError`` if none (non-finite entries, or a curvature-to-prior
    ratio beyond the dtype's precision: the message says which and what to change)."""
    scale = (M.diagonal(dim1=-2, dim2=-1) - 1).mean(-1).clamp_min(1.0)[..., None, None]
    factor = jittered_cholesky(M, CAPACITANCE_JITTERS, scale)
    if factor is None:
        if not bool(torch.isfinite(M).all()):
            raise NotPositiveDefiniteError(not_pd_message("sample-space", where))
        raise NotPositiveDefiniteError(
            f"The sample-space posterior precision is not positive definite in floating "
            f"point{where}, even with a jitter of {CAPACITANCE_JITTERS[-1]:g} times the "
            f"mean diagonal ({float(scale.max()):.3g}, the curvature over the prior "
            f"precision, s·RRᵀ/δ): that ratio is beyond {M.dtype}'s precision. Raise "
            "sigma_noise (or the temperature) or the prior precision, or compute in "
            "float64.")
    if factor[1] > 0:
        warnings.warn(f"A sample-space Cholesky factorisation failed to rounding{where}; "
                      f"it succeeded with a jitter of {factor[1]:g} times the mean diagonal "
                      "(as an observation noise variance of that fraction of the prior "
                      "function variance).", RuntimeWarning, stacklevel=4)
    return factor[0], factor[1]


def _lift(T: Tensor, batch_ndim: int, n_lead: int) -> Tensor:
    """``T`` ``(*b, x, y)`` as ``(*b, 1, …, 1, x, y)`` with ``n_lead`` singleton dims."""
    shape = T.shape[:batch_ndim] + (1,) * n_lead + T.shape[batch_ndim:]
    return T.reshape(shape)


def _gram64(R: Tensor, chunk: int = 2**16) -> Tensor:
    """``R Rᵀ`` ``(M, M)`` in float64, summed over column chunks of ``R`` ``(M, P)`` (no
    float64 copy of all of ``R``)."""
    G = R.new_zeros(R.shape[0], R.shape[0], dtype=torch.float64)
    for start in range(0, R.shape[1], chunk):
        block = R[:, start:start + chunk].to(torch.float64)
        G.addmm_(block, block.T)
    return G


class GramSpectrum:
    """The nonzero spectrum of ``R Rᵀ`` (float64), shared across hyperparameters.

    With a scalar prior ``δ``, ``log det Σ⁻¹ = P log δ + Σᵢ log(1 + s λᵢ / δ)`` for any
    ``(δ, s)``: one eigendecomposition serves every marginal-likelihood step. It is that of
    ``R Rᵀ`` ``(M × M)`` when ``M ≤ P``, else that of ``Rᵀ R`` ``(P × P)``, which has the
    same nonzero eigenvalues (the cost stays linear in ``M`` for many rows). The rows are
    treated as constants (gradients flow in ``s`` and ``δ`` only).

    Args:
        rows: square-root curvature rows ``R`` ``(M, P)``.
    """

    def __init__(self, rows: Tensor) -> None:
        rows = _check_rows(rows)
        if rows.ndim != 2:
            raise ValueError(f"rows must have shape (M, P) for a spectrum, got "
                             f"{tuple(rows.shape)}.")
        self.n_rows, self.n_params = rows.shape
        self.dtype = rows.dtype
        self._rows: Tensor | None = None
        if self.n_rows <= self.n_params:
            lam, E = torch.linalg.eigh(_gram64(rows.detach()))
            self.eigenvectors: Tensor | None = E  # (M, M)
        else:  # R Rᵀ = (R V Λ^{-1/2}) Λ (…)ᵀ from Rᵀ R = V Λ Vᵀ
            lam, V = torch.linalg.eigh(_gram64(rows.detach().mT))
            self.eigenvectors, self._right, self._rows = None, V, rows.detach()
        self.eigenvalues = lam.clamp(min=0)  # (min(M, P),) ascending

    def projections(self, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``e`` ``(M,)`` in the eigenbasis of ``R Rᵀ``, grouped by eigenvalue: eigenvalues
        ``λ`` ``(r,)``, squared projections ``(Eᵀe)²`` summed per group ``(r,)`` and the
        group sizes ``(r,)`` (float64). With ``M > P`` the ``M − P`` zero eigenvalues
        outside the span of ``R`` form one group holding ``‖e‖² − Σ (uᵢᵀe)²``."""
        e = e.to(torch.float64)
        if self.eigenvectors is not None:
            return self.eigenvalues, (self.eigenvectors.mT @ e).square(), \
                torch.ones_like(self.eigenvalues)
        # uᵢ = R vᵢ / √λᵢ: uᵢᵀe = vᵢᵀ Rᵀe / √λᵢ (zero where λᵢ = 0)
        lam = self.eigenvalues
        proj = (self._right.mT @ (self._rows.to(torch.float64).mT @ e)).square()
        proj = torch.where(lam > 0, proj / lam.clamp_min(torch.finfo(lam.dtype).tiny), 0.0)
        rest = (e.square().sum() - proj.sum()).clamp_min(0)
        sizes = torch.ones_like(lam)
        return (torch.cat([lam.new_zeros(1), lam]), torch.cat([rest.reshape(1), proj]),
                torch.cat([sizes.new_tensor([self.n_rows - self.n_params]), sizes]))

    def _settings(self, scale: Tensor | float, prior: Tensor | float) -> tuple[Tensor, Tensor]:
        wide = torch.float64
        s = torch.as_tensor(scale, dtype=wide, device=self.eigenvalues.device)
        d = torch.as_tensor(prior, dtype=wide, device=self.eigenvalues.device)
        if not bool((s.detach() > 0).all()) or not bool((d.detach() > 0).all()):
            raise ValueError("scale and prior must be positive for the spectrum log-determinant.")
        return s.unsqueeze(-1), d.unsqueeze(-1)

    def log_det_ratio(self, scale: Tensor | float, prior: Tensor | float) -> Tensor:
        """``log det Σ⁻¹ − P log δ = Σᵢ log(1 + s λᵢ/δ)``.

        Args:
            scale: ``s``, a number or tensor ``(...)``.
            prior: scalar ``δ``, a number or tensor ``(...)`` broadcasting with ``scale``.
        Returns:
            ``(...)`` (the broadcast shape) in the rows' dtype.
        """
        s, d = self._settings(scale, prior)
        return torch.log1p(s * self.eigenvalues / d).sum(-1).to(self.dtype)

    def logdet(self, scale: Tensor | float, prior: Tensor | float) -> Tensor:
        """``log det Σ⁻¹ = P log δ + Σᵢ log(1 + s λᵢ/δ)``: ``(...)`` as ``log_det_ratio``."""
        s, d = self._settings(scale, prior)
        ratio = torch.log1p(s * self.eigenvalues / d).sum(-1)
        return (self.n_params * d.squeeze(-1).log() + ratio).to(self.dtype)


class WoodburyPrecision(PrecisionMatrix):
    """``Σ⁻¹ = s·RᵀR + diag(δ)`` kept as rows ``R`` (module docstring).

    Args:
        rows: square-root curvature rows ``R`` ``(*b, M, P)``, ``H = RᵀR``.
        scale: ``s = 1/(σ²T)`` (positive number, 0-d or one-element tensor).
        prior: ``δ`` as ``(1,)`` (scalar) or ``(P,)`` (per-tensor values expanded to the
            weights, or per weight); positive.
        spectrum: ``GramSpectrum`` of these (unbatched) rows. With a scalar prior,
            ``logdet`` then comes from it (float64, no factorization per setting).
    """

    #: whether the capacitance factor needed a jitter (set when it is computed)
    _jittered = False

    def __init__(
        self, rows: Tensor, scale: Tensor | float, prior: Tensor | float,
        spectrum: GramSpectrum | None = None,
    ) -> None:
        self._setup(_check_rows(rows), scale, prior, spectrum)

    def _setup(self, rows: Tensor, scale: Tensor | float, prior: Tensor | float,
               spectrum: GramSpectrum | None) -> None:
        self.rows = rows
        self.batch_shape = rows.shape[:-2]
        self.n_rows, self.n_params = rows.shape[-2:]
        self.scale = checks.positive_scalar(scale, "scale", rows.device, rows.dtype)
        self.prior = _check_prior(prior, self.n_params, rows)
        self.D = self.prior.expand(self.n_params)
        if spectrum is not None and (
            not isinstance(spectrum, GramSpectrum) or rows.ndim != 2
            or (spectrum.n_rows, spectrum.n_params) != (self.n_rows, self.n_params)
        ):
            raise ValueError(
                f"spectrum must be the GramSpectrum of unbatched rows of shape "
                f"{(self.n_rows, self.n_params)}."
            )
        self.spectrum = spectrum

    def with_hyperparameters(self, scale: Tensor | float, prior: Tensor | float,
                             spectrum: GramSpectrum | None = None) -> WoodburyPrecision:
        """The same rows at other hyperparameters ``(s, δ)``, with ``spectrum`` (this
        one's when ``None``). The rows are not checked again (a pass over ``M × P``
        entries per marginal-likelihood step otherwise); ``s`` and ``δ`` are."""
        out = WoodburyPrecision.__new__(WoodburyPrecision)
        out._setup(self.rows, scale, prior, self.spectrum if spectrum is None else spectrum)
        return out

    # ------------------------------------------------------------ factors
    @cached_property
    def _W(self) -> Tensor:
        """``√s·R`` ``(*b, M, P)``."""
        return self.scale.sqrt() * self.rows

    @cached_property
    def _DinvW(self) -> Tensor:
        """``W D⁻¹`` ``(*b, M, P)``."""
        return self._W / self.D

    def _cross(self, X: Tensor) -> Tensor:
        """``W D⁻¹ Xᵀ = √s·R (X D⁻¹)ᵀ`` for ``X`` ``(*b, q, P)``: ``(*b, M, q)``.

        Computed without an ``(M, P)`` copy of the rows (with a scalar prior without any
        copy at all): the hot paths of a posterior over millions of weights use it.
        """
        if self.prior.numel() == 1:
            return (self.rows @ X.mT) * (self.scale.sqrt() / self.prior[0])
        return (self.rows @ (X / self.D).mT) * self.scale.sqrt()

    @cached_property
    def _capacitance_cholesky(self) -> Tensor:
        """Lower ``L`` with ``L Lᵀ = I + W D⁻¹ Wᵀ`` ``(*b, M, M)``."""
        C = self._cross(self.rows) * self.scale.sqrt()
        L, jitter = _unit_plus_psd_cholesky(C + torch.eye(self.n_rows, dtype=C.dtype,
                                                          device=C.device))
        self._jittered = jitter > 0
        return L

    def _whitened_cross(self, X: Tensor) -> Tensor:
        """``L⁻¹ X`` for ``X`` ``(*b, *lead, M, q)``."""
        L = _lift(self._capacitance_cholesky, len(self.batch_shape),
                  X.ndim - 2 - len(self.batch_shape))
        return torch.linalg.solve_triangular(L, X, upper=False)

    def _project(self, Js: Tensor) -> Tensor:
        """``L⁻¹ W D⁻¹ Jᵀ`` ``(*b, *lead, M, K)`` for ``Js`` ``(*lead, K, P)``."""
        if not self.batch_shape:  # one (M, n·K) product: no broadcast copies of R
            lead, K = Js.shape[:-2], Js.shape[-2]
            V = self._whitened_cross(self._cross(Js.reshape(-1, self.n_params)))
            return V.reshape(self.n_rows, *lead, K).movedim(0, -2)
        DinvW = _lift(self._DinvW, len(self.batch_shape), Js.ndim - 2)
        A = DinvW @ Js.mT
        return self._whitened_cross(A)

    # ------------------------------------------------------------ PrecisionMatrix
    def logdet(self) -> Tensor:
        """``log det Σ⁻¹`` ``(*b)``; from the spectrum with a scalar prior when given."""
        if self.spectrum is not None and self.prior.numel() == 1:
            return self.spectrum.logdet(self.scale, self.prior.reshape(())).to(self.rows.dtype)
        chol = self._capacitance_cholesky.diagonal(dim1=-2, dim2=-1)
        prior = (self.n_params * self.prior.log()[0] if self.prior.numel() == 1
                 else self.prior.log().sum())
        return prior + 2 * chol.log().sum(-1)

    def inv_square_form(self, Js: Tensor) -> Tensor:
        """``Jₙ Σ Jₙᵀ`` for ``Js`` ``(n, K, P)``: ``(*b, n, K, K)`` (differentiable in ``J``)."""
        if self.prior.numel() == 1:  # no (n, K, P) temporary
            base = (Js @ Js.mT) / self.prior[0]
        else:
            base = (Js / self.D) @ Js.mT
        V = self._project(Js)
        return guard_subtraction(base, base - V.mT @ V,
                                 lambda: self._symmetric_root_rows(Js), self._narrow_jitter())

    def _root_terms(self) -> tuple[Tensor, Tensor, Tensor]:
        """``V = W D^{-1/2}`` ``(*b, M, P)``, the eigenvectors ``E`` of ``V Vᵀ`` and
        ``g = 1/(a(1 + a))``, ``a = √(1 + μ)`` ``(*b, M)``: ``T = I − Vᵀ E diag(g) Eᵀ V``
        is the symmetric root of ``(I + VᵀV)⁻¹`` (``sample``)."""
        V = self._W * self.D.rsqrt()
        mu, E = torch.linalg.eigh(V @ V.mT)
        a = (1 + mu.clamp(min=0)).sqrt()
        return V, E, 1 / (a * (1 + a))

    def _symmetric_root_rows(self, Js: Tensor) -> Tensor:
        """``u T`` ``(*b, *lead, K, P)`` for ``Js`` ``(*lead, K, P)``, ``u = J D^{-1/2}``
        (``_root_terms``): ``J Σ Jᵀ = (uT)(uT)ᵀ``, positive semi-definite whatever the
        rounding. In float64 (``_float64``) from the rows and ``Js`` as given: a float32
        eigendecomposition cannot resolve the directions the cancellation is about."""
        wide = self._float64()
        V, E, g = wide._root_terms()
        n_lead = Js.ndim - 2
        V = _lift(V, len(self.batch_shape), n_lead)
        E = _lift(E, len(self.batch_shape), n_lead)
        g = g.reshape(*self.batch_shape, *(1,) * n_lead, 1, -1)
        u = Js.to(V.dtype) * wide.D.rsqrt()
        return u - (((u @ V.mT) @ E) * g) @ E.mT @ V

    def joint_inv_square_form(self, Js: Tensor) -> Tensor:
        """``J Σ Jᵀ`` over all points: ``(*b, n·K, n·K)``, row ``point·K + k``."""
        return self.inv_square_form(Js.reshape(1, -1, Js.shape[-1]))[..., 0, :, :]

    def sample(self, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Zero-mean draws ``Σ^{1/2} ε``: ``(n_samples, *b, P)``.

        With ``V = W D^{-1/2}`` ``(M, P)``, ``Σ = D^{-1/2} (I + VᵀV)⁻¹ D^{-1/2}``. Let
        ``V Vᵀ = E diag(μ) Eᵀ`` ``(M × M)`` and ``T = I − Vᵀ E diag(g) Eᵀ V`` with
        ``g = 1/(a(1 + a))``, ``a = √(1 + μ)``. ``T`` is symmetric and
        ``T² = I − Vᵀ E diag(2g − μg²) Eᵀ V = I − Vᵀ E diag(1/(1+μ)) Eᵀ V = (I + VᵀV)⁻¹``
        (Woodbury), so ``S = D^{-1/2} T`` has ``S Sᵀ = Σ``; draws are
        ``D^{-1/2}(ε − Vᵀ E diag(g) Eᵀ V ε)``. ``g`` stays finite at ``μ = 0``.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
        root = self.D.rsqrt()
        V, E, g = self._root_terms()
        eps = torch.randn(n_samples, *self.batch_shape, self.n_params, generator=generator,
                          dtype=self.rows.dtype, device=self.rows.device)
        proj = (eps.unsqueeze(-2) @ V.mT @ E) * g.unsqueeze(-2)  # (S, *b, 1, M)
        z = eps - (proj @ E.mT @ V).squeeze(-2)
        return z * root

    def square_form(self, delta: Tensor) -> Tensor:
        """``Δᵀ Σ⁻¹ Δ`` for ``delta`` ``(..., P)`` (``...`` broadcasting with ``*b``)."""
        low = (delta.unsqueeze(-2) @ self._W.mT).squeeze(-2)
        return low.square().sum(-1) + (delta.square() * self.D).sum(-1)

    def diag(self) -> Tensor:
        """Diagonal of ``Σ⁻¹``: ``(*b, P)``."""
        return self._W.square().sum(-2) + self.D

    def to_matrix(self) -> Tensor:
        """Dense ``Σ⁻¹`` ``(*b, P, P)`` (``P²`` memory: only on request)."""
        return self._W.mT @ self._W + torch.diag(self.D)

    def covariance_factor(self) -> Tensor:
        """``B = L⁻¹ W D⁻¹`` ``(*b, M, P)`` with ``Σ = D⁻¹ − BᵀB``.

        An ``(M, P)`` tensor (a copy of the rows' size): for many predictions with one
        posterior, ``J Σ Jᵀ = J D⁻¹ Jᵀ − (J Bᵀ)(J Bᵀ)ᵀ`` then needs no triangular solve
        per call (``LinearizedPosterior``)."""
        return self._whitened_cross(self._DinvW)

    def covariance(self) -> Tensor:
        """Dense ``Σ = D⁻¹ − BᵀB`` (``covariance_factor``): ``(*b, P, P)`` (on request;
        in float64 where the subtraction cannot resolve it, ``guard_narrow``)."""
        V = self.covariance_factor()
        out = torch.diag_embed(self.D.reciprocal()) - V.mT @ V
        return guard_narrow(out.diagonal(dim1=-2, dim2=-1), self.D.reciprocal(), out,
                            lambda: self._float64().covariance(), "weights",
                            self._narrow_jitter())

    def covariance_diag(self) -> Tensor:
        """``diag(Σ) = 1/δ − colsum(B²)`` (``covariance_factor``): ``(*b, P)`` (in float64
        where the subtraction cannot resolve it, ``guard_narrow``)."""
        out = self.D.reciprocal() - self.covariance_factor().square().sum(-2)
        return guard_narrow(out, self.D.reciprocal(), out,
                            lambda: self._float64().covariance_diag(), "weights",
                            self._narrow_jitter())

    def _narrow_jitter(self) -> bool:
        """Whether the capacitance (computed before) needed a jitter in a dtype narrower
        than float64: its results are then recomputed in float64 (``cancellation``)."""
        return bool(self._jittered) and self.rows.dtype != wide_dtype(self.rows)

    def _float64(self) -> WoodburyPrecision:
        """The same precision in ``wide_dtype`` (a copy of the rows)."""
        wide = wide_dtype(self.rows)
        return WoodburyPrecision(self.rows.to(wide), self.scale.to(wide), self.prior.to(wide))

    def last_layer_variance(self, phi, n_outputs, bias, joint=False, diagonal=False):
        """``J Σ Jᵀ`` for ``J = [I_K ⊗ φᵀ, I_K]`` without building ``J`` (see base)."""
        n, width = phi.shape
        K = n_outputs
        if self.n_params != K * width + (K if bias else 0):
            raise ValueError(
                f"phi of shape {tuple(phi.shape)} with n_outputs={K}, bias={bias} does not "
                f"match the {self.n_params} parameters of the precision."
            )
        base = lastlayer.diag(self.D.reciprocal(), phi, K, bias, joint, diagonal)
        A = self._DinvW
        G = torch.einsum("...mkd,nd->...mnk", A[..., : K * width].unflatten(-1, (K, width)),
                         phi)
        if bias:
            G = G + A[..., K * width:].unsqueeze(-2)
        U = self._whitened_cross(G.flatten(-2))  # (*b, M, n·K)
        if joint:
            out = base - U.mT @ U
        elif diagonal:
            out = base - U.unflatten(-1, (n, K)).square().sum(-3)
        else:
            U = U.unflatten(-1, (n, K))
            out = base - torch.einsum("...mnk,...mnl->...nkl", U, U)
        var, prior_var = ((out, base) if diagonal else
                          (out.diagonal(dim1=-2, dim2=-1), base.diagonal(dim1=-2, dim2=-1)))
        return guard_narrow(var, prior_var, out, lambda: self._float64().last_layer_variance(
            phi.to(wide_dtype(phi)), n_outputs, bias, joint, diagonal), "points",
            self._narrow_jitter())

    def capacitance_inv_square_form(self, e: Tensor) -> Tensor:
        """``eᵀ C⁻¹ e`` with the capacitance ``C = I + s·R D⁻¹ Rᵀ`` for ``e`` ``(*b, M)``:
        ``(*b)``. With ``s = 1/σ²``, ``σ²C = R D⁻¹ Rᵀ + σ²I`` is the marginal covariance
        of ``y = Rθ + ε`` under ``θ ~ N(0, D⁻¹)``, so this is the data term of the
        evidence of the linear(ized) model (through the Cholesky factor, no cancellation)."""
        if e.shape[-1:] != (self.n_rows,):
            raise ValueError(f"e of shape {tuple(e.shape)} must end in {self.n_rows} (rows).")
        return self._whitened_cross(e.unsqueeze(-1)).square().sum((-2, -1))

    # ------------------------------------------------------------ posterior updates
    def solve(self, v: Tensor) -> Tensor:
        """``Σ v`` for ``v`` ``(..., P)`` (``...`` broadcasting with ``*b``): ``(..., P)``.

        Unbatched rows: the vectors are stacked into one ``(P, n)`` product (no broadcast
        copy of the rows per vector)."""
        if not self.batch_shape:
            u = v / self.D
            flat = u.reshape(-1, self.n_params)
            t = self._whitened_cross((self.rows @ flat.mT) * self.scale.sqrt())
            t = torch.linalg.solve_triangular(self._capacitance_cholesky.mT, t, upper=True)
            back = (t.mT @ self.rows) * (self.scale.sqrt() / self.D)
            return u - back.reshape(u.shape)
        u = (v / self.D).unsqueeze(-1)
        L = self._capacitance_cholesky
        t = torch.linalg.solve_triangular(L, (self.rows @ u) * self.scale.sqrt(), upper=False)
        t = torch.linalg.solve_triangular(L.mT, t, upper=True)
        return v / self.D - (self.rows.mT @ t).squeeze(-1) * self.scale.sqrt() / self.D

    def _check_noise(self, noise_var: Tensor | float, k: int) -> Tensor:
        nv = torch.as_tensor(noise_var, dtype=self.rows.dtype, device=self.rows.device)
        if nv.ndim > 0 and nv.shape[-1] not in (1, k):
            raise ValueError(f"noise_var of shape {tuple(nv.shape)} must be a scalar or end "
                             f"in {k} (one variance per new row).")
        if not bool(torch.isfinite(nv.detach()).all()) or not bool((nv.detach() > 0).all()):
            raise ValueError("noise_var must be positive and finite.")
        return nv

    def _check_new_rows(self, rows: Tensor) -> Tensor:
        rows = _check_rows(rows)
        if rows.shape[-1] != self.n_params or rows.dtype != self.rows.dtype:
            raise ValueError(
                f"rows of shape {tuple(rows.shape)} and dtype {rows.dtype} must have "
                f"{self.n_params} columns and dtype {self.rows.dtype}."
            )
        return rows

    def condition(self, rows: Tensor, noise_var: Tensor | float) -> WoodburyPrecision:
        """The precision after observing ``y = J θ + ε``, ``ε ~ N(0, diag(noise_var))``.

        Exact rank-``k`` update: ``Σ_new⁻¹ = Σ⁻¹ + Jᵀ diag(1/v) J``, stored as the rows
        ``[R; J/√(s·v)]`` at the same ``s`` and ``δ``. The capacitance factor is bordered
        (``O(M² k + M k P)``), not refactorized. The spectrum is not carried over.

        Args:
            rows: Jacobian rows ``J`` ``(*bj, k, P)``; leading dims give a batch of
                fantasies and broadcast with this precision's ``*b``.
            noise_var: ``v``, a number or tensor ``(*bv, k)`` / ``(*bv, 1)``.
        Returns:
            ``WoodburyPrecision`` with rows ``(*b', M + k, P)``; the mean shift is
            ``mean_shift(J, y − f, v)`` on it.
        """
        J = self._check_new_rows(rows)
        k = J.shape[-2]
        nv = self._check_noise(noise_var, k)
        Wn = J / nv.sqrt().unsqueeze(-1)  # √s · (J/√(s·v))
        X = self._DinvW @ Wn.mT  # (*b', M, k)
        Y = Wn @ (Wn / self.D).mT + torch.eye(k, dtype=J.dtype, device=J.device)
        L = self._capacitance_cholesky
        Z = torch.linalg.solve_triangular(L, X, upper=False)
        # the Schur complement: I plus a positive semi-definite part
        L22, jitter = _unit_plus_psd_cholesky(Y - Z.mT @ Z, " (the conditioning update failed)")
        batch = torch.broadcast_shapes(self.batch_shape, Wn.shape[:-2], Z.shape[:-2])
        L = L.expand(*batch, *L.shape[-2:])
        top = torch.cat([L, L.new_zeros(*batch, self.n_rows, k)], -1)
        bottom = torch.cat([Z.mT.expand(*batch, k, self.n_rows), L22.expand(*batch, k, k)], -1)
        new_rows = torch.cat([self.rows.expand(*batch, *self.rows.shape[-2:]),
                              (Wn / self.scale.sqrt()).expand(*batch, k, self.n_params)], -2)
        out = WoodburyPrecision(new_rows, self.scale, self.prior)
        out._capacitance_cholesky = torch.cat([top, bottom], -2)
        out._jittered = self._jittered or jitter > 0
        return out

    def mean_shift(self, rows: Tensor, residual: Tensor, noise_var: Tensor | float) -> Tensor:
        """GLM step ``Σ Jᵀ diag(1/v) r`` of the linearized model: ``(*b', P)``.

        Called on the precision returned by ``condition(rows, noise_var)``, it is the exact
        move of the posterior mean, ``θ_new = θ* + Σ_new Jᵀ diag(1/v)(y − f(x; θ*))``.

        Args:
            rows: ``J`` ``(*bj, k, P)``.
            residual: ``r = y − f(x; θ*)`` ``(*br, k)``.
            noise_var: ``v`` as in ``condition``.
        """
        J = self._check_new_rows(rows)
        nv = self._check_noise(noise_var, J.shape[-2])
        return self.solve((J.mT @ (residual / nv).unsqueeze(-1)).squeeze(-1))

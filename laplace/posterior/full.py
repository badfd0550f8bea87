"""``FullLaplace``: the full curvature over all (trainable) weights, dense or sample-space.

Two storages of the same precision ``Σ⁻¹ = s·H + diag(δ)``:

* ``"dense"`` — ``H`` ``(P, P)`` itself (``DensePrecision``);
* ``"sample"`` — the square-root rows ``R`` ``(M, P)`` with ``H = RᵀR`` that the backend
  gives (``M = N·K`` for the GGN, ``N`` for the empirical Fisher), answered through
  ``M × M`` matrices by ``WoodburyPrecision``; no ``P × P`` matrix is formed unless
  ``H``, ``posterior_precision`` or ``posterior_covariance`` is asked for.

``precision_form="auto"`` (the default) keeps rows while the backend gives them and there
are fewer rows than parameters, and turns them into the dense ``H`` (summed batch by
batch, as the dense route does) as soon as that stops holding.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from laplace.posterior.conditioning import ConditioningMixin
from laplace.posterior.parametric import ParametricLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.precision import DensePrecision, GramSpectrum, PrecisionMatrix, WoodburyPrecision
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs

#: A sample-space posterior warns (``UserWarning``) when asked to materialise a ``P × P``
#: matrix (``H``, ``posterior_precision``, ``posterior_covariance``, ``posterior_scale``)
#: of more than this many bytes (1 GiB: ``P ≈ 11,600`` in float64).
MATERIALIZE_WARNING_BYTES = 2**30

PRECISION_FORMS = ("auto", "dense", "sample")


def check_precision_form(value: Any) -> str:
    """``value`` if it is one of ``PRECISION_FORMS``, else ``ValueError`` naming it."""
    if not isinstance(value, str) or value not in PRECISION_FORMS:
        raise ValueError(
            f"precision_form must be one of {PRECISION_FORMS}, got {value!r}."
        )
    return value


class FullLaplace(ConditioningMixin, ParametricLaplace):
    """Laplace approximation with the full curvature (module docstring for the forms).

    Args:
        precision_form: ``"auto"`` (sample-space while the backend gives square-root rows
            and they are fewer than the parameters, else dense), ``"dense"`` (always a
            ``P × P`` curvature) or ``"sample"`` (always rows; the backend must give
            them). Fixed at construction (read-only afterwards).

    Other arguments are those of ``BaseLaplace``.
    """

    _key = ("all", "full")

    def __init__(self, model: Any, likelihood: str, *args: Any,
                 precision_form: str = "auto", **kwargs: Any) -> None:
        self._precision_form = check_precision_form(precision_form)
        super().__init__(model, likelihood, *args, **kwargs)

    @property
    def precision_form(self) -> str:
        """The requested storage: ``"auto"``, ``"dense"`` or ``"sample"`` (read-only)."""
        return self._precision_form

    @property
    def uses_sample_space(self) -> bool:
        """Whether the posterior is currently stored as square-root rows."""
        return self.__dict__.get("_H") is None and self.__dict__.get("_rows") is not None

    # ------------------------------------------------------------ storage
    def _init_H(self) -> None:
        P = self._posterior_dim
        self._rows: list[Tensor] | None = []
        self._spectrum: Tensor | None = None
        self._gram: GramSpectrum | None = None
        if self._precision_form == "dense":
            self.H = torch.zeros(P, P, device=self._device, dtype=self._dtype)
        else:
            self.H = None

    def _curvature_unset(self) -> bool:
        return self.__dict__.get("_H") is None and self.__dict__.get("_rows") is None

    def _curvature_view(self) -> Tensor | None:
        """The public ``H``: stored (dense) or materialised as ``RᵀR`` (sample-space)."""
        if not self.uses_sample_space:
            return self.__dict__.get("_H")
        self._warn_materialise("curvature H")
        R = self._row_matrix()
        return R.T @ R

    @property
    def H(self) -> Tensor | None:
        """The curvature ``(P, P)`` (materialised on request in the sample-space form)."""
        return self._curvature_view()

    @H.setter
    def H(self, value: Tensor | None) -> None:
        self.__dict__["_H"] = value

    def _row_matrix(self) -> Tensor:
        """The kept square-root rows ``R`` ``(M, P)`` (``M = 0`` before ``fit``)."""
        rows = self._rows
        if len(rows) == 1:
            return rows[0]
        if not rows:
            return torch.zeros(0, self._posterior_dim, device=self._device, dtype=self._dtype)
        self._rows = [torch.cat(rows)]
        return self._rows[0]

    def _n_rows(self) -> int:
        return sum(r.shape[0] for r in self._rows)

    def _to_dense(self) -> None:
        """Switch to the dense form: ``H = Σ_batches RᵀR`` summed as the dense route does."""
        H = torch.zeros(self._posterior_dim, self._posterior_dim, device=self._device,
                        dtype=self._dtype)
        for rows in self._rows:
            H.addmm_(rows.T, rows)
        self.H = H
        if self._n_rows() > self._posterior_dim:
            self._rows = None
        self._gram = None

    def _curv_closure(self, X: Inputs, y: Tensor, N: int) -> tuple[Tensor, Any]:
        sqrt_rows = getattr(self.backend, "sqrt_rows", None)
        if sqrt_rows is None:
            if self._precision_form == "sample":
                raise ValueError(
                    f"precision_form='sample' needs square-root curvature rows, which the "
                    f"backend {type(self.backend).__name__} does not give (sqrt_rows); use "
                    "precision_form='auto' or 'dense'."
                )
            if self.uses_sample_space:
                self._to_dense()
            self._rows = None
            return self.backend.full(X, y, N=N)
        rows, loss = sqrt_rows(X, y)
        H = self.__dict__.get("_H")
        if self._rows is not None:
            self._rows.append(rows)
        if H is None:
            if self._precision_form == "auto" and self._n_rows() >= self._posterior_dim:
                self._to_dense()
            return loss, None
        if self._rows is not None and self._n_rows() > self._posterior_dim:
            self._rows = None
        H.addmm_(rows.T, rows)  # in place: no P×P temporary per batch
        return loss, None

    def _add_rows(self, J: Tensor) -> PrecisionMatrix:
        """``H + JᵀJ`` for ``condition`` (on a shallow copy: shared storage is not changed).

        Sample-space: the capacitance factor is bordered (``WoodburyPrecision.condition``)
        rather than refactorized. Dense: a new ``H``.
        """
        self._spectrum, self._gram = None, None
        if self.uses_sample_space:
            scale, prior = self._H_factor.detach(), self.prior_precision.detach()
            precision = self._precision().condition(J, 1 / scale)  # rows [R; J]
            self._rows = [precision.rows]
            if self._precision_form == "auto" and self._n_rows() >= self._posterior_dim:
                self._to_dense()
            else:
                self._cached = ((scale.clone(), prior.clone()), precision)
                return precision
        else:
            self.H = self.__dict__["_H"] + J.T @ J
            rows = self._rows
            self._rows = None if rows is None or self._n_rows() + len(J) > self._posterior_dim \
                else [*rows, J]
        self._cached = None
        return self._precision()

    def _fit_inplace_state(self, override: bool) -> dict[str, Any]:
        """``fit(override=False)`` adds to the stored ``H`` and rows in place: copy them.
        (``override=True`` allocates new ones, so nothing needs copying.)"""
        if override:
            return {}
        state: dict[str, Any] = {}
        if isinstance(self.__dict__.get("_H"), Tensor):
            state["_H"] = self.__dict__["_H"].clone()
        if self.__dict__.get("_rows") is not None:
            state["_rows"] = list(self._rows)
        return state

    def _accumulate(self, H_batch: Tensor | None) -> None:
        if H_batch is not None:
            self.__dict__["_H"] += H_batch

    def _finalize_fit(self) -> None:
        self._spectrum, self._gram = None, None
        if self.uses_sample_space:
            self._row_matrix()  # one (M, P) tensor from here on

    def _H_state(self) -> Tensor:
        return self._row_matrix() if self.uses_sample_space else self.__dict__["_H"]

    def state_dict(self, *, dense: bool = False) -> dict[str, Any]:
        """As ``ParametricLaplace``'s, plus ``"precision_form"`` (``"dense"`` or
        ``"sample"``: whether ``"H"`` holds ``H`` ``(P, P)`` or the rows ``R`` ``(M, P)``).

        Args:
            dense: store ``H`` ``(P, P)`` even when the posterior keeps its rows (fewer
                rows than parameters): the form laplace-torch 0.3 loads, ``P / M`` times
                larger than the rows.
        """
        dense = checks.flag(dense, "dense")
        state = super().state_dict()
        if dense and self.uses_sample_space:
            state["H"] = self.H
        state["precision_form"] = "sample" if self.uses_sample_space and not dense else "dense"
        if self._glm_offset is not None:
            state["glm_offset"] = self._glm_offset
        return state

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        checks.state_keys(state_dict, ("cls_name",), type(self).__name__)
        form = state_dict.get("precision_form", "dense")
        if form not in ("dense", "sample"):
            raise ValueError(f"State has precision_form {form!r}: expected 'dense' or 'sample'.")
        self._incoming_form = form
        super().load_state_dict(state_dict)
        offset = state_dict.get("glm_offset")
        self._glm_offset = None if offset is None else self._from_state(offset)

    def _check_H_state(self, state: Any) -> None:
        P = self._posterior_dim
        form = self.__dict__.get("_incoming_form", "dense")
        rows = form == "sample"
        if not isinstance(state, Tensor) or state.ndim != 2 or state.shape[1] != P or (
            not rows and state.shape[0] != P
        ):
            shape = tuple(state.shape) if isinstance(state, Tensor) else type(state).__name__
            expected = f"(M, {P}) rows" if rows else f"{(P, P)}"
            raise ValueError(
                f"State's curvature H has shapes {shape}, this {type(self).__name__} expects "
                f"{expected}: it was saved for a different architecture."
            )

    def _load_H_state(self, state: Any) -> None:
        form = self.__dict__.pop("_incoming_form", "dense")
        self._spectrum, self._gram = None, None
        if form == "sample":
            self._rows, self.H = [state], None
            if self._precision_form == "dense" or (
                self._precision_form == "auto" and state.shape[0] >= self._posterior_dim
            ):
                self._to_dense()
        else:
            self._rows, self.H = None, state

    def _reduce_across_processes(self) -> None:
        """Sum the loss (and a dense ``H``); keep the square-root rows of all processes
        (stacked in rank order) while there are no more of them than parameters, else
        every process switches to the dense ``H`` and the ``H`` are summed."""
        loss = torch.as_tensor(self.loss, device=self._device, dtype=self._dtype)
        self.loss = distributed_fit.all_reduce_nested([loss])[0]
        like = loss if self._rows is None or not self._rows else self._rows[0]
        gathered = distributed_fit.concat_rows(self._rows, self._posterior_dim, like)
        dense = self.__dict__.get("_H")
        if gathered is not None:
            self._rows = gathered
            if dense is not None:  # precision_form="dense" keeps H beside the rows
                self.H = distributed_fit.all_reduce_nested([dense])[0]
            elif self._precision_form == "auto" and self._n_rows() >= self._posterior_dim:
                self._to_dense()
            return
        if self.uses_sample_space:
            self._to_dense()
        self._rows = None
        self.H = distributed_fit.all_reduce_nested([self.__dict__["_H"]])[0]

    # ------------------------------------------------------------ precision
    @property
    def spectrum(self) -> Tensor:
        """Eigenvalues of ``H`` ``(P,)`` in float64, ascending (computed once per fit).

        Always in float64: a float32 eigendecomposition has absolute errors of order
        ``1e-7·λ_max`` in every eigenvalue, which shifts ``log det`` (and the tuned
        prior) far more than a Cholesky factorization does; in float64 the spectrum is
        as accurate as the float32 curvature it comes from. With rows kept it comes from
        the ``M × M`` Gram matrix ``RRᵀ`` (zeros for the other ``P − M``).
        """
        if self._spectrum is None:
            if self._rows:
                lam = self._gram_spectrum().eigenvalues  # ascending; beyond P they are 0
                pad = lam.new_zeros(max(self._posterior_dim - lam.numel(), 0))
                self._spectrum = torch.cat([pad, lam])[-self._posterior_dim:]
            else:
                self._spectrum = torch.linalg.eigvalsh(self.__dict__["_H"].to(torch.float64))
        return self._spectrum

    def _gram_spectrum(self) -> GramSpectrum:
        if self._gram is None:
            self._gram = GramSpectrum(self._row_matrix())
        return self._gram

    def _prepare_for_tuning(self) -> None:
        self.spectrum  # noqa: B018  (computed once for all tuning steps)

    def _make_precision(self, scale: Tensor, prior: Tensor) -> PrecisionMatrix:
        # Hyperparameters with gradients mean a tuning loop: one eigendecomposition then
        # serves every step. A one-off evaluation uses a Cholesky factor.
        if self._curvature_unset():  # a last-layer LA before fit: allocated on first use
            self._init_H()
        tuning = prior.requires_grad or scale.requires_grad
        scalar = prior.numel() == 1
        if prior.numel() not in (1, self._posterior_dim):
            prior = self.prior_precision_diag
        if self.uses_sample_space:
            gram = None
            if scalar:
                gram = self._gram_spectrum() if tuning else self._gram
            R = self._row_matrix()
            base = self.__dict__.get("_row_precision")
            if base is None or base.rows is not R:  # the rows are checked once per fit
                base = self._row_precision = WoodburyPrecision(R, scale, prior)
            return base.with_hyperparameters(scale, prior, gram)
        spectrum = None
        if scalar:
            spectrum = self.spectrum if tuning else self._spectrum
        return DensePrecision(self.__dict__["_H"], scale, prior, spectrum)

    def _warn_materialise(self, what: str) -> None:
        P = self._posterior_dim
        size = P * P * torch.empty((), dtype=self._dtype).element_size()
        if size > MATERIALIZE_WARNING_BYTES:
            warnings.warn(
                f"Materialising the {P} x {P} {what} ({size / 2**30:.3g} GiB) of a "
                f"sample-space {type(self).__name__} (MATERIALIZE_WARNING_BYTES = "
                f"{MATERIALIZE_WARNING_BYTES}).",
                UserWarning, stacklevel=3,
            )

    @property
    def posterior_precision(self) -> Tensor:
        """Dense posterior precision ``Σ⁻¹``: ``(P, P)`` (materialised on request)."""
        if self.uses_sample_space:
            self._warn_materialise("posterior precision")
        return self._precision().to_matrix()

    @property
    def posterior_covariance(self) -> Tensor:
        """Dense posterior covariance ``Σ``: ``(P, P)`` (materialised on request)."""
        if self.uses_sample_space:
            self._warn_materialise("posterior covariance")
        return self._precision().covariance()

    @property
    def posterior_scale(self) -> Tensor:
        """Lower-triangular ``S`` with ``S Sᵀ = Σ``: ``(P, P)``."""
        return torch.linalg.cholesky(self.posterior_covariance)

    def to(self, device: torch.device | str) -> FullLaplace:
        self._gram, self._row_precision = None, None  # recomputed on the new device
        return super().to(device)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if not self.uses_sample_space:
            state["_rows"] = None  # only a spectrum shortcut in the dense form
        state["_gram"], state["_row_precision"] = None, None
        return state

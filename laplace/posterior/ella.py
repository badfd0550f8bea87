"""ELLA: the linearized Laplace approximation on Nyström features of the NTK.

Deng, Zhou & Zhu (2022), "Accelerated Linearized Laplace Approximation for Bayesian
Deep Learning".

With the stacked Jacobians ``J_M`` (``MC × P``) of a random subset of ``M`` training
points, ``K_MM = J_M J_Mᵀ = V diag(λ) Vᵀ`` and its top-``K`` eigenpairs, the Nyström
feature map of the NTK ``κ(x, x') = J(x) J(x')ᵀ`` is

    φ(x) = κ(x, M) V_K λ_K^{-1/2} = J(x) Ψ,    Ψ = J_Mᵀ V_K λ_K^{-1/2}   (P × K).

``ΨᵀΨ = I_K``: the columns of ``Ψ`` are the top-``K`` right singular vectors of ``J_M``
(they are computed as such, from the thin SVD ``J_M = U diag(√λ) Ψ_allᵀ``, which equals
the eigen-route above without squaring the condition number). ``φ(x)`` is thus
``J(x)`` in orthonormal coordinates of the top-``K`` NTK directions, and ELLA is the
linearized Laplace approximation restricted to ``θ = θ* + Ψ z``: the prior
``N(0, δ⁻¹ I)`` restricts to ``z ~ N(0, δ⁻¹ I_K)`` and, over *all* ``N`` training points,

    G = Σₙ φₙᵀ Λₙ φₙ   (K × K),      Σ_K = (s·G + δ I_K)⁻¹,     s = 1 / (σ² T),

with ``Λₙ`` the Hessian of the per-point loss w.r.t. the outputs (``I`` for regression,
``diag(p) − ppᵀ`` for classification, full ``C × C`` blocks). The predictive is
``f(x; θ*)`` with covariance ``φ(x) Σ_K φ(x)ᵀ``, and the marginal likelihood is the
Laplace one with the curvature restricted to the ``K`` directions:

    log p(D) ≈ log p(D | θ*) − ½ (logdet(I_K + s G / δ) + δ ‖θ* − μ₀‖²).

Exactness: with ``M = N`` and ``K = rank(J)``, ``Ψ`` is an orthonormal basis of the
row space of the full Jacobian ``J``; since ``Jᵀ Λ J`` lives there, the full-GGN
posterior covariance is ``Ψ Σ_K Ψᵀ + δ⁻¹ (I − ΨΨᵀ)``. So the full-GGN predictive
variance is ELLA's plus ``δ⁻¹ ‖(I − ΨΨᵀ) J(x)ᵀ‖²``: they agree wherever the rows of
``J(x)`` lie in the row space of ``J`` (at every training input, and at every ``x`` when
``rank(J) = P``), and the marginal likelihoods agree exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from laplace.curvature.curvature import output_hessian_sqrt
from laplace.posterior import arguments, validation_search
from laplace.posterior.functional import FunctionalLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs, inputs_to, split_batch
from laplace.utils.enums import Likelihood
from laplace.utils.errors import NotFittedError

_GP_ONLY = ("independent_outputs", "diagonal_kernel", "output_hessian")


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int >= 1`` or a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def reject_gp_options(cls_name: str, kwargs: dict[str, Any]) -> None:
    """The full-kernel approximations take none of ``FunctionalLaplace``'s kernel options."""
    given = sorted(set(_GP_ONLY) & set(kwargs))
    if given:
        raise ValueError(f"{cls_name} does not support {given} (it keeps the full "
                         "output-by-output kernel and per-point output Hessians).")


def batches(la: FunctionalLaplace, loader: Any, progress_bar: bool = False, desc: str = "fit"):
    """``(X, y)`` of each batch on the model's device, with target checks."""
    for i, batch in enumerate(tqdm(loader, desc=desc, disable=not progress_bar)):
        X, y = split_batch(batch, la.dict_key_x, la.dict_key_y)
        X, y = inputs_to(X, la._device), y.to(la._device)
        if not bool(torch.isfinite(y.float()).all()):
            raise ValueError(f"Batch {i}: targets contain NaN or inf.")
        yield X, y


def loss_and_target(la: FunctionalLaplace, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``factor · lossfunc`` of one batch and the targets shaped like the flat outputs."""
    if la.likelihood == Likelihood.REGRESSION:
        if y.numel() != f.numel():
            raise ValueError(f"Targets of shape {tuple(y.shape)} do not match the model "
                             f"outputs {tuple(f.shape)}.")
        target = y.reshape(f.shape)
    else:
        target = y.reshape(-1).long()
        if target.numel() != f.shape[0]:
            raise ValueError(f"{target.numel()} class labels for {f.shape[0]} outputs.")
    return la.backend.factor * la.backend.lossfunc(f, target), target


def subset_jacobians(la: FunctionalLaplace, loader: Any, indices: np.ndarray) -> Tensor:
    """Jacobians ``(m, C, P)`` of the training points ``indices`` (in that order)."""
    subset = DataLoader(Subset(loader.dataset, indices.tolist()),
                        batch_size=loader.batch_size or len(indices), shuffle=False)
    return torch.cat([la._jacobians(X)[0] for X, _ in batches(la, subset)])


def row_basis(J: Tensor, n_keep: int | None = None) -> tuple[Tensor, Tensor]:
    """Singular values ``(r,)`` and orthonormal right singular vectors ``(P, r)`` of the
    ``(m, P)`` matrix ``J``: the top ``n_keep`` (all by default) above the numerical-rank
    tolerance ``σ_max · max(m, P) · eps``. ``K = J Jᵀ`` has eigenvalues ``σ²`` and
    ``Jᵀ V_K λ_K^{-1/2}`` equals the returned basis."""
    _, sv, Vh = torch.linalg.svd(J, full_matrices=False)
    n_keep = len(sv) if n_keep is None else n_keep
    if len(sv) == 0 or float(sv[0]) == 0.0:
        raise ValueError("The Jacobians of the chosen training points are all zero.")
    tol = float(sv[0]) * max(J.shape) * torch.finfo(J.dtype).eps
    rank = int((sv > tol).sum())
    if n_keep > rank:
        warnings.warn(
            f"Only {rank} kernel eigenvalues are numerically nonzero; keeping {rank} "
            f"directions instead of {n_keep}.", RuntimeWarning, stacklevel=3,
        )
        n_keep = rank
    V = Vh[:n_keep].T
    # Fix each singular vector's sign (largest entry positive) so that the basis, and the
    # coordinates built on it, do not depend on the LAPACK / cuSOLVER sign choice.
    peak = V.gather(0, V.abs().argmax(0, keepdim=True))
    return sv[:n_keep], (V * torch.where(peak < 0, -1.0, 1.0).to(V.dtype)).contiguous()


class ELLA(FunctionalLaplace):
    """Accelerated linearized Laplace (``hessian_structure="gp"``,
    ``functional_approximation="nystrom"``).

    Args:
        n_subset: ``M``, the number of training points whose NTK Gram matrix gives the
            Nyström features, and of the rows of ``J_M``: one output per point, drawn
            uniformly, for several outputs (laplace-torch's draws:
            ``torch.randperm(N)[:M]`` from a generator seeded with ``seed``, the outputs
            by ``torch.randint`` from one seeded with ``seed + 1``).
        n_eigenvalues: ``K``, the number of features (top eigenpairs of ``K_MM``);
            at most ``M`` (default ``min(20, M)``; laplace-torch requires it). If fewer
            eigenvalues are numerically nonzero, only those are kept (with a
            ``RuntimeWarning``; laplace-torch raises); ``n_features`` says how many.
        seed: seed of the subset and output draws (laplace-torch's default, 1234).
        all_outputs: use every output of each subset point (``M·C`` rows of ``J_M``,
            ``n_eigenvalues`` up to ``M·C``) instead of one drawn output: ``C`` times the
            cost of the basis, and with ``M = N`` and ``K`` the rank of ``J`` the
            full-GGN posterior at the training inputs (module docstring).

    Other arguments are those of ``BaseLaplace``; only scalar prior precisions.

    The feature map is the ``P × K`` matrix ``Ψ`` (``φ(x) = J(x) Ψ``); no ``P × P``
    matrix is formed. See the module docstring for the math.
    """

    _DISCOURAGE_MARGLIK = False

    _key = ("all", "gp")
    #: laplace-torch's order and name (``subsample_size``) of the subset size.
    _POSITIONAL = ("subsample_size", "n_eigenvalues", *arguments.BASE[:-1], "seed")
    _ALIASES = {"subsample_size": "n_subset"}
    _STATE_KEYS = ("n_eigenvalues", "eigenvalues", "Psi", "G")

    def __init__(self, model: nn.Module, likelihood: str, n_subset: int, *args: Any,
                 n_eigenvalues: int | None = None, seed: int = 1234, all_outputs: bool = False,
                 **kwargs: Any) -> None:
        reject_gp_options(type(self).__name__, kwargs)
        super().__init__(model, likelihood, positive_int(n_subset, "n_subset"), *args,
                         output_hessian="block", seed=seed, **kwargs)
        self.n_eigenvalues = (min(20, self.n_subset) if n_eigenvalues is None
                              else positive_int(n_eigenvalues, "n_eigenvalues"))
        if not isinstance(all_outputs, bool):
            raise ValueError(f"all_outputs must be True or False, not {all_outputs!r}.")
        self.all_outputs = all_outputs
        if self.n_eigenvalues > self.n_subset and not all_outputs:
            raise ValueError(f"n_eigenvalues={self.n_eigenvalues} exceeds n_subset (subsample_"
                             f"size)={self.n_subset}, the size of the subset's kernel K_MM.")
        self._Psi: Tensor | None = None
        self.G: Tensor | None = None
        #: laplace-torch's record: examples processed by ``fit`` and the grid points of
        #: ``optimize_hyperparameters`` (``val_nll`` stays empty: ``fit`` has no
        #: ``val_loader`` here)
        self.fit_history_: dict[str, list[Any]] = {
            "processed_examples": [], "val_nll": [], "tuning": []}

    # ----------------------------------------------------------------- fit
    @restores_state_on_error
    def fit(self, train_loader: Any, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """Features from the subset, then ``G`` and the loss over all training data."""
        distributed_fit.require_local(distributed, type(self).__name__)
        checks.flag(progress_bar, "progress_bar")
        N = self._begin_fit(train_loader)
        J_M = subset_jacobians(self, train_loader, self.sod_indices)  # (M, C, P)
        if self.all_outputs:
            J_M = J_M.reshape(-1, J_M.shape[-1])
            if self.n_eigenvalues > len(J_M):
                raise ValueError(f"n_eigenvalues={self.n_eigenvalues} exceeds the size "
                                 f"M·C = {len(J_M)} of the subset's kernel matrix K_MM.")
        else:
            outputs = torch.randint(J_M.shape[1], (len(J_M),),
                                    generator=torch.Generator().manual_seed(self.seed + 1))
            J_M = J_M[torch.arange(len(J_M)), outputs.to(J_M.device)]  # one output a point
        sv, Psi = row_basis(J_M.double(), self.n_eigenvalues)  # as laplace-torch: in double
        self._Psi, self.eigenvalues = Psi.to(self._dtype), sv.square().to(self._dtype)
        del J_M
        K = self._Psi.shape[1]
        G = torch.zeros(K, K, dtype=self._dtype, device=self._device)
        loss = 0.0
        for i, (X, y) in enumerate(batches(self, train_loader, progress_bar)):
            J, f = self._jacobians(X)
            if i == 0:
                self.n_outputs = f.shape[-1]
            batch_loss, _ = loss_and_target(self, f, y)
            loss = loss + batch_loss
            phi = output_hessian_sqrt(f, self.likelihood, self.backend.factor) @ (J @ self._Psi)
            G = G + torch.einsum("nck,ncl->kl", phi, phi)
        self.G = (G + G.T) / 2
        self.loss, self.n_data = loss, N
        self._decompose()
        self.fit_history_ = {"processed_examples": [float(N)], "val_nll": [], "tuning": []}

    def optimize_hyperparameters(self, val_loader: Any, grid: Iterable[Any]) -> None:
        """laplace-torch's validation search: the prior precision (or, for regression,
        the ``(prior_precision, sigma_noise)`` pair) of ``grid`` whose predictive has the
        lowest mean validation NLL (Gaussian with the noise for regression, probit
        probabilities otherwise); each point is recorded in ``fit_history_["tuning"]``.

        Raises:
            ValueError: an empty grid, or no finite score (nothing is changed then).
        """
        self._require_fit()
        self.fit_history_["tuning"].extend(validation_search.search(self, val_loader, grid))

    def _draw_subset(self, N: int) -> np.ndarray:
        """laplace-torch's draw: the first ``M`` of a seeded random permutation."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(N, generator=generator)[: self.n_subset].numpy()

    def _decompose(self) -> None:
        g, self._G_vecs = torch.linalg.eigh(self.G)
        self._G_vals = g.clamp(min=0)

    @property
    def n_features(self) -> int:
        self._require_fit()
        return self._Psi.shape[1]

    def features(self, X: Inputs) -> tuple[Tensor, Tensor]:
        """``φ(x) = J(x) Ψ`` ``(n, C, K)`` and the MAP outputs ``f(x; θ*)`` ``(n, C)``."""
        self._require_fit()
        J, f = self._jacobians(self._prediction_inputs(X), self.enable_backprop)
        return J @ self._Psi, f

    # ---------------------------------------------------- hyperparameters
    @property
    def prior_factor_sod(self) -> float:
        return 1.0  # G sums over all N training points: no subset-of-data rescaling

    @property
    def posterior_covariance(self) -> Tensor:
        """``Σ_K = (s G + δ I)⁻¹`` ``(K, K)`` over the feature coordinates ``z``."""
        self._require_fit()
        Q = self._G_vecs
        return (Q / (self._H_factor * self._G_vals + self._delta())) @ Q.T

    # ----------------------------------------------------- marginal lik.
    @property
    def log_det_ratio(self) -> Tensor:
        """``logdet(I_K + s G / δ)``: ``logdet`` of the posterior over the prior precision
        in the ``K`` feature directions (the other directions keep the prior)."""
        self._require_fit()
        return torch.log1p(self._H_factor * self._G_vals / self._delta()).sum()

    @property
    def scatter(self) -> Tensor:
        """``δ ‖θ* − μ₀‖²``."""
        diff = self.mean - self.prior_mean
        return self._delta() * (diff @ diff)

    def _require_fit(self) -> None:
        if getattr(self, "_Psi", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train_loader).")

    # ----------------------------------------------------------- predictive
    def _covariance_root(self, Js: Tensor) -> Tensor:
        """``U`` ``(n, C, K)`` with ``U Uᵀ = φ Σ_K φᵀ`` for Jacobians ``Js`` ``(n, C, P)``."""
        self._require_fit()
        scale = (self._H_factor * self._G_vals + self._delta()).rsqrt()
        return (Js @ self._Psi @ self._G_vecs) * scale

    def functional_variance(self, jacobians: Tensor) -> Tensor:
        """``φ Σ_K φᵀ`` per point: ``(n, C, C)`` for Jacobians ``(n, C, P)``."""
        U = self._covariance_root(jacobians)
        return U @ U.transpose(-1, -2)

    def functional_covariance(self, jacobians: Tensor) -> Tensor:
        """``φ Σ_K φᵀ`` over all points: ``(n·C, n·C)``, row ``point·C + output``."""
        U = self._covariance_root(jacobians)
        U = U.reshape(-1, U.shape[-1])
        return U @ U.T

    def predictive_moments(self, x: Inputs, *, joint: bool = False) -> tuple[Tensor, Tensor]:
        """``f(x; θ*)`` ``(n, C)`` and ``φ Σ_K φᵀ`` ``(n, C, C)`` (``(nC, nC)`` if ``joint``)."""
        self._require_fit()
        J, f_mu = self._jacobians(self._prediction_inputs(x), self.enable_backprop)
        if joint:
            return f_mu.reshape(-1), self.functional_covariance(J)
        return f_mu, self.functional_variance(J)

    # --------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, Any]:
        return {**self._common_state(), "n_eigenvalues": self.n_eigenvalues,
                "eigenvalues": self.eigenvalues, "Psi": self._Psi, "G": self.G}

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_common_state(state_dict)
        if state_dict["Psi"].shape[0] != self.n_params:
            raise ValueError(f"The state's features are over {state_dict['Psi'].shape[0]} "
                             f"parameters, the model has {self.n_params}.")
        device = self._device
        self.n_eigenvalues = int(state_dict["n_eigenvalues"])
        self.eigenvalues = state_dict["eigenvalues"].to(device)
        self._Psi, self.G = state_dict["Psi"].to(device), state_dict["G"].to(device)
        self._decompose()

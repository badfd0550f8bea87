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
from collections.abc import Iterable, Mapping
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


def balanced_subset(dataset: Any, m: int, seed: int, dict_key_y: str) -> np.ndarray:
    """laplace-torch's class-balanced draw of ``m`` dataset indices: each class's
    indices in a random order (one generator seeded with ``seed``, classes in sorted
    order), then one index per class in turn until ``m`` are drawn."""
    labels = []
    for i in range(len(dataset)):
        item = dataset[i]
        target = item[dict_key_y] if isinstance(item, Mapping) else item[1]
        target = torch.as_tensor(target)
        labels.append(int(target.argmax() if target.numel() > 1 else target))
    labels_t = torch.tensor(labels)
    generator = torch.Generator().manual_seed(seed)
    queues = []
    for label in labels_t.unique(sorted=True):
        members = torch.where(labels_t == label)[0]
        queues.append(members[torch.randperm(len(members), generator=generator)].tolist())
    drawn: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        drawn.extend(q[turn] for q in queues if turn < len(q))
    if len(drawn) < m:
        raise ValueError(f"balanced=True needs {m} training points, the data has {len(drawn)}.")
    return np.asarray(drawn[:m])


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
        #: laplace-torch's record: the examples processed after each batch of ``fit``,
        #: the validation NLLs of ``fit(val_loader=..., val_steps=...)`` and the grid
        #: points of ``optimize_hyperparameters``
        self.fit_history_: dict[str, list[Any]] = {
            "processed_examples": [], "val_nll": [], "tuning": []}

    # ----------------------------------------------------------------- fit
    @restores_state_on_error
    def fit(self, train_loader: Any, progress_bar: bool = False,
            distributed: bool | None = None, *, val_loader: Any = None,
            val_steps: int | None = None, balanced: bool = False) -> None:
        """Features from the subset, then ``G`` and the loss over all training data.

        Args:
            val_loader: validation data whose mean predictive NLL (Gaussian with the
                noise for regression, probit otherwise) is recorded in
                ``fit_history_["val_nll"]`` at the end of the fit, and every
                ``val_steps`` batches when that is given (laplace-torch's keywords).
            val_steps: a positive integer or ``None``.
            balanced: draw the subset class by class in turn (classification only;
                laplace-torch's round-robin over classes, each in a seeded random order).
        """
        distributed_fit.require_local(distributed, type(self).__name__)
        checks.flag(progress_bar, "progress_bar")
        balanced = checks.flag(balanced, "balanced")
        if val_steps is not None and (not isinstance(val_steps, int)
                                      or isinstance(val_steps, bool) or val_steps <= 0):
            raise ValueError(f"val_steps must be a positive integer or None, not {val_steps!r}.")
        if val_loader is not None and (isinstance(val_loader, (Tensor, str, Mapping))
                                       or not hasattr(val_loader, "__iter__")):
            raise ValueError(f"val_loader must be a DataLoader (or another iterable of "
                             f"batches) or None, not {type(val_loader).__name__}.")
        if balanced and self.likelihood == Likelihood.REGRESSION:
            raise ValueError("balanced=True draws the subset by class: classification only.")
        N = self._begin_fit(train_loader)
        if balanced:
            self.sod_indices = balanced_subset(train_loader.dataset, self.n_subset, self.seed,
                                               self.dict_key_y)
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
        loss, seen, step = 0.0, 0, 0
        history: dict[str, list[Any]] = {"processed_examples": [], "val_nll": [], "tuning": []}
        for step, (X, y) in enumerate(batches(self, train_loader, progress_bar), start=1):
            J, f = self._jacobians(X)
            if step == 1:
                self.n_outputs = f.shape[-1]
            batch_loss, _ = loss_and_target(self, f, y)
            loss = loss + batch_loss
            phi = output_hessian_sqrt(f, self.likelihood, self.backend.factor) @ (J @ self._Psi)
            G = G + torch.einsum("nck,ncl->kl", phi, phi)
            seen += len(f)
            history["processed_examples"].append(float(seen))
            if val_loader is not None and val_steps and step % val_steps == 0:
                history["val_nll"].append(self._partial_nll(G, loss, seen, val_loader))
        self.G = (G + G.T) / 2
        self.loss, self.n_data = loss, N
        self._decompose()
        if val_loader is not None and (not val_steps or step % val_steps):
            history["val_nll"].append(validation_search.predictive_nll(self, val_loader))
        self.fit_history_ = history

    def _partial_nll(self, G: Tensor, loss: Any, seen: int, val_loader: Any) -> float:
        """The validation NLL of the posterior of the batches so far (``fit``'s
        ``val_steps``): ``G``, the loss and the count are those of the first ``seen``."""
        self.G, self.loss, self.n_data = (G + G.T) / 2, loss, seen
        self._decompose()
        return validation_search.predictive_nll(self, val_loader)

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
        checks.jacobians(Js, self._Psi.shape[0], self._dtype, "jacobians")
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
        self.n_eigenvalues = int(state_dict["n_eigenvalues"])
        self.eigenvalues = self._from_state(state_dict["eigenvalues"])
        self._Psi, self.G = self._from_state([state_dict["Psi"], state_dict["G"]])
        self._decompose()

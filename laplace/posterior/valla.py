"""VaLLA: a sparse variational GP on the neural tangent kernel of the MAP network.

Ortega, Santana & Hernández-Lobato (2023), "Variational Linearized Laplace
Approximation for Bayesian Deep Learning".

The GP prior has mean ``f(x; θ*)`` (the MAP network; ``prior_mean`` is not used) and the
kernel of the linearized network under the prior ``N(·, δ⁻¹ I)``,
``κ(x, x') = J(x) J(x')ᵀ / δ``, over (point, output) pairs. ``M`` inducing points ``Z``
are a random subset of the training inputs (``numpy.random.default_rng(seed)``, as
``FunctionalLaplace`` draws its subset) and stay fixed there; their locations are not
optimised. ``q(u) = N(m, S)`` over the ``M·C`` inducing outputs gives

    mean(x) = f(x; θ*) + κ(x,Z) K_ZZ⁻¹ m,
    var(x)  = κ(x,x) − κ(x,Z) K_ZZ⁻¹ κ(Z,x) + κ(x,Z) K_ZZ⁻¹ S K_ZZ⁻¹ κ(Z,x).

**Computation.** With the thin SVD ``J_Z = U diag(σ) Vᵀ`` (``V`` is ``P × r``, ``r`` the
numerical rank of ``J_Z``), ``K_ZZ = R Rᵀ`` for ``R = U diag(σ) / √δ`` and
``κ(x,Z) K_ZZ⁻¹ R = J(x) V / √δ``. In whitened coordinates ``u = R v``,
``q(v) = N(m_w, S_w)`` against the prior ``N(0, I_r)``:

    mean(x) = f(x; θ*) + J(x) V m_w / √δ,
    var(x)  = (J(x) (I − VVᵀ) J(x)ᵀ + J(x) V S_w Vᵀ J(x)ᵀ) / δ,

so ``K_ZZ`` is never inverted (``K_ZZ⁻¹`` is the pseudo-inverse when ``J_Z`` is rank
deficient, e.g. ``M·C > P``) and the Nyström residual is PSD by construction.
``inducing_mean`` / ``inducing_covariance`` return ``m = R m_w`` and ``S = R S_w Rᵀ``.

**The mean.** By default ``m = 0``: the predictive mean is the MAP network's output and
only the covariance is variational, as in the paper and laplace-torch; ``free_mean=True``
fits ``m`` as well (a sparse variational GP whose mean moves off the network). The
formulas below give the free mean; with ``m = 0`` the regression ELBO at the optimal
``S_w`` is the collapsed bound minus the optimal mean's gain ``½ (s²/δ) Σᵢ bᵢ² / (1 + s wᵢ/δ)``
(``b = Qᵀ Σₙ Aₙᵀ(yₙ − fₙ)``, ``W = Q diag(w) Qᵀ``), and classification optimises ``L`` only.

**Regression** (noise variance ``σ² T``, ``s = 1/(σ² T)``): the optimal ``q(u)`` is
Titsias' (2009), ``Σ = (K_ZZ + s K_ZN K_NZ)⁻¹``, ``m = s K_ZZ Σ K_ZN (y − f)``,
``S = K_ZZ Σ K_ZZ``; whitened, with ``Aₙ = J(xₙ) V`` and ``W = Σₙ Aₙᵀ Aₙ``,
``S_w = (I + s W / δ)⁻¹`` and ``m_w = s S_w Σₙ Aₙᵀ (yₙ − fₙ) / √δ``. It is recomputed from
the current hyperparameters, and ``log_marginal_likelihood`` is the collapsed ELBO

    log N(y − f | 0, Q_NN + σ²T I) − s/2 · tr(K_NN − Q_NN),   Q_NN = K_NZ K_ZZ⁻¹ K_ZN,

a lower bound on the evidence of the linearized-network GP (exact when ``Z`` = all
training inputs), differentiable in ``δ`` and ``σ``. With ``Z`` all ``N`` training
inputs the predictive is the exact GP's: its covariance equals the weight-space
full-GGN predictive ``J(x) (s JᵀJ + δI)⁻¹ J(x)ᵀ`` at every ``x`` (whether ``N·C`` is
below or above ``P``), and its mean is ``f(x; θ*) + κ(x,X)(K + σ²T I)⁻¹ (y − f)``.

**Classification** (and reward modeling while fitting): ``(m_w, S_w = L Lᵀ)`` maximise
the ELBO ``s Σₙ E_q[log softmax(fₙ)_{yₙ}] − KL(q(v) ‖ N(0, I))`` (``s = 1/T``) with Adam
for ``n_iter`` steps of rate ``lr``. The expected log-likelihood is a Monte Carlo
estimate with ``n_mc_samples`` base draws fixed at fit time (a ``torch.Generator``
seeded with ``seed``; sample-average approximation), so the objective is deterministic
and reproducible; the draws are reparameterised as
``fₙ = μₙ + (Aₙ L ε + Dₙ^{1/2} ξₙ) / √δ`` with ``Dₙ = J(xₙ)(I − VVᵀ)J(xₙ)ᵀ``. ``L`` is
lower triangular with a positive (log-parametrised) diagonal. The optimisation starts
from ``m_w = 0`` and the Gauss-Newton (Laplace) covariance ``S_w = (I + s W_Λ / δ)⁻¹``,
``W_Λ = Σₙ Aₙᵀ Λₙ Aₙ``, and keeps the best iterate; ``elbo_history`` records the
objective. ``log_marginal_likelihood`` is this ELBO at the fitted ``q(v)`` (changing
``δ`` does not re-optimise ``q``: call ``fit`` again). The per-point whitened
cross-kernels are kept for it: ``O(N·C·r)`` memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from laplace.curvature.curvature import output_hessian_sqrt
from laplace.posterior.ella import (
    batches,
    loss_and_target,
    positive_int,
    reject_gp_options,
    row_basis,
    subset_jacobians,
)
from laplace.posterior.functional import FunctionalLaplace
from laplace.posterior.transaction import restores_state_on_error
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.data import Inputs
from laplace.utils.enums import Likelihood
from laplace.utils.errors import NotFittedError

_REGRESSION_STATE = ("beta", "rr", "trace_res", "n_obs")
_CLASSIFICATION_STATE = ("m_w", "L_w", "A_train", "D_sqrt", "f_train", "y_train", "eps_u",
                         "eps_res", "elbo_history")


class VaLLA(FunctionalLaplace):
    """Variational linearized Laplace (``hessian_structure="gp"``,
    ``functional_approximation="variational"``).

    Args:
        n_inducing: ``M``, the number of inducing points (a random training subset).
        seed: seed of the inducing-point draw and of the Monte Carlo base draws.
        n_iter: Adam steps on the classification ELBO (unused for regression).
        lr: Adam learning rate.
        n_mc_samples: Monte Carlo draws of the expected log-likelihood (classification).
        free_mean: also fit the mean of ``q(u)`` (``m``; a sparse variational GP whose
            predictive mean moves off the network's output). Default: ``m = 0``, the
            predictive mean is the MAP network's output and only the covariance is
            variational, as in the paper and laplace-torch.

    Other arguments are those of ``BaseLaplace``; only scalar prior precisions, and
    ``prior_mean`` is unused (the prior mean is the MAP network).

    See the module docstring for the math.
    """

    _DISCOURAGE_MARGLIK = False

    _subset_arg = "n_inducing"
    _STATE_OPTIONS = (*FunctionalLaplace._STATE_OPTIONS, "free_mean")
    _STATE_KEYS = ("V", "sv", "U", "W")

    _key = ("all", "gp")
    #: laplace-torch's VaLLA takes inducing locations, not a count: no positional mapping.
    _POSITIONAL = None

    def __init__(self, model: nn.Module, likelihood: str, n_inducing: int, *args: Any,
                 seed: int = 0, n_iter: int = 300, lr: float = 1e-2, n_mc_samples: int = 32,
                 free_mean: bool = False, **kwargs: Any) -> None:
        reject_gp_options(type(self).__name__, kwargs)
        super().__init__(model, likelihood, positive_int(n_inducing, "n_inducing"), *args,
                         output_hessian="block", seed=seed, **kwargs)
        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
            raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}.")
        if not float(lr) > 0:
            raise ValueError(f"lr must be positive, got {lr!r}.")
        self.n_iter, self.lr = int(n_iter), float(lr)
        self.n_mc_samples = positive_int(n_mc_samples, "n_mc_samples")
        if not isinstance(free_mean, bool):
            raise ValueError(f"free_mean must be True or False, not {free_mean!r}.")
        self.free_mean = free_mean
        self._V: Tensor | None = None

    @property
    def n_inducing(self) -> int:
        return self.n_subset

    @property
    def _regression(self) -> bool:
        return self.likelihood == Likelihood.REGRESSION

    # ----------------------------------------------------------------- fit
    @restores_state_on_error
    def fit(self, train_loader: Any, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """Inducing basis from the subset, then one pass over all training data (and,
        for classification, ``n_iter`` Adam steps on the ELBO)."""
        distributed_fit.require_local(distributed, type(self).__name__)
        N = self._begin_fit(train_loader)
        J_Z = subset_jacobians(self, train_loader, self.sod_indices)
        J_Z = J_Z.reshape(-1, J_Z.shape[-1])
        self._sv, self._V = row_basis(J_Z)
        self._U = (J_Z @ self._V) / self._sv  # J_Z = U diag(σ) Vᵀ
        del J_Z
        r = self._V.shape[1]
        zeros = dict(dtype=self._dtype, device=self._device)
        W, beta = torch.zeros(r, r, **zeros), torch.zeros(r, **zeros)
        rr, trace_res, n_obs, loss = 0.0, 0.0, 0, 0.0
        cache: list[tuple[Tensor, ...]] = []
        for i, (X, y) in enumerate(batches(self, train_loader, progress_bar)):
            J, f = self._jacobians(X)
            if i == 0:
                self.n_outputs = f.shape[-1]
            batch_loss, target = loss_and_target(self, f, y)
            loss = loss + batch_loss
            A = J @ self._V  # (n, C, r): whitened cross-kernel rows
            E = J - A @ self._V.T  # component of J(x) outside the inducing span
            SA = output_hessian_sqrt(f, self.likelihood, self.backend.factor) @ A
            W = W + torch.einsum("ncr,ncq->rq", SA, SA)
            n_obs += f.numel()
            if self._regression:
                res = target - f
                beta = beta + torch.einsum("ncr,nc->r", A, res)
                rr = rr + res.square().sum()
                trace_res = trace_res + E.square().sum()
            else:
                D = E @ E.transpose(-1, -2)
                lam, Q = torch.linalg.eigh(D)
                cache.append((A, (Q * lam.clamp(min=0).sqrt().unsqueeze(-2)) @ Q.mT, f, target))
        self.W = (W + W.T) / 2
        self.loss, self.n_data = loss, N
        self._decompose()
        if self._regression:
            self.beta, self.n_obs = beta, n_obs
            self.rr, self.trace_res = torch.as_tensor(rr, **zeros), torch.as_tensor(trace_res,
                                                                                   **zeros)
        else:
            self.A_train, self.D_sqrt, self.f_train, self.y_train = (torch.cat(t)
                                                                      for t in zip(*cache))
            self._optimize_elbo()

    def _decompose(self) -> None:
        w, self._W_vecs = torch.linalg.eigh(self.W)
        self._W_vals = w.clamp(min=0)

    # ---------------------------------------------------- hyperparameters
    @property
    def prior_factor_sod(self) -> float:
        return 1.0

    def _laplace_q(self) -> tuple[Tensor, Tensor]:
        """``(d, Q)`` with ``(I + s W / δ)⁻¹ = Q diag(d) Qᵀ``."""
        a = self._H_factor / self._delta()
        return 1 / (1 + a * self._W_vals), self._W_vecs

    def whitened_variational(self) -> tuple[Tensor, Tensor]:
        """``m_w`` ``(r,)`` and a factor ``L`` ``(r, r)`` of ``S_w = L Lᵀ`` (regression:
        Titsias' optimum at the current hyperparameters)."""
        self._require_fit()
        if not self._regression:
            return self.m_w, self.L_w
        d, Q = self._laplace_q()
        m_w = self._H_factor * self._delta().rsqrt() * (Q @ (d * (Q.T @ self.beta)))
        return (m_w if self.free_mean else torch.zeros_like(m_w)), Q * d.sqrt()

    @property
    def inducing_mean(self) -> Tensor:
        """``m = R m_w`` ``(M, C)``: the mean of ``q(u)`` (relative to ``f(Z; θ*)``)."""
        m_w, _ = self.whitened_variational()
        R = self._U * (self._sv * self._delta().rsqrt())
        return (R @ m_w).reshape(self.n_subset, -1)

    @property
    def inducing_covariance(self) -> Tensor:
        """``S = R S_w Rᵀ`` ``(MC, MC)``: the covariance of ``q(u)``."""
        _, L = self.whitened_variational()
        RL = (self._U * (self._sv * self._delta().rsqrt())) @ L
        return RL @ RL.T

    # ----------------------------------------------------- ELBO / marglik
    def _optimize_elbo(self) -> None:
        r = self._V.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        S, (n, C) = self.n_mc_samples, self.f_train.shape
        self.eps_u = torch.randn(S, r, generator=gen, dtype=torch.float64).to(
            dtype=self._dtype, device=self._device)
        self.eps_res = torch.randn(S, n, C, generator=gen, dtype=torch.float64).to(
            dtype=self._dtype, device=self._device)
        d, Q = self._laplace_q()
        L0 = torch.linalg.cholesky((Q * d) @ Q.T).detach()
        m = torch.zeros(r, dtype=self._dtype, device=self._device,
                        requires_grad=self.free_mean)
        off = L0.tril(-1).clone().requires_grad_(True)
        log_diag = L0.diagonal().log().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([m, off, log_diag] if self.free_mean else [off, log_diag],
                                     lr=self.lr)
        delta = self._delta().detach()
        best, history = None, []
        for step in range(self.n_iter + 1):
            optimizer.zero_grad()
            L = off.tril(-1) + torch.diag(log_diag.exp())
            elbo = self._classification_elbo(m, L, delta)
            value = float(elbo.detach())
            history.append(value)
            if best is None or value > best[0]:
                best = (value, m.detach().clone(), L.detach().clone())
            if step == self.n_iter:
                break
            (-elbo).backward()
            optimizer.step()
        self.m_w, self.L_w = best[1], best[2]
        self.elbo_history = history

    def _classification_elbo(self, m: Tensor, L: Tensor, delta: Tensor) -> Tensor:
        """``s · (1/S) Σ_draws Σₙ log softmax(fₙ)_{yₙ} − KL(N(m, LLᵀ) ‖ N(0, I))``."""
        scale = delta.rsqrt()
        mu = self.f_train + (self.A_train @ m) * scale  # (n, C)
        u = self.eps_u @ L.T  # (S, r): draws of L ε
        f = mu + (torch.einsum("ncr,sr->snc", self.A_train, u)
                  + torch.einsum("ncd,snd->snc", self.D_sqrt, self.eps_res)) * scale
        logp = torch.log_softmax(f, dim=-1)
        index = self.y_train.reshape(1, -1, 1).expand(len(f), -1, 1)
        expected = logp.gather(-1, index).sum() / len(f)
        kl = 0.5 * (L.square().sum() + m @ m - len(m)
                    - 2 * L.diagonal().abs().log().sum())
        return self._H_factor * expected - kl

    def _collapsed_elbo(self) -> Tensor:
        s, delta = self._H_factor, self._delta()
        a = s / delta
        w, Q = self._W_vals, self._W_vecs
        b = Q.T @ self.beta
        # the optimal mean's gain in fit; with m = 0 (the MAP mean) the bound lacks it and
        # the rest of the uncollapsed ELBO at the optimal S_w is the same expression
        gain = s * a * (b.square() / (1 + a * w)).sum() if self.free_mean else 0.0
        quad = s * self.rr - gain
        return 0.5 * (-self.n_obs * math.log(2 * math.pi) + self.n_obs * torch.log(s)
                      - torch.log1p(a * w).sum() - quad - a * self.trace_res)

    def log_marginal_likelihood(self, prior_precision: Any = None,
                                sigma_noise: Any = None) -> Tensor:
        """The ELBO: collapsed (Titsias) for regression, at the fitted ``q`` otherwise."""
        self._require_fit()
        if prior_precision is not None:
            self.prior_precision = prior_precision
        if sigma_noise is not None:
            if not self._regression:
                raise ValueError("sigma_noise can only be set for regression.")
            self.sigma_noise = sigma_noise
        if self._regression:
            return self._collapsed_elbo()
        return self._classification_elbo(self.m_w, self.L_w, self._delta())

    @property
    def log_det_ratio(self) -> Tensor:
        raise AttributeError("VaLLA's marginal likelihood is an ELBO: it has no log_det_ratio.")

    @property
    def scatter(self) -> Tensor:
        raise AttributeError("VaLLA's marginal likelihood is an ELBO: it has no scatter.")

    def _require_fit(self) -> None:
        if getattr(self, "_V", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train_loader).")

    # ----------------------------------------------------------- predictive
    def _covariance_roots(self, J: Tensor) -> tuple[Tensor, Tensor]:
        """``(E, AL)`` ``(n, C, ·)`` with covariance ``EEᵀ + AL(AL)ᵀ`` (prior-scaled) for
        Jacobians ``J`` ``(n, C, P)``."""
        self._require_fit()
        checks.jacobians(J, self._V.shape[0], self._dtype, "jacobians")
        _, L = self.whitened_variational()
        A = J @ self._V
        scale = self._delta().rsqrt()
        return (J - A @ self._V.T) * scale, (A @ L) * scale

    def functional_variance(self, jacobians: Tensor) -> Tensor:
        """Posterior covariance per point: ``(n, C, C)`` for Jacobians ``(n, C, P)``."""
        E, AL = self._covariance_roots(jacobians)
        return E @ E.mT + AL @ AL.mT

    def functional_covariance(self, jacobians: Tensor) -> Tensor:
        """Posterior covariance over all points: ``(n·C, n·C)``, row ``point·C + output``."""
        E, AL = (R.reshape(-1, R.shape[-1]) for R in self._covariance_roots(jacobians))
        return E @ E.T + AL @ AL.T

    def predictive_moments(self, x: Inputs, *, joint: bool = False) -> tuple[Tensor, Tensor]:
        """Mean ``(n, C)`` and covariance ``(n, C, C)`` (``(nC, nC)`` if ``joint``)."""
        self._require_fit()
        J, f = self._jacobians(self._prediction_inputs(x), self.enable_backprop)
        m_w, _ = self.whitened_variational()
        f_mu = f + (J @ self._V @ m_w) * self._delta().rsqrt()
        if joint:
            return f_mu.reshape(-1), self.functional_covariance(J)
        return f_mu, self.functional_variance(J)

    # --------------------------------------------------------- serialization
    def state_dict(self) -> dict[str, Any]:
        state = {**self._common_state(), "V": self._V, "sv": self._sv, "U": self._U,
                 "W": self.W}
        names = _REGRESSION_STATE if self._regression else _CLASSIFICATION_STATE
        for name in names:
            value = getattr(self, name)
            if name == "n_obs":
                state[name] = int(value)
            elif name == "elbo_history":
                state[name] = torch.tensor(value, dtype=torch.float64)
            else:
                state[name] = value
        return state

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_common_state(state_dict)
        if state_dict["V"].shape[0] != self.n_params:
            raise ValueError(f"The state's inducing basis is over {state_dict['V'].shape[0]} "
                             f"parameters, the model has {self.n_params}.")
        self._V, self._sv, self._U = self._from_state([state_dict[k] for k in ("V", "sv", "U")])
        self.W = self._from_state(state_dict["W"])
        self._decompose()
        names = _REGRESSION_STATE if self._regression else _CLASSIFICATION_STATE
        for name in names:
            value = state_dict[name]
            if name == "n_obs":
                value = int(value)
            elif name == "elbo_history":
                value = value.tolist()
            else:
                value = self._from_state(value)
            setattr(self, name, value)

"""Function-space (GP) Laplace: the linearized network as a Gaussian process.

With prior ``θ ~ N(μ₀, δ⁻¹I)`` the linearized network is a GP with kernel
``κ(x, x') = J(x) J(x')ᵀ / δ``. ``FunctionalLaplace`` conditions it on a subset of
``M`` training points (subset of data, ``n_subset``) with the likelihood's output
Hessians ``L`` and predicts

    f_var(x) = κ(x,x) − κ(x,M) L^{1/2} (I + L^{1/2} K_MM L^{1/2})⁻¹ L^{1/2} κ(M,x),

the stable form of ``κ** − κ*M (K_MM + L⁻¹)⁻¹ κM*``. The kernel over ``(point, output)``
pairs keeps the training-output index next to the training-point index (the reference
implementation mixes it with the test-output index for several outputs), so with
``n_subset = N`` and ``output_hessian="block"`` the predictive equals the weight-space
full-GGN predictive exactly. ``output_hessian="diag"`` (the default, as laplace-torch)
keeps only the diagonal ``p_c(1 − p_c)`` of each classification output Hessian.

Memory (laplace-torch's profile): the ``M × C × P`` subset Jacobians are never stored.
``K_MM`` is built block by block from two batches' Jacobians at a time, and the
cross-kernel ``κ(x, M)`` of a prediction from one subset batch's Jacobians at a time;
only the subset's inputs are kept (and saved in the state dict with ``K_MM``, ``μ``
and the output Hessians).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from laplace.posterior import arguments
from laplace.posterior.base import BaseLaplace
from laplace.posterior.lastlayer import LastLayerMixin
from laplace.posterior.transaction import restores_state_on_error
from laplace.precision.cancellation import guard_subtraction, wide_dtype
from laplace.precision.woodbury import WoodburyPrecision
from laplace.predictive import links
from laplace.utils import checks
from laplace.utils import distributed as distributed_fit
from laplace.utils.cholesky import jittered_cholesky
from laplace.utils.data import Inputs, batch_size, dataset_size, inputs_to, split_batch
from laplace.utils.enums import Likelihood, LinkApprox, PredType, parse_option
from laplace.utils.errors import NotFittedError, NotPositiveDefiniteError
from laplace.utils.feature_extractor import FeatureExtractor
from laplace.utils.parameters import vector_of


class FunctionalLaplace(BaseLaplace):
    """GP view of the linearized Laplace approximation (``hessian_structure="gp"``).

    Args:
        n_subset: number of training points the GP is conditioned on.
        independent_outputs: one GP per output (kernel block-diagonal in outputs).
        diagonal_kernel: keep only the output-diagonal of the kernel (as above, but the
            predictive covariance between outputs is also dropped).
        output_hessian: ``"diag"`` or ``"block"`` (full per-point ``C×C`` Hessians).
        seed: seed of the subset-of-data draw (``numpy.random.default_rng``).

    Other arguments are those of ``BaseLaplace``; only scalar prior precisions.
    """

    _key = ("all", "gp")
    _subset_arg = "n_subset"  # the constructor argument naming the subset size
    _POSITIONAL = ("n_subset", *arguments.BASE[:-1], "independent_outputs", "seed")
    #: warn as laplace-torch does when the prior is tuned by the marginal likelihood of the
    #: subset-of-data GP (ELLA and VaLLA, whose evidence is their own, do not)
    _DISCOURAGE_MARGLIK = True

    def __init__(
        self, model: nn.Module, likelihood: str, n_subset: int, *args: Any,
        independent_outputs: bool = False, diagonal_kernel: bool = False,
        output_hessian: str = "diag", seed: int = 0, **kwargs: Any,
    ) -> None:
        super().__init__(model, likelihood, *args, **kwargs)
        backend = self._backend_cls.__name__
        if "Hessian" in backend or "EF" in backend:
            raise ValueError(f"Function-space Laplace needs a GGN backend, not backend={backend}.")
        if output_hessian not in ("diag", "block"):
            raise ValueError(f"output_hessian must be 'diag' or 'block', not {output_hessian!r}.")
        self.n_subset = checks.positive_int(n_subset, self._subset_arg)
        for name, value in (("independent_outputs", independent_outputs),
                            ("diagonal_kernel", diagonal_kernel)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be a bool, not {value!r}.")
        self.independent_outputs = bool(independent_outputs or diagonal_kernel)
        self.diagonal_kernel = bool(diagonal_kernel)
        self.output_hessian = output_hessian
        self.seed = _check_seed(seed)
        params = self._params  # none yet for a last layer found at fit
        self.mean = vector_of(p.detach() for p in params) if params else None

    # -------------------------------------------------------------- kernel
    def _jacobians(self, X: Inputs, enable_backprop: bool = False) -> tuple[Tensor, Tensor]:
        return self.backend.jacobians(X, enable_backprop=enable_backprop)

    def _kernel(self, Ja: Tensor, Jb: Tensor) -> Tensor:
        """``J_a J_bᵀ`` as ``(n_a, C, n_b, C)`` (output-diagonal if independent)."""
        K = torch.einsum("ncp,mdp->ncmd", Ja, Jb)
        if self.independent_outputs:
            eye = torch.eye(K.shape[1], dtype=K.dtype, device=K.device)
            K = K * eye[None, :, None, :]
        return K

    def _prior_precision_lengths(self) -> tuple[list[tuple[int, str]], str]:
        return [(1, "a scalar")], (" (function-space Laplace has one kernel scale: a scalar "
                                   "prior precision only)")

    @property
    def prior_factor_sod(self) -> float:
        return self.n_subset / self.n_data

    # ----------------------------------------------------------------- fit
    @restores_state_on_error
    def fit(self, train_loader: Any, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        """Loss over all data; ``K_MM``, ``L`` and ``μ`` on a subset of ``n_subset``.

        ``distributed`` must resolve to ``False``: see ``require_local``."""
        distributed_fit.require_local(distributed, type(self).__name__)
        progress_bar = checks.flag(progress_bar, "progress_bar")
        N = self._begin_fit(train_loader)
        self.loss, self.n_data = 0.0, N
        for i, batch in enumerate(train_loader):
            X, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
            X, y = inputs_to(X, self._device), y.to(self._device)
            with torch.no_grad():
                f = self.model(X)
            if i == 0:
                self.n_outputs = f.shape[-1]
                if self.likelihood == Likelihood.CLASSIFICATION:
                    checks.class_logits(self.n_outputs)
                elif self.n_outputs > 1 and self.independent_outputs:
                    warnings.warn(  # laplace-torch's warning, in its words
                        "Using FunctionalLaplace with the diagonal approximation of a GP "
                        "kernel is not recommended in the case of multivariate regression. "
                        "Predictive variance will likely be overestimated.", stacklevel=2)
            checks.fit_targets(y, f.shape[0], tuple(f.shape[1:]),
                               self.likelihood == Likelihood.REGRESSION, i)
            f = f.reshape(-1, f.shape[-1])
            target = y.reshape(f.shape) if self.likelihood == Likelihood.REGRESSION \
                else checks.class_labels(y, i)
            loss = self.backend.factor * self.backend.lossfunc(f, target)
            checks.finite_loss(loss, i)
            self.loss = self.loss + loss
        subset = DataLoader(Subset(train_loader.dataset, self.sod_indices.tolist()),
                            batch_size=train_loader.batch_size or self.n_subset, shuffle=False)
        self._fit_subset(subset)

    def _fit_subset(self, subset: DataLoader) -> None:
        """``K_MM`` block by block (two batches' Jacobians in memory at a time), ``μ``
        and the output Hessians of the subset; keeps the subset's inputs."""
        batches = []
        for batch in subset:
            X, y = split_batch(batch, self.dict_key_x, self.dict_key_y)
            batches.append((inputs_to(X, self._device), y.to(self._device)))
        X_M = [X for X, _ in batches]
        with torch.no_grad():
            sizes = [self.model(X).numel() for X in X_M]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        K_MM = torch.empty(offsets[-1], offsets[-1], dtype=self._dtype, device=self._device)
        mus, lambdas = [], []
        for i, (X, y) in enumerate(batches):
            J_i, f_i = self._jacobians(X)
            mu_i, lam_i = self._mu_and_Lambda(J_i, f_i, y)
            mus.append(mu_i), lambdas.append(lam_i)
            rows = slice(offsets[i], offsets[i + 1])
            for j in range(i, len(batches)):
                J_j = J_i if j == i else self._jacobians(X_M[j])[0]
                cols = slice(offsets[j], offsets[j + 1])
                block = self._kernel(J_i, J_j).reshape(sizes[i], sizes[j])
                K_MM[rows, cols] = block
                if j != i:
                    K_MM[cols, rows] = block.T
            del J_i
        self._X_M, self.mu, self._Lambda = X_M, torch.cat(mus), torch.cat(lambdas)
        self.L = self._Lambda.diagonal(dim1=-2, dim2=-1).reshape(-1)
        self.K_MM = K_MM

    def _mu_and_Lambda(self, J: Tensor, f: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Scatter-term mean ``(m, C)`` and output Hessians ``(m, C, C)`` of a subset batch
        with Jacobians ``J`` ``(m, C, P)`` and outputs ``f`` ``(m, C)``."""
        Jtheta = J @ (self.mean - self.prior_mean)
        if self.likelihood == Likelihood.REGRESSION:
            eye = torch.eye(f.shape[-1], dtype=f.dtype, device=f.device)
            return y.reshape(f.shape) - f + Jtheta, eye.expand(len(f), -1, -1)
        p = torch.softmax(f, dim=-1)
        return Jtheta, torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    def _begin_fit(self, train_loader: Any) -> int:
        """Check the subset size, take the MAP and draw the subset; returns ``N``.

        The subset is ``numpy.random.default_rng(seed).choice(N, n_subset)`` in that
        order (laplace-torch's subset-of-data draw)."""
        N = dataset_size(train_loader)
        if N != len(train_loader.dataset):
            raise ValueError(
                f"{type(self).__name__} draws its subset from train_loader.dataset, but the "
                f"loader yields {N} of its {len(train_loader.dataset)} points (a sampler over "
                "part of it, or drop_last): build the loader over the points to fit.")
        if self.n_subset > N:
            raise ValueError(
                f"{self._subset_arg}={self.n_subset} exceeds the {N} training points."
            )
        self.model.eval()
        self.mean = vector_of(p.detach() for p in self._params)
        self.sod_indices = self._draw_subset(N)
        return N

    def _draw_subset(self, N: int) -> np.ndarray:
        """``n_subset`` distinct indices of ``range(N)``, in draw order."""
        return np.random.default_rng(self.seed).choice(list(range(N)), self.n_subset,
                                                       replace=False)

    # ---------------------------------------------------- shared algebra
    def _delta(self) -> Tensor:
        """The scalar prior precision ``δ`` (0-d); the function-space variants have no other."""
        if self.prior_precision.numel() != 1:
            raise ValueError(f"{type(self).__name__} supports a scalar prior precision only.")
        return self.prior_precision[0]

    def _prior_var(self) -> Tensor:
        """``v = (M/N) / δ``: the kernel's scale under the scalar prior."""
        return self.prior_factor_sod / self._delta()

    @property
    def gp_kernel_prior_variance(self) -> Tensor:
        """The kernel's prior scale ``(M/N) / δ`` as a ``(1,)`` tensor (laplace-torch's
        ``_prior_factor_sod / prior_precision``)."""
        return self.prior_factor_sod / self.prior_precision

    def _L_sqrt(self) -> Tensor:
        """``H_factor · L`` square root, ``(MC, MC)``: diagonal or per-point blocks."""
        Lam = self._Lambda * self._H_factor
        if self.output_hessian == "diag" or self.independent_outputs:
            return torch.diag(Lam.diagonal(dim1=-2, dim2=-1).reshape(-1).clamp(min=0).sqrt())
        lam, Q = torch.linalg.eigh(Lam)
        blocks = (Q * lam.clamp(min=0).sqrt().unsqueeze(-2)) @ Q.transpose(-1, -2)
        return torch.block_diag(*blocks)

    def _inner_cholesky(self) -> tuple[Tensor, Tensor]:
        """``L^{1/2}`` and the Cholesky factor of ``I + L^{1/2} K_MM v L^{1/2}``."""
        S = self._L_sqrt()
        eye = torch.eye(len(S), dtype=S.dtype, device=S.device)
        A = eye + S @ (self.K_MM * self._prior_var()) @ S
        return S, self._psd_cholesky(A, "I + L^1/2 K L^1/2 / δ")

    def _psd_cholesky(self, A: Tensor, what: str) -> Tensor:
        """Cholesky factor of ``A`` (``I`` or ``σ²I`` plus a PSD kernel, so positive
        definite in exact arithmetic): symmetrised, and retried once with a jitter at the
        rounding scale of its largest diagonal entry; else ``NotPositiveDefiniteError``
        naming the hyperparameters that set its scale."""
        A = (A + A.mT) / 2
        rounding = len(A) * torch.finfo(A.dtype).eps  # one retry at the rounding scale
        factor = jittered_cholesky(A, (rounding,) if bool(torch.isfinite(A).all()) else (),
                                   float(A.detach().diagonal().abs().max()))
        chol = None if factor is None else factor[0]
        if chol is None or not bool(torch.isfinite(chol).all()):
            noise = (f", sigma_noise {float(self.sigma_noise):.3g}"
                     if self.likelihood == Likelihood.REGRESSION else "")
            raise NotPositiveDefiniteError(
                f"The function-space posterior's matrix {what} is not positive definite in "
                f"floating point at prior precision {self.prior_precision.tolist()}{noise}, "
                f"temperature {self.temperature:.3g}: a positive, finite prior precision is "
                "needed (a zero one has infinite prior variance), and a tiny one (huge prior "
                "variance) or a tiny sigma_noise or temperature (huge output Hessians) makes "
                "it too ill-conditioned.")
        return chol

    # ----------------------------------------------------- marginal lik.
    @property
    def log_det_ratio(self) -> Tensor:
        """``logdet(I + L^{1/2} K v L^{1/2})``; for regression the reference convention
        ``logdet(K v + σ²I)`` (which adds ``MC·log σ²``)."""
        _, chol = self._inner_cholesky()
        logdet = 2 * chol.diagonal().log().sum()
        if self.likelihood == Likelihood.REGRESSION:
            logdet = logdet + self.mu.numel() * torch.log(self.sigma_noise.square())
        return logdet

    @property
    def scatter(self, eps: float = 1e-5) -> Tensor:
        """``μᵀ (K v + σ²I)⁻¹ μ`` (regression) or ``μᵀ (K v + εI)⁻¹ μ`` (classification)."""
        noise = self.sigma_noise.square() if self.likelihood == Likelihood.REGRESSION else eps
        # in double: K / δ + εI has a condition number near 1e7 when a classifier's kernel
        # is small, which left float32's gradient in δ 1.6 % off (M × M: cheap)
        m = self.mu.reshape(-1).double()
        A = self.K_MM.double() * self._prior_var().double() + torch.as_tensor(
            noise).double() * torch.eye(len(m), dtype=m.dtype, device=m.device)
        regression = self.likelihood == Likelihood.REGRESSION
        chol = self._psd_cholesky(A, "K / δ + σ²I" if regression else "K / δ + εI")
        value = m @ torch.cholesky_solve(m.unsqueeze(-1), chol).squeeze(-1)
        return value.to(self.mu.dtype)

    def log_marginal_likelihood(self, prior_precision: Any = None, sigma_noise: Any = None):
        return super().log_marginal_likelihood(prior_precision, sigma_noise)

    def optimize_prior_precision(self, pred_type: str = "gp", method: str = "marglik",
                                 *args: Any, **kwargs: Any) -> None:
        structure = kwargs.get("prior_structure") or "scalar"
        if structure != "scalar":
            raise ValueError("Function-space Laplace tunes a scalar prior precision only.")
        if method == "gridsearch" and parse_option(PredType, pred_type, "pred_type") != "gp":
            raise ValueError("Only gp is supported as a functional prediction type.")
        if method == "marglik" and self._DISCOURAGE_MARGLIK:  # laplace-torch's ('CV' there)
            warnings.warn("Use of method='marglik' in case of FunctionalLaplace is discouraged, "
                          "rather use method='gridsearch' (cross-validation).", stacklevel=2)
        super().optimize_prior_precision(pred_type, method, *args, **kwargs)

    def _require_fit(self) -> None:
        if getattr(self, "K_MM", None) is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train_loader).")

    # ----------------------------------------------------------- predictive
    def _cross_kernel(self, Js_star: Tensor) -> Tensor:
        """``κ(x*, M)`` without the prior scale: ``(n·C, M·C)``, computed from one subset
        batch's Jacobians at a time."""
        n, C, _ = Js_star.shape
        return torch.cat([self._kernel(Js_star, self._jacobians(X)[0]).reshape(n * C, -1)
                          for X in self._X_M], dim=1)

    def _explained(self, Js_star: Tensor) -> Tensor:
        """``W`` ``(M·C, n·C)`` with ``WᵀW = κ*M (K_MM + L⁻¹)⁻¹ κM*`` (prior-scaled)."""
        K_sM = self._cross_kernel(Js_star) * self._prior_var()
        S, chol = self._inner_cholesky()
        return torch.linalg.solve_triangular(chol, S @ K_sM.T, upper=False)

    def functional_variance(self, Js_star: Tensor) -> Tensor:
        """GP posterior covariance per test point,
        ``κ** − κ*M (K_MM + L⁻¹)⁻¹ κM*``: ``(n, C, C)`` for Jacobians ``(n, C, P)``."""
        self._require_fit()
        checks.jacobians(Js_star, self.mean.numel(), self._dtype, "Js_star")
        n, C, _ = Js_star.shape
        K_ss = torch.einsum("ncp,ndp->ncd", Js_star, Js_star) * self._prior_var()
        if self.independent_outputs:
            K_ss = K_ss * torch.eye(C, dtype=K_ss.dtype, device=K_ss.device)
        Wn = self._explained(Js_star).T.reshape(n, C, -1)
        f_var = self._guard(K_ss, K_ss - Wn @ Wn.transpose(-1, -2), Js_star)
        if self.diagonal_kernel:
            f_var = torch.diag_embed(f_var.diagonal(dim1=-2, dim2=-1))
        return f_var

    def functional_covariance(self, Js_star: Tensor) -> Tensor:
        """GP posterior covariance over all test points and outputs: ``(n·C, n·C)``,
        row ``point·C + output``, for Jacobians ``(n, C, P)``."""
        self._require_fit()
        checks.jacobians(Js_star, self.mean.numel(), self._dtype, "Js_star")
        n, C, _ = Js_star.shape
        K_ss = self._kernel(Js_star, Js_star).reshape(n * C, n * C) * self._prior_var()
        W = self._explained(Js_star)
        joint = Js_star.reshape(1, n * C, -1)
        return self._guard(K_ss[None], K_ss[None] - (W.T @ W)[None], joint)[0]

    def _guard(self, K_ss: Tensor, f_cov: Tensor, Js_star: Tensor) -> Tensor:
        """``f_cov = K** − WᵀW`` ``(n, C, C)``, with the points whose variance the
        subtraction cannot resolve recomputed (``guard_subtraction``) from the
        weight-space form of the same GP (prior ``N(0, v·I)``, rows ``Λ^{1/2} J_M``), in
        float64. Not for independent outputs, whose kernel has no weight-space form: their
        variances are returned as computed."""
        if self.independent_outputs:
            return f_cov
        return guard_subtraction(K_ss, f_cov, lambda: self._root_rows(Js_star), stacklevel=6)

    def _root_rows(self, Js_star: Tensor) -> Tensor:
        """``(n, C, P)`` rows whose Gram is the posterior covariance at ``Js_star``,
        through ``WoodburyPrecision`` over the subset's Jacobians (``M·C × P``, formed only
        here)."""
        wide = wide_dtype(Js_star)
        J_M = torch.cat([self._jacobians(X)[0] for X in self._X_M]).to(wide)
        rows = self._L_sqrt().to(wide) @ J_M.reshape(-1, J_M.shape[-1])
        prior = self._prior_var().to(wide).reciprocal().reshape(1)
        return WoodburyPrecision(rows, 1.0, prior)._symmetric_root_rows(Js_star)

    def predictive_moments(self, x: Inputs, *, joint: bool = False) -> tuple[Tensor, Tensor]:
        """GP mean ``(n, C)`` and covariance ``(n, C, C)`` (``(nC, nC)`` if ``joint``)."""
        self._require_fit()
        J, f_mu = self._jacobians(self._prediction_inputs(x), self.enable_backprop)
        checks.finite_outputs(f_mu)
        if joint:
            return self._detached(f_mu.reshape(-1), self.functional_covariance(J))
        return self._detached(f_mu, self.functional_variance(J))

    def __call__(self, x: Inputs, pred_type: str = "gp", joint: bool = False,
                 link_approx: str = "probit", n_samples: int = 100,
                 diagonal_output: bool = False, generator: torch.Generator | None = None,
                 fitting: bool = False, **kwargs: Any) -> Any:
        if parse_option(PredType, pred_type, "pred_type") != PredType.GP:
            raise ValueError("Only gp is supported as a functional prediction type.")
        link_approx = parse_option(LinkApprox, link_approx, "link_approx")
        joint, diagonal_output = checks.flag(joint, "joint"), checks.flag(
            diagonal_output, "diagonal_output")
        checks.ignored_keywords(kwargs, "The predictive")
        checks.random_generator(generator, self._device)
        regression = self.likelihood == Likelihood.REGRESSION or (
            self.likelihood == Likelihood.REWARD_MODELING and not fitting
        )
        if regression:
            f_mu, f_var = self.predictive_moments(x, joint=joint)
            if diagonal_output and not joint:
                f_var = f_var.diagonal(dim1=-2, dim2=-1)
            return f_mu, f_var
        f_mu, f_var = self.predictive_moments(x)
        if link_approx == LinkApprox.PROBIT:
            return links.probit(f_mu, f_var)
        if link_approx == LinkApprox.MC:
            return links.monte_carlo(f_mu, f_var, n_samples, generator)
        return links.bridge(f_mu, f_var, normalize=link_approx == LinkApprox.BRIDGE_NORM)

    def sample(self, n_samples: int = 100, generator: torch.Generator | None = None) -> Tensor:
        """Weight samples: a function-space posterior has none (laplace-torch raises
        ``NotImplementedError`` too); ``functional_samples`` draws functions."""
        raise NotImplementedError(f"{type(self).__name__} is a posterior over functions: it "
                                  "has no weight samples; use functional_samples.")

    def functional_samples(self, x: Inputs, pred_type: str = "glm", n_samples: int = 100,
                           diagonal_output: bool = False,
                           generator: torch.Generator | None = None,
                           joint: bool = False) -> Tensor:
        """Draws ``(n_samples, n, C)`` of the GP posterior over the latent function.

        ``pred_type`` (``"glm"`` by default, as in laplace-torch) is accepted for API
        compatibility: every prediction type draws from the function-space posterior.
        ``joint=True`` keeps the covariance between the inputs.
        """
        parse_option(PredType, pred_type, "pred_type")
        checks.random_generator(generator, self._device)
        f_mu, f_var = self.predictive_moments(x, joint=joint)
        if not joint:
            if diagonal_output:
                f_var = torch.diag_embed(f_var.diagonal(dim1=-2, dim2=-1))
            return links.gaussian_samples(f_mu, f_var, n_samples, generator)
        C = self.n_outputs
        if diagonal_output:
            outputs = torch.arange(f_mu.numel(), device=f_mu.device) % C
            f_var = f_var * (outputs[:, None] == outputs[None, :])
        draws = links.gaussian_samples(f_mu[None], f_var[None], n_samples, generator)
        return draws.reshape(n_samples, -1, C)

    def predictive_samples(
        self, x: Inputs, pred_type: str = "glm", n_samples: int = 100,
        diagonal_output: bool = False, generator: torch.Generator | None = None,
        fitting: bool = False, joint: bool = False,
    ) -> Tensor:
        """Draws ``(n_samples, n, C)`` of the predictive (laplace-torch's signature):
        ``functional_samples`` through the softmax for classification, and for reward
        modeling with ``fitting=True`` (the pairs' preference probabilities); latent
        values otherwise. ``joint=True`` keeps the covariance between the inputs."""
        fitting = checks.flag(fitting, "fitting")
        f = self.functional_samples(x, pred_type, n_samples, diagonal_output, generator,
                                    joint=checks.flag(joint, "joint"))
        if self.likelihood == Likelihood.CLASSIFICATION or (
                self.likelihood == Likelihood.REWARD_MODELING and fitting):
            return torch.softmax(f, dim=-1)
        return f

    # --------------------------------------------------------- serialization
    _STATE_KEYS = ("X_M", "mu", "Lambda", "K_MM")  # this class's own, beside the common ones
    _COMMON_KEYS = ("cls_name", "likelihood", "mean", "loss", "n_data", "n_outputs",
                    "prior_precision", "prior_mean", "sigma_noise", "temperature",
                    "sod_indices")
    #: options that change what the saved quantities mean: a state loads only into an LA
    #: with the same values
    _STATE_OPTIONS = ("independent_outputs", "diagonal_kernel", "output_hessian")

    def _common_state(self) -> dict[str, Any]:
        """Hyperparameters and training summary every function-space state carries."""
        self._require_fit()
        return {
            "cls_name": type(self).__name__, "likelihood": str(self.likelihood),
            "mean": self.mean, "loss": torch.as_tensor(self.loss), "n_data": self.n_data,
            "n_outputs": self.n_outputs, "prior_precision": self.prior_precision,
            "prior_mean": self.prior_mean, "sigma_noise": self.sigma_noise,
            "temperature": self.temperature, "sod_indices": torch.as_tensor(self.sod_indices),
            "seed": self.seed, "param_shapes": [list(p.shape) for p in self._params],
            **{name: getattr(self, name) for name in self._STATE_OPTIONS},
        }

    def _check_common_state(self, state: Any) -> None:
        """Refuse a state that does not belong to this LA, before anything is set."""
        if isinstance(state, Mapping) and "cls_name" in state \
                and state["cls_name"] != type(self).__name__:
            raise ValueError(f"State of a {state['cls_name']} cannot be loaded into a "
                             f"{type(self).__name__}.")
        if isinstance(state, Mapping) and "train_loader" in state and "X_M" not in state:
            raise ValueError(
                "This is a function-space state saved by laplace-torch (it holds the training "
                "loader, 'train_loader', where this package's states hold the subset's "
                "inputs): it does not load here. Refit with fit(train_loader) on the same "
                "data; laplace-torch's weight-space states do load.")
        checks.state_keys(state, (*self._COMMON_KEYS, *self._STATE_KEYS), type(self).__name__)
        checks.state_fit_record(state, type(self).__name__)
        if state["likelihood"] != str(self.likelihood):
            raise ValueError(f"State of a {state['likelihood']} fit cannot be loaded into a "
                             f"{self.likelihood} Laplace.")
        n_params = getattr(self, "n_params", None)
        if n_params is not None and state["mean"].numel() != n_params:
            raise ValueError(f"State has {state['mean'].numel()} parameters, this LA "
                             f"{n_params}: recreate the model and the Laplace object as they "
                             "were when the state was saved.")
        params = self._params
        shapes = [list(p.shape) for p in params] if params else None
        if shapes is not None and state.get("param_shapes", shapes) != shapes:
            raise ValueError(f"State was saved for parameter tensors of shapes "
                             f"{state['param_shapes']}, this model has {shapes}: a different "
                             "architecture.")
        if params:
            _check_same_weights(vector_of(p.detach() for p in params), state["mean"])
        for name in self._STATE_OPTIONS:
            if name in state and state[name] != getattr(self, name):
                raise ValueError(f"State was saved with {name}={state[name]!r}, this LA has "
                                 f"{name}={getattr(self, name)!r}: its kernel quantities mean "
                                 "something else here; create the LA with the saved value.")

    def _load_common_state(self, state: dict[str, Any]) -> None:
        self._check_common_state(state)
        self.mean, self.loss = self._from_state(state["mean"]), self._from_state(state["loss"])
        self.n_data, self.n_outputs = int(state["n_data"]), int(state["n_outputs"])
        self.temperature = state["temperature"]
        self.prior_precision = self._from_state(state["prior_precision"])
        self.prior_mean = self._from_state(state["prior_mean"])
        self.sigma_noise = self._from_state(state["sigma_noise"])
        self.sod_indices = state["sod_indices"].cpu().numpy()
        self.n_subset = len(self.sod_indices)
        if "seed" in state:  # the seed of the saved draw, not this object's
            self.seed = _check_seed(state["seed"])

    def state_dict(self) -> dict[str, Any]:
        """Hyperparameters, the kernel quantities ``K_MM``, ``μ``, the output Hessians and
        the subset's inputs (for the cross-kernel of predictions); no Jacobians."""
        common = self._common_state()
        X_M = [dict(X) if isinstance(X, Mapping) else X for X in self._X_M]
        return {**common, "X_M": X_M, "mu": self.mu, "Lambda": self._Lambda, "K_MM": self.K_MM}

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_common_state(state_dict)
        _check_kernel_state(state_dict, self.dict_key_x)
        self._load_common_state(state_dict)
        self._X_M = [inputs_to(self._from_state(X), self._device) for X in state_dict["X_M"]]
        self.mu = self._from_state(state_dict["mu"])
        self._Lambda, self.K_MM = self._from_state([state_dict["Lambda"], state_dict["K_MM"]])
        self.L = self._Lambda.diagonal(dim1=-2, dim2=-1).reshape(-1)


class FunctionalLLLaplace(LastLayerMixin, FunctionalLaplace):
    """Function-space Laplace over the last layer (kernel ``(φφ'ᵀ + 1) ⊗ I``).

    As for ``LLLaplace``, the last layer is found at ``fit`` unless
    ``last_layer_name`` is given (``n_params`` and ``mean`` are ``None`` until then).
    """

    _key = ("last_layer", "gp")
    _POSITIONAL = ("n_subset", *arguments.LAST_LAYER[:8], "last_layer_name", "backend",
                   "backend_kwargs", "independent_outputs", "seed")

    def __init__(self, model: nn.Module, likelihood: str, n_subset: int, *args: Any,
                 last_layer_name: str | None = None, feature_reduction: str | None = None,
                 **kwargs: Any) -> None:
        checks.torch_module(model)
        model = distributed_fit.unwrap_parallel(model)
        extractor = FeatureExtractor(model, last_layer_name, kwargs.get("enable_backprop", False),
                                     feature_reduction)
        super().__init__(extractor, likelihood, n_subset, *args, **kwargs)

    @restores_state_on_error
    def fit(self, train_loader: Any, progress_bar: bool = False,
            distributed: bool | None = None) -> None:
        distributed_fit.require_local(distributed, type(self).__name__)
        checks.flag(progress_bar, "progress_bar")
        X = self._prepare_last_layer(train_loader)
        self._check_output_is_last_layer(X)
        super().fit(train_loader, progress_bar=progress_bar, distributed=False)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_layer_name": self.model.last_layer_name}

    @restores_state_on_error
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._set_layer_from_state(state_dict.get("last_layer_name"))
        super().load_state_dict(state_dict)


def _check_kernel_state(state: Mapping[str, Any], dict_key_x: str) -> None:
    """``K_MM`` square over the entries of ``μ``, one ``C × C`` output Hessian per entry
    group of ``μ`` (``C = n_outputs``) and ``X_M`` with ``M = len(sod_indices)`` rows."""
    M, C = len(state["sod_indices"]), int(state["n_outputs"])
    K, mu, Lam = state["K_MM"], state["mu"], state["Lambda"]
    rows = sum(batch_size(X, dict_key_x) for X in state["X_M"])
    if (K.shape != (mu.numel(), mu.numel()) or Lam.shape[-2:] != (C, C)
            or Lam.numel() != mu.numel() * C or rows != M):
        raise ValueError(
            f"The state's kernel quantities do not fit its {M} subset points and {C} "
            f"outputs: K_MM {tuple(K.shape)}, mu {tuple(mu.shape)}, Lambda "
            f"{tuple(Lam.shape)}, X_M with {rows} rows.")


def _check_seed(seed: Any) -> int:
    """The subset draw's seed: a non-negative integer (``numpy.random.default_rng``)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}.")
    return int(seed)


def _check_same_weights(current: Tensor, saved: Tensor) -> None:
    """A function-space state holds kernel quantities of the weights it was fitted at
    (``saved``), and predictions take Jacobians of the model's ``current`` weights: they
    must be the same weights (laplace-torch's ``ELLA``/``VaLLA`` refuse others too)."""
    saved = saved.to(current)
    scale = float(saved.abs().max()) if saved.numel() else 0.0
    gap = float((current - saved).abs().max()) if saved.numel() else 0.0
    if gap > 1e-6 * max(scale, 1.0):
        raise ValueError(f"The state was fitted at other network weights (largest difference "
                         f"{gap:.3g}): load the weights it was fitted at into the model first; "
                         "its kernel quantities belong to those weights.")

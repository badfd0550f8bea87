"""MAP training, Laplace fitting and marginal-likelihood refits for ``LaplaceBNN``.

The objective trained here is the negative log joint of the Laplace model,

    L(θ) = ½ Σₙₖ (fₖ(xₙ; θ) − yₙₖ)² / σₙₖ²  +  ½ δ ‖θ‖²,

so weight decay and the prior precision ``δ`` of the Laplace posterior are the same
number, and the observation noise ``σ²`` weights the data term exactly as it weights the
curvature ``H/σ²``. The prior may be centred on ``θ₀`` (``‖θ − θ₀‖²``; ``LaplaceBNN``
uses the initial weights). The weights are trained full-batch with L-BFGS (BO data sets
are small; Adam is an option). Online marginal likelihood (Immer et al., 2021): every
``marglik_every`` epochs a Laplace posterior is fitted at the current weights and
``(log δ, log σ)`` take a few Adam steps on its log marginal likelihood (plus an optional
log-normal hyperprior on ``σ²``); the training loss then uses the new values. A final
refit after the last epoch sets the values the posterior is built with. For the full
GGN with the native backend the refits never build a Laplace object: the evidence
comes from the ``n × n`` Gram matrix of the Jacobians (``GramMarglik``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap
from torch.utils.data import DataLoader, TensorDataset

from lapbo.networks import last_layer_name
from laplace import Laplace
from laplace.baselaplace import ParametricLaplace

if TYPE_CHECKING:
    from lapbo.model import LaplaceBNN

def network_jacobians(
    net: nn.Module, X: Tensor, names: list[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Per-point Jacobians w.r.t. the weights, differentiable w.r.t. ``X``.

    Args:
        net: maps ``(n, d)`` to ``(n, K)``.
        X: ``(n, d)``.
        names: the parameters to differentiate (``net.named_parameters()`` names, in
            that order; default all). The others are held fixed.

    Returns:
        ``Js`` ``(n, K, P)`` (parameters in ``net.parameters()`` order, as ``la.mean``)
        and outputs ``f`` ``(n, K)``.

    When ``names`` are exactly the weight and bias of the ``nn.Linear`` whose output is
    the network's output, ``J = [I_K ⊗ φ(x)ᵀ, I_K]`` is read off the layer input ``φ(x)``
    of one forward pass (no per-sample autodiff); otherwise ``torch.func`` computes it.
    """
    if names is not None:
        fast = _output_layer_jacobians(net, X, names)
        if fast is not None:
            return fast
    return _jacobians_by_autodiff(net, X, names)


def _output_layer_jacobians(
    net: nn.Module, X: Tensor, names: list[str]
) -> tuple[Tensor, Tensor] | None:
    """``network_jacobians`` for the output layer's weights, or ``None`` if ``names`` are
    not (weight, bias) of an ``nn.Linear`` whose output tensor the network returns."""
    modules = dict(net.named_modules())
    prefix = names[0].rsplit(".", 1)[0]
    layer = modules.get(prefix)
    if not isinstance(layer, nn.Linear) or layer.bias is None or names != [
        f"{prefix}.weight", f"{prefix}.bias"
    ]:
        return None
    seen: dict[str, Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen["phi"], seen["out"] = inputs[0], output

    handle = layer.register_forward_hook(hook)
    try:  # detached weights: the graph reaches X only, as in the autodiff path
        f = functional_call(net, {k: v.detach() for k, v in net.named_parameters()}, (X,))
    finally:
        handle.remove()
    if seen.get("out") is not f or f.ndim != 2:
        return None  # the layer's output is transformed further: not linear in its weights
    phi = seen["phi"]
    n, K = f.shape
    eye = torch.eye(K, dtype=phi.dtype, device=phi.device)
    J_w = (eye.unsqueeze(-1) * phi[:, None, None, :]).reshape(n, K, -1)  # (n, K, K·F)
    Js = torch.cat([J_w, eye.expand(n, K, K)], dim=-1)
    return Js, f


def _jacobians_by_autodiff(
    net: nn.Module, X: Tensor, names: list[str] | None = None
) -> tuple[Tensor, Tensor]:
    """``network_jacobians`` by ``vmap(jacrev)`` (any network, any parameter subset)."""
    all_params = {k: v.detach() for k, v in net.named_parameters()}
    keys = list(all_params) if names is None else list(names)
    params = {k: all_params[k] for k in keys}
    fixed = {k: v for k, v in all_params.items() if k not in params}

    def fn(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        out = functional_call(net, {**fixed, **p}, (x.unsqueeze(0),)).reshape(-1)
        return out, out

    jac, f = vmap(jacrev(fn, has_aux=True), in_dims=(None, 0))(params, X)
    Js = torch.cat([jac[k].flatten(start_dim=2) for k in keys], dim=2)
    return Js, f


def expand_prior(prior: Tensor, sizes: Sequence[int]) -> Tensor:
    """Per-weight precisions ``(P,)`` from a per-tensor prior ``(G,)``, or ``prior``
    unchanged (a scalar tensor) when it has one entry; ``sizes``: ``G`` tensor sizes."""
    if prior.numel() == 1:
        return prior.reshape(())
    if prior.numel() != len(sizes):
        raise ValueError(f"{prior.numel()} prior precisions for {len(sizes)} weight tensors.")
    counts = torch.tensor(list(sizes), device=prior.device)
    return torch.repeat_interleave(prior.reshape(-1), counts)


def posterior_parameter_names(net: nn.Module, subset_of_weights: str) -> list[str] | None:
    """Parameter names the Laplace posterior covers (``None``: all of them)."""
    if subset_of_weights == "all":
        return None
    prefix = last_layer_name(net) + "."
    return [n for n, p in net.named_parameters() if n.startswith(prefix) and p.requires_grad]


@dataclass
class TrainingOptions:
    """Optimisation settings of ``LaplaceBNN.fit`` (see the module docstring).

    Attributes:
        n_epochs: full-batch optimiser iterations of MAP training from scratch.
        n_epochs_warm_start: iterations when starting from a previous model's weights.
        lr: Adam learning rate of the weights (L-BFGS uses a line search).
        optimizer: ``"lbfgs"`` (full-batch L-BFGS, strong Wolfe) or ``"adam"``.
        marglik_every: epochs between online marginal-likelihood refits (0: none).
        marglik_steps: Adam steps on ``(log δ, log σ)`` per online refit.
        final_marglik_steps: Adam steps of the refit after training.
        marglik_lr: Adam learning rate of the hyperparameters (``marglik_optimizer="adam"``).
        marglik_optimizer: ``"lbfgs"`` (default) or ``"adam"`` for the refits.
        tune_noise: refit ``σ`` (off when the noise is given as ``train_Yvar``).
        min_noise_std, max_noise_std: bounds of ``σ`` in standardized units.
        min_prior_precision, max_prior_precision: bounds of ``δ``.
        noise_prior: ``(loc, scale)`` of a log-normal hyperprior on ``σ²`` added to the
            marginal likelihood when ``σ`` is refit (``None``: none).
        prior_precision_prior: scale ``s`` of a log-normal hyperprior on ``δ`` centred on
            ``δ_ref = mean_i ‖rᵢ‖²``, the mean squared norm of the Jacobian rows at the
            training points, i.e. the precision at which the prior function variance
            ``‖r‖²/δ`` at the data is 1 (the outcome variance in standardized units).
            With one or two observations the evidence alone sends ``δ`` to its upper
            bound (an observed standardized 0 is best explained by no signal at all)
            and the posterior variance collapses everywhere; the hyperprior keeps it at
            the outcome scale. ``None``: none. Full GGN only (it needs the rows).
    """

    n_epochs: int = 1000
    n_epochs_warm_start: int = 100
    lr: float = 1e-2
    optimizer: str = "lbfgs"
    marglik_every: int = 50
    marglik_steps: int = 20
    final_marglik_steps: int = 100
    marglik_lr: float = 0.1
    marglik_optimizer: str = "lbfgs"
    tune_noise: bool = True
    min_noise_std: float = 1e-3
    max_noise_std: float = 10.0
    min_prior_precision: float = 1e-6
    max_prior_precision: float = 1e6
    noise_prior: tuple[float, float] | None = None
    prior_precision_prior: float | None = None
    keep_best: bool = False


def make_loader(X: Tensor, Y: Tensor) -> DataLoader:
    """One full batch of ``X`` ``(n, d)``, ``Y`` ``(n, K)``."""
    return DataLoader(TensorDataset(X, Y), batch_size=max(len(X), 1))


def fit_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, sigma_noise: Tensor, prior_precision: Tensor,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
    prior_mean: list[Tensor] | None = None,
) -> ParametricLaplace:
    """Laplace posterior of ``net`` at its current weights on ``(X (n, d), Y (n, K))``.

    ``sigma_noise`` and ``prior_precision`` are scalar tensors; ``prior_mean`` one tensor
    per parameter of ``net`` (default zero).
    """
    net.eval()
    extra = {}
    if subset_of_weights == "last_layer":
        extra["last_layer_name"] = last_layer_name(net)
    if prior_mean is not None:
        names = posterior_parameter_names(net, subset_of_weights)
        keys = [k for k, _ in net.named_parameters()]
        sel = [m for k, m in zip(keys, prior_mean) if names is None or k in names]
        extra["prior_mean"] = torch.cat([m.detach().reshape(-1) for m in sel])
    la = Laplace(
        net, "regression", subset_of_weights=subset_of_weights,
        hessian_structure=hessian_structure, sigma_noise=sigma_noise.detach().clone(),
        prior_precision=prior_precision.detach().reshape(-1).clone(), backend=backend,
        **extra,
    )
    la.fit(make_loader(X, Y))
    return la


def refit_hyperparameters(
    la: ParametricLaplace, sigma_noise: Tensor, prior_precision: Tensor, n_steps: int,
    options: TrainingOptions, tune_noise: bool,
) -> tuple[Tensor, Tensor]:
    """Maximise ``la.log_marginal_likelihood`` over ``log δ`` (and ``log σ``) with Adam.

    Returns the new ``(σ, δ)`` as detached scalar tensors, which are also stored on ``la``.
    """
    la._prepare_for_tuning()

    def lml(prior: Tensor, sigma: Tensor) -> Tensor:
        return la.log_marginal_likelihood(prior_precision=prior.reshape(1), sigma_noise=sigma)

    sigma, prior = maximize_marglik(lml, sigma_noise, prior_precision, n_steps, options,
                                    tune_noise)
    la.sigma_noise = sigma
    la.prior_precision = prior.reshape(1)
    return sigma, prior


def maximize_marglik(
    lml: Any, sigma_noise: Tensor, prior_precision: Tensor, n_steps: int,
    options: TrainingOptions, tune_noise: bool,
) -> tuple[Tensor, Tensor]:
    """Maximise ``lml(δ, σ)`` over ``(log δ, log σ)`` within the bounds of ``options``.

    ``options.marglik_optimizer``: ``"lbfgs"`` (at most ``n_steps`` iterations, strong-Wolfe
    line search; the bounds clamp the arguments, so the gradient vanishes beyond them)
    or ``"adam"`` (``n_steps`` steps of rate ``options.marglik_lr``, clamped after each).
    ``δ`` is a scalar tensor or one precision per weight tensor ``(G,)``.
    Returns the best ``(σ, δ)`` visited (detached tensors of the input shapes).
    """
    log_prior = prior_precision.detach().log().clone().requires_grad_(True)
    log_sigma = sigma_noise.detach().reshape(()).log().clone().requires_grad_(tune_noise)
    lml = with_noise_hyperprior(lml, options, tune_noise)
    params = [log_prior, log_sigma] if tune_noise else [log_prior]
    bounds_prior = (math.log(options.min_prior_precision), math.log(options.max_prior_precision))
    bounds_sigma = (math.log(options.min_noise_std), math.log(options.max_noise_std))
    with torch.no_grad():
        log_prior.clamp_(*bounds_prior)
        log_sigma.clamp_(*bounds_sigma)
    best = (-math.inf, log_sigma.detach().clone(), log_prior.detach().clone())
    if options.marglik_optimizer == "lbfgs":
        return _maximize_lbfgs(lml, log_prior, log_sigma, params, n_steps, bounds_prior,
                               bounds_sigma, best)
    if options.marglik_optimizer != "adam":
        raise ValueError(f"Unknown marglik_optimizer {options.marglik_optimizer!r}.")
    optimizer = torch.optim.Adam(params, lr=options.marglik_lr)
    for _ in range(n_steps):
        optimizer.zero_grad()
        value = lml(log_prior.exp(), log_sigma.exp())
        if not torch.isfinite(value):
            break
        if float(value.detach()) > best[0]:
            best = (float(value.detach()), log_sigma.detach().clone(), log_prior.detach().clone())
        (-value).backward()
        optimizer.step()
        with torch.no_grad():
            log_prior.clamp_(*bounds_prior)
            log_sigma.clamp_(*bounds_sigma)
    with torch.no_grad():  # the last step is evaluated too
        value = lml(log_prior.exp(), log_sigma.exp())
        if torch.isfinite(value) and float(value) > best[0]:
            best = (float(value), log_sigma.clone(), log_prior.clone())
    return best[1].exp(), best[2].exp()


def with_noise_hyperprior(lml: Any, options: TrainingOptions, tune_noise: bool) -> Any:
    """``lml(δ, σ) + log LogNormal(σ²; loc, scale)`` with ``options.noise_prior`` when ``σ``
    is refit, else ``lml`` itself: the objective ``maximize_marglik`` maximises."""
    if not tune_noise or options.noise_prior is None:
        return lml
    loc, scale = options.noise_prior

    def objective(prior: Tensor, sigma: Tensor) -> Tensor:
        log_var = 2 * sigma.log()
        return lml(prior, sigma) - log_var - 0.5 * ((log_var - loc) / scale) ** 2

    return objective


def _maximize_lbfgs(
    lml: Any, log_prior: Tensor, log_sigma: Tensor, params: list[Tensor], n_steps: int,
    bounds_prior: tuple[float, float], bounds_sigma: tuple[float, float], best: tuple,
) -> tuple[Tensor, Tensor]:
    """The L-BFGS branch of ``maximize_marglik`` (same arguments and result)."""
    if n_steps <= 0:
        return best[1].exp(), best[2].exp()
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=n_steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-7, tolerance_change=1e-10)
    state = {"best": best}

    def closure() -> Tensor:
        optimizer.zero_grad()
        lp, ls = log_prior.clamp(*bounds_prior), log_sigma.clamp(*bounds_sigma)
        value = lml(lp.exp(), ls.exp())
        if not torch.isfinite(value):  # steers the line search back
            return torch.tensor(math.inf, dtype=value.dtype)
        if float(value.detach()) > state["best"][0]:
            state["best"] = (float(value.detach()), ls.detach().clone(), lp.detach().clone())
        (-value).backward()
        return -value.detach()

    optimizer.step(closure)
    _, log_s, log_p = state["best"]
    return log_s.exp(), log_p.exp()


class GramMarglik:
    """Laplace log marginal likelihood of the exact GGN from its square-root rows.

    With Jacobian rows ``R`` ``(N, P)`` (``N = n·K``) at ``θ*``, residuals ``r = f − y``
    and a scalar prior ``N(0, I/δ)``, the curvature ``RᵀR/σ²`` has the nonzero spectrum
    of the ``N × N`` Gram matrix ``RRᵀ/σ²``, so

        log p(y | δ, σ) ≈ −½‖r‖²/σ² − N log σ − ½N log 2π
                          − ½ Σᵢ log(1 + λᵢ/(σ²δ)) − ½ δ‖θ*‖²

    costs one ``N × N`` eigendecomposition, and no ``P × P`` matrix is formed (with more
    rows than weights, ``N > P``, the ``P × P`` matrix ``RᵀR`` gives the same nonzero
    spectrum at a cost linear in ``N``). With known
    noise variances ``v`` the Gram matrix is ``D^{-½}RRᵀD^{-½}`` (``D = diag v``) and
    ``σ`` is not a free parameter. Equal to ``FullLaplace.log_marginal_likelihood`` (and
    its last-layer variant, with the last-layer rows and weights).

    ``linearized=True`` gives instead the exact evidence of the linearized model
    ``y = f(θ*) + R(θ − θ*) + ε``, ``θ ~ N(θ₀, I/δ)``: with ``e = y − f(θ*) + R(θ* − θ₀)``
    and ``RRᵀ = U diag(λ) Uᵀ``,

        log p(y | δ, σ) = −½ Σᵢ (Uᵀe)ᵢ² / (λᵢ/δ + σ²) − ½ Σᵢ log(λᵢ/δ + σ²) − ½N log 2π,

    the same number at an exact MAP, and the right one for the linearized predictive
    mean when the MAP is not converged (``LaplaceBNN(mean="linearized")``).

    With one precision per weight tensor (``groups``: the sizes ``P_g`` of the ``G``
    tensors, columns of ``R`` in that order) the prior is ``N(θ₀, D⁻¹)``, ``D`` block
    constant; ``RD⁻¹Rᵀ = Σ_g R_gR_gᵀ/δ_g`` is no longer a rescaled fixed matrix, so each
    call factorises that ``N × N`` sum (Cholesky) instead of reusing one spectrum.

    Args:
        rows: ``R`` ``(N, P)``.
        resid: ``r`` ``(N,)``.
        theta_sq: ``‖θ* − θ₀‖²`` over the weights of the posterior (scalar tensor), or
            per weight tensor ``(G,)`` with ``groups``.
        noise_var: known ``v`` ``(N,)`` or ``None``.
        offset: ``R(θ* − θ₀)`` ``(N,)`` (required with ``linearized``).
        linearized: the evidence of the linearized model (above).
        groups: sizes of the weight tensors for a per-tensor prior, or ``None``.
    """

    def __init__(self, rows: Tensor, resid: Tensor, theta_sq: Tensor,
                 noise_var: Tensor | None = None, offset: Tensor | None = None,
                 linearized: bool = False, groups: Sequence[int] | None = None) -> None:
        rows, resid = rows.detach(), resid.detach()
        self.n = resid.numel()
        self.reference_precision = float(rows.square().sum(-1).mean()) if self.n else 1.0
        self.theta_sq = theta_sq.detach()
        self.groups = None if groups is None else list(groups)
        self.noise_var = noise_var
        self.linearized = linearized
        if noise_var is None:
            scaled, e = rows, -resid
            self.sse = resid.square().sum()
        else:
            scale = noise_var.sqrt()
            scaled, e = rows / scale.unsqueeze(-1), -resid / scale
            self.sse = (resid.square() / noise_var).sum()
            self.log_noise = noise_var.log().sum()
        if linearized and offset is None:
            raise ValueError("The linearized evidence needs offset = R(θ* − θ₀).")
        if linearized and noise_var is not None:
            offset = offset / noise_var.sqrt()
        if self.groups is not None:
            blocks = scaled.split(self.groups, dim=-1)
            self.grams = torch.stack([B @ B.mT for B in blocks])  # (G, N, N)
            self.target = e + offset.detach() if linearized else None
            return
        if not linearized and scaled.shape[0] > scaled.shape[1]:
            # more rows than weights: RᵀR (P × P) has the same nonzero spectrum, and the
            # cost stays linear in the number of observations
            gram = scaled.mT @ scaled
            self.lam = torch.linalg.eigvalsh(0.5 * (gram + gram.mT)).clamp_min(0.0)
            return
        gram = scaled @ scaled.mT
        if linearized:
            lam, U = torch.linalg.eigh(0.5 * (gram + gram.mT))
            self.lam = lam.clamp_min(0.0)
            self.proj_sq = (U.mT @ (e + offset.detach())).square()
        else:
            self.lam = torch.linalg.eigvalsh(0.5 * (gram + gram.mT)).clamp_min(0.0)

    def __call__(self, prior: Tensor, sigma: Tensor) -> Tensor:
        c = self.n * math.log(2 * math.pi)
        if self.groups is not None:
            return self._grouped(prior, sigma, c)
        if self.linearized:
            var = self.lam / prior + (sigma.square() if self.noise_var is None else 1.0)
            out = -0.5 * ((self.proj_sq / var).sum() + var.log().sum() + c)
            return out if self.noise_var is None else out - 0.5 * self.log_noise
        if self.noise_var is None:
            s2 = sigma.square()
            loglik = -0.5 * self.sse / s2 - self.n * sigma.log() - 0.5 * c
            logdet = torch.log1p(self.lam / (s2 * prior)).sum()
        else:
            loglik = -0.5 * self.sse - 0.5 * self.log_noise - 0.5 * c
            logdet = torch.log1p(self.lam / prior).sum()
        return loglik - 0.5 * (logdet + prior * self.theta_sq)


    def _grouped(self, prior: Tensor, sigma: Tensor, c: float) -> Tensor:
        """The evidence with a per-tensor prior ``(G,)`` (class docstring)."""
        s2 = sigma.square() if self.noise_var is None else sigma.new_ones(())
        K = (self.grams / prior.reshape(-1, 1, 1)).sum(0)
        eye = torch.eye(self.n, dtype=K.dtype, device=K.device)
        if self.linearized:
            L = torch.linalg.cholesky(K + s2 * eye)
            alpha = torch.linalg.solve_triangular(L, self.target.unsqueeze(-1), upper=False)
            logdet = 2 * L.diagonal().log().sum()
            out = -0.5 * (alpha.square().sum() + logdet + c)
            return out if self.noise_var is None else out - 0.5 * self.log_noise
        L = torch.linalg.cholesky(eye + K / s2)
        logdet = 2 * L.diagonal().log().sum()
        if self.noise_var is None:
            loglik = -0.5 * self.sse / s2 - self.n * sigma.log() - 0.5 * c
        else:
            loglik = -0.5 * self.sse - 0.5 * self.log_noise - 0.5 * c
        return loglik - 0.5 * (logdet + (prior.reshape(-1) * self.theta_sq).sum())


def gram_marglik(net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None,
                 names: list[str] | None, prior_mean: list[Tensor] | None = None,
                 linearized: bool = False, layerwise: bool = False) -> GramMarglik:
    """``GramMarglik`` of ``net`` at its current weights on ``X (n, d)``, ``Y (n, K)``,
    with the prior ``N(θ₀, I/δ)`` (``θ₀ = prior_mean``, one tensor per parameter;
    ``layerwise``: one ``δ`` per weight tensor of the posterior)."""
    with torch.no_grad():
        Js, f = network_jacobians(net, X, names)
    rows = Js.reshape(-1, Js.shape[-1])
    params = dict(net.named_parameters())
    keys = list(params) if names is None else names
    means = dict(zip(params, prior_mean)) if prior_mean is not None else {}
    diffs = [(params[k].detach() - means.get(k, 0.0)).reshape(-1) for k in keys]
    delta = torch.cat(diffs)
    noise = None if Yvar is None else Yvar.reshape(-1).clamp_min(1e-12)
    if layerwise:
        theta_sq, groups = torch.stack([v.square().sum() for v in diffs]), [len(v) for v in diffs]
    else:
        theta_sq, groups = delta.square().sum(), None
    return GramMarglik(rows, (f - Y).reshape(-1), theta_sq, noise, offset=rows @ delta,
                       linearized=linearized, groups=groups)


def _map_loss(net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor,
              prior_precision: Tensor, prior_mean: list[Tensor] | None = None) -> Tensor:
    """``(½ Σ (f − y)²/noise_var + ½ Σ δ_g‖θ_g − θ₀_g‖²) / n`` over the parameter tensors
    ``θ_g`` (``θ₀ = prior_mean``, default 0; ``prior_precision``: scalar or one per tensor)."""
    data = 0.5 * ((net(X) - Y).square() / noise_var).sum()
    params = list(net.parameters())
    means = prior_mean if prior_mean is not None else [0.0] * len(params)
    sq = torch.stack([(p - m).square().sum() for p, m in zip(params, means)])
    return (data + 0.5 * (prior_precision.reshape(-1) * sq).sum()) / max(X.shape[0], 1)


def train_map(
    net: nn.Module, X: Tensor, Y: Tensor, noise_var: Tensor, prior_precision: Tensor,
    n_epochs: int, lr: float, optimizer: str = "lbfgs", prior_mean: list[Tensor] | None = None,
) -> None:
    """Minimise ``½ Σ (f − y)²/noise_var + ½ δ‖θ‖²`` over the full batch, in place.

    Args:
        net: the network (trained in place).
        X: ``(n, d)`` inputs; ``Y``: ``(n, K)`` targets.
        noise_var: ``σ²`` broadcastable to ``(n, K)``.
        prior_precision: ``δ`` (scalar tensor, or one per parameter tensor of ``net``).
        n_epochs: L-BFGS iterations or Adam steps.
        lr: the Adam learning rate (L-BFGS uses a strong-Wolfe line search).
        optimizer: ``"lbfgs"`` (default; falls back to Adam if it produces non-finite
            weights) or ``"adam"``.
        prior_mean: ``θ₀``, one tensor per parameter (default zero).
    """
    if n_epochs <= 0:
        return
    net.train()
    if optimizer == "lbfgs":
        snapshot = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.LBFGS(
            net.parameters(), lr=1.0, max_iter=n_epochs, history_size=50,
            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = _map_loss(net, X, Y, noise_var, prior_precision, prior_mean)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            ok = all(bool(torch.isfinite(p).all()) for p in net.parameters())
            loss = _map_loss(net, X, Y, noise_var, prior_precision, prior_mean)
            ok = ok and bool(torch.isfinite(loss))
        if ok:
            net.eval()
            return
        with torch.no_grad():
            for p, s in zip(net.parameters(), snapshot):
                p.copy_(s)
    elif optimizer != "adam":
        raise ValueError(f"Unknown optimizer {optimizer!r}; use 'lbfgs' or 'adam'.")
    adam = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(n_epochs):
        adam.zero_grad()
        _map_loss(net, X, Y, noise_var, prior_precision, prior_mean).backward()
        adam.step()
    net.eval()


def fit_network_and_laplace(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, n_epochs: int, options: TrainingOptions,
    subset_of_weights: str = "all", hessian_structure: str = "full", backend: Any = None,
    prior_mean: list[Tensor] | None = None, linearized: bool = False,
) -> tuple[ParametricLaplace | None, Tensor, Tensor]:
    """MAP training with online marginal-likelihood refits, then the final Laplace fit.

    Args:
        X: ``(n, d)`` transformed inputs; ``Y``: ``(n, K)`` standardized targets.
        Yvar: ``(n, K)`` known noise variances (then ``σ`` is fixed to their RMS for the
            Laplace object and only ``δ`` is refit), or ``None``.
        prior_mean: ``θ₀`` of the prior ``N(θ₀, I/δ)``, one tensor per parameter of
            ``net`` (default zero); weight decay pulls towards it.
        linearized: refit on the evidence of the linearized model (``GramMarglik``;
            full GGN with the native backend only).

    Returns:
        The fitted Laplace object (``None`` for the full GGN with the native backend:
        its refits use ``GramMarglik`` and the model builds its posterior from the
        Jacobians; ``LaplaceBNN.la`` builds the object on demand) and the final
        ``(σ, δ)``.
    """
    tune_noise = options.tune_noise and Yvar is None
    if hessian_structure == "full" and backend is None:
        return _fit_full_ggn(net, X, Y, Yvar, sigma_noise, prior_precision, n_epochs, options,
                             subset_of_weights, tune_noise, prior_mean, linearized)
    if prior_precision.numel() > 1:
        raise ValueError("A per-tensor prior precision needs the full GGN (native backend).")
    if Yvar is not None:
        sigma_noise = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
    sigma, prior = sigma_noise.detach().clone(), prior_precision.detach().clone()
    lik_var = Yvar.clamp_min(1e-12) if Yvar is not None else None
    la_kwargs = {"subset_of_weights": subset_of_weights, "hessian_structure": hessian_structure,
                 "backend": backend, "prior_mean": prior_mean}
    every = options.marglik_every if options.marglik_every > 0 else n_epochs + 1
    done = 0
    while done < n_epochs:
        steps = min(every, n_epochs - done)
        noise_var = lik_var if lik_var is not None else sigma.square()
        train_map(net, X, Y, noise_var, prior, steps, options.lr, options.optimizer, prior_mean)
        done += steps
        if done < n_epochs and options.marglik_steps > 0:
            la = fit_laplace(net, X, Y, sigma, prior, **la_kwargs)
            sigma, prior = refit_hyperparameters(
                la, sigma, prior, options.marglik_steps, options, tune_noise
            )
    la = fit_laplace(net, X, Y, sigma, prior, **la_kwargs)
    if options.final_marglik_steps > 0:
        sigma, prior = refit_hyperparameters(
            la, sigma, prior, options.final_marglik_steps, options, tune_noise
        )
    return la, sigma, prior


def _fit_full_ggn(
    net: nn.Module, X: Tensor, Y: Tensor, Yvar: Tensor | None, sigma_noise: Tensor,
    prior_precision: Tensor, n_epochs: int, options: TrainingOptions,
    subset_of_weights: str, tune_noise: bool, prior_mean: list[Tensor] | None = None,
    linearized: bool = False,
) -> tuple[None, Tensor, Tensor]:
    """``fit_network_and_laplace`` for the exact GGN: refits on the Gram spectrum."""
    names = posterior_parameter_names(net, subset_of_weights)
    layerwise = prior_precision.numel() > 1
    if layerwise and names is not None:
        raise ValueError("A per-tensor prior precision needs subset_of_weights='all'.")
    sigma, prior = sigma_noise.detach().clone(), prior_precision.detach().clone()
    if Yvar is not None:
        sigma = Yvar.mean().clamp_min(options.min_noise_std**2).sqrt()
    lik_var = Yvar.clamp_min(1e-12) if Yvar is not None else None
    every = options.marglik_every if options.marglik_every > 0 else n_epochs + 1
    done, best = 0, None
    while done < n_epochs:
        steps = min(every, n_epochs - done)
        noise_var = lik_var if lik_var is not None else sigma.square()
        train_map(net, X, Y, noise_var, prior, steps, options.lr, options.optimizer, prior_mean)
        done += steps
        if done < n_epochs and options.marglik_steps > 0:
            lml = gram_marglik(net, X, Y, Yvar, names, prior_mean, linearized, layerwise)
            objective = with_prior_hyperprior(lml, options)
            sigma, prior = maximize_marglik(objective, sigma, prior, options.marglik_steps,
                                            options, tune_noise)
            if options.keep_best:
                best = _better_state(best, net, objective, sigma, prior, options, tune_noise)
    if options.final_marglik_steps > 0:
        lml = gram_marglik(net, X, Y, Yvar, names, prior_mean, linearized, layerwise)
        objective = with_prior_hyperprior(lml, options)
        sigma, prior = maximize_marglik(objective, sigma, prior, options.final_marglik_steps,
                                        options, tune_noise)
        if best is not None:
            final = _better_state(None, net, objective, sigma, prior, options, tune_noise)
            if best[0] > final[0]:  # an earlier network along the path had more evidence
                with torch.no_grad():
                    for p, saved in zip(net.parameters(), best[1]):
                        p.copy_(saved)
                sigma, prior = best[2], best[3]
    return None, sigma, prior


def _better_state(
    best: tuple | None, net: nn.Module, objective: Any, sigma: Tensor, prior: Tensor,
    options: TrainingOptions, tune_noise: bool,
) -> tuple:
    """``best`` or, if its score is lower, ``(score, weights, σ, δ)`` of the current network,
    the score being the refit objective (evidence plus hyperpriors) at ``(δ, σ)``."""
    with torch.no_grad():
        score = float(with_noise_hyperprior(objective, options, tune_noise)(prior, sigma))
    if best is not None and best[0] >= score:
        return best
    weights = [p.detach().clone() for p in net.parameters()]
    return score, weights, sigma.clone(), prior.clone()


def with_prior_hyperprior(lml: GramMarglik, options: TrainingOptions) -> Any:
    """``lml(δ, σ)`` plus ``Σ_g log LogNormal(δ_g; log δ_ref, s²)`` with ``s =
    options.prior_precision_prior`` and ``δ_ref = lml.reference_precision`` (see
    ``TrainingOptions``), or ``lml`` itself when ``s`` is ``None``."""
    scale = options.prior_precision_prior
    if scale is None:
        return lml
    loc = math.log(max(lml.reference_precision, options.min_prior_precision))

    def objective(prior: Tensor, sigma: Tensor) -> Tensor:
        log_prior = prior.log()
        return lml(prior, sigma) - (log_prior + 0.5 * ((log_prior - loc) / scale) ** 2).sum()

    return objective


def fit_laplace_bnn(model: LaplaceBNN, **kwargs: Any) -> LaplaceBNN:
    """Fit a ``LaplaceBNN`` in place (MAP, Laplace, hyperparameters); the Ax fit handler.

    Keyword arguments are ignored (accepted so that ``fit_botorch_model``-style
    dispatchers can pass their options).
    """
    return model.fit()

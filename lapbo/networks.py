"""The default surrogate network of ``LaplaceBNN`` and its building blocks.

``default_network`` builds an MLP with bounded activations whose output layer may also
see fixed basis functions of the input (``AugmentedMLP``): a separable quadratic
(``QuadraticFeatures``) and random Fourier features (``RandomFourierFeatures``). These
bases have no trainable parameters of their own; their coefficients are ordinary
output-layer weights, so a last-layer Laplace posterior is Bayesian linear regression on
``[φ(x), basis(x)]`` and the network stays ``last_layer(features)`` for the Laplace
library.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class Gaussian(nn.Module):
    """``exp(−z²)``: a bounded, localised activation (a ridge bump on the first layer)."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.exp(-z.square())


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
    "gauss": Gaussian,
}


class InputMap(nn.Module):
    """A fixed (weightless) map of inputs in the unit box ``[0, 1]^d`` to the network.

    ``"box"``: identity. ``"centered"``: ``z = 2x − 1``. ``"circle"``: each coordinate to
    a half circle, ``(cos(πz/2), sin(πz/2))``, so every input has the same norm ``√d``.
    ``"sphere"``: ``√(d+1)·(z, 1)/‖(z, 1)‖``, the box onto a cap of a sphere. With a
    constant input norm the (linearized) prior variance of a network's first layer is the
    same everywhere in the box instead of growing towards the corners.
    """

    kinds = ("box", "centered", "circle", "sphere")

    def __init__(self, kind: str = "box") -> None:
        super().__init__()
        if kind not in self.kinds:
            raise ValueError(f"Unknown input map {kind!r}; choose from {self.kinds}.")
        self.kind = kind

    def out_features(self, d: int) -> int:
        return {"circle": 2 * d, "sphere": d + 1}.get(self.kind, d)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "box":
            return x
        z = 2 * x - 1
        if self.kind == "centered":
            return z
        if self.kind == "circle":
            angle = 0.5 * math.pi * z
            return torch.cat([angle.cos(), angle.sin()], dim=-1)
        u = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)
        return u * (math.sqrt(u.shape[-1]) / u.norm(dim=-1, keepdim=True))

    def extra_repr(self) -> str:
        return repr(self.kind)


class QuadraticFeatures(nn.Module):
    """``x ↦ s·[z, z²]`` with ``z = 2x − 1`` for ``x`` in the unit box: ``(n, d) → (n, 2d)``.

    With learned coefficients, a separable quadratic trend whose maximiser can lie
    inside the box. The scale ``s`` (a buffer, saved in the state dict) sets the trend's
    prior variance relative to the rest of the output layer, which shares one prior
    precision: ``s²/δ`` per coefficient.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"trend_scale must be a positive finite number, not {scale!r}.")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def out_features(self, d: int) -> int:
        return 2 * d

    def forward(self, x: Tensor) -> Tensor:
        z = 2 * x - 1
        return self.scale.to(z) * torch.cat([z, z.square()], dim=-1)


class RandomFourierFeatures(nn.Module):
    """Fixed random cosine features of a squared-exponential kernel: ``(n, d) → (n, N)``.

    ``ψ(x) = √(2v/N) · cos(xΩ + b)`` with column ``j`` of ``Ω`` ``(d, N)`` ``~ N(0,
    I/ℓⱼ²)`` and ``b ~ U(0, 2π)``, drawn once (buffers: saved in the state dict, copied by
    warm starts). With coefficients ``~ N(0, 1/δ)``, ``ψ(x)ᵀw`` has covariance ``≈ (v/δ)
    · mean_j exp(−‖x − x'‖²/(2ℓⱼ²))``: a component whose posterior variance returns to
    its prior level away from the data, which learned features do not do. One ``ℓ``
    gives a squared-exponential kernel; a range ``(ℓ_min, ℓ_max)`` spreads the ``ℓⱼ``
    log-uniformly over it (a scale mixture, for problems whose length scale is unknown).

    Args:
        d: input size; n_features: ``N``; lengthscale: ``ℓ`` or ``(ℓ_min, ℓ_max)``
            (unit-box units); variance: ``v``.
    """

    def __init__(self, d: int, n_features: int, lengthscale: float | tuple[float, float],
                 variance: float) -> None:
        super().__init__()
        single = isinstance(lengthscale, (int, float))
        lo, hi = (lengthscale, lengthscale) if single else lengthscale
        if n_features <= 0 or min(lo, hi) <= 0 or variance <= 0:
            raise ValueError("Random features need n_features, lengthscale and variance > 0.")
        scales = torch.logspace(math.log10(lo), math.log10(hi), n_features)
        self.register_buffer("omega", torch.randn(d, n_features) / scales)
        self.register_buffer("phase", 2 * math.pi * torch.rand(n_features))
        self.amplitude = math.sqrt(2 * variance / n_features)

    def out_features(self, d: int) -> int:
        return self.omega.shape[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.amplitude * torch.cos(x @ self.omega + self.phase)


#: Smoothness ``ν`` of the Matérn kernels that ``ScaledRandomFeatures`` approximates
#: (``"rbf"``, the squared-exponential kernel, is the limit ``ν → ∞``).
MATERN_NU = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}
#: The kernels of ``ScaledRandomFeatures``.
RANDOM_FEATURE_KERNELS = ("rbf", *MATERN_NU)


class ScaledRandomFeatures(nn.Module):
    """Quasi-random Fourier features with per-coordinate length scales: ``(n, d) → (n, N)``,
    optionally followed by a separable quadratic trend ``(n, 2d)``.

    ``ψ(x) = √(1/(N/2)) · [cos((x/ℓ)Ω), sin((x/ℓ)Ω)]``, ``ℓ`` ``(d,)`` the length scales
    (unit-box units) and the ``N/2`` columns of ``Ω`` ``(d, N/2)`` quasi-random draws from
    the kernel's spectral density, so that ``ψ(x)ᵀψ(x') ≈ k((x − x')/ℓ)`` with automatic
    relevance determination:

    - ``"rbf"``: ``k(r) = exp(−½‖r‖²)``, ``Ω`` the standard-normal quantiles of a scrambled
      Sobol sequence;
    - ``"matern12"``, ``"matern32"``, ``"matern52"``: the Matérn kernel of smoothness ``ν``
      (GPyTorch's ``MaternKernel``), whose spectral density is a multivariate Student-t
      with ``2ν`` degrees of freedom: each normal column is scaled by ``√(2ν/u)`` with
      ``u`` the ``χ²(2ν)`` quantile of one more Sobol coordinate.

    Quasi-Monte Carlo frequencies and paired sines and cosines (no random phases)
    approximate the kernel far more closely than i.i.d. random features of the same number
    (Avron et al., 2016), which matters where BO resolves small differences near an
    optimum. With ``trend=True`` the features end with ``s·[z, z²]``, ``z = 2x − 1`` and
    ``s = 1/√d`` (a trend whose prior variance under the shared prior precision stays
    about half the kernel part's in every dimension). ``Ω`` and ``ℓ`` are buffers, not
    weights: ``ℓ`` is a hyperparameter that ``lapbo.lengthscales`` sets by the evidence.
    """

    def __init__(self, d: int, n_features: int, lengthscale: float = 1.0,
                 kernel: str = "rbf", trend: bool = False) -> None:
        super().__init__()
        if n_features <= 0 or n_features % 2 or lengthscale <= 0:
            raise ValueError("ScaledRandomFeatures needs an even n_features > 0 and "
                             "lengthscale > 0.")
        if kernel not in RANDOM_FEATURE_KERNELS:
            raise ValueError(f"Unknown random-feature kernel {kernel!r}; choose from "
                             f"{list(RANDOM_FEATURE_KERNELS)}.")
        # the kernel is state (the limit kernel of ``lapbo.lengthscales`` must be the one
        # that Ω samples); a state saved before it was loads with the constructor's
        self.register_buffer("kernel_index",
                             torch.tensor(RANDOM_FEATURE_KERNELS.index(kernel)))
        #: the Sobol seed of ``Ω`` (not state: a loaded ``Ω`` may come from another),
        #: from which ``extend_random_features`` draws more frequencies after these
        self.sobol_seed = int(torch.randint(2**31 - 1, ()))
        self.omega_dtype = torch.get_default_dtype()  # the rounding of Ω's draw
        self.register_buffer("omega", spectral_frequencies(d, n_features // 2, kernel,
                                                           self.sobol_seed)
                             .to(self.omega_dtype))
        self.register_buffer("lengthscale", torch.full((d,), float(lengthscale)))
        if trend:  # the trend's presence is part of the state dict
            self.register_buffer("trend_scale", torch.tensor(1.0 / math.sqrt(d)))

    @property
    def has_trend(self) -> bool:
        return hasattr(self, "trend_scale")

    @property
    def kernel(self) -> str:
        """The kernel whose spectral density ``Ω`` samples (``RANDOM_FEATURE_KERNELS``)."""
        return RANDOM_FEATURE_KERNELS[int(self.kernel_index)]

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        key = prefix + "kernel_index"
        super()._load_from_state_dict(state_dict, prefix, *args)
        missing = args[2]  # (local_metadata, strict, missing_keys, ...)
        if key not in state_dict and key in missing:  # saved before the kernel was state
            missing.remove(key)

    def features(self, x: Tensor, lengthscale: Tensor, n_features: int | None = None
                 ) -> Tensor:
        """``ψ(x)`` ``(n, N)`` (``(n, N + 2d)`` with the trend) at the given length scales
        ``(d,)`` (differentiable in them); with ``n_features``, the same map on the first
        ``n_features / 2`` frequencies only (a Sobol prefix, itself a quasi-random set):
        ``(n, n_features)`` (plus the trend), the kernel approximated with fewer features."""
        omega = self.frequencies(n_features)
        z = (x / lengthscale) @ omega
        parts = [math.sqrt(1.0 / omega.shape[-1]) * torch.cat([z.cos(), z.sin()], dim=-1)]
        if self.has_trend:
            parts.append(self.trend_features(x))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def frequencies(self, n_features: int | None = None) -> Tensor:
        """``Ω`` ``(d, M)``: all frequencies, or the first ``n_features / 2``."""
        return self.omega if n_features is None else self.omega[:, :max(n_features // 2, 1)]

    def trend_features(self, x: Tensor) -> Tensor:
        """``s·[z, z²]`` ``(n, 2d)``, ``z = 2x − 1`` (the layer must have the trend)."""
        u = 2 * x - 1
        return self.trend_scale.to(u) * torch.cat([u, u.square()], dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x, self.lengthscale)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, trend={self.has_trend}"


def spectral_frequencies(d: int, count: int, kernel: str = "rbf", seed: int | None = None
                         ) -> Tensor:
    """``Ω`` ``(d, count)``: quasi-random frequencies of the unit-length-scale ``kernel``
    (see ``ScaledRandomFeatures``), float64, from a scrambled Sobol sequence of the given
    ``seed`` (default: drawn from the global torch generator). The frequencies of a
    larger ``count`` from the same seed begin with these."""
    if seed is None:
        seed = int(torch.randint(2**31 - 1, ()))
    nu = MATERN_NU.get(kernel)
    sobol = torch.quasirandom.SobolEngine(d + (nu is not None), scramble=True, seed=seed)
    u = sobol.draw(count, dtype=torch.float64).clamp(1e-10, 1 - 1e-10)
    omega = torch.distributions.Normal(0.0, 1.0).icdf(u[:, :d])
    if nu is not None:
        # the χ²(2ν) quantile, 2 · gammaincinv(ν, u), as scipy.stats.chi2.ppf computes it
        # (bit for bit), without importing scipy.stats (0.6–0.9 s of a process's first fit)
        from scipy.special import gammaincinv  # a dependency of BoTorch

        radial = torch.from_numpy(2 * gammaincinv(nu, u[:, d].numpy())).to(omega)
        omega = omega * (2 * nu / radial).sqrt().unsqueeze(-1)
    return omega.mT.contiguous()


def lengthscale_hyperprior(d: int) -> tuple[float, float]:
    """``(loc, scale)`` of the log-normal hyperprior on each length scale of a
    ``random_feature_network`` for ``d`` inputs: ``(√2 + ½ log d, √3)``, BoTorch's
    dimension-scaled prior (``get_covar_module_with_dim_scaled_prior``)."""
    return math.sqrt(2.0) + 0.5 * math.log(d), math.sqrt(3.0)


def lengthscale_start(d: int, prior: tuple[Any, ...] | None = None) -> float:
    """The mode of the hyperprior on each length scale for ``d`` inputs, where a
    ``random_feature_network`` starts: of ``lengthscale_hyperprior(d)`` (``prior=None``),
    ``("lognormal", loc, scale)`` or ``("gamma", α, β)`` (the mean ``α/β`` if ``α ≤ 1``)."""
    if prior is not None and prior[0] == "gamma":
        alpha, beta = float(prior[1]), float(prior[2])
        return (alpha - 1) / beta if alpha > 1 else alpha / beta
    loc, scale = lengthscale_hyperprior(d) if prior is None else (prior[1], prior[2])
    return math.exp(loc - scale**2)


def random_feature_network(
    d: int, m: int, n_features: int = 1024, dtype: torch.dtype = torch.float64,
    device: torch.device | None = None, kernel: str = "rbf", trend: str | None = None,
    lengthscale: float | None = None,
) -> nn.Sequential:
    """``x ↦ W ψ(x) + b``: ``ScaledRandomFeatures`` ``(d → n_features)`` then an
    ``nn.Linear`` ``(n_features → m)`` initialised at zero. Linear in its weights, so its
    Laplace posterior and evidence are exact (Bayesian linear regression on ``ψ``); the
    length scales start at the mode of the hyperprior of ``lapbo.lengthscales``.

    Args:
        kernel: the kernel the features approximate (``RANDOM_FEATURE_KERNELS``).
        trend: ``"quadratic"`` appends a separable quadratic trend to the features
            (``2d`` more weights per output), or ``None``.
        lengthscale: the initial length scale of every input (default
            ``lengthscale_start(d)``).
    """
    if trend not in (None, "quadratic"):
        raise ValueError(f"Unknown trend {trend!r}; use None or 'quadratic'.")
    start = lengthscale_start(d) if lengthscale is None else lengthscale
    layer = ScaledRandomFeatures(d, n_features, start, kernel, trend == "quadratic")
    head = nn.Linear(n_features + (2 * d if layer.has_trend else 0), m)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    net = nn.Sequential(layer, head)
    return net.to(dtype=dtype, device=device)


def random_feature_layer(net: nn.Module) -> ScaledRandomFeatures | None:
    """The ``ScaledRandomFeatures`` of a ``random_feature_network``, else ``None``."""
    if (isinstance(net, nn.Sequential) and len(net) == 2
            and isinstance(net[0], ScaledRandomFeatures) and isinstance(net[1], nn.Linear)):
        return net[0]
    return None


def extend_random_features(net: nn.Sequential, n_features: int) -> Tensor | None:
    """Grow a ``random_feature_network`` to ``n_features`` features (in place): ``Ω``
    becomes the first ``n_features / 2`` frequencies of its own Sobol sequence
    (``ScaledRandomFeatures.sobol_seed``), which begin with the current ones, and the
    head gets zero weights on the new cosines and sines and keeps its weights on the old
    ones and the trend (the inverse of ``truncate_random_features``; the function changes
    with the features' normalization ``1/√M``: a fit of the weights follows).

    Returns:
        The head columns ``(P_old,)`` of the new head that hold the old ones (to place a
        vector over the old head), or ``None`` when nothing changed: the network has as
        many features already, or its ``Ω`` is not a prefix of its seed's sequence (a
        state loaded from another network).
    """
    layer, grown = _resizable_layer(net, n_features, "extend_random_features")
    half = layer.omega.shape[-1]
    if grown <= half:
        return None
    omega = spectral_frequencies(layer.omega.shape[0], grown, layer.kernel,
                                 layer.sobol_seed).to(layer.omega_dtype).to(layer.omega)
    if not torch.equal(omega[:, :half], layer.omega):
        return None
    head = net[1]
    n_trend = head.in_features - 2 * half
    columns = _feature_columns(half, grown, n_trend, head.weight.device)
    layer.omega = omega.contiguous()
    net[1] = _new_head(head, 2 * grown + n_trend)
    with torch.no_grad():
        net[1].weight[:, columns] = head.weight
    return columns


def truncate_random_features(net: nn.Sequential, n_features: int) -> Tensor | None:
    """Keep the first ``n_features / 2`` frequencies of a ``random_feature_network`` (in
    place): the layer's ``Ω`` becomes its prefix (itself a quasi-random set) and the head
    keeps the weight columns of the kept cosines, sines and trend.

    Returns:
        The kept head columns ``(n_features (+ 2d),)`` (to select the same entries of a
        vector over the old head), or ``None`` when the network has no more features.
    """
    layer, keep = _resizable_layer(net, n_features, "truncate_random_features")
    half = layer.omega.shape[-1]
    if keep >= half:
        return None
    head = net[1]
    columns = _feature_columns(keep, half, head.in_features - 2 * half, head.weight.device)
    layer.omega = layer.omega[:, :keep].contiguous()
    net[1] = _new_head(head, len(columns))
    with torch.no_grad():
        net[1].weight.copy_(head.weight[:, columns])
    return columns


def resized_head_vector(theta: Tensor, m: int, columns: Tensor, width: int | None = None
                        ) -> Tensor:
    """A vector ``[vec W (m, P_old), b (m,)]`` over the head of a ``random_feature_network``
    (which has no other weights), carried to the head after a resize: the entries at
    ``columns`` (``truncate_random_features``' return; ``width=None``), or placed at
    ``columns`` of a head of ``width`` inputs with zeros elsewhere
    (``extend_random_features``' return)."""
    W, b = theta[:-m].reshape(m, -1), theta[-m:]
    if width is None:
        return torch.cat([W[:, columns].reshape(-1), b])
    grown = W.new_zeros(m, width)
    grown[:, columns] = W
    return torch.cat([grown.reshape(-1), b])


def _resizable_layer(net: nn.Module, n_features: int, caller: str
                     ) -> tuple[ScaledRandomFeatures, int]:
    """``(the network's ScaledRandomFeatures, n_features / 2)``, with the arguments checked."""
    layer = random_feature_layer(net)
    if layer is None:
        raise ValueError(f"{caller} needs a random_feature_network.")
    if n_features <= 0 or n_features % 2:
        raise ValueError(f"n_features must be even and positive, not {n_features}.")
    return layer, n_features // 2


def _feature_columns(count: int, half: int, n_trend: int, device: torch.device) -> Tensor:
    """Columns of a head over ``half`` frequencies (``[cos (half), sin (half), trend]``)
    that hold the first ``count`` cosines, the first ``count`` sines and the trend."""
    idx = torch.arange(count, device=device)
    trend = torch.arange(2 * half, 2 * half + n_trend, device=device)
    return torch.cat([idx, half + idx, trend])


def _new_head(head: nn.Linear, width: int) -> nn.Linear:
    """An ``nn.Linear`` ``(width → head's outputs)`` like ``head``, zero weights, its bias."""
    new = nn.Linear(width, head.out_features, dtype=head.weight.dtype,
                    device=head.weight.device)
    with torch.no_grad():
        new.weight.zero_()
        new.bias.copy_(head.bias)
    return new


class AugmentedMLP(nn.Module):
    """An MLP whose output layer also sees fixed bases of the input.

    ``f(x) = W [φ(x); ψ₁(x); …] + b`` with ``φ`` the MLP's last hidden layer.

    Args:
        mlp: an ``nn.Sequential`` ending in an ``nn.Linear`` ``(width → m)``; its hidden
            part becomes ``features`` and its output layer initialises ``head`` (the
            basis coefficients start at zero, so the initial function is the MLP's).
        d: input size.
        bases: weightless modules ``(n, d) → (n, ·)`` with ``out_features(d)``.
    """

    def __init__(self, mlp: nn.Sequential, d: int, bases: Sequence[nn.Module]) -> None:
        super().__init__()
        last = mlp[-1]
        if not isinstance(last, nn.Linear):
            raise ValueError("AugmentedMLP needs an MLP ending in an nn.Linear layer.")
        self.features = mlp[:-1]
        self.bases = nn.ModuleList(bases)
        extra = sum(b.out_features(d) for b in self.bases)
        self.head = nn.Linear(last.in_features + extra, last.out_features)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[:, : last.in_features] = last.weight
            self.head.bias.copy_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([self.features(x), *(b(x) for b in self.bases)], dim=-1))


def hidden_activations(activation: str | Sequence[str], depth: int) -> list[str]:
    """One activation name per hidden layer from one name or ``depth`` names;
    ``ValueError`` for another count or a name not in ``_ACTIVATIONS``."""
    acts = [activation] * depth if isinstance(activation, str) else list(activation)
    if len(acts) != depth:
        raise ValueError(f"activation must be one name or {depth} names (one per hidden "
                         f"layer, depth={depth}), not {activation!r}.")
    for act in acts:
        if act not in _ACTIVATIONS:
            raise ValueError(f"Unknown activation {act!r}; choose from {sorted(_ACTIVATIONS)}.")
    return acts


def default_network(
    d: int, m: int, width: int = 50, depth: int = 2, activation: str | Sequence[str] = "tanh",
    dtype: torch.dtype = torch.float64, device: torch.device | None = None,
    input_map: str = "box", init_scale: float | None = None, trend: str | None = None,
    random_features: int = 0, random_feature_lengthscale: float | tuple[float, float] = 0.3,
    random_feature_variance: float = 3.0, trend_scale: float = 1.0,
    reference_dim: float | None = None,
) -> nn.Module:
    """MLP ``d → width (× depth hidden layers) → m`` with bounded activations by default,
    optionally with bases in its output layer (``AugmentedMLP``).

    Args:
        activation: one name for every hidden layer or one per hidden layer (keys of
            ``_ACTIVATIONS``: ``"tanh"``, ``"gauss"`` = ``exp(−z²)``, ``"relu"``, ...).
        input_map: a fixed, weightless map of ``[0, 1]^d`` inputs prepended to the MLP
            (``InputMap``; anything but ``"box"`` shifts the layer indices in the state
            dict keys).
        init_scale: ``c`` for the first layer: weights ``N(0, c²)`` per input coordinate,
            biases ``U(−c√fan_in, c√fan_in)`` (an inverse length scale per coordinate of
            the unit box); ``None``: PyTorch's default initialisation.
        trend: ``"quadratic"`` adds ``QuadraticFeatures`` to the output layer, or ``None``.
        trend_scale: the scale ``s`` of those features (``QuadraticFeatures``).
        random_features: ``N`` random Fourier features in the output layer (0: none),
            with ``random_feature_lengthscale`` and ``random_feature_variance``.
        reference_dim: the input dimension ``d₀`` for which ``init_scale`` and
            ``random_feature_lengthscale`` are stated; for ``d`` inputs the length scales
            grow by ``√(d/d₀)`` (``init_scale`` shrinks by it), which keeps the typical
            distance between points of the unit box (``∝ √d``) fixed relative to them, as
            BoTorch's dimension-scaled length-scale prior does for the GP. ``None``: the
            values apply as given in every dimension.
    """
    if reference_dim is not None:
        if reference_dim <= 0:
            raise ValueError(f"reference_dim must be positive or None, not {reference_dim!r}.")
        factor = math.sqrt(d / reference_dim)
        if init_scale is not None:
            init_scale = init_scale / factor
        if isinstance(random_feature_lengthscale, (int, float)):
            random_feature_lengthscale = random_feature_lengthscale * factor
        else:
            lo, hi = random_feature_lengthscale
            random_feature_lengthscale = (lo * factor, hi * factor)
    acts = hidden_activations(activation, depth)
    if trend not in (None, "quadratic"):
        raise ValueError(f"Unknown trend {trend!r}; use None or 'quadratic'.")
    layers: list[nn.Module] = []
    fan_in = d
    if input_map != "box":
        layers.append(InputMap(input_map))
        fan_in = layers[0].out_features(d)
    for i, act in enumerate(acts):
        linear = nn.Linear(fan_in, width)
        if i == 0 and init_scale is not None:
            with torch.no_grad():
                linear.weight.normal_(0.0, init_scale)
                bound = init_scale * math.sqrt(fan_in)
                linear.bias.uniform_(-bound, bound)
        layers += [linear, _ACTIVATIONS[act]()]
        fan_in = width
    layers.append(nn.Linear(fan_in, m))
    net: nn.Module = nn.Sequential(*layers)
    bases: list[nn.Module] = []
    if trend == "quadratic":
        bases.append(QuadraticFeatures(trend_scale))
    if random_features:
        bases.append(RandomFourierFeatures(d, random_features, random_feature_lengthscale,
                                           random_feature_variance))
    if bases:
        net = AugmentedMLP(net, d, bases)
    return net.to(dtype=dtype, device=device)


#: Module types whose forward pass treats the rows of a batch independently.
ROWWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Sequential, nn.ModuleList, nn.Linear, nn.Identity, nn.Tanh, nn.ReLU, nn.GELU, nn.SiLU,
    nn.Sigmoid, nn.Softplus, nn.ELU, nn.LeakyReLU, nn.Mish, Gaussian, InputMap,
    QuadraticFeatures, RandomFourierFeatures, AugmentedMLP, ScaledRandomFeatures,
)


def rows_independent(net: nn.Module) -> bool:
    """Whether every module of ``net`` is of a ``ROWWISE_MODULES`` type (exactly), so that
    ``laplace.curvature.network_jacobians(..., independent_samples=True)`` may read the
    Jacobians off the layers' inputs and output gradients."""
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be an nn.Module, got {type(net).__name__}.")
    return all(type(m) in ROWWISE_MODULES for m in net.modules())


def last_layer_name(net: nn.Module) -> str:
    """Name of the last ``nn.Linear`` registered in ``net`` (its output layer)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("Last-layer Laplace needs a network with an nn.Linear output layer.")
    return names[-1]

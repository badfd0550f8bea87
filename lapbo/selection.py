"""Model selection by the Laplace evidence: ``LaplaceBNN(candidates=[...])``.

Each candidate is a ``LaplaceBNN`` with the parent's options updated by one dict of
keyword options. Every round each candidate is trained on the round's data (warm-started
from its own model of the previous round, except where the default family of four or more
inputs is refit from its initial values: ``refits_cold``; above
``lengthscales.EXACT_FIT_ROWS`` observations only the incumbent, until the data has grown
by a fifth: ``fit_by_evidence``), its prior precision and noise are refit, and
its Laplace log marginal likelihood ``log p(y | δ̂, σ̂, candidate)`` is computed over the
same weights that its prior regularises. The parent then *becomes* the candidate with the
highest evidence (its network, prior and hyperparameters): selection, not averaging,
because an evidence-weighted mixture is not Gaussian (BoTorch's analytic acquisitions and
exact conditioning need one Gaussian) and would multiply the cost of every acquisition
call by the number of candidates; with tens of observations or more the evidences of
different candidates differ by several nats, so the mixture is nearly one-hot anyway.
``model.selection`` lists every candidate's evidence after ``fit()``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botorch.exceptions.errors import UnsupportedError
from botorch.exceptions.warnings import InputDataWarning

from lapbo import averaging, lengthscales, validation

if TYPE_CHECKING:
    from lapbo.model import LaplaceBNN

_RANDOM_FEATURES: dict[str, Any] = {"net": "random_features", "random_features": 4096}

#: ``LaplaceBNN``'s default family: random-feature networks (``net="random_features"``,
#: 4,096 quasi-random Fourier features, exact evidence, ARD length scales, ``δ`` and ``σ``
#: by type-II maximum likelihood) whose features approximate the squared-exponential or
#: the Matérn-5/2 kernel, each with and without a separable quadratic trend. The evidence
#: chooses the smoothness and whether a global trend explains the data, per problem and
#: per round. Chosen on the development seeds over the MLP family (``MLP_CANDIDATES``) and
#: the MLP family plus one random-feature network: see ``docs/lapbo_defaults.md``.
DEFAULT_CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {**_RANDOM_FEATURES, "trend": trend, **({} if kernel == "rbf" else
                                              {"random_feature_kernel": kernel})}
    for trend in (None, "quadratic") for kernel in ("rbf", "matern52"))

#: Inputs of this many dimensions or more get ``HIGH_DIMENSIONAL_CANDIDATES`` by default
#: (``MID_DIMENSIONAL_CANDIDATES`` below it).
HIGH_DIMENSIONAL = 10

#: From this many inputs on the default family is ``MID_DIMENSIONAL_CANDIDATES`` (from
#: ``HIGH_DIMENSIONAL`` on ``HIGH_DIMENSIONAL_CANDIDATES``), and up
#: to ``lengthscales.EXACT_FIT_ROWS`` observations each candidate is refit from its initial
#: hyperparameters every round (``refits_cold``), as BoTorch refits a GP, rather than from
#: its model of the last round: the fit is then a function of the round's data, not of the
#: path of earlier rounds. Chosen on development seeds (rules written before the runs):
#: on fifteen problems with 4 ≤ d ≤ 9 the warm-started four-network family had its median
#: at most the GP's on 6 with 64 of 150 paired wins, this one on 9 with 80 (warm-started:
#: 5 and 68; the four-network family refit cold: 4 and 57); on ten problems with d ≥ 10
#: the same family warm-started 6 and 59, refit cold 8 and 66 (``docs/lapbo_defaults.md``,
#: session 24).
MID_DIMENSIONAL = 4

#: The default family for ``d ≥ HIGH_DIMENSIONAL``: squared-exponential random-feature
#: networks under ``SingleTaskGP``'s hyperpriors (noise ``σ² ~ LogNormal(−4, 1)``; one
#: ``δ`` per weight tensor, each held at its reference by a log-normal hyperprior of
#: scale 0.01). Two have no trend and differ in how they split the prior variance between
#: the kernel and the constant: kernel 1/2 and constant 1/2 (the single network of
#: session 15), or kernel 1 and a broad constant (variance 100), as ``SingleTaskGP``
#: (output scale 1, constant mean fitted without a prior). Both are nearly GPs of
#: BoTorch's default kernel, by 4,096 features. The third is the second plus the separable
#: quadratic trend of ``DEFAULT_CANDIDATES`` (prior variance about half the kernel's),
#: for functions with a global bowl, which a stationary kernel fitted to 2d + 2 points in
#: ten or more dimensions does not extrapolate (Griewank-10, development seeds: the two
#: networks without it 0 of 10 paired wins against the GP, median log10 regret 1.31
#: against 0.81; with it 9 of 10, −0.27). Where the trend does not explain the data its
#: evidence is lower and it is rarely chosen (Ackley-10, Ackley-20, Powell-12: 2 of 450
#: rounds; the trajectories are those of the two networks alone in 29 of 30 runs). With
#: the 2d + 2 + 15 observations of a small budget, the free output scale of
#: ``DEFAULT_CANDIDATES`` explores where the GP exploits (development seeds: 4, 0 and 2
#: of 10 paired wins on those three problems). See ``docs/lapbo_defaults.md`` (sessions
#: 15–17).
HIGH_DIMENSIONAL_CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {**_RANDOM_FEATURES, "trend": trend, "noise_prior": (-4.0, 1.0),
     "prior_precision_prior": 0.01, "prior_structure": "layerwise",
     "prior_precision_reference": reference}
    for trend, reference in ((None, (2.0, 2.0)), (None, (1.0, 0.01)),
                             ("quadratic", (1.0, 0.01))))

#: The default family for ``MID_DIMENSIONAL ≤ d < HIGH_DIMENSIONAL``: Matérn-5/2
#: random-feature networks under the hyperpriors of BoTorch's GP before version 0.12
#: (``GammaPrior(3, 6)`` on each length scale, ``GammaPrior(2, 0.15)`` on the kernel's
#: output scale, free, and ``GammaPrior(1.1, 0.05)`` on the noise; the constant broad, as
#: that GP's constant mean without a prior), without and with the quadratic trend of
#: ``HIGH_DIMENSIONAL_CANDIDATES``. The length scales of that prior (mode 1/3 of the unit
#: box) are not scaled with ``d``: at 20 inputs the family made no progress where the
#: dimension-scaled one did (development seeds: Griewank-20, Levy-20, Ackley-20 won 0, 0
#: and 1 of 10 paired runs against the GP), so it stops below ``HIGH_DIMENSIONAL``. From
#: four to nine inputs, on fresh development seeds (10–19) in one environment with the GP
#: and the previous family (``HIGH_DIMENSIONAL_CANDIDATES``) in the same processes, it won
#: 93 of 150 paired runs against the GP (the previous family 75), its median
#: at most the GP's on 13 of 15 problems (10), at 1.34× the GP's CPU per
#: iteration at most (1.70×; two candidates where that family has three), see
#: ``docs/lapbo_defaults.md`` (session 29).
MID_DIMENSIONAL_CANDIDATES: tuple[dict[str, Any], ...] = tuple(
    {**_RANDOM_FEATURES, "random_feature_kernel": "matern52", "trend": trend,
     "lengthscale_prior": ("gamma", 3.0, 6.0), "outputscale_prior": ("gamma", 2.0, 0.15),
     "noise_prior": ("gamma", 1.1, 0.05), "prior_precision_prior": 0.01,
     "prior_structure": "layerwise", "prior_precision_reference": (1.0, 0.01)}
    for trend in (None, "quadratic"))

#: Added to ``MID_DIMENSIONAL_CANDIDATES`` above ``lengthscales.EXACT_FIT_ROWS``
#: observations: the squared-exponential network under the same Gamma hyperpriors, no
#: trend. With many rows of a smooth function the Matérn-5/2 network falls short of its
#: kernel: its features cannot interpolate where the kernel's GP does (Hartmann-6,
#: 1,000 rows, calibration development seed 4: the Matérn GP's evidence −201 at a
#: noise of 10⁻⁴, the Matérn network's −312 at ``σ = 0.11``; the squared-exponential GP
#: −142, this network −157), and the evidence chooses this one. Not added below: on
#: fifteen problems from four to nine inputs with 2d + 2 + 15 observations the
#: three-network family had its median at most the GP's on 11 where the two-network one
#: had 13, at up to 1.93× the GP's CPU (``docs/lapbo_defaults.md``, session 30).
MID_DIMENSIONAL_LARGE_DATA_CANDIDATE: dict[str, Any] = {
    **MID_DIMENSIONAL_CANDIDATES[0], "random_feature_kernel": "rbf"}

#: The family of the default MLP (``LaplaceBNN``'s default until session 8, and its
#: default still when a network or training option is set, ``default_family``): the
#: network as configured, and the same network with length scales grown by ``√d``
#: (``reference_dim=1``) whose training starts from ``σ = 1`` (the outcome SD: a smooth
#: fit first, the noise refit from there, ``keep_best`` keeping the best network on the
#: way down).
MLP_CANDIDATES: tuple[dict[str, Any], ...] = ({}, {"reference_dim": 1.0, "sigma_noise": 1.0})

#: One random-feature network (squared-exponential features, no trend) that may be added
#: to another family, e.g. ``candidates=[*MLP_CANDIDATES, RANDOM_FEATURE_CANDIDATE]``.
RANDOM_FEATURE_CANDIDATE: dict[str, Any] = {**_RANDOM_FEATURES, "trend": None}

#: ``LaplaceBNN`` options that configure or train the default MLP: setting any of them
#: (to a value other than its default) with the default ``candidates`` selects
#: ``MLP_CANDIDATES``, so that a configured network is the one that is fitted.
MLP_OPTIONS = ("width", "depth", "activation", "init_scale", "input_map",
               "random_feature_lengthscale", "random_feature_variance", "trend_scale",
               "reference_dim", "n_epochs", "n_epochs_warm_start", "lr", "optimizer",
               "marglik_every", "marglik_steps", "final_marglik_steps", "marglik_lr",
               "keep_best", "mean")


def default_family(configured: Sequence[str], dim: int = 1,
                   n: int = 0) -> tuple[dict[str, Any], ...]:
    """The family of ``LaplaceBNN(net=None)`` with default ``candidates``, given the names
    of the options the user set, the input dimension ``dim`` and the observations ``n``:
    ``MLP_CANDIDATES`` when one of them is in ``MLP_OPTIONS``, else ``DEFAULT_CANDIDATES``
    (``dim < MID_DIMENSIONAL``), ``MID_DIMENSIONAL_CANDIDATES`` (``dim <
    HIGH_DIMENSIONAL``; with ``MID_DIMENSIONAL_LARGE_DATA_CANDIDATE`` above
    ``lengthscales.EXACT_FIT_ROWS`` observations) or
    ``HIGH_DIMENSIONAL_CANDIDATES`` varying only what the user
    left open: an option the user set (``trend``, ``random_feature_kernel``,
    ``random_features``, ``noise_prior``, ``lengthscale_prior``, ``outputscale_prior``,
    ``prior_precision_prior``,
    ``prior_precision_reference``; ``prior_structure`` with the reference) holds for
    every candidate, and candidates that then coincide are kept once (``trend=None``: the
    squared-exponential and the Matérn-5/2 network without a trend)."""
    if set(configured) & set(MLP_OPTIONS):
        return MLP_CANDIDATES
    base = (DEFAULT_CANDIDATES if dim < MID_DIMENSIONAL else MID_DIMENSIONAL_CANDIDATES
            if dim < HIGH_DIMENSIONAL else HIGH_DIMENSIONAL_CANDIDATES)
    if base is MID_DIMENSIONAL_CANDIDATES and n > lengthscales.EXACT_FIT_ROWS:
        base = (*base, MID_DIMENSIONAL_LARGE_DATA_CANDIDATE)
    family: list[dict[str, Any]] = []
    # a per-tensor reference goes with the structure that gives one δ per tensor
    dropped = set(configured) | ({"prior_precision_reference"}
                                 if "prior_structure" in configured else set())
    for candidate in base:
        kept = {k: v for k, v in candidate.items() if k not in dropped}
        if kept not in family:
            family.append(kept)
    return tuple(family)


def refits_cold(configured: Sequence[str], dim: int, n: int) -> bool:
    """Whether the default family of ``dim`` inputs (``default_family(configured, dim)``)
    refits every candidate from its initial hyperparameters with ``n`` observations,
    leaving a warm start's candidates unused: from ``MID_DIMENSIONAL`` inputs on and up
    to ``lengthscales.EXACT_FIT_ROWS`` rows."""
    return (not set(configured) & set(MLP_OPTIONS) and dim >= MID_DIMENSIONAL
            and n <= lengthscales.EXACT_FIT_ROWS)


# Options whose change alters what the evidence measures (another set of weights, another
# curvature approximation, another likelihood): evidences would not be comparable. (One
# ``δ`` or one per weight tensor, ``prior_structure``, only parameterises the prior: the
# evidences of the same data under either are comparable, and candidates may differ in it.)
# ``model_averaging`` is the parent's choice of how to use the family, not a candidate's.
INCOMPARABLE = ("subset_of_weights", "hessian_structure", "backend", "mean", "likelihood",
                "model_averaging", "prior_mean", "compute_dtype",
                "outcome_transform", "input_transform", "candidates", "warm_start", "train_X",
                "train_Y", "train_Yvar")


@dataclass
class CandidateScore:
    """One row of ``LaplaceBNN.selection``.

    Attributes:
        options: the candidate's keyword options (on top of the parent's).
        log_marginal_likelihood: its Laplace evidence at the refit hyperparameters
            (standardized outcomes; comparable across candidates of one model).
        prior_precision: its refit ``δ`` (mean over tensors for a per-tensor prior).
        sigma_noise: its refit ``σ``.
        chosen: whether the parent adopted it.
        n_observations: the observations its evidence is over (fewer than the model's
            for a candidate not refit this round: ``fit_by_evidence``).
        n_weights: the weights of its posterior (a random-feature candidate has fewer
            than its options say above ``lengthscales.FULL_FEATURE_ROWS`` observations).
        weight: its share of the predictive (``lapbo.averaging``): the evidence weight
            with ``model_averaging``, else 1 for the chosen candidate and 0 for others.
    """

    options: dict[str, Any]
    log_marginal_likelihood: float
    prior_precision: float
    sigma_noise: float
    chosen: bool = False
    n_observations: int = 0
    n_weights: int = 0
    weight: float = 0.0


def check_candidates(candidates: Sequence[Mapping[str, Any]] | None,
                     known: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The candidates as a list of dicts; ``ValueError`` for an empty list, a non-dict, an
    option not in ``known`` (the names ``LaplaceBNN`` takes; ``None``: not checked) or
    one whose evidence would not be comparable (``INCOMPARABLE``). The values are checked
    by ``check_candidate_values``."""
    if candidates is None:
        return []
    if isinstance(candidates, Mapping) or not isinstance(candidates, Sequence):
        raise ValueError("candidates must be a sequence of dicts of LaplaceBNN options.")
    if len(candidates) == 0:
        raise ValueError("candidates is empty: give at least one dict (or None for no "
                         "selection).")
    out = []
    for i, options in enumerate(candidates):
        if not isinstance(options, Mapping):
            raise ValueError(f"candidates[{i}] must be a dict of LaplaceBNN options, not "
                             f"{type(options).__name__}.")
        unknown = sorted(set(options) - set(known)) if known is not None else []
        if unknown:
            raise ValueError(f"candidates[{i}] sets {unknown}, which are not LaplaceBNN "
                             "options.")
        bad = sorted(set(options) & set(INCOMPARABLE))
        if bad:
            raise ValueError(f"candidates[{i}] sets {bad}: candidates must share these "
                             "options, or their evidences are not comparable.")
        out.append(dict(options))
    return out


def check_candidate_values(candidates: Sequence[Mapping[str, Any]],
                           base: Mapping[str, Any]) -> None:
    """Each candidate's options merged into ``base`` (the model's own) pass
    ``validation.check_model_options`` at construction, the error naming the candidate
    (a ``width=-1`` candidate was refused only at ``fit``)."""
    for i, options in enumerate(candidates):
        try:
            validation.check_model_options({**base, **options})
        except (ValueError, UnsupportedError) as error:
            raise type(error)(f"candidates[{i}]: {error}") from error


def fit_by_evidence(model: LaplaceBNN) -> LaplaceBNN:
    """Fit every candidate of ``model``, then make ``model`` the one with the highest
    evidence (in place); with ``model.model_averaging``, its predictive is then the
    evidence-weighted mixture of the candidates (``lapbo.averaging``). Returns ``model``.

    Above ``lengthscales.EXACT_FIT_ROWS`` observations a warm-started model refits only
    the candidate it chose last, until the data has grown by ``RECHECK_GROWTH`` since the
    last round that refit them all: a round of a large-N run adds a fraction of a percent
    of the data, which does not change which model explains it, and refitting four
    candidates would quadruple the cost of every round. The other candidates keep their
    previous models and scores (``CandidateScore.n_observations`` tells)."""
    previous = model._warm_candidates or [None] * len(model.candidates)
    n = len(model._train_X)
    incumbent = _incumbent(model, n)
    children, scores = [], []
    for i, (options, warm) in enumerate(zip(model.candidates, previous)):
        if incumbent is not None and i != incumbent:
            children.append(warm)
            scores.append(dataclasses.replace(model._last_selection[1][i], chosen=False))
            continue
        child = _build_candidate(model, options, warm)
        child.fit()
        lml = float(child.log_marginal_likelihood())
        children.append(child)
        scores.append(CandidateScore(
            options=dict(options), log_marginal_likelihood=lml if math.isfinite(lml) else -math.inf,
            prior_precision=float(child.prior_precision.mean()),
            sigma_noise=float(child.sigma_noise), n_observations=n,
            n_weights=_posterior_weights(child)))
    best = incumbent if incumbent is not None else max(
        range(len(scores)), key=lambda i: scores[i].log_marginal_likelihood)
    scores[best].chosen = True
    model._adopt(children[best])
    model._candidate_models = children
    weights = (averaging.evidence_weights([s.log_marginal_likelihood for s in scores],
                                          [s.n_observations for s in scores], n)
               if model.model_averaging
               else [float(i == best) for i in range(len(scores))])
    for score, w in zip(scores, weights):
        score.weight = w
    mixture = [(w, child) for w, child in zip(weights, children) if w > 0]
    model._mixture = mixture if len(mixture) > 1 else None
    _release_caches([*children, *previous], keep=model._mixture)
    model.selection = scores
    if incumbent is None:
        model._last_selection = (n, scores)
    return model


def warm_candidates(candidates: Sequence[Mapping[str, Any]],
                    warm_start: LaplaceBNN | None) -> list[LaplaceBNN] | None:
    """The candidate models of ``warm_start``'s last fit to warm-start ``candidates`` from,
    one per candidate, or ``None`` (every candidate starts from its initial values) when
    there are none or ``warm_start`` fitted another family: its models are then those of
    other options (the default family changes with the number of observations,
    ``default_family``), and a model is warm-started only from its own previous round."""
    previous = getattr(warm_start, "_candidate_models", None)
    if previous is None or list(getattr(warm_start, "candidates", [])) != list(candidates):
        return None
    return previous


def _release_caches(models: list[LaplaceBNN | None],
                    keep: list[tuple[float, LaplaceBNN]] | None) -> None:
    """Drop the evidence and posterior caches of candidate models that are kept only to
    warm-start the next round (all but the components of an averaged predictive): each
    holds its ``(n, P)`` Jacobian rows, 125 MB at 1,000 rows of 16,384 features, and would
    be rebuilt, to the same numbers, if asked for. The chosen candidate's caches live on
    in the model that adopted them."""
    components = [id(c) for _, c in keep or []]
    for child in models:
        if child is not None and id(child) not in components:
            child._invalidate()


def _posterior_weights(model: LaplaceBNN) -> int:
    """The number of weights of ``model``'s Laplace posterior."""
    names = model._param_names
    return sum(p.numel() for name, p in model.net.named_parameters()
               if names is None or name in names)


def _incumbent(model: LaplaceBNN, n: int) -> int | None:
    """The index of the candidate to refit alone this round (``fit_by_evidence``), or
    ``None`` to refit all."""
    last = model._last_selection
    if model._warm_candidates is None or last is None or n <= lengthscales.EXACT_FIT_ROWS:
        return None
    rows, scores = last
    if n >= lengthscales.RECHECK_GROWTH * rows or [s.options for s in scores] != model.candidates:
        return None
    return next((i for i, s in enumerate(scores) if s.chosen), None)


def _build_candidate(model: LaplaceBNN, options: dict[str, Any],
                     warm: LaplaceBNN | None) -> LaplaceBNN:
    """A ``LaplaceBNN`` on ``model``'s data with ``model``'s options updated by ``options``
    (its own copies of the transforms), warm-started from ``warm``. Built as ``type(model)``
    so that this module, which ``lapbo.model`` imports, does not import it back. The
    parent's constructor has already warned about its data (single precision, inputs
    outside the unit cube): the candidates, built on the same data, do not repeat it."""
    kwargs = {**model._init_options, **options, "candidates": None, "warm_start": warm}
    for name in ("input_transform", "outcome_transform"):
        if name in kwargs and kwargs[name] is not None and not isinstance(kwargs[name], str):
            kwargs[name] = copy.deepcopy(kwargs[name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputDataWarning)
        return type(model)(model._train_X, model._train_Y, model._train_Yvar, **kwargs)


def selection_table(scores: Sequence[CandidateScore]) -> str:
    """``model.selection`` as a small text table, best first."""
    rows = sorted(scores, key=lambda s: -s.log_marginal_likelihood)
    lines = [f"{'chosen':6s} {'log p(y)':>10s} {'weight':>7s} {'delta':>9s} {'sigma':>9s} "
             f"{'n':>6s} {'P':>6s}  options"]
    for s in rows:
        lines.append(f"{'*' if s.chosen else '':6s} {s.log_marginal_likelihood:10.2f} "
                     f"{s.weight:7.3f} {s.prior_precision:9.3g} {s.sigma_noise:9.3g} "
                     f"{s.n_observations:6d} {s.n_weights:6d}  {s.options}")
    return "\n".join(lines)

"""lapbo: Bayesian optimization with Laplace BNN surrogates."""

from lapbo.model import ConditionedLaplaceBNN, LaplaceBNN
from lapbo.sampling import draw_pathwise_samples
from lapbo.training import fit_laplace_bnn

__all__ = ["ConditionedLaplaceBNN", "LaplaceBNN", "draw_pathwise_samples", "fit_laplace_bnn"]

"""lapbo: Bayesian optimization with Laplace BNN surrogates."""

from lapbo.model import ConditionedLaplaceBNN, LaplaceBNN
from lapbo.sampling import draw_pathwise_samples
from lapbo.training import fit_laplace_bnn
from laplace import __version__  # one version for the distribution shipping both packages

__all__ = [
    "ConditionedLaplaceBNN",
    "LaplaceBNN",
    "__version__",
    "draw_pathwise_samples",
    "fit_laplace_bnn",
]

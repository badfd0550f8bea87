"""lapbo: Bayesian optimization with Laplace BNN surrogates."""

import warnings

from laplace import __version__  # one version for the distribution shipping both packages

with warnings.catch_warnings():
    # linear_operator (imported by BoTorch and GPyTorch) decorates functions with
    # `torch.jit.script` at import time, deprecated since torch 2.10 (FutureWarning):
    # nothing a user of lapbo can act on. The filter covers this import only, and `import
    # lapbo` runs before lapbo/__main__.py, so it also serves `python -m lapbo`.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    import lapbo.matheron  # noqa: F401  (registers LaplaceBNN with BoTorch's path sampling)
    from lapbo.linearized_model import ConditionedLaplaceBNN
    from lapbo.model import LaplaceBNN
    from lapbo.sampling import draw_pathwise_samples
    from lapbo.training import fit_laplace_bnn

__all__ = [
    "ConditionedLaplaceBNN",
    "LaplaceBNN",
    "__version__",
    "draw_pathwise_samples",
    "fit_laplace_bnn",
]

"""lapbo: Bayesian optimization with Laplace BNN surrogates."""

"""Laplace posteriors: one variant per module, all sharing ``ParametricLaplace``."""

"""Predictive approximations (link functions for classification)."""

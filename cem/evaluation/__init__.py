"""Evaluation: log-likelihood and generation scoring of multiple-choice items."""

"""Evaluation of the default model: judges, the evaluation grid, probes."""

"""Diagnostics: pure metrics, sample-based estimates and plots of a run."""

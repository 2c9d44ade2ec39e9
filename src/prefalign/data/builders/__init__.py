"""Data builders: a registry (registry.py), a runner (pipeline.py) and one module per family."""

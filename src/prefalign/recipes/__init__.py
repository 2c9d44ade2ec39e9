"""Recipes: build components from a config and call the loop (policy, reward model, evaluation, quickstart)."""

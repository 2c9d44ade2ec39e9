"""The public entry point `from prefalign.run import train`: the policy recipe lives in
prefalign/recipes/policy.py; import it from there inside the package."""

from prefalign.recipes.policy import train, train_curriculum  # noqa: F401

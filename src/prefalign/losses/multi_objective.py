"""multi_objective objectives (filled in by the objective-library work)."""

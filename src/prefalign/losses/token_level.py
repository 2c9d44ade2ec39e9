"""token_level objectives (filled in by the objective-library work)."""

"""unpaired objectives (filled in by the objective-library work)."""

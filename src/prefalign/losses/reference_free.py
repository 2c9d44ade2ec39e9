"""reference_free objectives (filled in by the objective-library work)."""

"""triples objectives (filled in by the objective-library work)."""

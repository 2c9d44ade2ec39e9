"""Data: records and validation, readers, tokenization, collation, writers, and the data builders."""

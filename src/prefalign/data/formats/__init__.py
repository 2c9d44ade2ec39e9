"""Data files in and out: readers (JSONL, JSON, Parquet, CSV, datasets, OpenAssistant trees) and writers."""

"""Reward and preference models: a backbone that pools (prompt, response) into a vector, and heads on top."""

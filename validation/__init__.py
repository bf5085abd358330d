"""Validation: checks that an artifact computes the LongRoPE its spec says."""

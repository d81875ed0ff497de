"""Helpers that the tests and the benchmarks share (no Django, no pytest)."""

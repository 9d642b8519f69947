"""Benchmarks of Herald's core; run them as modules (`python -m bench.core_overhead`)."""

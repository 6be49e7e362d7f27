"""Benchmarks with their baselines; results are recorded in BENCHMARKS.md."""

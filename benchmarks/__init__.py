"""Benchmarks: each prints side-by-side ratios and can record them in docs/benchmarks.md."""

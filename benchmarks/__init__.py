"""Benchmarks: each prints side-by-side ratios; with --write-docs it publishes them (benchmarks/reference.py)."""

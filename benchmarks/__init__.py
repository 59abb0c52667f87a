"""Benchmarks: figures and ratios to a ceiling measured in the same run; never a CI gate."""

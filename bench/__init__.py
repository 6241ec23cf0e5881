"""Benchmarks and the slow reference implementations they compare against."""

"""Benchmarks (speed, memory, approximation error) over the library; results in BENCHMARKS.md."""

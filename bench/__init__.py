"""The load benchmark: ``python -m bench`` (see :mod:`bench.__main__` and BENCHMARKS.md)."""

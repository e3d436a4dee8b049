"""The benchmarks: each writes JSON (and a PNG where it plots) and prints a table; none asserts a timing.
Run one as ``python -m benchmarks.<name> --help``; ``common.py`` holds what they share."""

"""Hand-run benchmarks: python -m bench.<name> --help (see bench/README.md)."""

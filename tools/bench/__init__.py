"""The PyTorch side of the benchmarks in BENCHMARKS.md."""

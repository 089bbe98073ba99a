"""Benchmarks behind `kubedistill benchmark ...`; figures are recorded in docs/benchmarks.md."""

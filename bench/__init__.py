"""Benchmarks of zsad on the machine at hand (see bench/README.md). Not part of the installed package."""

"""Benchmarks of podvm-bootstrap in the booted pod VM test bed (`make bench`)."""

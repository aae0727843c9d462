"""Benchmarks of dip_jax against the PyTorch original (see benchmark.py)."""

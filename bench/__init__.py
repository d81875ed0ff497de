"""Benchmark of the relay against two minimal floors. Entry point: `python -m bench.run`."""

"""Throughput and cost benchmarks of the RMDNet train steps (see benchmarks/README.md)."""

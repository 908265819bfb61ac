"""Benchmarks, run on demand (``make bench-ingest``, ``make bench-pipeline``)."""

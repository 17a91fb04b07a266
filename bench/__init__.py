"""Benchmarks for ordersync: ingest (hub vs. a plain FastAPI baseline), end to end, memory.

Run with `python -m bench [ingest|e2e|rss|all]`; results go to `bench/results/<name>.json`.
"""

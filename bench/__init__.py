"""roomcast benchmarks: ``python -m bench publish`` and ``python -m bench catchup``.

Each starts its own ``roomcast serve`` (SQLite store, rate limits off), prints one JSON line
per measurement on stdout, and stops the server. See docs/benchmarks.md.
"""

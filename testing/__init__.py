"""Scaffolding for tests and benchmarks: a deterministic fake engine (reachable as
the `fake:ids` / `fake:bytes` models) and a gRPC server on a background thread."""

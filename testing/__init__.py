"""Scaffolding for tests, benchmarks and the simulator: a deterministic fake engine (reachable as
the `fake:ids` / `fake:bytes` models) and a gRPC server on a background thread."""

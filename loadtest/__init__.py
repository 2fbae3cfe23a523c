"""Workload generators, load clients, metrics, reports, benchmarks and the simulator."""

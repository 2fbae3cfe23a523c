"""Benchmarks (`shunter bench ...`): workloads, baselines measured in the same run, results and plots."""

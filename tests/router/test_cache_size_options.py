"""`shunter serve`'s cache-size options: checked before anything starts, then one config and role per replica."""
from __future__ import annotations

import subprocess
import sys

import pytest

from shunter.cli import build_parser
from shunter.router.serve import cache_size_options
from shunter.router.serve import cli as serve_cli


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("argv, option", [
    (["--large-cache-replicas", "2"], "--large-cache-replicas"),  # all of the 2 replicas: none left small
    (["--large-cache-replicas", "-1"], "--large-cache-replicas"),
    (["--large-cache-replicas", "1", "--large-cache-factor", "1"], "--large-cache-factor"),
    (["--size-threshold-blocks", "8"], "--size-threshold-blocks"),  # no large replica
    (["--large-cache-replicas", "1", "--size-threshold-blocks", "0"], "--size-threshold-blocks"),
    (["--large-cache-replicas", "1", "--num-kv-blocks", "64", "--size-threshold-blocks", "64"], "--size-threshold-blocks"),
    (["--large-cache-replicas", "1", "--large-cache-factor", "30"], "--large-cache-factor"),  # 30 x 5% of memory
    (["--large-cache-replicas", "1", "--device", "cuda"], "--large-cache-factor"),  # GPU pools need a block count
])
def test_bad_options_are_one_error_line_and_exit_2_before_ray_starts(argv, option, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    assert serve_cli.run(serve_args("--replicas", "2", *argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option}: ") and err.count("\n") == 1, err


def test_the_command_refuses_them_the_same_way():
    out = subprocess.run([sys.executable, "-m", "shunter.cli", "serve", "--large-cache-replicas", "3"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: --large-cache-replicas: "), out.stderr
    assert out.stderr.count("\n") == 1


def test_the_first_k_replicas_get_the_large_pool_and_the_role():
    args = serve_args("--replicas", "3", "--large-cache-replicas", "1", "--num-kv-blocks", "64",
                      "--large-cache-factor", "2.5", "--size-threshold-blocks", "12")
    roles = cache_size_options.replica_roles(args, serve_cli._engine_config(args))
    assert [(c.num_kv_blocks, large) for c, large in roles] == [(160, True), (64, False), (64, False)]
    assert cache_size_options.threshold(args) == 12


def test_on_cpu_without_a_block_count_the_large_pool_takes_a_larger_share_of_memory():
    args = serve_args("--large-cache-replicas", "1")
    (large, is_large), (small, _) = cache_size_options.replica_roles(args, serve_cli._engine_config(args))
    assert is_large and large.num_kv_blocks is None
    assert large.kv_memory_fraction == pytest.approx(cache_size_options.DEFAULT_FACTOR * small.kv_memory_fraction)
    assert cache_size_options.threshold(args) == cache_size_options.DEFAULT_THRESHOLD_BLOCKS


def test_no_large_replicas_no_specialization():
    args = serve_args()
    assert cache_size_options.threshold(args) is None
    assert [large for _, large in cache_size_options.replica_roles(args, serve_cli._engine_config(args))] == [False, False]

"""`shunter serve` refuses a wrong option before Ray starts: one line naming it, exit 2.

Before, `--policy bogus` started Ray, waited 16 s, printed ~100 lines of tracebacks and ended in
ActorDiedError. These run in-process with Ray's start replaced by a failure, so a check that
came too late (after Ray) fails the test.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from shunter import cli
from shunter.router.serve import cli as serve_cli


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("Ray (or the model) was started before the options were checked")

    monkeypatch.setattr(serve_cli, "_start_ray", started)
    monkeypatch.setattr(serve_cli, "_prepare_model", started)


def serve(capsys, *argv: str) -> tuple[int, str]:
    started = time.perf_counter()
    try:
        code = cli.main(["serve", *argv])
    except SystemExit as e:
        code = e.code
    assert time.perf_counter() - started < 1.0
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "says"), [
    (["--policy", "bogus"], "error: --policy: invalid choice: 'bogus' (choose from 'fcfs'"),
    (["--routing", "bogus"], "error: --routing: invalid choice: 'bogus'"),
    (["--preemption-mode", "bogus"], "error: --preemption-mode: invalid choice: 'bogus' (choose from 'recompute'"),
    (["--state", "redis"], "error: --state: must be memory, or redis://[:password@]host:port/db"),
    (["--device", "tpu"], "error: --device: invalid choice"),
    (["--model", "random:huge"], "error: --model: unknown random shape 'huge': must be one of tiny"),
    (["--model", "/no/such/model"], "error: --model: '/no/such/model' is no such file or folder"),
    (["--model", "smollm2-135M"], "error: --model: 'smollm2-135M' is no such file or folder"),
    (["--replicas", "0"], "error: --replicas: must be an integer >= 1, got '0'"),
    (["--replicas", "two"], "error: --replicas: must be an integer >= 1, got 'two'"),
    (["--port", "70000"], "error: --port: must be an integer in 0..65535, got '70000'"),
    (["--num-cpus-per-replica", "0"], "error: --num-cpus-per-replica: must be a number > 0, got '0'"),
    (["--num-gpus-per-replica", "-1"], "error: --num-gpus-per-replica: must be a number >= 0, got '-1'"),
    (["--num-threads", "0"], "error: --num-threads: must be an integer >= 1"),
    (["--num-kv-blocks", "0"], "error: --num-kv-blocks: must be an integer >= 1"),
    (["--max-num-seqs", "0"], "error: --max-num-seqs: must be an integer >= 1"),
    (["--max-in-flight", "0"], "error: --max-in-flight: must be an integer >= 1"),
    (["--drain-timeout", "nan"], "error: --drain-timeout: must be a number >= 0"),
    (["--metrics-port", "70000"], "error: --metrics-port: must be an integer in 0..65535, got '70000'"),
    (["--port", "9100", "--metrics-port", "9100"], "error: --metrics-port: 9100 is the gRPC --port"),
    (["--replicas", "3", "--replica-metrics-port-base", "65534"],
     "error: --replica-metrics-port-base: 3 replicas from 65534 go past port 65535"),
    (["--policy", "static", "--cache-aware-order"], "error: --cache-aware-order: --policy static admits whole"),
    (["--policy", "rad", "--max-num-batched-tokens", "8"], "error: --max-num-batched-tokens: 8 is below one tile"),
    (["--max-num-batched-tokens", "0"], "error: --max-num-batched-tokens: must be an integer >= 1"),
    (["--speculative-model", "nowhere"], "error: --speculative-model: 'nowhere' is no such file or folder"),
    (["--model", "random:llama-3.2-1b", "--speculative-model", "random:tiny"],
     "error: --speculative-model: random:tiny has a vocabulary of 512 tokens, random:llama-3.2-1b one of 128256"),
    (["--speculative", "ngram", "--speculative-model", "random:tiny"],
     "error: --speculative-model: --speculative ngram takes no draft model"),
    (["--speculative", "draft"], "error: --speculative: draft needs --speculative-model"),
    (["--cpu-kv-gib", "100000"], "error: --cpu-kv-gib: 2 x 100000 GiB is more than this machine's"),
    (["--cpu-kv-gib", "-1"], "error: --cpu-kv-gib: must be a number > 0"),
    (["--cpu-kv-gib", "1", "--cpu-load-timeout", "0"], "error: --cpu-load-timeout: must be a number > 0"),
    (["--cpu-load-timeout", "2"], "error: --cpu-load-timeout: needs --cpu-kv-gib (there is no CPU tier"),
    (["--cpu-tier-credit", "1.5"], "error: --cpu-tier-credit: must be in [0, 1]"),
    (["--routing", "least_load", "--balance-abs-threshold", "1024"],
     "error: --balance-abs-threshold: only --routing prefix_aware has an imbalance guard, got --routing least_load"),
    (["--balance-rel-threshold", "0.5"], "error: --balance-rel-threshold: must be a number >= 1"),
    (["--balance-abs-threshold", "-1"], "error: --balance-abs-threshold: must be an integer >= 0"),
    (["--routing", "least_load", "--balance-abs-threshold-requests", "2"],
     "error: --balance-abs-threshold-requests: only --routing prefix_aware has an imbalance guard, "
     "got --routing least_load"),
    (["--prefill-replicas", "2"], "error: --prefill-replicas: must be below --replicas (2): at least one replica"),
    (["--replicas", "3", "--prefill-replicas", "2", "--large-cache-replicas", "2"],
     "error: --prefill-replicas: 2 prefill and 2 large-cache replicas are more than --replicas (3)"),
    (["--prefill-threshold-tokens", "0"], "error: --prefill-threshold-tokens: must be an integer >= 1, got '0'"),
    (["--prefill-threshold-tokens", "500"], "error: --prefill-threshold-tokens: needs --prefill-replicas > 0"),
    (["--prefill-last-chunk-tokens", "256"], "error: --prefill-last-chunk-tokens: needs --prefill-replicas > 0"),
    (["--prefill-replicas", "1", "--prefill-last-chunk-tokens", "-1"],
     "error: --prefill-last-chunk-tokens: must be an integer >= 0"),
])
def test_a_wrong_option_is_one_line_and_exit_2(capsys, argv, says):
    code, err = serve(capsys, *argv)
    assert code == 2
    assert err.startswith(says), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("option", ["--port", "--metrics-port"])
def test_a_busy_port_is_named_before_ray_starts(capsys, option):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = serve(capsys, "--port", "0", option, str(port))
    assert code == 2
    assert err.startswith(f"error: {option}: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1


def test_gpus_asked_of_a_machine_without_one(capsys, monkeypatch):
    monkeypatch.setattr(serve_cli.glob, "glob", lambda pattern: [])
    code, err = serve(capsys, "--num-gpus-per-replica", "1", "--port", "0")
    assert code == 2 and err.startswith("error: --num-gpus-per-replica: this machine has no NVIDIA GPU")


def test_good_options_reach_ray_with_the_replica_threads(monkeypatch):
    seen = {}
    monkeypatch.setattr(serve_cli, "_prepare_model", lambda args: None)

    def start_ray(args, verbose):
        seen["config"] = serve_cli._engine_config(args)
        raise RuntimeError("stop here")

    monkeypatch.setattr(serve_cli, "_start_ray", start_ray)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["serve", "--model", "random:tiny", "--port", "0", "--num-cpus-per-replica", "0.5",
                  "--preemption-mode", "swap", "--policy", "rad", "--max-num-batched-tokens", "1024",
                  "--cache-aware-order"])
    config = seen["config"]
    assert (config.num_threads, config.preemption_mode, config.policy) == (1, "swap", "rad")
    assert (config.max_num_batched_tokens, config.cache_aware_order) == (1024, True)


def test_prefill_replicas_are_the_last_k_and_the_router_gets_their_threshold():
    from shunter.router.serve import disaggregation_options

    args = cli.build_parser().parse_args(["serve", "--replicas", "4", "--prefill-replicas", "1"])
    assert [disaggregation_options.prefill_only(args, i) for i in range(4)] == [False, False, False, True]
    assert serve_cli._router_config(args, None, disaggregation_options.threshold(args)).prefill_threshold_tokens == 1024
    args = cli.build_parser().parse_args(["serve", "--prefill-replicas", "1", "--prefill-threshold-tokens", "300"])
    assert disaggregation_options.threshold(args) == 300
    assert disaggregation_options.threshold(cli.build_parser().parse_args(["serve"])) is None


def test_only_the_prefill_replicas_cap_their_last_chunk_by_default_at_a_live_migrations_commit():
    from shunter.replica.engine_config import EngineConfig
    from shunter.router.serve import disaggregation_options

    def caps(*flags: str) -> list[int]:
        args = cli.build_parser().parse_args(["serve", "--replicas", "3", *flags])
        roles = [(EngineConfig(model="fake"), False)] * 3
        return [c.last_chunk_tokens for c, _ in disaggregation_options.with_prefill_roles(args, roles)]

    assert caps() == [0, 0, 0]
    assert caps("--prefill-replicas", "1") == [0, 0, 16 * 16]  # --migration-commit-blocks 16 x 16-token blocks
    assert caps("--prefill-replicas", "1", "--migration-commit-blocks", "4") == [0, 0, 64]
    assert caps("--prefill-replicas", "2", "--prefill-last-chunk-tokens", "0") == [0, 0, 0]
    assert caps("--prefill-replicas", "1", "--prefill-last-chunk-tokens", "100") == [0, 0, 100]


@pytest.mark.parametrize(("cpus", "threads", "expected"), [("0.5", None, 1), ("3", None, 3), ("1", "2", 2)])
def test_replica_threads_default_to_its_cpus(cpus, threads, expected):
    argv = ["serve", "--num-cpus-per-replica", cpus] + (["--num-threads", threads] if threads else [])
    args = cli.build_parser().parse_args(argv)
    assert serve_cli._engine_config(args).num_threads == expected


DEFAULT_REBALANCING = {"measure": "freeness", "interval_s": 0.2, "max_per_round": 4, "pressure_blocks": 2.0}


@pytest.mark.parametrize(("argv", "rebalance", "settings"), [
    ([], True, {}),
    (["--rebalance-measure", "usage"], True, {"measure": "usage"}),
    (["--rebalance-measure", "expected", "--rebalance-interval", "1"], True,
     {"measure": "expected", "interval_s": 1.0}),
    (["--rebalance-max-moves", "8", "--rebalance-pressure", "4"], True, {"max_per_round": 8, "pressure_blocks": 4.0}),
    (["--no-rebalance"], False, {}),
])
def test_rebalancing_options_reach_the_router_config(argv, rebalance, settings):
    from shunter.router.routing import Rebalancer

    config = serve_cli._router_config(cli.build_parser().parse_args(["serve", *argv]), None)
    assert (config.rebalance, config.rebalancer_settings) == (rebalance, {**DEFAULT_REBALANCING, **settings})
    built = Rebalancer(**config.rebalancer_settings)  # the router builds it so
    assert (built.measure, built.interval_s, built.max_per_round, built.pressure_blocks) == tuple(
        {**DEFAULT_REBALANCING, **settings}.values())


@pytest.mark.parametrize("argv", [["--rebalance-interval", "0"], ["--rebalance-max-moves", "0"],
                                  ["--rebalance-pressure", "-1"], ["--rebalance-measure", "kv"]])
def test_bad_rebalancing_options_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["serve", *argv])
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_help_shows_defaults_and_choices():
    out = subprocess.run([sys.executable, "-m", "shunter.cli", "serve", "--help"], capture_output=True, text=True)
    assert "{fcfs,mlq,priority,rad,sjf,slo,static}" in out.stdout
    assert "(default: fcfs)" in out.stdout and "(default: 50051)" in out.stdout
    assert "--num-threads" in out.stdout and "--num-cpus-per-replica" in out.stdout


def test_from_a_shell_a_bad_policy_answers_at_once():
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "shunter.cli", "serve", "--policy", "bogus"],
                         capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert out.returncode == 2 and out.stderr.startswith("error: --policy:") and "Traceback" not in out.stderr
    assert elapsed < 5.0, elapsed  # a Python start and a few light imports; Ray's start alone takes longer


def test_the_model_is_prepared_once_in_the_driver_before_ray(monkeypatch):
    """Replicas then only read the converted model (before, one converted while the other waited silently)."""
    order = []
    monkeypatch.setattr(serve_cli, "_prepare_model", lambda args: order.append("prepare"))

    def start_ray(args, verbose):
        order.append("ray")
        raise RuntimeError("stop here")

    monkeypatch.setattr(serve_cli, "_start_ray", start_ray)
    with pytest.raises(RuntimeError, match="stop here"):
        cli.main(["serve", "--model", "random:tiny", "--port", "0"])
    assert order == ["prepare", "ray"]


@pytest.mark.parametrize(("env", "address", "expected"), [
    (None, None, "token"),  # a local instance: token auth asked for explicitly (no warning), as Ray's default
    ("disabled", None, "disabled"),  # the user's choice stands
    (None, "auto", None),  # joining a cluster: its own settings
])
def test_ray_token_auth_is_on_and_said_explicitly(monkeypatch, env, address, expected):
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # Ray reads the mode on import: not yet imported
    monkeypatch.setenv("RAY_AUTH_MODE", env or "")  # restored after the test, whatever serve sets
    if env is None:
        monkeypatch.delenv("RAY_AUTH_MODE")
    args = cli.build_parser().parse_args(["serve"] + (["--address", address] if address else []))
    serve_cli._say_token_auth(args)
    assert serve_cli.os.environ.get("RAY_AUTH_MODE") == expected


def test_shared_state_options_are_checked_before_ray_starts(capsys, redis_db):
    """A malformed URL, a wrong password, an unreachable Redis, --frontend-only without what it needs:
    one line naming it (never the password), exit 2, before Ray."""
    good, port = redis_db.address, redis_db.port
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    unused = free.getsockname()[1]
    free.close()
    cases = [
        (["--state", "redis://:hunter2@localhost:99999/0"], "error: --state: must be memory, or redis://"),
        (["--state", f"redis://:wrong@127.0.0.1:{port}/0"],
         f"error: --state: Redis at redis://:***@127.0.0.1:{port}/0 refused the password"),
        (["--state", f"redis://127.0.0.1:{port}/0"], "error: --state: Redis at redis://127.0.0.1"),
        (["--state", f"redis://:hunter2@127.0.0.1:{unused}/0"], "error: --state: cannot reach Redis at redis://:***@"),
        (["--frontend-only"], "error: --frontend-only: needs --state redis://"),
        (["--frontend-only", "--state", good], "error: --frontend-only: needs --address"),
        (["--frontend-only", "--state", good, "--address", "auto", "--replicas", "3"],
         "error: --replicas: does not apply with --frontend-only"),
    ]
    for argv, says in cases:
        code, err = serve(capsys, *argv, "--port", "0")
        assert code == 2 and err.startswith(says) and err.count("\n") == 1, (argv, err)
        assert "hunter2" not in err and redis_db.password not in err


@pytest.mark.parametrize(("argv", "settings"), [
    ([], {"cpu_credit": 0.75}),
    (["--balance-abs-threshold", "1024", "--balance-rel-threshold", "2"],
     {"cpu_credit": 0.75, "abs_threshold": 1024, "rel_threshold": 2.0}),
    (["--balance-abs-threshold-requests", "0"], {"cpu_credit": 0.75, "abs_threshold_requests": 0.0}),
    (["--routing", "least_load"], {}),
])
def test_prefix_routing_options_reach_the_policy(argv, settings):
    """The imbalance guard sized for long contexts (the `kv-tiers` experiment's second guard) is
    a flag away; a routing without a guard gets no settings."""
    from shunter.router.routing import PrefixAware

    config = serve_cli._router_config(cli.build_parser().parse_args(["serve", *argv]), None)
    assert config.routing_settings == settings
    if settings:
        policy = PrefixAware(**settings)  # the router builds it so
        assert (policy.abs_threshold, policy.rel_threshold) == (settings.get("abs_threshold", 32),
                                                                settings.get("rel_threshold", 1.5))
        default = PrefixAware().abs_threshold_requests
        assert policy.abs_threshold_requests == settings.get("abs_threshold_requests", default)


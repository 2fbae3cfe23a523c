"""`shunter bench sim`: the simulator's experiments (issue 12), each one command.

    shunter bench sim --experiment static          # one experiment, full scale
    shunter bench sim --experiment all --scale toy # every experiment in seconds (a smoke run)

Each writes loadtest/results/sim/NAME.json and NAME.png and its section of docs/results.md
(`--no-docs` to skip the page). The simulator runs the real engine and router policies over cost
models (loadtest/sim/costs/); see loadtest/sim/__init__.py.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from shunter.loadtest.bench_cli import run_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from shunter.loadtest.sim.experiments import NAMES, SCALE_NAMES

    parser.add_argument("--experiment", nargs="+", required=True, choices=[*NAMES, "all"], metavar="NAME",
                        help=f"one or more of: {', '.join(NAMES)}; or all")
    parser.add_argument("--scale", default="full", choices=SCALE_NAMES, help="toy: seconds per experiment")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: loadtest/results/sim")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/results.md")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from shunter.loadtest.sim import report
    from shunter.loadtest.sim.experiments import registry
    from shunter.loadtest.sim.experiments.common import SCALES

    experiments = registry()
    names = list(experiments) if "all" in args.experiment else args.experiment
    console = Console(stderr=True)
    out_dir = args.out_dir or report.RESULTS_DIR
    for name in names:
        console.print(f"[bold]{name}[/] ({args.scale} scale)")
        started = time.perf_counter()
        result = experiments[name](SCALES[args.scale])
        result.wall_s = time.perf_counter() - started
        command = args._invocation if len(names) == 1 else f"shunter bench sim --experiment {name} --scale {args.scale}"
        path = report.write(result, command, out_dir, None if args.no_docs else report.RESULTS_MD)
        console.print(report.table(result))
        console.print(f"ours: {result.ours}\nanchor: {result.anchor}\n{result.verdict}\n"
                      f"({result.wall_s:.1f} s) saved {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_bench("sim", __doc__.splitlines()[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())

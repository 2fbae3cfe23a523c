"""What every benchmark module shares to run on its own: `python -m shunter.loadtest.bench_X ARGS`
is `shunter bench X ARGS`, and the result records it as the latter (`args._invocation`, which
`shunter`'s own CLI sets the same way)."""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable


def run_bench(name: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
              run: Callable[[argparse.Namespace], int], argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=f"shunter bench {name}", description=description)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args._invocation = "shunter " + shlex.join(["bench", name, *argv])
    return run(args)

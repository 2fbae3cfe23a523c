"""`shunter serve`'s migration options: live (pre-copy, the default) or stop-and-copy, and when a
live migration stops staging and commits (`router/core/migration.py`)."""
from __future__ import annotations

import argparse

from shunter.cli_args import float_above, int_at_least
from shunter.router.core import MIGRATION_MODES, MigrationSettings

DEFAULTS = MigrationSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("migration (rebalancing moves running requests with their KV)")
    group.add_argument("--migration", choices=MIGRATION_MODES, default=DEFAULTS.mode,
                       help="live: the KV is copied in stages while the request keeps running, and it stops only for "
                            "the last blocks (downtime flat in its context); stop-and-copy: it stops while all of it "
                            f"moves")
    group.add_argument("--migration-commit-blocks", type=int_at_least(0), default=DEFAULTS.commit_blocks, metavar="B",
                       help="a live migration commits once at most B blocks are left to send")
    group.add_argument("--migration-max-stages", type=int_at_least(0), default=DEFAULTS.max_stages, metavar="N",
                       help="... or after N stages")
    group.add_argument("--migration-timeout", type=float_above(0), default=DEFAULTS.stage_timeout_s, metavar="S",
                       help="seconds: a live migration whose stages take longer aborts; the request runs on where "
                            "it was")


def settings(args: argparse.Namespace) -> MigrationSettings:
    return MigrationSettings(args.migration, args.migration_max_stages, args.migration_commit_blocks,
                             args.migration_timeout)

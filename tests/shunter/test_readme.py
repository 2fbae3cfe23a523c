"""The README's set-up commands are what CI runs, so they cannot rot unnoticed."""
from __future__ import annotations

import re

from tests.conftest import REPO


def setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    serve, test = setup_commands()
    assert "scripts/install.sh" in serve and "shunter serve" in serve
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines, "CI runs the README's test command exactly as written, on a line of its own"


def test_setup_commands_never_use_the_system_python():
    """A bare `python3 -m pip`/`shunter` would need an active environment (Debian refuses the system one)."""
    for command in setup_commands():
        for part in command.split("&&")[1:]:
            assert part.strip().startswith(".venv/bin/"), command

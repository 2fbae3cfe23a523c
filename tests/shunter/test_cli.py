"""The command line a user meets first."""
from __future__ import annotations

import subprocess
import sys

import pytest


def shunter(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shunter.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    out = shunter("--help")
    assert out.returncode == 0
    for command in ("generate", "bench"):
        assert command in out.stdout


def test_bad_argument_is_a_clear_error_not_a_traceback():
    out = shunter("generate", "--model", "random:tiny", "--max-tokens", "0", "hi")
    assert out.returncode == 2
    assert "max_tokens" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_generate_streams_text_from_the_default_model(smollm2_folder):
    out = shunter("generate", "--max-tokens", "8", "--chat", "Say hello.")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()

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


def test_building_the_command_line_imports_neither_torch_nor_ray():
    """Every command module is imported to build `--help`; torch alone takes a second or more."""
    probe = ("import sys; from shunter.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_bad_argument_is_a_clear_error_not_a_traceback():
    out = shunter("generate", "--model", "random:tiny", "--max-tokens", "0", "hi")
    assert out.returncode == 2
    assert "max_tokens" in out.stderr and "Traceback" not in out.stderr


def test_an_unknown_model_is_named_before_anything_loads():
    out = shunter("generate", "--model", "random:huge", "hi")
    assert out.returncode == 2
    assert out.stderr == "error: --model: unknown random shape 'huge': must be one of tiny, llama-3.2-1b, llama-3-8b\n"


def test_generate_help_shows_defaults_and_the_threads_option():
    text = " ".join(shunter("generate", "--help").stdout.split())
    assert "(default: 64)" in text and "(default: smollm2-135m-instruct)" in text
    assert "--num-threads NUM_THREADS torch CPU threads (default: the CPUs this process may use" in text


@pytest.mark.slow
def test_generate_streams_text_and_says_why_it_stopped(smollm2_folder):
    out = shunter("generate", "--max-tokens", "2", "--chat", "Say hello.")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "shunter: finish reason: length (stopped at --max-tokens 2" in out.stderr

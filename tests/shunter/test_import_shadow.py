"""A folder named `shunter` beside a script (this clone, seen from the folder that holds it) does
not shadow the package (issue 11: `cannot import name 'LLM' from 'shunter' (unknown location)`)."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PTH = Path(sysconfig.get_paths()["purelib"]) / "shunter-import.pth"


@pytest.mark.skipif(not PTH.exists(), reason="scripts/install.sh adds the path entry that prevents it; "
                                             "this environment was installed another way")
def test_a_folder_named_shunter_beside_a_script_does_not_shadow_the_package(tmp_path):
    (tmp_path / "shunter").mkdir()  # what a clone looks like from its parent folder: no __init__.py
    (tmp_path / "script.py").write_text("from shunter import LLM, SamplingParams\nprint(LLM.__module__)\n")
    out = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "shunter.replica.llm"

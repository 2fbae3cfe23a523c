"""scripts/install.sh refuses a lock that does not fit this machine: one line naming what does not
fit and what to run, a non-zero exit, and the environment left as it was (issue 29)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = f"python {sys.version_info[0]}.{sys.version_info[1]}, {sysconfig.get_platform()}"


def checkout(tmp_path: Path, lock: str) -> Path:
    """A folder shaped like a clone for the script: its scripts and requirements.lock."""
    (tmp_path / "scripts").mkdir()
    for name in ("install.sh", "lockfile.py"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    (tmp_path / "requirements.lock").write_text(lock)
    return tmp_path


def install(root: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return subprocess.run(["bash", str(root / "scripts" / "install.sh")], cwd=root, env={**clean, **env},
                          capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.lstat().st_mtime for p in folder.rglob("*")}


def test_a_lock_for_another_python_stops_before_an_environment_is_made(tmp_path):
    root = checkout(tmp_path, "# made for: python 3.99, linux-x86_64\nsix==1.16.0\n")
    proc = install(root)
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("error: python: requirements.lock was made for python 3.99") and HERE in line, line
    assert "bash scripts/update-lock.sh" in line
    assert not (root / ".venv").exists()


def test_a_lock_for_another_python_leaves_an_existing_environment_as_it_was(tmp_path):
    root = checkout(tmp_path, "# made for: python 3.99, linux-x86_64\nsix==1.16.0\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    before = snapshot(root / ".venv")
    proc = install(root)
    assert proc.returncode == 1 and error_line(proc).startswith("error: python:")
    assert snapshot(root / ".venv") == before


def test_a_pinned_version_with_no_file_here_names_the_package_and_removes_the_new_environment(tmp_path):
    """Offline (no index, an empty find-links folder): nothing provides six==0.0.1."""
    root = checkout(tmp_path, f"# made for: {HERE}\nsix==0.0.1\n")
    (tmp_path / "wheels").mkdir()
    proc = install(root, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path / "wheels"))
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith("error: six==0.0.1: requirements.lock pins a version pip cannot install here"), line
    assert "bash scripts/update-lock.sh" in line
    assert not (root / ".venv").exists()


def test_readme_names_the_versions_the_lock_pins():
    """scripts/update-lock.sh rewrites README's sentence with the lock: the two never disagree."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "scripts" / "lockfile.py")
    lockfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lockfile)
    sentence = lockfile.README_SENTENCE.search((ROOT / "README.md").read_text()).group(0)
    date = re.search(r"checked on (\S+) ", sentence).group(1)
    assert sentence == lockfile.readme_sentence(str(ROOT / "requirements.lock"), date)
    assert "torch==" not in (ROOT / "requirements.lock").read_text()

"""requirements.lock for scripts/install.sh and scripts/update-lock.sh, run by the environment's Python.

    python scripts/lockfile.py platform             # what a lock's "made for" line says of this Python
    python scripts/lockfile.py constraints LOCK|-   # pip constraints: torch as installed + the lock
    python scripts/lockfile.py unpinned LOCK        # warn of installed packages the lock does not pin
    python scripts/lockfile.py write LOCK RESULT    # the lock from this environment (after the suite passed),
                                                    # and README's sentence naming its headline versions

torch is never in the lock: scripts/install.sh picks its build (CPU or CUDA). A CUDA torch's own
requirements (triton, the CUDA libraries) are that build's, so they are left out of both the
constraints and the lock where torch has CUDA. Standard library only, and no torch import (slow):
whether torch has CUDA is read from its metadata.
"""
from __future__ import annotations

import datetime
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from importlib.metadata import PackageNotFoundError, distributions, requires, version

HEADER = [
    "# The exact versions scripts/install.sh installs (torch apart: the script picks its build).",
    "# Written by scripts/update-lock.sh on {date}: the suite passed on them ({result}).",
    "# Move them: bash scripts/update-lock.sh (the newest within pyproject.toml's ranges; rewritten only if the suite passes).",
    "# made for: {platform}",
]
NEVER_PINNED = {"pip", "torch", "shunter"}
HEADLINE = ("transformers", "ray", "grpcio", "triton")  # the versions README names
README_SENTENCE = re.compile(r"^The lock was last checked on .*$", re.M)  # a line of its own in README's "Versions"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def platform() -> str:
    here = f"python {sys.version_info[0]}.{sys.version_info[1]}, {sysconfig.get_platform()}"
    if __name__ == "__main__" and sys.argv[1] == "platform":
        print(here)
    return here


def torch_own_requirements() -> set[str]:
    """What a CUDA torch requires for itself; nothing for a CPU build (its few pure-Python
    requirements are locked like any other package)."""
    try:
        requirements = requires("torch") or []
    except PackageNotFoundError:
        return set()
    names = {canonical(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0]) for r in requirements}
    return names if any(name.startswith("nvidia-") for name in names) else set()


def pins(lock: str) -> dict[str, str]:
    """canonical name -> the `name==version` line, from a lock file."""
    lines = (line.strip() for line in open(lock))
    return {canonical(line.split("==")[0]): line for line in lines if "==" in line and not line.startswith("#")}


def constraints(lock: str) -> None:
    print(f"torch=={version('torch')}")
    if lock != "-":
        own = torch_own_requirements()
        print("\n".join(line for name, line in pins(lock).items() if name not in own))


def unpinned(lock: str) -> None:
    known = set(pins(lock)) | NEVER_PINNED | torch_own_requirements()
    loose = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions()
                   if canonical(d.metadata["Name"]) not in known)
    if loose:
        print(f"      warning: not pinned by the lock: {', '.join(loose)}; run bash scripts/update-lock.sh",
              file=sys.stderr)


def readme_sentence(lock: str, date: str) -> str:
    """README's sentence saying when the lock was checked and its headline versions."""
    pinned = pins(lock)
    versions = ", ".join(f"{name} {pinned[name].split('==')[1]}" for name in HEADLINE if name in pinned)
    made_for = next(line.split(": ", 1)[1].strip() for line in open(lock) if line.startswith("# made for: "))
    return f"The lock was last checked on {date} ({made_for.replace('python', 'Python')}): {versions}."


def write(lock: str, result: str) -> None:
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    skip = NEVER_PINNED | torch_own_requirements()
    lines = sorted((line for line in freeze.splitlines() if "==" in line and canonical(line.split("==")[0]) not in skip),
                   key=lambda line: canonical(line.split("==")[0]))
    header = "\n".join(HEADER).format(date=datetime.date.today(), result=result, platform=platform())
    with open(lock, "w") as f:
        f.write(header + "\n" + "\n".join(lines) + "\n")
    print(f"update-lock: wrote {lock}: {len(lines)} packages", file=sys.stderr)
    readme = Path(lock).resolve().parent / "README.md"
    readme.write_text(README_SENTENCE.sub(readme_sentence(lock, str(datetime.date.today())), readme.read_text(), count=1))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"platform": platform, "constraints": constraints, "unpinned": unpinned, "write": write}[command](*args)

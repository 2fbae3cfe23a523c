"""The sub-packages of `shunter` in a source checkout: the folders beside `shunter/`.

`pyproject.toml` maps top-level folders into the one import package (`shunter.replica` is
`replica/`, `shunter.kernels` is `kernels/`, ...). Those folders hold no `__init__.py`: a regular
package in the repo root would be imported under its bare name by any `python` started there
(`python -m pytest`, `python -c`, a REPL put the working directory first on `sys.path`) and hide
an installed distribution of that name, as `kernels/` hid the Hugging Face `kernels` package that
transformers imports. A folder without `__init__.py` is at most a namespace portion, which any
regular installed package outranks.

An installed wheel has the folders under `shunter/`, where Python finds them as namespace
packages by itself. A checkout (an editable install) has them beside `shunter/`, where nothing
would look; `install()` adds a finder that maps each `shunter.<name>` to its folder, as the
wheel's layout has it.
"""
from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path

# The folders `pyproject.toml`'s `package-dir` maps to `shunter.<name>` (a test keeps them equal).
SUBPACKAGES = ("kernels", "loadtest", "proto", "replica", "router", "testing")


class SourceLayoutFinder(MetaPathFinder):
    """Finds `shunter.<name>` as a namespace package whose one location is `<root>/<name>`."""

    def __init__(self, root: Path) -> None:
        self.locations = {f"shunter.{name}": str(root / name) for name in SUBPACKAGES}

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        location = self.locations.get(fullname)
        if location is None:
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [location]
        return spec


def install(package_dir: Path) -> None:
    """Adds the finder when `package_dir` (the folder of `shunter/__init__.py`) is a checkout's:
    its sub-packages are not inside it but beside it. Idempotent."""
    package_dir = package_dir.resolve()  # scripts/install.sh reaches the package through a link
    root = package_dir.parent
    if (package_dir / "replica").is_dir() or not (root / "replica").is_dir():
        return  # an installed wheel, or no checkout around
    if not any(isinstance(finder, SourceLayoutFinder) for finder in sys.meta_path):
        sys.meta_path.append(SourceLayoutFinder(root))

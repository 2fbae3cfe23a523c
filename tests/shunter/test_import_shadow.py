"""A folder named `shunter` beside a script (this clone, seen from the folder that holds it) does
not shadow the package (issue 11: `cannot import name 'LLM' from 'shunter' (unknown location)`)."""
from __future__ import annotations

import json
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


# Issue 29: the repo's own top-level folders, seen from the repo root, must not hide installed modules.
REPO = Path(__file__).resolve().parents[2]
WHERE = ("import importlib.util, json, sys\n"
         "found = {}\n"
         "for name in sys.argv[1:]:\n"
         "    spec = importlib.util.find_spec(name)\n"
         "    found[name] = [spec.origin or ''] + list(spec.submodule_search_locations or []) if spec else []\n"
         "print(json.dumps(found))\n")


def installed_top_level_names() -> dict[str, list[str]]:
    """Top-level module name -> the installed distributions (other than Shunter) that provide it,
    from their metadata (top_level.txt or RECORD)."""
    from importlib.metadata import packages_distributions

    names = {name: sorted(set(dists) - {"shunter"}) for name, dists in packages_distributions().items()}
    return {name: dists for name, dists in names.items() if dists}


def folders_that_shadow(root: Path, installed: dict[str, list[str]]) -> dict[str, str]:
    """Each folder of `root` named like an installed module that `python -c` started in `root`
    imports from `root` (a regular package there outranks the installed one), with where it found it."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name in installed)
    if not names:
        return {}
    out = subprocess.run([sys.executable, "-c", WHERE, *names], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    return {name: where for name, places in found.items() for where in places
            if where and Path(where).resolve().is_relative_to((root / name).resolve())}


def test_no_top_level_folder_hides_an_installed_module_from_the_repo_root():
    installed = installed_top_level_names()
    assert "kernels" in installed, "transformers' dependency `kernels` is what made this test; is it installed?"
    assert folders_that_shadow(REPO, installed) == {}


def test_the_check_sees_a_regular_package_that_shadows(tmp_path):
    """The check above can fail: a folder with an __init__.py named like an installed module is caught."""
    installed = installed_top_level_names()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "proto").mkdir()  # a namespace portion: the installed `proto` (proto-plus) outranks it
    (tmp_path / "proto" / "stubs.py").write_text("")
    assert set(folders_that_shadow(tmp_path, installed)) == {"kernels"}


def test_the_finder_maps_what_pyproject_maps():
    """`shunter.source_layout.SUBPACKAGES` are the folders pyproject.toml maps into `shunter`, and
    none of them holds an __init__.py (that is what keeps them from shadowing)."""
    import tomllib

    from shunter import source_layout

    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mapped = {folder for name, folder in package_dir.items() if name.count(".") == 1}
    assert mapped == set(source_layout.SUBPACKAGES)
    assert [name for name in mapped if (REPO / name / "__init__.py").exists()] == []

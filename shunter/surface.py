"""A package's public surface, imported only when a name is used (PEP 562 module `__getattr__`).

Each room of `shunter.router` lists what other rooms may use of it, and the module each name
lives in. Importing the room costs nothing, so `shunter --help` does not pay for gRPC, Ray or
Prometheus because a command module named a room; a name is imported from its module on first
use and then kept on the package. `tests/router/test_rooms.py` reads these lists to check that
rooms reach each other only through them.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def surface(package: str, names: dict[str, list[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for `package`, from {module: [its public names]}. A module
    listed with its own name among its names is public as a module (`options.add_arguments`)."""
    where = {name: module for module, exported in names.items() for name in exported}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(f"{package}.{module}")
        value = loaded if name == module else getattr(loaded, name)
        setattr(sys.modules[package], name, value)
        return value

    return sorted(where), __getattr__

"""router/ is split into rooms (sub-packages); a room reaches another only through that room's
surface (the names its `__init__` lists), and only along the one-way arrows below (issue 24).
Imports inside functions and under TYPE_CHECKING count: a type is a dependency too."""
from __future__ import annotations

import ast
from graphlib import TopologicalSorter
from pathlib import Path

from tests.conftest import REPO

ROUTER = REPO / "router"
# room -> the rooms it may import (docs/DESIGN.md draws the same arrows).
ARROWS = {
    "routing": set(),
    "security": set(),
    "core": {"routing"},
    "metrics": {"core"},
    "shared_state": {"core", "routing"},
    "cluster": {"core", "metrics"},
    "grpc": {"core", "metrics", "security"},
    "http": {"core", "metrics", "security"},
    "serve": {"routing", "core", "metrics", "shared_state", "cluster", "security", "grpc", "http"},
}
LOWER_LAYERS = ("shunter", "kernels", "replica")  # below the router: they never import it
MAX_LINES = 400


def rooms() -> list[str]:
    return sorted(p.parent.name for p in ROUTER.glob("*/__init__.py"))


def surface(room: str) -> set[str]:
    """The names a room's `__init__` lists in its `surface(...)` call."""
    for node in ast.walk(ast.parse((ROUTER / room / "__init__.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "surface":
            return {name for names in ast.literal_eval(node.args[1]).values() for name in names}
    return set()


def router_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import of `shunter.router...` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shunter.router"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("shunter.router")]
    return found


def shown(path: Path) -> str:
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def crossings(path: Path, own_room: str | None) -> list[str]:
    """What a file imports from rooms other than its own that is not a surface import along an arrow."""
    wrong = []
    for line, module, names in router_imports(path):
        parts = module.split(".")
        room = parts[2] if len(parts) > 2 else None
        where = f"{shown(path)}:{line}: {module}"
        if room == own_room:
            continue
        if room is None or room not in ARROWS:
            wrong.append(f"{where} (not a room)")
        elif own_room is not None and room not in ARROWS[own_room]:
            wrong.append(f"{where} ({own_room} may not import {room})")
        elif len(parts) > 3:
            wrong.append(f"{where} (past the room's surface: import from shunter.router.{room})")
        elif missing := [n for n in names if n not in surface(room)]:
            wrong.append(f"{where} ({', '.join(missing)} not on {room}'s surface)")
    return wrong


def test_every_module_of_router_lives_in_a_room_and_every_room_is_known():
    assert sorted(p.name for p in ROUTER.glob("*.py")) == []
    assert rooms() == sorted(ARROWS)
    assert all(p.parent.parent == ROUTER for p in ROUTER.rglob("*.py")), "rooms hold modules, not sub-rooms"


def test_every_room_says_in_one_line_what_lives_there():
    for room in rooms():
        doc = ast.get_docstring(ast.parse((ROUTER / room / "__init__.py").read_text()))
        assert doc and "\n" not in doc, room


def test_rooms_import_each_other_only_through_surfaces_along_the_arrows():
    wrong = [w for room in rooms() for path in sorted((ROUTER / room).glob("*.py")) for w in crossings(path, room)]
    assert wrong == []


def test_the_rest_of_shunter_uses_the_surfaces_and_lower_layers_never_the_router():
    wrong = []
    for folder in ("shunter", "kernels", "replica", "loadtest", "testing"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if folder in LOWER_LAYERS:
                wrong += [f"{shown(path)}:{line}: {module}" for line, module, _ in router_imports(path)]
            else:
                wrong += crossings(path, None)
    assert wrong == []


def test_the_arrows_point_one_way_and_every_surface_name_exists():
    order = list(TopologicalSorter(ARROWS).static_order())  # raises CycleError on a cycle
    assert set(order) == set(ARROWS)
    import importlib

    for room in rooms():
        package = importlib.import_module(f"shunter.router.{room}")
        for name in surface(room):
            assert getattr(package, name) is not None, (room, name)


def test_every_surface_name_is_what_its_module_holds_even_once_every_module_is_imported():
    """Importing a room's module sets it on the package under its own name, so a function named
    like a module of its room would turn into that module (`resume` did)."""
    import importlib
    import types

    for room in rooms():
        package = importlib.import_module(f"shunter.router.{room}")
        for path in (ROUTER / room).glob("*.py"):
            if path.stem != "__init__":
                importlib.import_module(f"shunter.router.{room}.{path.stem}")
        for node in ast.walk(ast.parse((ROUTER / room / "__init__.py").read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "surface":
                for module, names in ast.literal_eval(node.args[1]).items():
                    source = importlib.import_module(f"shunter.router.{room}.{module}")
                    for name in names:
                        assert not (name == module and hasattr(source, name)), \
                            f"{room}.{name}: a module listed under its own name must not also hold a {name}"
                        want = source if name == module else getattr(source, name)
                        assert getattr(package, name) is want, (room, name)
                        assert name == module or not isinstance(want, types.ModuleType), (room, name)


def test_no_router_file_is_over_the_limit():
    long = {str(p.relative_to(REPO)): n for p in ROUTER.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_check_sees_an_import_past_a_surface_and_against_an_arrow(tmp_path):
    """The checks above can fail."""
    module = tmp_path / "m.py"
    module.write_text("from shunter.router.core.router import Router\nfrom shunter.router.grpc import Frontend\n"
                      "from shunter.router.core import NotThere\n")
    wrong = crossings(module, "metrics")
    assert len(wrong) == 3 and "past the room's surface" in wrong[0] and "metrics may not import grpc" in wrong[1]
    assert "NotThere not on core's surface" in wrong[2]

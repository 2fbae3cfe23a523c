"""The user cache folder, and building a folder in it exactly once across processes.

Converting the SmolLM2 GGUF takes ~30 s; every replica process (and every test run) after the
first must just read the result. A folder is built under a temporary name and renamed into
place, so a reader never sees half of it; a file lock makes concurrent first loads wait for one
builder instead of all converting at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

MARKER = "shunter_cache.json"
CACHE_VERSION = 2


def cache_root() -> Path:
    """`$SHUNTER_CACHE_DIR`, else `$XDG_CACHE_HOME/shunter`, else `~/.cache/shunter`."""
    if os.environ.get("SHUNTER_CACHE_DIR"):
        return Path(os.environ["SHUNTER_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "shunter"


def is_complete(folder: Path, source: str) -> bool:
    """True when `folder` was fully built, by this cache version, from `source`."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == CACHE_VERSION and marker.get("source") == source


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone keeps readers safe
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(folder: Path, source: str, build: Callable[[Path], None]) -> Path:
    """Return `folder`, first running `build(tmp_dir)` and renaming it into place if needed.

    `source` identifies what the folder was built from; a folder from another source or cache
    version is rebuilt."""
    if is_complete(folder, source):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if is_complete(folder, source):  # another process built it while we waited
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            build(tmp)
            _make_readable(tmp)
            (tmp / MARKER).write_text(json.dumps({"version": CACHE_VERSION, "source": source}))
            if folder.exists():  # stale or from another source: move it aside, then replace
                stale = folder.parent / f".{folder.name}.stale-{uuid.uuid4().hex}"
                os.rename(folder, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _make_readable(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; a cache is for every process of the user and group."""
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o644)

"""Makes `import shunter.replica` (and the other subpackages) work from this checkout without an
install, for `scripts/gpu-check.sh` on a machine where `pip install -e .` cannot run (no setuptools,
no network): put this folder on PYTHONPATH. It maps the folders as pyproject.toml's package-dir
does: `shunter` is <root>/shunter and `shunter.replica` is <root>/replica, and so on."""
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.append(ROOT)
import shunter  # noqa: E402

if ROOT not in shunter.__path__:
    shunter.__path__.append(ROOT)

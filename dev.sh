#!/usr/bin/env bash
# Set up (idempotent) and run: `./dev.sh demo` (the main job) or `./dev.sh test` (the test suite).
# Set-up: a virtual environment in .venv with the CPU torch build installed first (so nothing
# pulls a multi-GB CUDA build), then rlens with its export and test extras.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RLENS_VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
    local stamp="$VENV/.rlens-setup" want
    want=$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
    echo "dev.sh: setting up $VENV (one time)" >&2
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -m pip install -q "torch==${RLENS_TORCH:-2.13.0}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -m pip install -q -e ".[export,test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
    "$VENV/bin/python" -c "import rlens, torch, transformers, onnxruntime" || { echo "dev.sh: set-up failed" >&2; exit 1; }
    echo "$want" > "$stamp"
}

demo() {
    # The main job: calibrate + export the embedded default model, then one generation.
    local bundle=${RLENS_DEMO_BUNDLE:-out/demo-bundle}
    "$VENV/bin/rlens-export" tiny-qwen2-vl "$bundle" --overwrite
    "$VENV/bin/rlens" run "$bundle" --image examples/demo.png --prompt "What is in the image?" --max-new-tokens 16
}

tests() {
    "$VENV/bin/python" -m pytest -n 2 -q "$@"
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo) setup; demo "$@" ;;
    test) setup; tests "$@" ;;
    setup) setup ;;
    *) echo "usage: ./dev.sh demo|test|setup" >&2; exit 2 ;;
esac

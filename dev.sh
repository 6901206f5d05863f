#!/usr/bin/env bash
# Set up (idempotent) and run:
#   ./dev.sh demo    the main job: rlens-export on the embedded default model + one generation
#   ./dev.sh test    the test suite, fast + slow tiers (what CI runs; -m soak for the soak tier); args go to pytest
#   ./dev.sh quick   the fast tier only (-m "not slow"), for the edit-test loop
#   ./dev.sh drift   the parity tests against the newest transformers, in .venv-drift
#   ./dev.sh setup   set-up only;  ./dev.sh freeze  rewrite constraints.txt from a green .venv
# Set-up: a virtual environment in .venv with the CPU torch build installed first (so nothing
# pulls a multi-GB CUDA build), then rlens with its export, onnxruntime and test extras, every
# version pinned by constraints.txt (the set CI was green on).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${RLENS_VENV:-.venv}
PY=${PYTHON:-python3}
TORCH=${RLENS_TORCH:-2.13.0}
EXTRAS="export,onnxruntime,test"
# The parity tests: the PyTorch golden and the exported graphs against Hugging Face.
PARITY=(tests/test_hf_compat.py tests/test_reference.py tests/test_tokens.py tests/test_tokens_export.py
        tests/test_export_decoder.py)

pip_q() {  # quiet pip that still fails loudly (pipefail: pip's exit status)
    "$1/bin/python" -m pip install -q "${@:2}" 2>&1 | { grep -v "^WARNING: Location" >&2 || true; }
}

make_venv() {  # make_venv DIR CONSTRAINTS
    [[ -x "$1/bin/python" ]] || "$PY" -m venv "$1"
    pip_q "$1" --upgrade pip
    pip_q "$1" -c "$2" "torch==$TORCH"
    pip_q "$1" -c "$2" -e ".[$EXTRAS]"
}

setup() {
    local stamp="$VENV/.rlens-setup" want
    want=$(cat pyproject.toml dev.sh constraints.txt | sha256sum | cut -c1-16)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
    echo "dev.sh: setting up $VENV (one time)" >&2
    make_venv "$VENV" constraints.txt || { echo "dev.sh: set-up failed (pip)" >&2; exit 1; }
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
    "$VENV/bin/python" -m pytest -n 2 -q "$@"  # pyproject addopts: -rfEs, soak tier deselected
}

drift() {
    # The pinned set, except transformers (and what it pins itself) at the newest releases that
    # pyproject's supported range allows.
    local venv=.venv-drift cons
    cons=$(mktemp)
    grep -viE '^(transformers|tokenizers|huggingface[-_]hub|safetensors|hf-xet)==' constraints.txt > "$cons"
    local ok=1
    if make_venv "$venv" "$cons" && pip_q "$venv" -c "$cons" --upgrade transformers; then ok=0; fi
    rm -f "$cons"
    [[ $ok == 0 ]] || { echo "dev.sh drift: set-up failed" >&2; return 1; }
    local pinned newest
    pinned=$(grep -i '^transformers==' constraints.txt | cut -d= -f3)
    newest=$("$venv/bin/python" -c "import transformers; print(transformers.__version__)")
    echo "dev.sh drift: parity tests on transformers $newest (pinned: $pinned)" >&2
    "$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider "${PARITY[@]}" "$@"
}

freeze() {
    { sed -n '1,3p' constraints.txt
      "$VENV/bin/python" -m pip freeze --exclude-editable | grep -viE '^(-e |redundancylens)' \
        | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt.new
    mv constraints.txt.new constraints.txt
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo) setup; demo "$@" ;;
    test) setup; tests "$@" ;;
    quick) setup; tests -m "not slow" "$@" ;;
    drift) drift "$@" ;;
    setup) setup ;;
    freeze) setup; freeze ;;
    *) echo "usage: ./dev.sh demo|test|quick|drift|setup|freeze" >&2; exit 2 ;;
esac

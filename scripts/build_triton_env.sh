#!/usr/bin/env bash
# Build the Python environment Triton's Python backend runs edgemp in (default: .venv-triton).
#
#   bash scripts/build_triton_env.sh [ENV_DIR]
#
# Why a second environment: the backend stub bundled with the nvidia-pytriton wheel needs
# numpy 1.x (with numpy 2 every response fails: "output tensor shape does not match size of
# output"), while the main environment may hold numpy 2. The stub takes its packages from the
# first `python3` on PATH (`edgemp triton serve --backend-env ENV_DIR` puts ENV_DIR/bin first);
# it ignores PYTHONPATH.
#
# What goes in: edgemp with its base dependencies and numpy<2 (the `triton` extra), plus the
# nvidia-pytriton wheel WITHOUT its Python dependencies: only its bundled tritonserver binary
# and Python backend are used. Nothing is installed when the server starts.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ENV_DIR="${1:-$ROOT/.venv-triton}"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT[triton]"
"$ENV_DIR/bin/pip" install -q --no-deps "nvidia-pytriton==0.7.0"
"$ENV_DIR/bin/python" -c "import numpy, edgemp.runtime; assert int(numpy.__version__.split('.')[0]) < 2, numpy.__version__"
echo "Triton backend environment ready: $ENV_DIR"

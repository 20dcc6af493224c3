#!/usr/bin/env bash
# One-command set-up of aimc-ssm: .venv with torch 2.13.0 (CPU), aihwkit 1.2.0 built from source
# against that torch, the pinned rest, and this package (editable). Idempotent: on a machine that
# is already set up it only checks, in seconds.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH=2.13.0+cpu
AIHWKIT=1.2.0

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup.sh: Python >= 3.11 is needed; set PYTHON=/path/to/python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
# the aihwkit build calls mypy's stubgen and the pip-installed cmake/ninja from the venv
export PATH="$PWD/$VENV/bin:$PATH"
pip() { "$PY" -m pip -q --disable-pip-version-check "$@"; }

# 1. torch, CPU build: the +cpu pin fails loudly instead of pulling a CUDA build.
"$PY" -c "import torch, sys; sys.exit(torch.__version__ != '$TORCH')" 2>/dev/null \
  || pip install "torch==$TORCH"

# 2. aihwkit from its sdist, compiled against the torch above (its wheels target another torch).
if ! "$PY" -c "import aihwkit, sys; sys.exit(aihwkit.__version__ != '$AIHWKIT')" 2>/dev/null; then
  if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq libopenblas-dev
  fi
  pip install -r requirements-build.txt
  echo "setup.sh: building aihwkit $AIHWKIT from source (about 8 minutes on 2 cores, cached afterwards)"
  pip install --no-build-isolation --no-deps --no-binary aihwkit "aihwkit==$AIHWKIT"
fi

# 3. the pinned rest and this package; never torchvision, never aihwkit's own dependency list.
pip install -r requirements.txt
"$PY" -m pip show aimc-ssm >/dev/null 2>&1 || pip install --no-build-isolation --no-deps -e .

# 4. the CPU loops compiled once into numba's cache (the packages' __pycache__): the quantized
#    recurrence's and the fused kernel's
"$PY" -c "from aimc_ssm.quant.numba_scan import compile_loop; compile_loop()"
"$PY" -c "from aimc_ssm.analog.numba_scan import compile_loops; compile_loops()"

# 5. self-check: a compiled-tile and a pure-PyTorch-tile layer both run forward and backward.
"$PY" - <<'PYCHECK'
import torch
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig

for config in (InferenceRPUConfig(), TorchInferenceRPUConfig()):
    layer = AnalogLinear(4, 3, rpu_config=config)
    x = torch.randn(5, 4, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), type(config).__name__
print(f"setup.sh: ok (torch {torch.__version__}, aihwkit compiled and torch tiles run forward and backward)")
PYCHECK

#!/usr/bin/env bash
# The prepared GPU check: one command, at most 8 minutes on one GPU, one summary table at the end.
#
#   bash benchmarks/gpu_check.sh           # on the GPU machine (results under $OUT, else a temp folder)
#   bash benchmarks/gpu_check.sh --cpu     # the same steps at the smallest sizes on the CPU
#
# Steps (benchmarks/gpu_check.py): fit of the demo fusion in bf16 with test, explanations and the
# logged pyfunc model; the pyfunc model's prediction; predict from the run; fit --cv 2; a sweep of 4
# trials with 2 workers; the throughput benchmark (and its ablation if time is left).
#
# The GPU machine has no network. What its Python lacks comes as wheels in .whl/ (or $LF_WHEELS),
# fetched beforehand where there is network:
#   python benchmarks/gpu_wheels.py --present gpu-freeze.txt --run   # or without --present: assumed
# which runs, for each missing distribution (pinned to the versions tested here),
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#       --platform manylinux_2_28_x86_64 -d .whl NAME==VERSION
# Every wheel is installed with --no-deps --no-index, except those of distributions already there
# (the machine's torch, numpy, ... stay as they are), and so is the project: pyproject.toml's pins
# (torch>=2.14) never stop it running on the machine's older torch. PYTHONPATH puts this working
# tree first either way.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
WHEELS="${LF_WHEELS:-$ROOT/.whl}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  # the wheels of distributions this Python does not have yet
  mapfile -t NEW < <("$PYTHON" - "$WHEELS" <<'PY'
import re, sys
from importlib import metadata
from pathlib import Path
have = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in metadata.distributions() if d.metadata["Name"]}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    if re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower() not in have:
        print(wheel)
PY
  )
  if ((${#NEW[@]})); then
    echo "installing ${#NEW[@]} wheels from $WHEELS (--no-deps --no-index)"
    "$PYTHON" -m pip install --quiet --no-deps --no-index "${NEW[@]}"
  fi
fi
# The project itself, without its pins, unless some install of it is there already (a developer's
# environment stays as it is); a Python without setuptools still runs it from PYTHONPATH.
if ! "$PYTHON" -c "import importlib.metadata as m; m.version('lightning_fusion')" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --no-deps --no-index --no-build-isolation -e "$ROOT" >/dev/null 2>&1 ||
    echo "(the project is not pip-installed here; it runs from PYTHONPATH=$ROOT)"
fi

MISSING="$("$PYTHON" - <<'PY'
import importlib.util
modules = {  # what the check imports (the readers import wfdb, librosa and soundfile when they register)
    "torch": "torch", "lightning": "lightning", "timm": "timm", "torchmetrics": "torchmetrics",
    "pandas": "pandas", "scikit-learn": "sklearn", "numpy": "numpy", "pyyaml": "yaml", "pillow": "PIL",
    "matplotlib": "matplotlib", "mlflow": "mlflow", "optuna": "optuna", "optuna-integration": "optuna_integration",
    "albumentations": "albumentations", "opencv-python-headless": "cv2", "skops": "skops", "captum": "captum",
    "grad-cam": "pytorch_grad_cam", "wfdb": "wfdb", "librosa": "librosa", "soundfile": "soundfile",
    "openpyxl": "openpyxl",
}
print(" ".join(name for name, module in modules.items() if importlib.util.find_spec(module) is None))
PY
)"
if [[ -n "$MISSING" ]]; then
  echo "missing: $MISSING" >&2
  echo "fetch their wheels (and their dependencies) into .whl/ where there is network:" >&2
  echo "  python benchmarks/gpu_wheels.py --present <the GPU machine's pip freeze> --run" >&2
  exit 2
fi
"$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.cuda.is_available()}')"
exec "$PYTHON" "$ROOT/benchmarks/gpu_check.py" "$@"

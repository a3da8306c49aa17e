#!/usr/bin/env bash
# Old recipe / new recipe / raw loop on the real development data, 3 seeds each, one table per data set
# (benchmarks/README.md, "Recipes against a raw loop"). Minutes on a GPU; hours on a busy 2-core CPU.
#
#   bash benchmarks/real_data_recipes.sh [OUT_DIR]        # LF_DATA_DIR: the data folder (../shared/data)
set -euo pipefail
out="${1:-benchmarks/results}"
python="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1
mkdir -p "$out"
"$python" benchmarks/raw_loop.py pneumoniamnist --seeds 3 --epochs 24 \
  --recipes experiments/pneumoniamnist_baseline.yaml experiments/pneumoniamnist.yaml \
  --out "$out/recipes_pneumoniamnist.md" 2>&1 | grep -E "seed [0-9]:|^\||^[0-9]+ seed"
"$python" benchmarks/raw_loop.py ptbxl --seeds 3 --epochs 12 \
  --recipes experiments/ptbxl_fusion_baseline.yaml:signal experiments/ptbxl_fusion_baseline.yaml:signal,tabular \
  experiments/ptbxl_fusion.yaml:signal experiments/ptbxl_fusion.yaml:signal,tabular experiments/ptbxl_fusion.yaml:tabular \
  --out "$out/recipes_ptbxl.md" 2>&1 | grep -E "seed [0-9]:|^\||^[0-9]+ seed"

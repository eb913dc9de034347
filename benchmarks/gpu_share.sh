#!/usr/bin/env bash
# The DP step's throughput as a share of the non-private step on a GPU, and
# against Opacus, in one device session of at most 10 minutes (H200: about 9).
#
#   bash benchmarks/gpu_share.sh [OUT_DIR]      # default: $OUT, else gpu_run/
#
# 1. benchmarks/dp_cost.py compiled by the GPU's own compiler (no timing):
#    fused ops, bytes accessed and the bytes-by-op-name breakdown, to set
#    next to the CPU compiler's estimate (benchmarks/results/dp_cost.md).
# 2. jaxleak's DP step and non-private step at batch 256 and 1024 for the
#    two CNNs, resnet18 and the ViT: the share (goal: at least 0.8).
# 3. The same DP step against Opacus 1.6 and PyTorch's non-private step at
#    batch 256, if torch and opacus import (the device machine has no
#    network: an Opacus wheel in .whl/ is installed for this run only).
# Every step has its own time limit, so a slow one costs only its own rows.
set -uo pipefail
out=${1:-${OUT:-gpu_run}}
mkdir -p "$out"
# Wheels carried in .whl/ (opacus, flax, optax...) stand in for packages the
# machine lacks, for this run only.
for wheel in .whl/*.whl; do
  [[ -e $wheel ]] || continue
  module=$(basename "$wheel"); module=${module%%-*}
  if ! python3 -c "import $module" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/wheel_site "$wheel"
  fi
done
[[ -d /tmp/wheel_site ]] && export PYTHONPATH=/tmp/wheel_site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
models=(cnn_mnist cnn_cifar resnet18 vit)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null; } > "$out/machine.txt" 2>&1
timeout 100 python3 benchmarks/dp_cost.py --models "${models[@]}" --batches 256 \
  --breakdown 8 --out "$out/dp_cost_gpu.json" 2>&1 | tee "$out/dp_cost_gpu.txt"
timeout 300 python3 benchmarks/dp_throughput.py --models "${models[@]}" \
  --batches 256 1024 --methods jaxleak_psasc_auto jaxleak_nonprivate \
  --min-time 1 --worker-timeout 60 --no-check --out "$out/share.json" \
  2>&1 | tee "$out/share.txt"
timeout 180 python3 benchmarks/dp_throughput.py --models "${models[@]}" \
  --batches 256 --methods jaxleak_psasc_auto opacus torch_nonprivate \
  --min-time 1 --worker-timeout 45 --out "$out/opacus.json" \
  2>&1 | tee "$out/opacus.txt"

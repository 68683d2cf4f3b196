#!/usr/bin/env bash
# The GPU suite: everything docs/benchmarks.md reports, in one command that
# keeps to a wall-clock budget (default 510 s, for a 10-minute command limit).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [BUDGET_SECONDS] [DATA] [throughput.py options]
#
# e.g. a second call that only continues the full run:
#   bash benchmarks/gpu_suite.sh OUT_DIR 200 .data/cifar10-jpeg.tar.gz --phases full_run
#
# Run from the repository root on a CUDA machine whose Python already has JAX
# (CUDA build), flax, optax, orbax-checkpoint and PyTorch; benchmarks/gpu_env.sh
# installs the rest from the wheels in .whl/ (make that folder with
# `bash benchmarks/gpu_suite.sh --fetch-wheels`). DATA
# defaults to .data/cifar10-jpeg.tar.gz (an image folder or archive); the
# training path reads it without TensorFlow or tfds preparation.
#
# The full run gets FULL_RUN_SECONDS (default 150) of the budget, the depthwise
# benchmark DEPTHWISE_SECONDS (default 150).
# OUT_DIR receives the raw results JSON, the table (table.md), the full run's
# log, the trace of the train step and suite.log. A second call continues the
# full run from its checkpoint (workdirs/benchmark_full_run).
set -uo pipefail
cd "$(dirname "$0")/.."

# (grain and its dependencies: the stream pipeline, data.pipeline='stream'.)
WHEELS=(PyWavelets==1.9.0 ml_collections==1.1.0 grain==0.2.18 array-record==0.8.6 cloudpickle
        portpicker)
if [[ "${1:-}" == "--fetch-wheels" ]]; then  # on a machine with network, for Python 3.12 x86_64
  mkdir -p .whl
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  exit $?
fi

OUT=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [BUDGET_SECONDS] [DATA]}
BUDGET=${2:-510}
DATA=${3:-.data/cifar10-jpeg.tar.gz}
EXTRA=("${@:4}")
START=$(date +%s)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/suite.log") 2>&1

. benchmarks/gpu_env.sh || exit 1

nvidia-smi -L 2>/dev/null || true
python3 - <<'PY'
import importlib, jax
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "pywt", "ml_collections",
             "torch", "numpy", "PIL"):
  try:
    print(f"{name:18s}", importlib.import_module(name).__version__)
  except Exception as e:  # noqa
    print(f"{name:18s} MISSING: {e}")
print("devices:", jax.devices())
PY

if [[ ! -e "$DATA" ]]; then
  echo "note: $DATA not found; the full run is skipped (copy cifar10-jpeg.tar.gz there)"
  FULL=()
else
  FULL=(--full-run "$DATA" --full-run-seconds "${FULL_RUN_SECONDS:-150}")
fi
# Depthwise convolutions (shifted multiply-adds against lax's grouped
# convolution and PyTorch; docs/benchmarks.md "Depthwise convolutions"), within
# DEPTHWISE_SECONDS (default 150; 0 skips it; its
# tables are written after each phase, so a stop keeps the phases done).
if (( ${DEPTHWISE_SECONDS:-150} > 0 )); then
  timeout "${DEPTHWISE_SECONDS:-150}" python3 benchmarks/depthwise.py --batch 128 --steps 20 \
    --out "$OUT/depthwise.json" --docs "$OUT/depthwise.md" \
    || echo "note: benchmarks/depthwise.py stopped (exit $?) within ${DEPTHWISE_SECONDS:-150} s"
fi
LEFT=$(( BUDGET - ($(date +%s) - START) ))
python3 benchmarks/throughput.py --budget "$LEFT" --profile "${FULL[@]}" \
  --results "$OUT" --docs "$OUT/table.md" "${EXTRA[@]}"

#!/usr/bin/env bash
# The one prepared run for a machine with an NVIDIA GPU (issue "The GPU path for real"):
# the CuPy self-check, the CuPy tests, and the GPU benchmark against PyTorch CUDA, each under
# its own time limit, their output saved under $OUT (default /tmp/xpnn-gpu).
#
#     bash benchmarks/gpu_check.sh            # about 8 minutes at most
#
# Needs python3 with cupy, torch (CUDA), numpy, safetensors, pytest and hypothesis. Where
# array-api-compat is missing (the lent H200 image), carry its wheel in .whl/:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl array-api-compat
# xpnn itself is installed from this checkout into /tmp/site (no network needed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/xpnn-gpu}"
mkdir -p "$OUT" /tmp/site
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \
    || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name exit ${PIPESTATUS[0]}"
}

step doctor 60 python3 -m xpnn.backends
step selfcheck 150 python3 -m xpnn.backends --check cupy
step tests 200 python3 -m pytest -q -p no:cacheprovider -x -k cupy tests/backends tests/layers \
    tests/test_mixed_precision.py tests/test_host_syncs.py
step benchmark 240 python3 -m benchmarks --backend cupy --quick --out "$OUT"
ls -l "$OUT"

#!/usr/bin/env bash
# Every check and figure that needs a GPU, as one prepared run on the `device` tool's machine
# (15 minutes of device time a session, all calls together: this script is sized to ~6).
#
#   here:    bash benchmarks/device/wheels.sh
#   device:  run(command="bash benchmarks/device/check.sh", carry=[".whl"], timeout_s=540)
#
# 1. benchmarks/gpu_check.py: NVML on a real device, the allocator figures, the agent's side
#    stream on a CUDA model, overhead with vs. without the agent (PASS/FAIL lines).
# 2. benchmarks/sweep.py --device cuda: the indicator sweep on the GPU against weightwatcher's
#    analyze() on the same machine, with its accuracy rows and the floors table; its section is
#    written into a copy of docs/benchmarks.md ($OUT/benchmarks.md) to paste back here.
# Outputs land in $OUT (the tool copies them back); with no GPU it says so and stops.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/symwatch-device}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/agent:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
status=0
timeout 240 "$PY" benchmarks/gpu_check.py --quick 2>&1 | tee "$OUT/gpu_check.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "check.sh: no CUDA GPU here: the sweep on a GPU is skipped"
    exit $status
fi
cp docs/benchmarks.md "$OUT/benchmarks.md"
timeout 240 "$PY" benchmarks/sweep.py --device cuda --repeats 3 --json "$OUT/sweep.json" \
    --write "$OUT/benchmarks.md" 2>&1 | tee "$OUT/sweep.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "check.sh: done (status $status); outputs in $OUT"
exit $status

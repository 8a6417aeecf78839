#!/usr/bin/env bash
# Download, HERE (where PyPI is reachable), the Python packages the GPU machine's image lacks,
# into .whl/ (git-ignored through .git/info/exclude), for benchmarks/device/check.sh to carry.
#
#   bash benchmarks/device/wheels.sh
#
# The `device` tool's H200 image has Python 3.12 with torch (CUDA), rich, numpy, scipy, pandas,
# matplotlib, scikit-learn, tqdm, safetensors and nvidia-ml-py (/work/.library/device/KINDS.md);
# the agent needs pyzmq, and the sweep's comparator weightwatcher (+ powerlaw, matplotlib-inline,
# traitlets). Nothing can be fetched there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
PY=${PYTHON:-python3}
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl pyzmq==27.3.0 weightwatcher==0.7.7 powerlaw==2.0.0 \
    matplotlib-inline==0.2.2 traitlets==5.16.1
ls -l .whl
du -sh .whl

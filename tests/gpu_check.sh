#!/bin/sh
# Prove the NVML path on a GPU host that has Python but may lack cffi: build the extension in
# place with whatever python3 is there and run the GPU tests plus the sampler tests.
# Usage: sh tests/gpu_check.sh [WHEEL_DIR]   (wheels for cffi/pycparser when they are missing)
set -u
if [ -n "${1:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$1"/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
python3 --version; nvidia-smi -L; ldconfig -p | grep -m1 libnvidia-ml.so.1
python3 csrc/build_ffi.py >/tmp/build.log 2>&1 || { tail -30 /tmp/build.log; exit 1; }
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
python3 -m pytest -q -p no:cacheprovider -p no:randomly tests/test_gpu_nvml.py tests/test_sampler.py -rs

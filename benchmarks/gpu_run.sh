#!/usr/bin/env bash
# The GPU benchmarks in one run (prepared by benchmarks/gpu_prepare.sh): versions and the GPU first, then
# each benchmark in fp16 / bf16 on CUDA under its own time limit, the log also in $OUT/gpu.log.
#   on the device machine:  bash benchmarks/gpu_run.sh            (carry .gpu)
#   here, to check it:      bash benchmarks/gpu_run.sh --tiny     (the tiny models on the CPU, this venv)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/facestudio-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--tiny" ]; then
    sd=(--tiny) flux=(--tiny --warmup 1 --repeats 2)
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 2
    export PYTHONPATH=$PWD/src:/tmp/site:$PWD/.gpu/site
    sd=(--device cuda --dtype fp16)
    flux=(--device cuda --modes none int8 fp8 model-offload sequential-offload)  # the ones built on the CPU last
fi
run() {  # seconds, then the command
    local limit=$1; shift
    echo "=== $* (limit ${limit} s)"
    timeout "$limit" "$@" || echo "=== exit $? from: $*"
}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch, diffusers, transformers as t
print('torch', torch.__version__, torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', t.__version__)"
    # the PuLID and few-step issues: SDXL-shaped 1024 px, 4 steps, two identities against none, photos to image
    run 150 python3 benchmarks/sdxl_identity.py "${sd[@]}"
    # the few-step issue: SD1.5-shaped 512 px photo to PNG, 25-step three-way against 4-step one-row
    run 120 python3 benchmarks/first_image.py "${sd[@]}"
    # the FLUX issue: FLUX.1-dev-shaped transformer, two identities against none, peak memory per memory mode
    run 240 python3 benchmarks/flux_identity.py "${flux[@]}"
} 2>&1 | tee "$OUT/gpu.log"

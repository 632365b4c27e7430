#!/usr/bin/env bash
# On a GPU machine, from the repository root, after scripts/gpu_bundle.sh (elsewhere) made .gpu-bundle/:
#   1. installs the bundled wheels into /tmp/site and unpacks the data into /tmp/cifar10
#   2. checks the CUDA paths (tests/test_cuda.py: graph vs eager, bf16, fp16 + GradScaler, fp32, channels_last, resume)
#   3. measures eager vs CUDA-graph steps (python -m cifar.tools.bench)
#   4. runs the study (python train.py -m experiment=study), every run stopped after MINUTES of training
#   5. leaves logs, the bench JSON and the study folder without checkpoints (study.tar.gz) in $OUT
# Usage: OUT=results bash scripts/gpu_study.sh [MINUTES, default 5.5: the whole script then fits 9.5 minutes on an H100]
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-5.5}
OUT=${OUT:-$PWD/gpu-results}
BUNDLE=.gpu-bundle
SWEEP=/tmp/study
mkdir -p "$OUT"
stamp() { echo "[gpu_study $(date +%T)] $*"; }

stamp "1. setting up"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$BUNDLE"/wheels/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 COLUMNS=200
mkdir -p /tmp/cifar10 && tar xzf "$BUNDLE/cifar10-jpeg.tar.gz" -C /tmp/cifar10 || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/gpu.txt"
# Decode the JPEGs once, so the study's processes read the cache instead of decoding side by side.
python3 -c "from cifar.core.data import load_dataset; load_dataset('/tmp/cifar10')"

stamp "2. CUDA paths"
timeout 90 python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/cuda_tests.log"
CUDA_GRAPH=auto  # a graph that does not train as the eager loop does must not run the study
grep -q "FAILED tests/test_cuda.py::test_graph_replay" "$OUT/cuda_tests.log" && CUDA_GRAPH=false && stamp "graph test failed: the study runs eagerly"

stamp "3. eager vs CUDA graph"
timeout 90 python3 -m cifar.tools.bench --cases vgg16 vgg4 net4 --steps 200 --windows 3 --warmup 1 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"

stamp "4. the study, $MINUTES minutes of training per run at most"
# MPS lets the five processes' kernels share the GPU at once instead of taking turns; go on without it if it does not start.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
    if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
        stamp "MPS on" | tee -a "$OUT/gpu.txt"
    else
        echo quit | nvidia-cuda-mps-control; stamp "MPS unusable here: without it" | tee -a "$OUT/gpu.txt"
    fi
else
    stamp "no MPS: the processes take turns on the GPU" | tee -a "$OUT/gpu.txt"
fi
python3 train.py -m experiment=study data.root=/tmp/cifar10 max_minutes="$MINUTES" cuda_graph=$CUDA_GRAPH hydra.sweep.dir="$SWEEP" 2>&1 | tee "$OUT/study.log"
echo quit | nvidia-cuda-mps-control 2>/dev/null

stamp "5. results"
python3 -m cifar.results.report "$SWEEP" --out "$SWEEP/report" > "$OUT/report.log" 2>&1
tar czf "$OUT/study.tar.gz" --exclude='*.pt' -C "$(dirname "$SWEEP")" "$(basename "$SWEEP")"
ls -la "$OUT"

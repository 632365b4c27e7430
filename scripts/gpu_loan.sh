#!/usr/bin/env bash
# Every GPU figure the project still lacks, in one call on a borrowed GPU, in priority order. Each part has its own time
# budget and writes its results into $OUT as it finishes, so a call cut short still brings the finished parts back:
#   1. airbench94's own code (.gpu-bundle/reference) and experiment=fastnet94, alternating, RUNS runs each
#   2. experiment=resnet18 under a time budget: its test accuracy, and when validation passed kuangliu's 93.02%
#   3. the study's Net and VGG16 baseline rows, seeds 0, 1 and 2 (each run stopped at max_minutes)
#   4. cifar-bench on the GPU cases: the CUDA-graph step beside the eager one
# Two files come back in $OUT (a loan returns at most 8): loan.md, what ran part by part and how it ended, and
# runs.tar.gz, the work folder ($WORK: logs, run folders without checkpoints, figures, the bench's JSON), both rewritten
# after every part. The tables (means, intervals, cifar-study, cifar-report) are made back here from the run folders:
# the GPU machine has no scipy.
#
# Usage, after scripts/gpu_bundle.sh made .gpu-bundle/ (wheels, data, reference):
#   OUT=$OUT bash scripts/gpu_loan.sh                 all four parts, about 9 minutes on an H100/H200
#   PARTS="2 3" OUT=$OUT bash scripts/gpu_loan.sh     the second call: only the parts that failed or were cut
#   DRY=1 DATA=<small folder copy> OUT=/tmp/loan bash scripts/gpu_loan.sh
#                                                     the same script on a CPU with tiny sizes (tests/test_gpu_loan.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-loan}
WORK=${WORK:-/tmp/loan}
PARTS=${PARTS:-1 2 3 4}
DRY=${DRY:-0}
mkdir -p "$OUT" "$WORK"
stamp() { echo "[gpu_loan $(date +%T)] $*"; }
note() { echo "$*" >> "$OUT/loan.md"; }

# ---- sizes: the loan's (seconds of budget, runs, epochs), or the dry run's (the same commands, tiny)
if [ "$DRY" = 1 ]; then
    DATA=${DATA:?DRY=1 needs DATA=<a small folder copy of CIFAR-10>}
    REF=${REF:-../shared/reference}
    RUNS=1; BUDGET=(0 120 60 90 60); REF_EPOCHS=1
    # FastNet and ResNet-18 narrowed: the same commands and code paths, in a fraction of the CPU time
    FASTNET=(epochs=1 "model.widths=[32,64,64]" device=cpu)
    RESNET=(epochs=1 limit_batches=2 batch_size=16 "model.widths=[16,32,64,128]" model.stem=16 device=cpu)
    ROWS=(epochs=1 limit_batches=3 device=cpu hydra/launcher=basic)
    BENCH=(--cases net4 --steps 3 --windows 1 --warmup 0 --device cpu)
else
    DATA=/tmp/cifar10
    REF=.gpu-bundle/reference
    RUNS=5; BUDGET=(0 100 200 160 60); REF_EPOCHS=
    FASTNET=()
    RESNET=(max_minutes=2.9)  # its schedule is laid over the recipe's 40 epochs: the budget stops it, the tables say where
    ROWS=(max_minutes=2.2 hydra/launcher=joblib hydra.launcher.n_jobs=6)  # Net and VGG16 at batch 4, 10 epochs: what fits, six processes at once
    BENCH=(--cases vgg16 vgg4 net4 resnet128 --steps 200 --windows 3 --warmup 1)
fi
COMMON=(data.root="$DATA" wandb.mode=disabled)

# ---- set up: the bundle's packages and data on the GPU machine; the local ones in a dry run
if [ "$DRY" != 1 ]; then
    stamp "setting up"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu-bundle/wheels/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
    [ -d /tmp/cifar10/train ] || { mkdir -p /tmp/cifar10 && tar xzf .gpu-bundle/cifar10-jpeg.tar.gz -C /tmp/cifar10; } || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/gpu.txt"
fi
export PYTHONUNBUFFERED=1 COLUMNS=200
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$WORK/gpu.txt"
python3 -c "from cifar.core.data import load_dataset; load_dataset('$DATA')" || exit 1  # decoded once, before the parts
[ -f "$OUT/loan.md" ] || note "# GPU loan: $(head -1 "$WORK/gpu.txt")"

# Run one part under its budget; its status line goes into loan.md whatever happens.
part() {
    local number=$1 name=$2; shift 2
    case " $PARTS " in *" $number "*) ;; *) return 0 ;; esac
    stamp "part $number: $name (at most ${BUDGET[$number]} s)"
    local start=$SECONDS
    if declare -F "$1" > /dev/null; then  # a function of this script: timeout runs it in a shell given its functions and settings
        set -- bash -c "set -o pipefail; $(declare -f); $(declare -p OUT WORK DATA REF RUNS REF_EPOCHS DRY PARTS COMMON FASTNET ROWS); $*"
    fi
    timeout --signal=INT --kill-after=15 "${BUDGET[$number]}" "$@" > "$WORK/part$number.log" 2>&1
    local rc=$? how=done
    [ $rc = 124 ] && how="cut at its ${BUDGET[$number]} s budget"
    [ $rc != 0 ] && [ $rc != 124 ] && how="failed (exit $rc)"
    note "- part $number, $name: $how after $((SECONDS - start)) s; log part$number.log"
    stamp "part $number: $how"
    pack
}

# The work folder as it stands into $OUT/runs.tar.gz (replaced whole): checkpoints, W&B files and the reference's
# decoded data stay behind.
pack() {
    tar czf "$OUT/runs.tar.gz.part" --exclude='*.pt' --exclude='wandb' --exclude='airbench' -C "$WORK" . && mv "$OUT/runs.tar.gz.part" "$OUT/runs.tar.gz"
}

# 1. The reference and fastnet94 alternating: one run of each per round, so drifts of the machine hit both alike.
reference_and_fastnet() {
    for round in $(seq 1 "$RUNS"); do
        EPOCHS=$REF_EPOCHS python3 "$REF/airbench_ref.py" "$DATA" "$WORK/airbench" 1 | grep -E "^Mean:" | sed "s/^/reference round $round: /" \
            >> "$WORK/part1-figures.txt" || return 1
        python3 train.py experiment=fastnet94 "${COMMON[@]}" "${FASTNET[@]}" seed="$round" hydra.run.dir="$WORK/part1-fastnet94/$round" \
            > /dev/null || return 1
        echo "fastnet94 round $round: $(python3 -c "import json; s=json.load(open('$WORK/part1-fastnet94/$round/summary.json')); print(s['test_acc_tta'] or s['test_acc'])")" \
            >> "$WORK/part1-figures.txt"
    done
}
part 1 "airbench94's code and fastnet94, alternating, $RUNS runs each" reference_and_fastnet

# 2. ResNet-18 against kuangliu's 93.02%: summary.json's time_to_val_acc says when validation first reached it.
part 2 "experiment=resnet18 under its budget" \
    python3 train.py experiment=resnet18 "${COMMON[@]}" "${RESNET[@]}" "acc_thresholds=[0.9302]" hydra.run.dir="$WORK/part2-resnet18"

# 3. The baseline rows over seeds, every process on the GPU at once (MPS where it starts; they take turns without).
rows_over_seeds() {
    if [ "$DRY" != 1 ] && command -v nvidia-cuda-mps-control > /dev/null && nvidia-cuda-mps-control -d; then
        stamp "MPS on" >> "$WORK/gpu.txt"
    fi
    python3 train.py -m study_row=net_baseline,vgg16_baseline seed=0,1,2 "${COMMON[@]}" "${ROWS[@]}" hydra.sweep.dir="$WORK/part3-rows"
    local rc=$?
    [ "$DRY" != 1 ] && echo quit | nvidia-cuda-mps-control 2> /dev/null
    return $rc
}
part 3 "the Net and VGG16 baseline rows, seeds 0-2" rows_over_seeds

# 4. The step's speed, graph beside eager.
part 4 "cifar-bench, CUDA graph beside eager" python3 -m cifar.tools.bench "${BENCH[@]}" --json "$WORK/part4-bench.json"

stamp "done: $OUT/loan.md"
cat "$OUT/loan.md"

#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one prepared run that fits a device lease (15 minutes, start included).
#
#   bash benchmarks/gpu_session.sh            # on a CUDA machine; results in $OUT (default /tmp/livo-gpu)
#
# The benchmarks run in order of priority, each bounded by `timeout` and by the session's deadline (BUDGET_S seconds
# from the start, default 520), and a failure never stops the ones after it. Out come three files: results.jsonl
# (each benchmark's one JSON line, with its label), log.txt (everything every command printed) and versions.txt.
# Packages the machine lacks travel as wheels in .whl/ (docs/training.md, "Performance", says which and how).
# ONLY="label ..." runs just those benchmarks (a second lease's remainder).
set -u
OUT=${OUT:-/tmp/livo-gpu}
BUDGET_S=${BUDGET_S:-520}
mkdir -p "$OUT"
DEADLINE=$(( $(date +%s) + BUDGET_S ))
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >> "$LOG" 2>&1 || { echo "installing the carried wheels failed (see log.txt)"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c 'import sys, torch, diffusers, transformers, pyarrow, numpy
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "diffusers", diffusers.__version__, "transformers", transformers.__version__, "pyarrow", pyarrow.__version__,
      "numpy", numpy.__version__, "gpu", torch.cuda.get_device_name())'
    nproc
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

# bench LABEL LIMIT_S SCRIPT ARGS...: run one benchmark, keep its JSON line under LABEL.
bench() {
    local label=$1 limit=$2 script=$3
    shift 3
    if [[ -n ${ONLY:-} && " $ONLY " != *" $label "* ]]; then
        return
    fi
    local left=$(( DEADLINE - $(date +%s) ))
    if (( left < 30 )); then
        echo "skipped $label: ${left}s left of the session's budget" | tee -a "$LOG"
        return
    fi
    (( limit > left )) && limit=$left
    local started=$(date +%s)
    echo "=== $label: python3 benchmarks/$script $* (limit ${limit}s)" >> "$LOG"
    timeout "$limit" python3 "benchmarks/$script" "$@" > "$OUT/current.txt" 2>&1
    local rc=$?
    cat "$OUT/current.txt" >> "$LOG"
    local line
    line=$(grep '^{' "$OUT/current.txt" | tail -1)
    if [[ -n $line ]]; then
        python3 -c 'import json, sys; print(json.dumps({"label": sys.argv[1], **json.loads(sys.argv[2])}))' \
            "$label" "$line" >> "$OUT/results.jsonl"
    fi
    echo "$label: rc=$rc, $(( $(date +%s) - started ))s" | tee -a "$LOG"
    rm -f "$OUT/current.txt"
}

SD15="--preset sd15-random --device cuda --dtype bf16"
# Issue 17 item 6: the SD v1.5 table re-measured (shipped, pixels, reference as released), then the best step
bench train-sd15-b8 150 train_step.py $SD15 --batch 8 --steps 5 --warmup 2
bench train-sd15-b32 90 train_step.py $SD15 --batch 32 --steps 5 --warmup 2 --only shipped
# Issue 18 item 4: SDXL at its real size
bench train-sdxl-b2 150 train_step.py --preset sdxl-random --device cuda --dtype bf16 --batch 2 --steps 3 --warmup 1 \
    --gradient-checkpointing
# Issue 17 item 6: generation and evaluation at SD v1.5 size
bench generate-sd15 150 generate.py --preset sd15-random --repeat 2
bench evaluate-sd15 120 evaluate.py --preset sd15-random --images-per-prompt 8 --device cuda
bench train-sd15-b32-compiled 240 train_step.py $SD15 --batch 32 --steps 5 --warmup 2 --only shipped --compile \
    --fused-adamw --channels-last
bench train-sd15-b32-fused-cl 90 train_step.py $SD15 --batch 32 --steps 5 --warmup 2 --only shipped --fused-adamw \
    --channels-last
bench train-sdxl-b8 150 train_step.py --preset sdxl-random --device cuda --dtype bf16 --batch 8 --steps 3 --warmup 1 \
    --gradient-checkpointing
bench train-sd15-b8-refnockpt 100 train_step.py $SD15 --batch 8 --steps 5 --warmup 2 --only reference \
    --reference-checkpointing off
# Compiled at the largest batch that fits comfortably (b32 compiled peaks at 43 GiB of 141)
bench train-sd15-b64-compiled 240 train_step.py $SD15 --batch 64 --steps 5 --warmup 2 --only shipped --compile \
    --fused-adamw
echo "done: $(cat "$OUT/results.jsonl" 2>/dev/null | wc -l) results" | tee -a "$LOG"

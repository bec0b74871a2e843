#!/usr/bin/env bash
# The GPU checks of issue 8, in one go, for a session with a lent CUDA machine (the device
# tool's lease is 15 minutes, start-up included; this script stops itself after DEADLINE_S,
# default 540): the MFU ceiling at the measured peak and bandwidth, throughput and MFU per
# model x batch (bare step and real loop, each against that ceiling), where yolov3 b32's step
# goes (GPU busy against step time), the CUDA-only test that the loss never syncs, the input
# pipeline per worker count, yolov3 b32 under torch.compile in the default mode and with CUDA
# graphs ("reduce-overhead"), then the sweep projection with what time is left. Everything
# under $OUT; results so far and what they showed: benchmarks/RESULTS.md, "GPU".
#
#   DETBENCH_BCCD_DIR=/path/to/bccd OUT=/tmp/checks bash benchmarks/device_checks.sh
set -u
OUT=${OUT:-/tmp/detbench-device-checks}
PYTHON=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${DEADLINE_S:-540}))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
cd "$(dirname "$0")"

step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

# Run a check for at most $1 seconds, less if the deadline comes first; skip it when under 20 s
# are left.
within() {
    local limit=$1 left=$((DEADLINE - SECONDS))
    shift
    if ((left < 20)); then echo "skipped (deadline): $*"; return; fi
    timeout $((limit < left ? limit : left)) "$@" || echo "exit $? from: $*"
}

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv
"$PYTHON" -c "import torch, torchvision, cv2, numpy; print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'numpy', numpy.__version__,
'cuda', torch.cuda.is_available())"
nproc

step MFU ceiling, roofline at the peak and bandwidth measured here
within 30 "$PYTHON" mfu_ceiling.py --measure --output "$OUT/mfu_ceiling.json"

step train throughput, channels-last, bare step and real loop
within 150 "$PYTHON" train_throughput.py --models yolov3 yolov3-tiny --batches 8 16 32 \
    --steps 20 --warmup 5 --output "$OUT/train_throughput.json"

step where the yolov3 b32 step goes: cumulative parts, GPU busy time
within 60 "$PYTHON" step_breakdown.py --model yolov3 --batch 32 --output "$OUT/step_breakdown.json"

step the loss makes no device sync: the CUDA-only test, needs pytest on the machine
within 60 "$PYTHON" -m pytest -q -p no:cacheprovider ../tests/test_loss.py

step input pipeline, batch 32
within 45 "$PYTHON" data_pipeline.py --workers 8 16 --batch 32 --batches 40 \
    --output "$OUT/data_pipeline.json"

step yolov3 b32 bare step, torch.compile default mode
within 200 "$PYTHON" train_throughput.py --models yolov3 --batches 32 --steps 20 --warmup 5 \
    --compile-mode default --bare-only --output "$OUT/train_throughput_compiled.json"

step yolov3 b32 bare step, torch.compile with CUDA graphs
within 150 "$PYTHON" train_throughput.py --models yolov3 --batches 32 --steps 20 --warmup 5 \
    --compile-mode reduce-overhead --bare-only \
    --output "$OUT/train_throughput_cudagraphs.json"

step sweep projection, if time is left
within 200 "$PYTHON" sweep_projection.py --output "$OUT/sweep_projection.json"
step done

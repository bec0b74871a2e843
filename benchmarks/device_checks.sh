#!/usr/bin/env bash
# The GPU checks of issues 4 and 8, in one go, for a session with a lent CUDA machine
# (about 9 minutes on an H100; the device tool's lease is 15): throughput and MFU per model x
# batch, where one step's time goes, the input pipeline per worker count (OpenCV's pool and
# the epoch-spanning iterator against the settings before), the sweep projection
# (train, evaluate and profile jobs per model x batch, NVML and kernel columns) with cuDNN
# autotuning on and off, and torch.compile last. Everything under $OUT; results so far and
# what they showed: benchmarks/RESULTS.md, "GPU".
#
#   DETBENCH_BCCD_DIR=/path/to/bccd OUT=/tmp/checks bash benchmarks/device_checks.sh
set -u
OUT=${OUT:-/tmp/detbench-device-checks}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
cd "$(dirname "$0")"

step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv
"$PYTHON" -c "import torch, torchvision, cv2, numpy; print('torch', torch.__version__,
'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'numpy', numpy.__version__,
'cuda', torch.cuda.is_available())"
nproc

step train throughput, channels-last
timeout 150 "$PYTHON" train_throughput.py --models yolov3 yolov3-tiny --batches 8 16 32 \
    --steps 20 --warmup 5 --output "$OUT/train_throughput.json"

step where a yolov3 b32 step goes
timeout 60 "$PYTHON" step_breakdown.py --model yolov3 --batch 32 --output "$OUT/step_breakdown.json"

step input pipeline, batch 32
timeout 50 "$PYTHON" data_pipeline.py --workers 4 8 16 --batch 32 --batches 40 \
    --output "$OUT/data_pipeline.json"
timeout 40 "$PYTHON" data_pipeline.py --workers 8 16 --batch 32 --batches 40 \
    --opencv-threads opencv-default
timeout 30 "$PYTHON" data_pipeline.py --workers 8 --batch 32 --batches 40 --iterator per-epoch

step sweep projection, cudnn.benchmark on and off
timeout 170 "$PYTHON" sweep_projection.py --output "$OUT/sweep_projection.json"
timeout 170 "$PYTHON" sweep_projection.py --cudnn-benchmark off \
    --output "$OUT/sweep_projection_no_autotune.json"

step yolov3 b32 compiled, if time is left
timeout 150 "$PYTHON" train_throughput.py --models yolov3 --batches 32 --steps 20 --warmup 5 \
    --compile --output "$OUT/train_throughput_compiled.json"
step done

#!/usr/bin/env bash
# The training GPU check, for a lent CUDA machine (one GPU, <= 10 minutes; ~3-4 min expected):
#   1. p2p-train --device cuda --amp, 400 steps on facades (labels -> photo), then --resume to 600
#   2. the same 200-step stretch in IEEE FP32 and with --tf32 (what "FP32" costs on this card)
#   3. torchrun --standalone --nproc_per_node 1 (NCCL, DistributedDataParallel) 300 steps,
#      --resume under torchrun to 400
# prints the card and the numbers (steps/s, last logged losses) of each run, then
#   4. p2p-export from the torchrun checkpoint (verified against PyTorch with onnxruntime).
#
# Usage, from the repository root:   bash benchmarks/gpu_check.sh
#   PY=python with a CUDA build of torch and p2p installed (default: .venv/bin/python, else
#   python3); FACADES=the facades folder (default: shared/datasets/facades, ../shared/...,
#   $P2P_DATA/facades); without it, 64 synthetic pairs stand in (and the output says so).
#   OUT=where the runs go (default: a temporary folder).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-$(mktemp -d /tmp/p2p-gpu-check.XXXXXX)}
STAGE="set-up"
trap 'echo "gpu_check: FAILED during: $STAGE (exit $?)" >&2' ERR
stage() { STAGE="$1"; echo; echo "== $1"; }
train() { timeout 300 "$PY" -c 'from p2p.cli.train import main; main()' "$@"; }

if ! "$PY" -c "import p2p.trainer.train" 2>/dev/null; then
    # A machine with a CUDA torch but no p2p: a venv on top of its packages, p2p editable.
    stage "installing p2p (no dependencies) into a venv over $PY's packages"
    "$PY" -m venv --system-site-packages "$OUT/venv"
    timeout 300 "$OUT/venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    PY=$OUT/venv/bin/python
fi

stage "card"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 120 "$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}")
print(f"device 0: {torch.cuda.get_device_name(0)}; {torch.cuda.device_count()} visible")
EOF

FACADES=${FACADES:-}
for d in shared/datasets/facades ../shared/datasets/facades "${P2P_DATA:-/nonexistent}/facades"; do
    [ -z "$FACADES" ] && [ -d "$d/train" ] && FACADES=$d
done
if [ -z "$FACADES" ]; then
    stage "no facades found: 64 synthetic 256x256 pairs instead"
    FACADES=$OUT/synthetic
    timeout 120 "$PY" - "$FACADES" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 64), ("val", 4)):
    (Path(sys.argv[1]) / split).mkdir(parents=True)
    for i in range(n):
        a = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(np.concatenate([a, 255 - a], 1)).save(Path(sys.argv[1]) / split / f"{i}.jpg")
EOF
fi
echo "data: $FACADES; runs: $OUT"
COMMON=(--data "$FACADES" --direction BtoA --device cuda --log-every 50 --sample-every 200
        --save-every 200 --snapshot-every 0 --workers 4 --quiet)

stage "AMP: 400 steps, then --resume to 600"
train "${COMMON[@]}" --amp --max-steps 400 -o "$OUT/amp"
train --resume -o "$OUT/amp" --max-steps 600 --quiet

stage "FP32 (IEEE) and --tf32: 200 steps each"
train "${COMMON[@]}" --max-steps 200 -o "$OUT/fp32"
train "${COMMON[@]}" --tf32 --max-steps 200 -o "$OUT/tf32"

stage "torchrun --standalone --nproc_per_node 1 (NCCL): 300 steps, --resume to 400"
# Agreement and loss means go through collectives: a wedged NCCL would otherwise hang here.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m p2p.cli.train \
    "${COMMON[@]}" --amp --max-steps 300 -o "$OUT/ddp" | tee "$OUT/ddp.log"
grep -q "torchrun: 1 processes on cuda, global batch 1 x 1 = 1" "$OUT/ddp.log"
timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m p2p.cli.train \
    --resume -o "$OUT/ddp" --max-steps 400 --quiet

stage "numbers"
timeout 60 "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
import torch
print(f"card: {torch.cuda.get_device_name(0)}")
for run in ("amp", "fp32", "tf32", "ddp"):
    rows = [json.loads(l) for l in (Path(sys.argv[1]) / run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "images_per_s" in r]
    ips = sorted(r["images_per_s"] for r in steps)  # batch 1, one process: steps/s
    last = steps[-1]
    print(f"{run:>5}: step {last['step']}, {ips[len(ips) // 2]:7.1f} steps/s (median of "
          f"{len(ips)} log windows); last G_GAN {last['loss_G_GAN']:.3f} G_L1 "
          f"{last['loss_G_L1']:.3f} D_real {last['loss_D_real']:.3f} D_fake "
          f"{last['loss_D_fake']:.3f}; val_L1 {[r['val_L1'] for r in rows if 'val_L1' in r][-1]:.3f}")
ckpt = torch.load(Path(sys.argv[1]) / "ddp" / "checkpoints" / "latest.pt", weights_only=True)
print(f"torchrun checkpoint: step {ckpt['step']}, world_size {ckpt['world_size']}")
EOF

stage "export from the torchrun checkpoint"
timeout 300 "$PY" -c 'from p2p.cli.export import main; main()' "$OUT/ddp"

ls -l "$OUT/ddp/export"
echo "gpu_check: OK"

#!/usr/bin/env bash
# The CUDA paths, checked on a machine with one NVIDIA GPU in at most about 5 minutes:
#   1. train   the default recipe (attention decoder) for a few hundred steps with AMP on CUDA
#   2. ddp     the same trainer under torchrun, one process, DistributedDataParallel over nccl
#   3. torchrun the `captioner train` entry point under torchrun on CUDA
#   4. serve   `captioner serve --device cuda` answers POST /v1/captions
#   5. ray     the Ray engine (`captioner caption --engine ray --device cuda`): one actor, num_gpus=1
# One line per check (PASS/FAIL, seconds, what was seen); exit status 1 when any failed.
# Without CUDA it stops at once with one line. Usage: scripts/gpu-check.sh [WORKDIR]
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
WORK="${1:-$(mktemp -d /tmp/gpu-check.XXXXXX)}"
mkdir -p "$WORK"
export CAPTIONER_CACHE_DIR="$WORK/cache"
# the shipped recipe's decoder (docs/training.md, "The shipped weights")
RECIPE=(--decoder attention --attention-dim 128 --annotation-dim 512 --cell lstm --embed-dim 128
        --img-proj-dim 128 --hidden-dim 256 --lr 3e-3 --batch-size 64)
FAILED=0

cuda_line="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1 | tail -1)"
if [ -z "$cuda_line" ] || ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu-check: FAIL no CUDA device (torch.cuda.is_available() is False${cuda_line:+: $cuda_line}); nothing checked"
    exit 1
fi
echo "gpu-check: $cuda_line; work folder $WORK"

# check NAME TIMEOUT_S COMMAND...: run it, one line with the verdict and the command's last line
check() {
    local name=$1 limit=$2; shift 2
    local log="$WORK/$name.log" t0=$SECONDS rc
    timeout "$limit" "$@" >"$log" 2>&1
    rc=$?
    local last
    last="$(grep -v '^\s*$' "$log" | tail -1 | cut -c1-160)"
    if [ $rc -eq 0 ]; then
        echo "PASS $name ($((SECONDS - t0)) s): $last"
    else
        [ $rc -eq 124 ] && last="timed out after $limit s; $last"
        echo "FAIL $name ($((SECONDS - t0)) s, exit $rc): $last  [log: $log]"
        FAILED=1
    fi
}

"$PY" -m captioner data scenes --out "$WORK/scenes" --train 1000 --val 100 --test 100 --seed 0 --workers 4 --quiet \
    >"$WORK/data.log" 2>&1 || { echo "gpu-check: FAIL could not render the scenes: $(tail -1 "$WORK/data.log")"; exit 1; }

# 1 + 2: the trainer itself, so the AMP dtype and the process group can be read back
cat >"$WORK/train_check.py" <<'EOF'
"""Train the recipe on CUDA (AMP); under torchrun, force DistributedDataParallel over one nccl rank."""
import json, os, sys
import torch
import torch.distributed as dist
from captioner.training.cli_train import config_from_args, add_train_arguments
from captioner.training.distributed import DistContext, setup
from captioner.training.trainer import Trainer
import argparse

p = argparse.ArgumentParser()
add_train_arguments(p)
cfg = config_from_args(p.parse_args(sys.argv[1:]))


class OneRankDDP(DistContext):
    """World size 1 still takes the distributed code paths (DDP wrapper, nccl collectives)."""

    @property
    def distributed(self) -> bool:
        return True


if "LOCAL_RANK" in os.environ:  # under torchrun
    torch.cuda.set_device(0)
    dist.init_process_group("nccl")
    ctx = OneRankDDP(0, 1, 0, torch.device("cuda", 0), "nccl")
else:
    ctx = setup("cuda")
trainer = Trainer(cfg, ctx)
result = trainer.run()
ddp = type(trainer.ddp_model).__name__
seen = dict(device=str(ctx.device), amp=str(trainer.amp_dtype), steps=result.steps_run, wrapper=ddp,
            backend=dist.get_backend() if dist.is_initialized() else None,
            scene_accuracy=result.best_metrics.get("scene_accuracy"),
            gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20))
assert ctx.device.type == "cuda" and trainer.amp_dtype in (torch.bfloat16, torch.float16), seen
assert result.steps_run >= 200, seen
if "LOCAL_RANK" in os.environ:
    assert ddp == "DistributedDataParallel" and seen["backend"] == "nccl", seen
    dist.destroy_process_group()
print(json.dumps(seen))
EOF
TRAIN=(--data "$WORK/scenes" "${RECIPE[@]}" --epochs 3 --device cuda --quiet --no-plot --max-val-images 100)
check train 150 "$PY" "$WORK/train_check.py" "${TRAIN[@]}" --out "$WORK/run-amp"
check ddp 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$WORK/train_check.py" \
    "${TRAIN[@]}" --out "$WORK/run-ddp"
check torchrun 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m captioner.training.cli_train \
    "${TRAIN[@]}" --epochs 1 --out "$WORK/run-torchrun"

# 4: the service on CUDA answers a request
CKPT="$WORK/run-amp/best"
[ -d "$CKPT" ] || CKPT=""
IMG="$(ls "$WORK"/scenes/images/* | head -1)"
export PY WORK CKPT IMG
serve_check() {
    local out="$WORK/serve.out" url="" pid i
    "$PY" -m captioner serve --device cuda --host 127.0.0.1 --port 0 ${CKPT:+--checkpoint "$CKPT"} >"$out" 2>&1 &
    pid=$!
    trap 'kill $pid 2>/dev/null' EXIT
    for i in $(seq 1 80); do
        url="$(grep -o 'listening on http://[^ ]*' "$out" | head -1 | cut -d' ' -f3)"
        [ -n "$url" ] && curl -sf "$url/readyz" >/dev/null 2>&1 && break
        kill -0 $pid 2>/dev/null || { tail -3 "$out"; return 1; }
        sleep 1
    done
    curl -s "$url/v1/model" | "$PY" -c 'import json,sys; d=sys.stdin.read(); assert "cuda" in d, "not on cuda: " + d[:300]' || return 1
    curl -s -F "file=@$IMG" "$url/v1/captions" | "$PY" -c '
import json, sys
r = json.load(sys.stdin)
caps = [x.get("caption") for x in r.get("results", r.get("captions", []))] if isinstance(r, dict) else []
assert caps and caps[0], json.dumps(r)[:300]
print("model on cuda; caption:", caps[0])'
}
export -f serve_check
check serve 90 bash -c serve_check

# 5: the Ray engine with one GPU actor (num_gpus=1, from the cluster's one GPU)
ray_check() {
    "$PY" -c 'import ray.data' 2>/dev/null || { echo "Ray Data is not installed (pip install \"captioner[ray]\")"; return 1; }
    "$PY" -m captioner caption "$WORK/scenes/images" --engine ray --device cuda ${CKPT:+--checkpoint "$CKPT"} \
        --out "$WORK/ray.jsonl" >"$WORK/ray.out" 2>&1 || { tail -3 "$WORK/ray.out"; return 1; }
    local n plan
    n="$(wc -l <"$WORK/ray.jsonl")"
    plan="$(grep -o 'ray: .*' "$WORK/ray.out" | head -1)"
    [ "$n" -ge 1200 ] || { echo "only $n captions in $WORK/ray.jsonl (1,200 images)"; return 1; }
    echo "$plan" | grep -q ' x [0-9.]* CPU, 1 GPU' || { echo "no GPU actor in the plan: $plan"; return 1; }
    echo "$n captions; $plan"
}
export -f ray_check
check ray 150 bash -c ray_check

[ $FAILED -eq 0 ] && echo "gpu-check: all checks passed" || echo "gpu-check: some checks FAILED (logs in $WORK)"
exit $FAILED

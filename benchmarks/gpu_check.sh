#!/usr/bin/env bash
# The NCCL path on a machine with one GPU: install, check against the reference, write a report.
#
#   bash benchmarks/gpu_check.sh [report.md]      (default: benchmarks/results/gpu_check.md)
#
# 1. installs the project into .venv-gpu (a venv that sees the machine's own CUDA torch; without
#    a network it runs from the checkout instead, and says so);
# 2. Cluster(world_size=1, backend="nccl"): ragged and padded forward + backward against the
#    reference, a few bias-training steps, the DP x EP x TP step at dp = ep = tp = 1, a fault demo,
#    and what the rank set-up left in force (device, TF32 off)  -- benchmarks/gpu_check.py;
# 3. torchrun --nproc-per-node 1 -m moe_lab demo --backend nccl, whose output must equal the
#    Cluster's demo, and torchrun --nproc-per-node 2 on one GPU, which must refuse with a clear error.
# Exit status 0 only when every check passed. Never changes the torch that is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
REPORT=${1:-benchmarks/results/gpu_check.md}
PY=${PYTHON:-python3}
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT
fail=0

mkdir -p "$(dirname "$REPORT")"
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/- GPU: /'
} > "$REPORT"

# -- 1. install ------------------------------------------------------------------------------
if [ ! -x .venv-gpu/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv-gpu || { echo "- FAIL could not create .venv-gpu" >> "$REPORT"; exit 2; }
fi
VPY=$ROOT/.venv-gpu/bin/python
if "$VPY" -m pip install --quiet -e . > "$LOG/pip.txt" 2>&1; then
  echo "- PASS install: pip install -e . into .venv-gpu" >> "$REPORT"
else
  echo "- note install: pip install failed (offline?), running from the checkout: $(tail -1 "$LOG/pip.txt")" >> "$REPORT"
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # the ranks import benchmarks.gpu_check by name
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "- FAIL no CUDA GPU visible to torch: nothing checked" >> "$REPORT"
  cat "$REPORT"; exit 2
fi

# -- 2. the Cluster on NCCL ------------------------------------------------------------------
timeout 900 "$VPY" benchmarks/gpu_check.py --report "$REPORT" || fail=1

# -- 3. torchrun -----------------------------------------------------------------------------
TORCHRUN=$(dirname "$VPY")/torchrun
[ -x "$TORCHRUN" ] || TORCHRUN=$(command -v torchrun)
DEMO=(demo --skew 0.6 --seed 3 --tokens-per-rank 256)
timeout 300 "$VPY" -m moe_lab "${DEMO[@]}" --world-size 1 --backend nccl > "$LOG/cluster.txt" 2> "$LOG/cluster.err"
rc_c=$?
timeout 300 "$TORCHRUN" --nproc-per-node 1 -m moe_lab "${DEMO[@]}" --backend nccl > "$LOG/torchrun.txt" 2> "$LOG/torchrun.err"
rc_t=$?
if [ $rc_c -eq 0 ] && [ $rc_t -eq 0 ] && grep -q send_counts "$LOG/torchrun.txt" && cmp -s "$LOG/cluster.txt" "$LOG/torchrun.txt"; then
  echo "- PASS torchrun demo: torchrun --nproc-per-node 1 -m moe_lab demo --backend nccl printed what the Cluster's demo printed" >> "$REPORT"
else
  fail=1
  echo "- FAIL torchrun demo: rc cluster=$rc_c torchrun=$rc_t; $(tail -1 "$LOG/torchrun.err")" >> "$REPORT"
fi
GPUS=$("$VPY" -c "import torch; print(torch.cuda.device_count())")
TOO_MANY=$((GPUS + 1))
timeout 300 "$TORCHRUN" --nproc-per-node $TOO_MANY -m moe_lab demo --backend nccl > /dev/null 2> "$LOG/too_many.err"
if [ $? -ne 0 ] && grep -q "needs one GPU per rank" "$LOG/too_many.err"; then
  echo "- PASS torchrun with $TOO_MANY ranks on $GPUS GPU(s): refused with 'needs one GPU per rank'" >> "$REPORT"
else
  fail=1
  echo "- FAIL torchrun with $TOO_MANY ranks on $GPUS GPU(s): no clear error; $(tail -1 "$LOG/too_many.err")" >> "$REPORT"
fi

echo >> "$REPORT"
[ $fail -eq 0 ] && echo "All checks passed." >> "$REPORT" || echo "Some checks FAILED (see above)." >> "$REPORT"
cat "$REPORT"
exit $fail

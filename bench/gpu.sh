#!/usr/bin/env bash
# The GPU checks in one go: the GPU tests, the benchmarks, and the effect of --bf16 on N(b).
# Usage: bash bench/gpu.sh [OUTDIR]   (from the repository root, on a machine with CUDA)
set -u
out=${1:-bench-out}
mkdir -p "$out"
export PYTHONPATH=src:trainer:operator:. PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"
timeout 150 $py -m pytest -q -p no:cacheprovider tests/benchmark/test_gpu.py \
  "tests/trainer/test_training.py::test_models_train_on_cuda" 2>&1 | tail -n 15 \
  | tee "$out/gpu-tests.txt"
timeout ${BENCH_TIMEOUT:-300} $py -m bench.run --device cuda --budget 0.5 --fid-baseline-samples 5000 \
  --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
# Several trials per device against one at a time, eager and with CUDA graphs.
timeout ${PACKING_TIMEOUT:-120} $py -m bench.packing --device cuda --batch-sizes 8,32,128 \
  --trials 1,2,4,8 --steps 100 --json "$out/packing.json" 2>&1 | tee "$out/packing.txt"
timeout ${PACKING_TIMEOUT:-120} $py -m bench.packing --device cuda --batch-sizes 8 --trials 1,4 \
  --steps 200 --trainer-flags=--cuda-graph 2>&1 | tee "$out/packing-graph.txt"
# N(b) of the digits demo trial, fp32 against bf16 autocast: two seeds, two batch sizes.
work=$(mktemp -d)
for b in 32 128; do for seed in 0 1; do for prec in fp32 bf16; do
  flag=""; [ "$prec" = bf16 ] && flag="--bf16"
  timeout ${NB_TIMEOUT:-150} $py -m critbatch_trainer --device cuda --batch-size $b --seed $seed \
    --fid-threshold 200 --eval-every 20 --eval-samples 500 --max-steps 1000 \
    --termination-log "" --stats-cache "$work/stats" $flag >"$work/nb-$b-$seed-$prec.json" \
    2>/dev/null &
done; done; done
wait
for f in "$work"/nb-*.json; do echo "$(basename "$f") $(tail -n 1 "$f")"; done | tee "$out/nb.txt"
rm -rf "$work"

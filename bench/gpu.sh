#!/usr/bin/env bash
# The GPU checks in one go: the GPU tests, the benchmarks (DCGAN, WGAN-GP, BigGAN), BigGAN's
# memory at large batch sizes, packing, the digits GPU sweep's overhead cold and warm, and the
# effect of --bf16 on N(b). The timeouts add up to 1410 s (the *_TIMEOUT variables): split it
# with PARTS where a call is limited, e.g. PARTS="tests wgan-gp", then PARTS="biggan memory",
# then the rest.
# Usage: bash bench/gpu.sh [OUTDIR]   (from the repository root, on a machine with CUDA)
#        PARTS="wgan-gp biggan" bash bench/gpu.sh OUTDIR   (only those parts)
set -u
out=${1:-bench-out}
parts=" ${PARTS:-tests dcgan wgan-gp biggan memory packing overhead nb} "
want() { [[ "$parts" == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONPATH=src:trainer:operator:. PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
nproc | tee -a "$out/gpu.txt"
if want tests; then
  timeout ${TESTS_TIMEOUT:-200} $py -m pytest -q -p no:cacheprovider tests/benchmark/test_gpu.py \
    "tests/trainer/test_training.py::test_models_train_on_cuda" \
    "tests/trainer/test_warm.py::test_a_forked_trial_initialises_cuda_itself_and_trains_on_it" \
    2>&1 | tail -n 15 \
    | tee "$out/gpu-tests.txt"
fi
if want dcgan; then
  timeout ${BENCH_TIMEOUT:-170} $py -m bench.run --device cuda --budget 0.5 \
    --fid-baseline-samples 5000 --json "$out/bench.json" 2>&1 | tee "$out/bench.txt"
fi
# WGAN-GP 64x64 and BigGAN 128x128 at the paper's settings; eager and CUDA-graph steps, fp32
# and --bf16 (BigGAN also with --fused-attention), against their baselines. BigGAN on fewer
# sizes and steps: a step at b = 1024 takes seconds (the memory part goes to 2048).
if want wgan-gp; then
  timeout ${WGAN_TIMEOUT:-150} $py -m bench.run --model wgan-gp --device cuda --budget 0.3 \
    --no-fid --json "$out/bench-wgan-gp.json" 2>&1 | tee "$out/bench-wgan-gp.txt"
fi
if want biggan; then
  timeout ${BIGGAN_TIMEOUT:-300} $py -m bench.run --model biggan --device cuda \
    --sizes ${BIGGAN_SIZES:-4,32,256,1024} --warmup 2 --rounds 1 --min-steps 2 \
    --budget 0.5 --no-fid --json "$out/bench-biggan.json" 2>&1 | tee "$out/bench-biggan.txt"
fi
# BigGAN 128x128 width 96 at the paper's large batch sizes: does a batch fit one device whole,
# with recomputed activations, with fused attention, and what do they cost?
if want memory; then
  timeout ${MEMORY_TIMEOUT:-300} $py -m bench.memory --model biggan --device cuda \
    --sizes 256,1024,2048 --micro-batches 0 --recompute 0,1 --fused-attention 0,1 \
    --json "$out/memory.json" 2>&1 \
    | tee "$out/memory.txt"
fi
# Several trials per device against one at a time, eager and with CUDA graphs.
if want packing; then
  timeout ${PACKING_TIMEOUT:-60} $py -m bench.packing --device cuda --batch-sizes 8,32,128 \
    --trials 1,2,4,8 --steps 100 --json "$out/packing.json" 2>&1 | tee "$out/packing.txt"
  timeout ${PACKING_GRAPH_TIMEOUT:-40} $py -m bench.packing --device cuda --batch-sizes 8 \
    --trials 1,4 --steps 200 --trainer-flags=--cuda-graph 2>&1 | tee "$out/packing-graph.txt"
fi
# Where the digits GPU sweep's wall time goes, trials started cold against forked warm.
if want overhead; then
  timeout ${OVERHEAD_TIMEOUT:-100} $py -m bench.overhead --sweep examples/digits-gpu.yaml \
    --json "$out/overhead.json" 2>&1 | tee "$out/overhead.txt"
fi
# N(b) of the digits demo trial, fp32 against bf16 autocast: two seeds, two batch sizes.
if want nb; then
  work=$(mktemp -d)
  for b in 32 128; do for seed in 0 1; do for prec in fp32 bf16; do
    flag=""; [ "$prec" = bf16 ] && flag="--bf16"
    timeout ${NB_TIMEOUT:-90} $py -m critbatch_trainer --device cuda --batch-size $b \
      --seed $seed --fid-threshold 200 --eval-every 20 --eval-samples 500 --max-steps 1000 \
      --termination-log "" --stats-cache "$work/stats" $flag >"$work/nb-$b-$seed-$prec.json" \
      2>/dev/null &
  done; done; done
  wait
  for f in "$work"/nb-*.json; do echo "$(basename "$f") $(tail -n 1 "$f")"; done \
    | tee "$out/nb.txt"
  rm -rf "$work"
fi

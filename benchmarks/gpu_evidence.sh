#!/usr/bin/env bash
# The first GPU evidence (issues 8 and 9) as one prepared command of under 10 minutes, for a
# session that is lent a GPU machine (H100/H200, JAX with CUDA preinstalled). From the
# repository root:
#   bash benchmarks/gpu_evidence.sh "$OUT"        # OUT: the folder that comes back
# Parts, each under its own time limit, each writing its log and results into OUT (a part
# that fails or runs out of time leaves the others running, and its log says why):
#   1. linear-recurrence (issue 9): the Pallas kernel compiled for the GPU for the first time,
#      against jax.lax.associative_scan: time, GB/s, deviation (configs/benchmarks/linear_recurrence_gpu.yaml)
#   2. deer-comparison (issue 8, item 1): GRU n = 1, batch 16, T = 1k..300k, forward and
#      training step, sequential vs Newton, with DEER's published ratios in the report
#   3. eigenworms-step-gru (issue 8, item 2): the EigenWorms-shape training step, GRU 32 x 5,
#      batch 4, T = 17,984, sequential / newton / quasi_newton (configs/experiments/eigenworms_step_gpu.yaml)
# Then commit OUT's files under results/ with the device in their names. With a
# second command's time: whole Newton solves and training steps with the kernel,
#   python3 -m benchmarks --config configs/benchmarks/pallas_gpu.yaml --out R.jsonl --max-minutes 7
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_evidence.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 ||
    echo "pip install failed (see install.log); running from PYTHONPATH"
{
    nvidia-smi
    python3 -c "import jax, jaxlib; print(jax.__version__, jaxlib.__version__, jax.devices())"
    python3 -c "import flax, optax, equinox, jaxtyping, tqdm, yaml, matplotlib; print('imports ok')"
} >"$out/machine.txt" 2>&1

part() {
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "::: $name (limit $limit s)"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "::: $name exit $? after $((SECONDS - start)) s"
    tail -n 25 "$out/$name.log"
}

part linear-recurrence 100 python3 -m benchmarks.linear_recurrence \
    --config configs/benchmarks/linear_recurrence_gpu.yaml --out "$out/linear-recurrence"
part deer-comparison 210 python3 -m benchmarks --config configs/benchmarks/deer_comparison.yaml \
    --out "$out/deer-comparison.jsonl" --max-minutes 2.5 --no-progress
part deer-report 30 python3 -m benchmarks report "$out/deer-comparison.jsonl" \
    --out "$out/deer-comparison.md"
part eigenworms-step-gru 200 python3 -m experiments.auto_method \
    --config configs/experiments/eigenworms_step_gpu.yaml --out "$out/eigenworms-step-gru"

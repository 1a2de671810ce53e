#!/usr/bin/env bash
# Everything this project can only check on a GPU, in one run (under 8 minutes on one GPU):
# the extract benchmark in bfloat16 (floor, naive, eager, fused), the fused reduction's
# agreement with eager (float32 1e-5, bfloat16 5e-2), the out-of-memory back-off under a
# capped memory fraction, a tiny study through `snakemake --cores 4 --resources gpu=1`,
# and benchmarks/decode_bench.py in bfloat16. Prints one summary table; JSON rows and
# logs go to OUT_DIR (default: $OUT, else gpu_check_out/). Installs nothing, runs offline,
# with `python` from PATH.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [--parts bench agree-fp32 ...]
#   bash benchmarks/gpu_check.sh /tmp/smoke --cpu-smoke     # the flow on CPU, small
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check_out}}"
shift || true
export PYTHONPATH="workflow${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 python benchmarks/gpu_check.py --out "$out" "$@"

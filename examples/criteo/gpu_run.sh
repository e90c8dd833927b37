#!/bin/bash
# The GPU run of examples/criteo (issue 11 §4): the largest paper-scale
# configuration that fits one GPU with sparse CF-SGD, trained at steady state;
# examples/s (step alone, and end to end with the file reader) and the peak
# device memory. Not yet run: the session that wrote it had no GPU.
#
# Which configuration (results/memory.md, one-device step peaks):
#   H100 80GB:  26 tables x 4e7 rows, d = 16: CF-SGD 69.8 GiB (fits);
#               Adam 263.5 GiB, Adagrad 197.6 GiB (do not fit).
#   H200 141GB: MLPerf DLRM table sizes (2.04e8 rows), d = 128: CF-SGD
#               99.2 GiB (fits); Adam 392.8 GiB, Adagrad 294.7 GiB (do not).
#
#   bash examples/criteo/gpu_run.sh [output directory]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-examples/criteo/results}}"
# JAX takes 75% of the GPU's memory by default; the tables need more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.97
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
case "$gpu" in
  *H200*) table_rows=mlperf; dim=128 ;;
  *) table_rows=40000000; dim=16 ;;
esac
echo "GPU: $gpu; table_rows=$table_rows, d=$dim"
python -m examples.criteo.throughput --platform=gpu \
  --table_rows="$table_rows" --embedding_dim="$dim" \
  --variants=cf_sgd/sparse --batch_size=16384 --min_seconds=20 \
  --end_to_end_steps=100 --output_dir="$out"

#!/usr/bin/env bash
# Interleaved A/B timing of this checkout against an earlier commit.
#
#   benchmarks/ab_check.sh COMMIT OUTDIR [PAIRS] [-- BENCHMARK FLAGS...]
#
# Checks COMMIT out in a temporary git worktree, then runs
# benchmarks/embedding_step.py of both codes PAIRS times (default 6), a fresh
# process each, in alternating order (before-now, now-before, ...), so that
# neither code always runs first on a shared machine. Run i of each lands in
# OUTDIR/{now,before}<i>/x.json; benchmarks/ab_compare.py pairs them and
# writes OUTDIR/ab.md. Flags after -- go to both benchmarks (default: the
# sparse steps of issue 10's CPU check at N = 1e5, 1e6, 1e7). PYTHON (default
# python3) must have the benchmark's dependencies (e.g. an activated venv).
set -euo pipefail

if (( $# < 2 )); then
  sed -n '2,14p' "$0"
  exit 2
fi
commit=$1
outdir=$2
pairs=${3:-6}
shift $(( $# >= 3 ? 3 : 2 ))
if [[ ${1:-} == -- ]]; then shift; fi
flags=("$@")
if (( ${#flags[@]} == 0 )); then
  flags=(--num_rows=100000,1000000,10000000
         --optimizers=sparse_cf_sgd,sparse_fa_sgd,sparse_rowwise_adagrad,no_update
         --repeats=1 --min_seconds=1)
fi

here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
worktree=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$worktree" > /dev/null 2>&1 || true' EXIT
git -C "$here" worktree add --detach "$worktree" "$commit" > /dev/null
mkdir -p "$outdir"

for (( i = 1; i <= pairs; i++ )); do
  if (( i % 2 )); then order=(before now); else order=(now before); fi
  for which in "${order[@]}"; do
    dir=$here
    [[ $which == before ]] && dir=$worktree
    if ! (cd "$dir" && "$python" benchmarks/embedding_step.py "${flags[@]}" \
        --noplot --output="$outdir/$which$i" --name=x \
        > "$outdir/$which$i.log" 2>&1); then
      echo "The $which benchmark failed (run $i): see $outdir/$which$i.log" >&2
      tail -n 5 "$outdir/$which$i.log" >&2
      exit 1
    fi
    echo "$which $i done; $(uptime)"
  done
done
"$python" "$here/benchmarks/ab_compare.py" --now="$outdir/now*/x.json" \
  --before="$outdir/before*/x.json" --output="$outdir/ab.md"

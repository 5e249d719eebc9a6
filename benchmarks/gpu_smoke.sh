#!/usr/bin/env bash
# GPU smoke run (issue 13, point 1), on one CUDA device:
#   1. the tiny world end to end (`rlhf run configs/tiny.yaml`) in fp32,
#   2. the same in bf16 autocast over fp32 master weights (model.mixed_precision=bf16),
#   3. two PPO steps shaped like configs/flan_t5_base_dialogsum.yaml: a random-weight T5 in flan-t5-base's
#      shape with the real T5 tokenizer, DialogSum as the Hub serves it, a random roberta-base-shaped reward
#      labelled nothate/hate (benchmarks/standins.py, from ../shared/data), the lab's PPO batch (16 prompts,
#      4 epochs of 4 mini-batches, 64 new tokens), bf16 autocast, starting from the base model (no SFT),
#   4. decoding alone (benchmarks/decoding.py): transformers' generate vs our static-cache decoder, eager and
#      compiled (CUDA graphs), at the lab's rollout shape (flan-t5-base, 16 prompts x 4 samples, 64 new
#      tokens) and the tiny world's evaluate shape: tokens/s, the compile's cost, identical-token share.
# Then prints, per run, the stage times, every PPO step's time and the peak GPU memory.
#
#   benchmarks/gpu_smoke.sh [--dry-run] [--device cuda|cpu] [--work DIR] [--only PHASE,...]
#
#   --dry-run      check the venv, the device, ../shared/data and every command's overrides; print the
#                  commands; run nothing
#   --device cpu   the same commands on the CPU at toy sizes (checks this script, not a GPU)
#   --work DIR     where stand-ins and runs go (default: a new folder under /tmp); never inside the repo
#   --only LIST    run these phases, in this order (tiny-fp32, tiny-bf16, lab-ppo, decoding; default all);
#                  each phase's figures are printed as soon as it ends
# Environment: PYTHON (default .venv/bin/python), SHARED (default ../shared/data), RLHF_CACHE (tiny world
# cache; the cuda run uses yours, so a built world is reused).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SHARED="${SHARED:-$ROOT/../shared/data}"
DEVICE=cuda DRY=0 WORK="" MADE_WORK=0 ONLY=tiny-fp32,tiny-bf16,lab-ppo,decoding

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --device) [ $# -ge 2 ] || die "--device needs cuda or cpu"; DEVICE="$2"; shift ;;
    --work) [ $# -ge 2 ] || die "--work needs a folder"; WORK="$2"; shift ;;
    --only) [ $# -ge 2 ] || die "--only needs a list of phases"; ONLY="$2"; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift
done
case "$DEVICE" in cuda|cpu) ;; *) die "--device must be cuda or cpu, not '$DEVICE'" ;; esac
IFS=, read -r -a PHASES <<< "$ONLY"
[ ${#PHASES[@]} -gt 0 ] || die "--only needs at least one phase"
for p in "${PHASES[@]}"; do
  case "$p" in tiny-fp32|tiny-bf16|lab-ppo|decoding) ;;
    *) die "--only: unknown phase '$p' (tiny-fp32, tiny-bf16, lab-ppo, decoding)" ;; esac
done
[ -x "$PY" ] || die "no Python at $PY: run 'make install' (with a CUDA build of torch) or set PYTHON"
[ -d "$SHARED/dialogsum" ] && [ -d "$SHARED/t5-tokenizer" ] ||
  die "$SHARED lacks dialogsum/ or t5-tokenizer/ (step 3 needs them)"

# One phase: its commands, with nvidia-smi sampling the device's memory while they run (when there is one).
SAMPLER=""
GPU_ID="${CUDA_VISIBLE_DEVICES:-0}"
GPU_ID="${GPU_ID%%,*}"  # torch's cuda:0 is the first visible device
start_sampler() {
  SAMPLER=""
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU_ID" -lms 200 > "$1" 2>/dev/null &
    SAMPLER=$!
  fi
}
stop_sampler() {
  if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
}
cleanup() {  # the sampler, and our temp folder when nothing was written to it
  stop_sampler
  if [ "$MADE_WORK" = 1 ]; then rmdir "$WORK" 2>/dev/null || true; fi
}
trap cleanup EXIT

if [ -n "$WORK" ]; then
  WORK="$(realpath -m "$WORK")"
  case "$WORK/" in "$ROOT"/*) die "--work $WORK is inside the repository" ;; esac
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d /tmp/rlhf-gpu-smoke.XXXXXX)"
  MADE_WORK=1
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$DEVICE" = cpu ]; then
  export CUDA_VISIBLE_DEVICES="" RLHF_CACHE="$WORK/cache"
fi
if ! "$PY" "$ROOT/benchmarks/gpu_smoke.py" device "$DEVICE"; then
  [ "$DRY" = 1 ] || exit 2
  echo "dry run: a real run would stop here; checking the commands anyway"
fi

RUNS="$WORK/runs"
STANDINS="$WORK/standins"
TINY=(output_dir="$RUNS")
LAB=(output_dir="$RUNS" run_name=lab-ppo model.name="$STANDINS/t5" data.source="$STANDINS/dialogsum"
     reward.pretrained="$STANDINS/roberta-hate" model.mixed_precision=bf16 rl.start_from=base rl.steps=2
     rl.save_steps=2 rl.sample_steps=2 rl.eval_n_dialogues=16)
T5_SHAPE=base
DECODING=(--device "$DEVICE" --shape base --k 4 --new-tokens 64 --rounds 3 --world)
if [ "$DEVICE" = cpu ]; then  # toy sizes: this checks the script's plumbing in minutes
  TINY+=(tinyworld.n_dialogues=200 tinyworld.n_toxicity_texts=200 tinyworld.vocab_size=600 tinyworld.d_model=32
         tinyworld.d_ff=64 tinyworld.num_layers=1 tinyworld.num_heads=2 tinyworld.pretrain_steps=10
         prompt.n_dialogues=4 "prompt.shots=[0]" "prompt.settings=[{name: greedy}]" sft.max_steps=2
         "sft.variants=[{name: full, method: full, learning_rate: 0.003, max_steps: 2},
                        {name: lora, method: lora, learning_rate: 0.01, max_steps: 2}]"
         sft.eval_steps=2 sft.save_steps=2 sft.eval_n_dialogues=4 sft.max_new_tokens=8 reward.epochs=1
         rl.steps=2 rl.batch_size=8 rl.mini_batch_size=4 rl.epochs=1 rl.max_new_tokens=8 rl.save_steps=2
         rl.sample_steps=2 rl.eval_n_dialogues=4 evaluate.n_dialogues=8 evaluate.n_samples=2
         evaluate.bootstrap_resamples=100)
  DECODING=(--device cpu --shape small --k 2 --new-tokens 8 --batch-size 4 --rounds 1)
  LAB+=(data.max_samples=32 rl.batch_size=4 rl.mini_batch_size=2 rl.epochs=1 rl.max_new_tokens=8
        rl.eval_n_dialogues=2)
fi


rlhf() {  # check the overrides first (one line and exit 2 if wrong), then run unless --dry-run
  local config="$2"
  echo "+ rlhf $*"
  "$PY" "$ROOT/benchmarks/gpu_smoke.py" check "$config" "${@:3}" || exit 2
  [ "$DRY" = 1 ] || "$PY" -m rlhf.cli "$@"
}

phase() {  # phase NAME CMD...: time it, sample GPU memory into $WORK/NAME.nvsmi
  local name="$1"; shift
  echo "== $name"
  start_sampler "$WORK/$name.nvsmi"
  local t0=$SECONDS
  "$@"
  stop_sampler
  echo "== $name: $((SECONDS - t0))s"
}

tiny_fp32() { rlhf run "$ROOT/configs/tiny.yaml" "${TINY[@]}" run_name=tiny-fp32 model.mixed_precision=no; }
tiny_bf16() { rlhf run "$ROOT/configs/tiny.yaml" "${TINY[@]}" run_name=tiny-bf16 model.mixed_precision=bf16; }
lab_ppo() {
  echo "+ python benchmarks/standins.py --out $STANDINS --t5 $T5_SHAPE --only t5,dialogsum,roberta-hate"
  [ "$DRY" = 1 ] || "$PY" "$ROOT/benchmarks/standins.py" --out "$STANDINS" --shared "$SHARED" --t5 "$T5_SHAPE" \
    --only t5,dialogsum,roberta-hate
  rlhf reward "$ROOT/configs/flan_t5_base_dialogsum.yaml" "${LAB[@]}"
  rlhf rl "$ROOT/configs/flan_t5_base_dialogsum.yaml" "${LAB[@]}"
}
decoding() {
  echo "+ python benchmarks/decoding.py ${DECODING[*]}"
  [ "$DRY" = 1 ] || "$PY" "$ROOT/benchmarks/decoding.py" "${DECODING[@]}" | tee "$WORK/decoding.out"
}

cd "$ROOT"
for p in "${PHASES[@]}"; do
  phase "$p" "${p//-/_}"
  if [ "$DRY" = 0 ] && [ "$p" != decoding ]; then
    "$PY" "$ROOT/benchmarks/gpu_smoke.py" report "$RUNS/$p=$WORK/$p.nvsmi"
  fi
done
if [ "$DRY" = 1 ]; then
  echo "dry run: every command's overrides are valid; nothing ran (work folder $WORK)"
  exit 0
fi
echo "gpu smoke on $DEVICE: done; runs in $RUNS"

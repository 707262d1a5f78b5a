#!/usr/bin/env bash
# The GPU measurements the open issues wait for, as one prepared call of the device tool (a lent
# GPU machine: PyTorch installed, no network, 15 minutes a session). Most wanted first; a check
# starts only while the call's time holds its estimate, and every table and log lands in $OUT.
#
#   bash bench/device_check.sh --wheels        here: the pinned packages the device's image lacks
#                                              (or has at other versions) into .whl/ (git-ignored)
#   bash bench/device_check.sh SECONDS [CHECK ...]   there (carry [".whl"]): install them, then the
#                                              checks (all, in this order, unless named) within SECONDS
#   DEVICE_CHECK_TINY=1 PATH=.venv/bin:$PATH bash bench/device_check.sh 1800   here, on the CPU: every
#                                              check on tiny shapes (the harness, not the figures)
#
# Checks (issue: what it measures):
#   flux512    29: FLUX.1-dev LoRA steps/s and peak memory beside diffusers' script, 512 px, bf16
#   likeness   30: evaluation's share of a typical SD 1.5 training (measure_likeness), fp16
#   fluxtpl    29: FLUX.1-dev template s/image, 1024 px, 28 steps: plain diffusers, core, compiled
#   flux1024   29: as flux512 at 1024 px
#   fluxint8   29: ours on the int8 base (quantize_base) beside the same bf16 baseline, 512 px
#   sd         16: SD 1.5 full and LoRA, SDXL LoRA beside diffusers' scripts, fp16
# The FLUX base (random weights of FLUX.1-dev's shapes, 34 GB in bf16) is built once, into
# .dreambuild/cache, and shared by the FLUX checks.
set -uo pipefail
cd "$(dirname "$0")/.."

# Pinned in requirements/trainer.txt. huggingface-hub stays the device's (1.33: diffusers and
# transformers accept >= 1.32; our 2.4 needs httpx2, which the device lacks); bitsandbytes (43 MB)
# is left out, so the checks use torch's AdamW.
PACKAGES=(diffusers transformers peft torchao)
if [ "${1:-}" = "--wheels" ]; then
  rm -rf .whl && mkdir .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
  pins=()
  for name in "${PACKAGES[@]}"; do pins+=("$(grep -i "^${name}==" requirements/trainer.txt)"); done
  pins+=("importlib-metadata==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("importlib-metadata"))')")   # diffusers needs it
  platforms=()
  for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${tag}_x86_64"); done
  # The device's python3 is 3.12 (/work/.library/device/KINDS.md).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl "${pins[@]}" || exit
  ls -l .whl && du -sh .whl
  exit
fi

budget=${1:?usage: bash bench/device_check.sh --wheels | SECONDS [CHECK ...]}; shift
checks=("$@"); [ ${#checks[@]} -gt 0 ] || checks=(flux512 likeness fluxtpl flux1024 fluxint8 sd)
OUT=${OUT:-$PWD/device-out}; mkdir -p "$OUT"
deadline=$((SECONDS + budget))

if [ -d .whl ] && [ -z "${DEVICE_CHECK_TINY:-}" ]; then   # a CPU dry run uses this environment as it is
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{ nvidia-smi -L 2>/dev/null || echo "no GPU"; python3 -c 'import sys, torch, diffusers, transformers, peft, torchao; print(sys.version.split()[0], *(f"{m.__name__} {m.__version__}" for m in (torch, diffusers, transformers, peft, torchao)))'; } 2>&1 | tee "$OUT/device.txt"

CACHE=.dreambuild/cache
declare -A ESTIMATE=([flux512]=200 [likeness]=120 [fluxtpl]=280 [flux1024]=220 [fluxint8]=180 [sd]=300)   # seconds, guessed: none has run on a GPU yet
declare -A COMMAND=(
  [flux512]="python3 bench/train_vs_diffusers.py --pairs flux-lora --precision bf16 --resolution 512 --no-text-encoder --steps 20 --warmup 5 --cache $CACHE"
  [likeness]="python3 bench/likeness_cost.py --shape sd15 --steps 100 --validation-steps 50"
  [fluxtpl]="python3 bench/template_speed.py --shape flux-dev --size 1024 --steps 28 --repeats 2 --compile --cache $CACHE"
  [flux1024]="python3 bench/train_vs_diffusers.py --pairs flux-lora --precision bf16 --resolution 1024 --no-text-encoder --steps 15 --warmup 5 --cache $CACHE"
  [fluxint8]="python3 bench/train_vs_diffusers.py --pairs flux-lora --precision bf16 --resolution 512 --no-text-encoder --steps 20 --warmup 5 --quantize-base int8 --cache $CACHE"
  [sd]="python3 bench/train_vs_diffusers.py --pairs sd15-full,sd15-lora,sdxl-lora --precision fp16 --steps 30 --warmup 10 --cache $CACHE"
)
# On a CPU: each bench on tiny shapes (a later option wins in argparse).
tiny_options() {
  case "$1" in
    *train_vs_diffusers.py*) echo "--shape tiny --resolution 64 --steps 4 --warmup 1 --precision no" ;;
    *likeness_cost.py*) echo "--shape tiny --resolution 64 --steps 4 --validation-steps 2 --infer-steps 2 --precision no" ;;
    *template_speed.py*) echo "--shape flux-tiny --size 64 --steps 2 --repeats 1" ;;
  esac
}
for check in "${checks[@]}"; do
  [ -n "${COMMAND[$check]:-}" ] || { echo "device_check: no check named $check" | tee -a "$OUT/summary.txt"; continue; }
  left=$((deadline - SECONDS))
  if [ "$left" -lt "${ESTIMATE[$check]}" ]; then
    echo "device_check: $check skipped (${left} s left, it needs about ${ESTIMATE[$check]} s)" | tee -a "$OUT/summary.txt"
    continue
  fi
  echo "== $check: ${COMMAND[$check]}" | tee -a "$OUT/summary.txt"
  started=$SECONDS
  command="${COMMAND[$check]}"; [ -z "${DEVICE_CHECK_TINY:-}" ] || command+=" $(tiny_options "$command")"
  timeout --kill-after=10 "$left" $command >"$OUT/$check.log" 2>&1
  code=$?
  # Each bench ends with its table: the summary keeps the table, the log keeps everything.
  grep -v -E 'it/s\]|^W[0-9]{4} |There are modules|Unable to import|^WARNING:' "$OUT/$check.log" | tail -n 12 | tee -a "$OUT/summary.txt"
  echo "== $check: exit $code after $((SECONDS - started)) s" | tee -a "$OUT/summary.txt"
done
df -h "$CACHE" 2>/dev/null | tail -1 | tee -a "$OUT/summary.txt"

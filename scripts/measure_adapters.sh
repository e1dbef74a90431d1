#!/usr/bin/env bash
# Reproduces the "Personal adapters" tables of docs/results.md with the real CLI:
#   synthesize the built-in English speakers (40 train / 10 dev / 35 held-out test sentences each),
#   score the base tiny.en, train adapters, score each on the speaker's held-out test split and on the
#   real-speech fixtures, and print a Markdown table.
#
# Every step writes a JSON file under $OUT/results and is skipped when that file exists, so an
# interrupted run resumes where it stopped (delete a file to redo its step).
#
#   bash scripts/measure_adapters.sh                                  # the jobs below, in order
#   JOBS="tabletop_gamer:glora:all" bash scripts/measure_adapters.sh  # one more cell
#
# JOBS: "speaker:kind:targets[:backbone]" entries, run in order (CPU time is scarce: most important first).
# The backbone defaults to tiny.en; the Korean-English speaker ko_dev_engineer needs the multilingual base.
# Kinds at comparable parameter counts: lora r=8, glora r=5 (lowrank gate), saml E=4 r=2.
# SAML for speaker S: pretrain experts + router on the OTHER English speakers' train sets (their dev
# sets for early stopping), then adapt router + experts on S's train set (S's dev set).
set -euo pipefail

OUT=${OUT:-/tmp/splitasr-adapters}
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-8}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-5}
PATIENCE=${PATIENCE:-3}
LR=${LR:-1e-3}
SPEAKERS="cardio_nurse boat_mechanic highland_botanist tabletop_gamer"
JOBS=${JOBS:-"cardio_nurse:lora:all cardio_nurse:lora:decoder cardio_nurse:glora:decoder cardio_nurse:saml:decoder
  boat_mechanic:lora:decoder highland_botanist:lora:decoder tabletop_gamer:lora:decoder
  tabletop_gamer:glora:decoder tabletop_gamer:saml:decoder ko_dev_engineer:lora:decoder:base
  boat_mechanic:glora:decoder boat_mechanic:saml:decoder"}
REAL=${REAL:-"$(cd "$(dirname "$0")/.." && pwd)/tests/data/real-speech/manifest.jsonl"}

DATA="$OUT/speakers"
RES="$OUT/results"
ADAPTERS="$OUT/adapters"
mkdir -p "$RES" "$ADAPTERS"

# once FILE CMD...: run CMD (which prints one JSON object) into FILE unless FILE exists.
once() {
  local file=$1; shift
  if [[ -s "$file" ]]; then return 0; fi
  echo "+ $*" >&2
  "$@" > "$file.tmp" && mv "$file.tmp" "$file"
}

splitasr synth --out "$DATA" --speaker cardio_nurse --speaker boat_mechanic --speaker highland_botanist \
  --speaker tabletop_gamer --speaker ko_dev_engineer --train 40 --dev 10 --test 35 --seed 0 >&2

COMMON=(--patience "$PATIENCE" --lr "$LR" --batch-size 8 --seed 0 --threads "$THREADS" --json)

once "$RES/base-real.json" splitasr eval --manifest "$REAL" --json
for job in $JOBS; do
  IFS=: read -r s kind targets backbone <<< "$job"
  backbone=${backbone:-tiny.en}
  once "$RES/base-$s.json" splitasr eval --manifest "$DATA/$s/test.jsonl" --backbone "$backbone" --json
  name="$s-$kind-$targets"
  adapter="$ADAPTERS/$name.safetensors"
  data=(--manifest "$DATA/$s/train.jsonl" --dev-manifest "$DATA/$s/dev.jsonl" --targets "$targets"
        --backbone "$backbone")
  case $kind in
    lora)  once "$RES/train-$name.json" splitasr train --kind lora --rank 8 "${data[@]}" --out "$adapter" \
             --epochs "$EPOCHS" "${COMMON[@]}" ;;
    glora) once "$RES/train-$name.json" splitasr train --kind glora --rank 5 --gate lowrank "${data[@]}" \
             --out "$adapter" --epochs "$EPOCHS" "${COMMON[@]}" ;;
    saml)
      others=(); devs=()
      for o in $SPEAKERS; do
        [[ $o == "$s" ]] && continue
        others+=(--manifest "$DATA/$o/train.jsonl"); devs+=(--dev-manifest "$DATA/$o/dev.jsonl")
      done
      once "$RES/pretrain-$name.json" splitasr train --kind saml --stage pretrain --experts 4 --rank 2 \
        "${others[@]}" "${devs[@]}" --targets "$targets" --out "$ADAPTERS/$name-pretrained.safetensors" \
        --epochs "$PRETRAIN_EPOCHS" "${COMMON[@]}"
      once "$RES/train-$name.json" splitasr train --kind saml --stage adapt --adapt-experts \
        --init "$ADAPTERS/$name-pretrained.safetensors" "${data[@]}" --out "$adapter" --epochs "$EPOCHS" "${COMMON[@]}" ;;
    *) echo "unknown kind $kind" >&2; exit 2 ;;
  esac
  once "$RES/test-$name.json" splitasr eval --manifest "$DATA/$s/test.jsonl" --backbone "$backbone" \
    --adapter "$adapter" --json
  # the real-speech set is English: score each adapter on it with its own backbone
  [[ $backbone == tiny.en ]] || once "$RES/base-real-$backbone.json" splitasr eval --manifest "$REAL" \
    --backbone "$backbone" --json
  once "$RES/real-$name.json" splitasr eval --manifest "$REAL" --backbone "$backbone" --adapter "$adapter" --json
done

python - "$RES" <<'EOF'
import json, sys
from pathlib import Path

res = Path(sys.argv[1])
load = lambda name: json.loads((res / name).read_text()) if (res / name).exists() else None
pct = lambda x: f"{100 * x:.1f}"
print("| speaker | backbone | kind | targets | trained / stored params | file KiB | train wall s (CPU s) "
      "| epochs (kept) | test WER base → adapted | change | test CER base → adapted | test MER base → adapted "
      "| real-speech WER base → adapted |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for train in sorted(res.glob("train-*.json")):
    name = train.stem.removeprefix("train-")
    speaker, kind, targets = name.split("-")
    t, test, real, base = load(train.name), load(f"test-{name}.json"), load(f"real-{name}.json"), load(
        f"base-{speaker}.json")
    if not (test and real and base):
        continue
    backbone = t["backbone"]
    real_base = load("base-real.json" if backbone == "tiny.en" else f"base-real-{backbone}.json")
    pre = load(f"pretrain-{name}.json")
    if pre:  # SAML: report the pretraining cost too
        wall, cpu = f"{pre['wall_seconds']:.0f} + {t['wall_seconds']:.0f}", f"{pre['cpu_seconds']:.0f} + {t['cpu_seconds']:.0f}"
    else:
        wall, cpu = f"{t['wall_seconds']:.0f}", f"{t['cpu_seconds']:.0f}"
    rel = (test["wer"] - base["wer"]) / base["wer"]
    print(f"| {speaker} | {backbone} | {kind} | {targets} | {t['trainable_parameters']:,} / {t['adapter_parameters']:,} "
          f"| {t['file_bytes'] / 1024:.0f} | {wall} ({cpu}) | {t['epochs_run']} ({t['best_epoch']}) "
          f"| {pct(base['wer'])} → {pct(test['wer'])} | {100 * rel:+.0f} % | {pct(base['cer'])} → {pct(test['cer'])} "
          f"| {pct(base['mer'])} → {pct(test['mer'])} | {pct(real_base['wer'])} → {pct(real['wer'])} |")
EOF

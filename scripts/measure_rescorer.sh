#!/usr/bin/env bash
# Reproduces the "Rescoring" table of docs/results.md with the real CLI: trains LoRB rescorers for the
# synthetic speaker cardio_nurse (on the backbone's N-best lists, on the N-best lists of the backbone
# with the speaker's adapter, from the speaker's training sentences alone, and from both) and scores first-pass
# and rescored WER on the speaker's held-out test split and on the real-speech fixtures.
#
# Needs the speaker data and adapter of scripts/measure_adapters.sh (SPEAKERS, ADAPTER below). Every
# step writes a JSON file under $OUT and is skipped when it exists; N-best lists are cached as JSON.
#
#   bash scripts/measure_rescorer.sh
set -euo pipefail

OUT=${OUT:-/tmp/rescore}
THREADS=${THREADS:-1}
NBEST=${NBEST:-4}
SPEAKER=${SPEAKER:-cardio_nurse}
SPEAKERS=${SPEAKERS:-/tmp/splitasr-adapters/speakers}
ADAPTER_SRC=${ADAPTER_SRC:-/tmp/splitasr-adapters/adapters/$SPEAKER-lora-decoder.safetensors}
REAL=${REAL:-"$(cd "$(dirname "$0")/.." && pwd)/tests/data/real-speech/manifest.jsonl"}
DATA="$SPEAKERS/$SPEAKER"
mkdir -p "$OUT"
ADAPTER="$OUT/$SPEAKER-adapter.safetensors"
[[ -s "$ADAPTER" ]] || cp "$ADAPTER_SRC" "$ADAPTER"

once() {
  local file=$1; shift
  if [[ -s "$file" ]]; then return 0; fi
  echo "+ $*" >&2
  "$@" > "$file.tmp" && mv "$file.tmp" "$file"
}
common=(--nbest "$NBEST" --threads "$THREADS" --json)

# 1. rescorers: N-best of the backbone alone, N-best with the adapter, and text only
once "$OUT/train-base.json" splitasr rescorer train --manifest "$DATA/train.jsonl" --dev-manifest "$DATA/dev.jsonl" \
  --out "$OUT/$SPEAKER-rescorer.safetensors" --compare-full 5 "${common[@]}"
once "$OUT/train-adapter.json" splitasr rescorer train --manifest "$DATA/train.jsonl" --dev-manifest "$DATA/dev.jsonl" \
  --adapter "$ADAPTER" --out "$OUT/$SPEAKER-adapter-rescorer.safetensors" "${common[@]}"
python -c "import json,sys; [print(json.loads(l)['text']) for l in open(sys.argv[1])]" "$DATA/train.jsonl" \
  > "$OUT/$SPEAKER-sentences.txt"
once "$OUT/train-text.json" splitasr rescorer train --text-file "$OUT/$SPEAKER-sentences.txt" \
  --dev-manifest "$DATA/dev.jsonl" --out "$OUT/$SPEAKER-text-rescorer.safetensors" "${common[@]}"
# audio N-best lists and synthesized text lists together (the lists decoded above are reused)
for split in train dev; do
  [[ -s "$OUT/$SPEAKER-mixed-rescorer.nbest-$split.json" ]] \
    || cp "$OUT/$SPEAKER-rescorer.nbest-$split.json" "$OUT/$SPEAKER-mixed-rescorer.nbest-$split.json"
done
once "$OUT/train-mixed.json" splitasr rescorer train --manifest "$DATA/train.jsonl" --text-file "$OUT/$SPEAKER-sentences.txt" \
  --dev-manifest "$DATA/dev.jsonl" --out "$OUT/$SPEAKER-mixed-rescorer.safetensors" "${common[@]}"

# 2. first pass vs rescored, on the held-out test split and on real speech
for set in test real; do
  manifest="$DATA/test.jsonl"; [[ $set == real ]] && manifest="$REAL"
  once "$OUT/eval-$set-base.json" splitasr rescorer eval --manifest "$manifest" \
    --rescorer "$OUT/$SPEAKER-rescorer.safetensors" --cache "$OUT/nbest-$set-base.json" "${common[@]}"
  once "$OUT/eval-$set-text.json" splitasr rescorer eval --manifest "$manifest" \
    --rescorer "$OUT/$SPEAKER-text-rescorer.safetensors" --cache "$OUT/nbest-$set-base.json" "${common[@]}"
  once "$OUT/eval-$set-mixed.json" splitasr rescorer eval --manifest "$manifest" \
    --rescorer "$OUT/$SPEAKER-mixed-rescorer.safetensors" --cache "$OUT/nbest-$set-base.json" "${common[@]}"
  once "$OUT/eval-$set-adapter.json" splitasr rescorer eval --manifest "$manifest" --adapter "$ADAPTER" \
    --rescorer "$OUT/$SPEAKER-adapter-rescorer.safetensors" --cache "$OUT/nbest-$set-adapter.json" "${common[@]}"
  once "$OUT/eval-$set-adapter-base.json" splitasr rescorer eval --manifest "$manifest" --adapter "$ADAPTER" \
    --rescorer "$OUT/$SPEAKER-rescorer.safetensors" --cache "$OUT/nbest-$set-adapter.json" "${common[@]}"
  once "$OUT/eval-$set-adapter-text.json" splitasr rescorer eval --manifest "$manifest" --adapter "$ADAPTER" \
    --rescorer "$OUT/$SPEAKER-text-rescorer.safetensors" --cache "$OUT/nbest-$set-adapter.json" "${common[@]}"
done

# 3. the table
python - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
r = lambda name: json.load(open(f"{out}/{name}.json"))
rows = [("backbone alone (beam top-1)", "base", "wer_first_pass"),
        ("backbone + length term only (λ = 0, β tuned on dev)", "base", "wer_length_term_only"),
        ("backbone + rescorer (trained on backbone N-best)", "base", "wer_rescored"),
        ("backbone + text-only rescorer", "text", "wer_rescored"),
        ("backbone + rescorer trained on N-best and text lists", "mixed", "wer_rescored"),
        ("oracle of the backbone's N-best", "base", "wer_oracle"),
        ("backbone + adapter (beam top-1)", "adapter", "wer_first_pass"),
        ("backbone + adapter + length term only", "adapter", "wer_length_term_only"),
        ("backbone + adapter + rescorer trained on adapter N-best", "adapter", "wer_rescored"),
        ("backbone + adapter + rescorer trained on backbone N-best", "adapter-base", "wer_rescored"),
        ("backbone + adapter + text-only rescorer", "adapter-text", "wer_rescored"),
        ("oracle of the adapter's N-best", "adapter", "wer_oracle")]
print("| system | test WER | real-speech WER |\n|---|---|---|")
for label, which, key in rows:
    print(f"| {label} | {r(f'eval-test-{which}')[key]:.4f} | {r(f'eval-real-{which}')[key]:.4f} |")
for which in ("base", "adapter", "text", "mixed"):
    t = r(f"train-{which}")
    print(f"\n{which}: {t['rescorer_parameters']} trained parameters ({100 * t['trainable_fraction']:.3f} %), "
          f"{t['wall_seconds']} s, dev WER {t['dev_wer_before']} -> {t['dev_wer_after']}, fusion {t['fusion']}")
c = r("train-base").get("lora_vs_full")
if c:
    print("\n| training | trainable parameters | s/step | peak RSS MiB | peak growth over the loaded model, MiB |\n|---|---|---|---|---|")
    for mode in ("lora", "full"):
        m = c[mode]
        print(f"| {mode} | {m['trainable_parameters']:,} ({100 * m['trainable_fraction']:.3f} %) | "
              f"{m['seconds_per_step']} | {m['peak_rss_mib']} | {m['peak_growth_mib']} |")
EOF

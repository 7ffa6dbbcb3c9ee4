#!/usr/bin/env bash
# The shortcut study behind the classifier's model card: the same training with and without each
# defence, every run holding JSRT out entirely (its no-finding images are then radiographs from an
# unseen source, and its nodule images unseen non-COVID findings), then the shipped recipe with the
# leave-one-source-out table. Each run writes a model and its card into $OUT/NAME/.
# About 5 minutes per run on a 2-core machine (the last one, five trainings, about 20).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-target/shortcut-study}"
cargo build --release --quiet --bin cxr
cxr="target/release/cxr"
run() { # NAME ARGS...
  local name="$1"; shift
  mkdir -p "$OUT/$name"
  "$cxr" train classifier --out "$OUT/$name" "$@" 2> "$OUT/$name/train.log" > "$OUT/$name/record.json"
  echo "$name: $OUT/$name/classifier.md"
}
run no-defences --no-defences --hold-out-source jsrt
run all-defences --hold-out-source jsrt
run no-adversary --adversarial 0 --hold-out-source jsrt
run no-lung-focus --lung-focus 0 --hold-out-source jsrt
run shipped --leave-one-source-out

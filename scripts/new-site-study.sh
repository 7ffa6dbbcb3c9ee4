#!/usr/bin/env bash
# How many reviewed radiographs a new site needs before its images stop being flagged as
# acquired unlike every source (issue 26, item 4). NIH plays the new site: the shipped
# classifier's trust model is fitted without NIH's images (cxr train trust on the manifests less
# NIH's rows), then again with N of NIH's no-finding radiographs reviewed in a watch folder's
# queue (cxr train trust --include-queue, which also chooses the threshold again). Counted each
# time: how many of NIH's pneumonia radiographs, never reviewed, are `unfamiliar`, and how many
# are called COVID-19 at the threshold. About 6 minutes on a 2-core machine.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-target/new-site-study}"
DATA="${CXR_DATA:-$CXR_ROOT/../shared/data}"
cargo build --release --quiet --bin cxr
cxr="$CXR_ROOT/target/release/cxr"
rm -rf "$OUT" && mkdir -p "$OUT"

# The classification manifest without NIH's rows (absolute paths), and NIH's normals.
python3 - "$DATA" "$OUT" <<'PY'
import csv, sys
from pathlib import Path
data, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
rows = list(csv.DictReader(open(data / "cxr/manifest.csv")))
with open(out / "without-nih.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=rows[0].keys())
    writer.writeheader()
    nih = []
    for row in rows:
        path = str(data / "cxr" / row["path"].removeprefix("cxr/"))
        if row["source"].startswith("NIH"):
            nih.append(path)
        else:
            writer.writerow({**row, "path": path})
(out / "nih-normals.txt").write_text("\n".join(nih) + "\n")
PY
manifests=(--manifest "$OUT/without-nih.csv" --manifest "$DATA/jsrt/manifest.csv")

unfamiliar() { # MODELS: the share of NIH pneumonia images flagged unfamiliar
  "$cxr" classify --models "$1" "$DATA"/nih-pneumonia/images/*.png 2>/dev/null | python3 -c '
import json, sys
rows = [json.loads(line) for line in sys.stdin]
n = sum("unfamiliar" in r.get("trust", {}).get("flags", []) for r in rows)
covid = sum(r["label"] == "covid" for r in rows)
threshold = rows[0]["threshold"]
print(f"{n} of {len(rows)} NIH pneumonia radiographs unfamiliar ({100 * n / len(rows):.1f}%), "
      f"{covid} called COVID-19 at threshold {threshold:.3f}")'
}

"$cxr" train trust "${manifests[@]}" --out "$OUT/without-nih" 2>&1 | tail -1
echo "trust fitted without NIH: $(unfamiliar "$OUT/without-nih")"
for n in 10 30 60; do
  watch="$OUT/watch-$n"
  "$cxr" watch --watch-dir "$watch" --once --models "$OUT/without-nih" >/dev/null 2>&1
  head -n "$n" "$OUT/nih-normals.txt" | while read -r file; do
    # A radiograph refused as no chest radiograph is not queued; the study goes on without it.
    "$cxr" queue label --watch-dir "$watch" --models "$OUT/without-nih" "$file" normal \
      >/dev/null 2>&1 || true
  done
  echo "queued: $(ls "$watch/queue" | wc -l) of $n (a refused radiograph is not queued)"
  "$cxr" train trust "${manifests[@]}" --include-queue --watch-dir "$watch" \
    --models "$OUT/without-nih" --out "$OUT/with-$n" 2>&1 | grep -E "decision threshold|familiar:"
  echo "with $n of NIH's normals reviewed: $(unfamiliar "$OUT/with-$n")"
done

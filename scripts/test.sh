#!/usr/bin/env bash
# All tests, on a fresh clone: set up libtorch if needed, then the whole workspace's tests
# (release profile: the same build the demo uses, and libtorch-bound tests run at full speed).
#
# Tests that need something beyond the clone are marked #[ignore = "needs ..."]; after the main
# run, each runs here when what it needs is present, and otherwise the reason is printed.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo test --release --workspace "$@"
[ $# -eq 0 ] || exit 0

# needs DESCRIPTION CHECK... -- CARGO-TEST-ARGS...: runs the ignored tests when CHECK succeeds.
# (--workspace, not -p: the same feature set as the main run, so nothing is rebuilt.)
needs() {
  local what="$1"; shift
  local check=()
  while [ "$1" != "--" ]; do check+=("$1"); shift; done
  shift
  if "${check[@]}" >/dev/null 2>&1; then
    echo "== tests that need $what"
    cargo test --release "$@" -- --ignored
  else
    echo "== skipped: tests that need $what (not here)"
  fi
}

read_only_folder_possible() {
  [ "$(id -u)" != 0 ] && return 0
  local dir; dir="$(mktemp -d)"
  chattr +i "$dir" 2>/dev/null && { ! touch "$dir/probe" 2>/dev/null; local ok=$?; chattr -i "$dir"; rm -rf "$dir"; return $ok; }
  rm -rf "$dir"; return 1
}

needs "the shared data (../shared/data)" test -f "$CXR_ROOT/../shared/data/lungseg/manifest.csv" -- \
  --workspace --test models shipped_segmenter_matches_reference_masks
needs "the shared data (../shared/data)" test -f "$CXR_ROOT/../shared/data/jsrt/manifest.csv" -- \
  --workspace --test shape
needs "torch in .venv" "$VENV/bin/python" -c "import torch" -- \
  --workspace --test models classifier_loads_in_pytorch_to_the_same_logits
needs "the Python reference explainers (scripts/setup-reference.sh)" \
  "$VENV/bin/python" -c "import pytorch_grad_cam, captum" -- --workspace --test python_reference
needs "Chromium (/usr/bin/chromium)" test -x /usr/bin/chromium -- --workspace --test session_export
needs "Chromium (/usr/bin/chromium)" test -x /usr/bin/chromium -- --workspace --test serve
needs "a folder that can be made read-only" read_only_folder_possible -- --workspace --test watch_faults
needs "tmux" command -v tmux -- --workspace --test viewer_quit
needs "Java and pyspark in .venv" bash -c "command -v java && '$VENV/bin/python' -c 'import pyspark'" -- \
  --workspace --test spark
needs "dcmtk and pydicom" bash -c "command -v dcmdump && '$VENV/bin/python' -c 'import pydicom'" -- \
  --workspace --test dicom_results
needs "dcmtk (storescu)" command -v storescu -- --workspace --test dicom_net

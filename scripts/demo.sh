#!/usr/bin/env bash
# The main job on a fresh clone: set up libtorch if needed, build, and classify the sample
# radiographs with the shipped models. Extra arguments replace the sample files.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo build --release --quiet --bin cxr
if [ "$#" -eq 0 ]; then set -- samples/*.png; fi
exec target/release/cxr classify "$@"

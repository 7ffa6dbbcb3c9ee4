#!/usr/bin/env bash
# All tests, on a fresh clone: set up libtorch if needed, then the whole workspace's tests
# (release profile: the same build the demo uses, and libtorch-bound tests run at full speed).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec cargo test --release --workspace "$@"

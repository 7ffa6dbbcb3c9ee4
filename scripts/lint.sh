#!/usr/bin/env bash
# The lints CI runs before the tests: rustfmt's check, then clippy on every target with every
# warning an error (the workspace's pedantic set and clippy.toml). Release profile, like the
# tests, so both share the dependencies' builds. Sets up libtorch like the other scripts
# (clippy builds torch-sys's bindings too).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cargo fmt --all --check
cargo clippy --release --workspace --all-targets -- -D warnings

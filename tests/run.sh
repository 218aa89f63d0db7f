#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine:  tests/run.sh
#
# Full-size variants of the sized-down checks (not run here):
#   loom:   DBHA_LOOM_FULL=1 LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" \
#             cargo test -p dbha-protocol --test loom --release
#   stress: DBHA_STRESS_SECS=60 cargo test --release -p dbha-tests --test stress -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "set-up"
tests/setup.sh

step "format"
cargo fmt --all -- --check

step "build (the C library too: cargo test builds rlibs only)"
cargo build --workspace --all-targets

step "tests"
cargo test --workspace

step "loom model of the seqlock"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p dbha-protocol --test loom --release

step "the seqlock thread test under Miri"
cargo +nightly miri test -p dbha-protocol --lib seqlock

step "benchmarks, quick mode (shows they run; figures are not judged)"
cargo run -q -p dbha-bench -- --quick switch
cargo run -q -p dbha-bench -- --quick footprint
cargo run -q -p dbha-bench -- --quick live

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "all checks passed"

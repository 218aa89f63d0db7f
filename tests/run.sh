#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh machine:  tests/run.sh
#
# Full-size variants of the sized-down checks (not run here):
#   loom:   LOOM_MAX_PREEMPTIONS=3 RUSTFLAGS="--cfg loom" \
#             cargo test -p dbha-protocol --test loom --release
#   stress: DBHA_STRESS_SECS=60 cargo test --release -p dbha-tests --test stress -- --nocapture
#   fuzz:   DBHA_FUZZ_SECS=3600 per target here, or see fuzz/README.md
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Every cargo test summary line is kept, for the total printed at the end.
results=$(mktemp)
trap 'rm -f "$results"' EXIT
counted() { "$@" 2>&1 | tee -a "$results"; return "${PIPESTATUS[0]}"; }

step "set-up"
tests/setup.sh

step "format"
cargo fmt --all -- --check

step "build (the C library too: cargo test builds rlibs only)"
cargo build --workspace --all-targets

step "tests"
counted cargo test --workspace

step "Python reader, Django backends and routers (live PostgreSQL and MariaDB), Django's own suite on the backend"
counted .venv/bin/python -m pytest -q reader/python/tests
# One process per Django project configuration (settings are per process).
counted .venv/bin/python -m pytest -q tests/django_app/test_failover.py
counted .venv/bin/python -m pytest -q tests/django_app/test_replication.py
counted .venv/bin/python -m pytest -q tests/django_app/test_operators.py
counted .venv/bin/python -m pytest -q tests/django_app/test_backend.py
DBHA_TEST_PSYCOPG2=1 counted .venv/bin/python -m pytest -q tests/django_app/test_backend.py
# The MySQL backend on MariaDB, through mysqlclient, then PyMySQL.
counted .venv/bin/python -m pytest -q tests/django_app/test_mysql.py
DBHA_TEST_PYMYSQL=1 counted .venv/bin/python -m pytest -q tests/django_app/test_mysql.py
# Django's own tests of transactions, select_for_update, queries, backends and basic
# on the dbha backend and on Django's (the whole suite: DBHA_DJANGO_SUITE=all).
counted .venv/bin/python -m pytest -q tests/django_app/test_django_suite.py

step "packaging: the Kubernetes example; the .deb built, then installed, used and purged in a throwaway Debian system"
packaging/deb/build.sh
counted .venv/bin/python -m pytest -q tests/packaging

step "the Python wheel: built with libdbha bundled, installed in a fresh virtualenv, tested"
reader/python/build_wheel.sh target/debug/libdbha.so target/wheels
rm -rf target/wheel-venv
python3 -m venv target/wheel-venv
target/wheel-venv/bin/pip install -q --disable-pip-version-check target/wheels/dbha-*.whl "pytest>=7,<9"
# From another directory, so that the source tree is not importable.
(cd /tmp && DBHA_TEST_INSTALLED=1 DBHA_TARGET_DIR="$OLDPWD/target/debug" \
    "$OLDPWD/target/wheel-venv/bin/python" -m pytest -q "$OLDPWD/reader/python/tests/test_reader.py") 2>&1 |
    tee -a "$results"

step "loom model of the seqlock"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    counted cargo test -p dbha-protocol --test loom --release

step "the seqlock thread test under Miri"
counted cargo +nightly miri test -p dbha-protocol --lib seqlock

step "fuzzing: each target for ${DBHA_FUZZ_SECS:=30} s from the committed corpus (fuzz/README.md)"
for target in reader_open probe_reply patroni_reply etcd_message mysql_greeting mysql_answer config_parse; do
    # New inputs go to target/fuzz-corpus; fuzz/corpus is only read.
    mkdir -p "target/fuzz-corpus/$target"
    log="target/fuzz-corpus/$target.log"
    if ! cargo +nightly fuzz run "$target" "target/fuzz-corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$DBHA_FUZZ_SECS" -max_len=32768 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed; its input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    echo "$target: $(grep -E '^Done' "$log")"
done

step "benchmarks, quick mode (shows they run; figures are not judged)"
PATH="$PATH:/usr/sbin" cargo run -q -p dbha-bench -- --quick all

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "all checks passed"
{
    sed -n 's/^test result: [a-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$results"
    # pytest: "14 passed in 0.53s" or "1 failed, 13 passed in ..."
    grep -E '^[0-9]+ (passed|failed)|^[0-9]+ failed, [0-9]+ passed' "$results" |
        sed -E 's/^([0-9]+) failed, ([0-9]+) passed.*/\2 \1/; s/^([0-9]+) passed.*/\1 0/' || true
} | awk '{ p += $1; f += $2 } END { printf "tests: %d passed, %d failed\n", p, f }'

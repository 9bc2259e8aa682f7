#!/usr/bin/env bash
# Runs Switchyard's tests: builds every binary (the black-box tests start the
# real splitter and l7proxy), then runs unit and black-box tests, and closes with
# one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
switchyard_need_packages
echo "==> building the workspace (the first build compiles Pingora: several minutes)"
# The black-box tests inject faults the release binaries do not know.
features="splitter/fault-injection,l7proxy/fault-injection"
cargo build --workspace --bins --features "$features"
echo "==> running the tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast --features "$features" "$@" 2>&1 | tee "$log" || status=$?
# Matched anywhere in a line: a tenant process's log line can land in the
# middle of cargo's "test result:" line and push the counts to the next one.
counts=$(grep -aoE '(ok|FAILED)\. [0-9]+ passed; [0-9]+ failed' "$log" || true)
passed=$(awk '{ sum += $2 } END { print sum + 0 }' <<<"$counts")
failed=$(awk '{ sum += $4 } END { print sum + 0 }' <<<"$counts")
echo
echo "all tests: ${passed} passed, ${failed} failed"
exit "$status"

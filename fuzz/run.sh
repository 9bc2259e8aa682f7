#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 20 s each) and prints how
# many inputs each executed. A crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/: add it to the parser's unit tests as a regression test.
#   fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (once)"
    cargo install cargo-fuzz --locked
fi
# libFuzzer instrumentation uses unstable rustc flags; this toolchain is stable.
export RUSTC_BOOTSTRAP=1
echo "==> building the fuzz targets"
cargo fuzz build --sanitizer none
for target in tls_peek http_peek host_normalize handoff_decode proxy_header; do
    echo "==> fuzzing $target for ${seconds}s"
    # Work on a copy so the committed seed corpus stays small.
    work=$(mktemp -d)
    # The TLS seeds are the recorded ClientHellos the unit tests use, kept once.
    if [ "$target" = tls_peek ]; then
        cp ../splitter/testdata/client_hello/*.bin "$work"/
    else
        cp corpus/"$target"/* "$work"/
    fi
    log=$(mktemp)
    if ! cargo fuzz run --sanitizer none "$target" "$work" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target FAILED: see fuzz/artifacts/$target/"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz $target: ${runs:-?} executions in ${seconds}s, no crash"
    rm -rf "$work" "$log"
done

#!/usr/bin/env bash
# Runs Switchyard's tests: builds every binary (the black-box tests start the
# real splitter and l7proxy), then runs unit and black-box tests.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
switchyard_need_packages
echo "==> building the workspace (the first build compiles Pingora: several minutes)"
cargo build --workspace --bins
echo "==> running the tests"
cargo test --workspace "$@"

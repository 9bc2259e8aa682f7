#!/usr/bin/env bash
# A thousand sites on one host (#16 item 4): one splitter with TENANTS
# on-demand TLS tenants (self-signed, echo route, one process of one thread
# each when running). bench/thousand.py measures the start until READY=1, the
# first TLS request of cold tenants, the host's memory with ACTIVE tenants
# running, and idle_stop. Results: bench/out-thousand/thousand.md.
#   TENANTS=1000 ACTIVE=50 IDLE_STOP=15 bench/thousand.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
TENANTS=${TENANTS:-1000}
ACTIVE=${ACTIVE:-50}
IDLE_STOP=${IDLE_STOP:-15}
OUT=$PWD/bench/out-thousand
PORT=19790
rm -rf "$OUT"; mkdir -p "$OUT/tenants"
switchyard_build_release
switchyard_bench_users

printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/echo.toml"
{
    printf '[splitter]\nruntime_dir = "run"\nthreads = 1\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:%d"\nprotocol = "tls"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES" "$PORT"
    # One user for all the tenants: a benchmark, not a host (check warns).
    for i in $(seq 0 $((TENANTS - 1))); do
        printf '[[tenant]]\nname = "t%d"\nhosts = ["t%d.localhost"]\nconfig = "tenants/echo.toml"\nstart = "on-demand"\nidle_stop = "%ds"\n%s\n' \
            "$i" "$i" "$IDLE_STOP" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"
chmod -R a+rX "$OUT"
python3 bench/thousand.py "$BIN" "$OUT/host.toml" "$PORT" "$TENANTS" "$ACTIVE" "$IDLE_STOP" "$OUT/thousand.md"

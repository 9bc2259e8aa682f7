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
if [ "$(ulimit -Hn)" -ge 1000000 ]; then MAX_UNACKED=${MAX_UNACKED:-64}; MAX_PENDING=${MAX_PENDING:-10000}
else MAX_UNACKED=${MAX_UNACKED:-1}; MAX_PENDING=${MAX_PENDING:-2000}; fi
OUT=$PWD/bench/out-thousand
PORT=19790
rm -rf "$OUT"; mkdir -p "$OUT/tenants"
switchyard_build_release
switchyard_bench_users

printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/echo.toml"
{
    # The splitter refuses to start unless its descriptor budget fits the
    # open-file limit, counting every tenant's processes as if all ran at once
    # (2 × processes + 4 hand-started, each with max_unacked + 1). Where the
    # hard limit cannot be raised (20,000 on the machine this was written
    # on), 1,000 tenants fit only with small queues: MAX_UNACKED and MAX_PENDING.
    printf '[splitter]\nruntime_dir = "run"\nthreads = 1\nmax_unacked = %d\nmax_pending = %d\n' "$MAX_UNACKED" "$MAX_PENDING"
    printf '%s\n%s\n[[listen]]\naddr = "127.0.0.1:%d"\nprotocol = "tls"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES" "$PORT"
    # One user for all the tenants: a benchmark, not a host (check warns).
    for i in $(seq 0 $((TENANTS - 1))); do
        printf '[[tenant]]\nname = "t%d"\nhosts = ["t%d.localhost"]\nconfig = "tenants/echo.toml"\nstart = "on-demand"\nidle_stop = "%ds"\n%s\n' \
            "$i" "$i" "$IDLE_STOP" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"
chmod -R a+rX "$OUT"
python3 bench/thousand.py "$BIN" "$OUT/host.toml" "$PORT" "$TENANTS" "$ACTIVE" "$IDLE_STOP" "$OUT/thousand.md"

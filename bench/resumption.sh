#!/usr/bin/env bash
# TLS session resumption across the processes of one tenant: two tenants of
# two processes each behind one splitter, one with shared session tickets
# (`session_tickets = true`, the default) and one without (`false`: a session
# resumes only on the process that made it). Load: `Connection: close` over
# TLS from a client that resumes like a browser (tests/src/bin/tls_close_load.rs,
# one shared session cache), interleaved rounds.
#
#   bench/resumption.sh                  # 5 rounds × 5 s per cell
#   ROUNDS=7 DURATION=10 bench/resumption.sh
#
# Results: bench/out-resumption/results.tsv and bench/RESULTS-resumption.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
OUT=$PWD/bench/out-resumption
rm -rf "$OUT"; mkdir -p "$OUT/tenants"

switchyard_build_release

printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/shared.toml"
printf '[tls]\nself_signed = true\nsession_tickets = false\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/local.toml"
switchyard_bench_users
{
    printf '[splitter]\nruntime_dir = "run"\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:19790"\nprotocol = "tls"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES"
    for t in shared local; do
        printf '[[tenant]]\nname = "%s"\nhosts = ["%s.localhost"]\nconfig = "tenants/%s.toml"\nprocesses = 2\n%s\n' "$t" "$t" "$t" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"

export RUST_LOG=error
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" &
splitter=$!
trap 'kill $splitter 2>/dev/null || true; wait 2>/dev/null || true' EXIT
pids_of() { switchyard_ready_pids "$BIN" "$OUT/host.toml" "$1"; }
for _ in $(seq 300); do
    [ "$(pids_of shared | wc -w)" -eq 2 ] && [ "$(pids_of local | wc -w)" -eq 2 ] && break
    sleep 0.1
done

printf 'round\tsetup\tconn_s\tresumed\tcpu_us_per_conn\n' > "$OUT/results.tsv"
echo "==> $ROUNDS rounds × ${DURATION}s per cell, 4 client threads, Connection: close over TLS; splitter and tenants on CPU 1, the client on CPU 0"
for round in $(seq "$ROUNDS"); do
    for setup in local shared; do
        pids=$(pids_of "$setup")
        t0=$(switchyard_cpu_ticks $pids)
        out=$(taskset -c 0 "$BIN/tls-close-load" --addr 127.0.0.1:19790 --host "$setup.localhost" --seconds "$DURATION" --threads 4)
        t1=$(switchyard_cpu_ticks $pids)
        switchyard_tls_row "$out" "$DURATION" "$t0" "$t1" "$round" "$setup" >> "$OUT/results.tsv"
        tail -1 "$OUT/results.tsv"
    done
done

python3 - "$OUT/results.tsv" "rounds=$ROUNDS duration=${DURATION}s" > bench/RESULTS-resumption.md <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda setup, key: statistics.median(float(r[key]) for r in rows if r["setup"] == setup)
print("# TLS session resumption across a tenant's processes\n")
print(f"`bench/resumption.sh` ({sys.argv[2]}): one splitter, two tenants of 2 processes each; `Connection: close` over TLS 1.3 from a client sharing one session cache (as a browser), one request per connection; CPU of the tenant's two processes per connection. Medians:\n")
print("| tenant | connections/s | resumed | tenant CPU µs/connection |\n| --- | ---: | ---: | ---: |")
print(f"| `session_tickets = false` (before: resumption on the same process only) | {med('local', 'conn_s'):,.0f} | {med('local', 'resumed'):.1%} | {med('local', 'cpu_us_per_conn'):.0f} |")
print(f"| `session_tickets = true` (shared ticket keys) | {med('shared', 'conn_s'):,.0f} | {med('shared', 'resumed'):.1%} | {med('shared', 'cpu_us_per_conn'):.0f} |")
PY
cat bench/RESULTS-resumption.md

#!/usr/bin/env bash
# Scale run: one splitter with 100 tenants (one process each, echo routes).
# Reports the time until all are ready, the RSS of an idle tenant process, and
# handoff throughput (wrk, Connection: close, plaintext) spread over all 100
# tenants versus aimed at one. Results: bench/out-scale/scale.md.
#   TENANTS=100 DURATION=5 bench/scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
TENANTS=${TENANTS:-100}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
OUT=$PWD/bench/out-scale
rm -rf "$OUT"; mkdir -p "$OUT/tenants"
echo "==> building release binaries"
cargo build --release --bins
BIN=$PWD/target/release

printf '[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/echo.toml"
switchyard_bench_users
{
    # Small queues, so that the descriptor budget of 100 tenants fits an
    # open-file limit of 20,000 (the splitter refuses to start otherwise).
    printf '[splitter]\nruntime_dir = "run"\nthreads = 1\nmax_unacked = 16\nmax_pending = 4000\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:19780"\nprotocol = "http"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES"
    # One user for all the tenants: a benchmark, not a host (check warns).
    for i in $(seq 0 $((TENANTS - 1))); do
        printf '[[tenant]]\nname = "t%d"\nhosts = ["t%d.localhost"]\nconfig = "tenants/echo.toml"\n%s\n' "$i" "$i" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"

export RUST_LOG=error
start=$(date +%s.%N)
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" &
splitter=$!
trap 'kill $splitter 2>/dev/null || true; wait 2>/dev/null || true' EXIT
ready=0
for _ in $(seq 600); do
    ready=$("$BIN/splitter" ctl --config "$OUT/host.toml" status --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for t in d["tenants"] for p in t["processes"] if p["state"]=="ready"))' 2>/dev/null || echo 0)
    [ "$ready" -ge "$TENANTS" ] && break
    sleep 0.1
done
ready_s=$(python3 -c "import time; print(f'{time.time() - $start:.2f}')")
echo "all $ready of $TENANTS tenants ready after ${ready_s}s"
sleep 2
# Tenant processes are children of the splitter's privileged helper.
helpers=$(cat /proc/$splitter/task/*/children)
children=$(for h in $helpers; do cat /proc/$h/task/*/children 2>/dev/null; done)
rss=$(for p in $children; do awk '/VmRSS/ {print $2}' /proc/$p/status; done | python3 -c 'import sys,statistics; v=[int(x) for x in sys.stdin]; print(f"{statistics.median(v)/1024:.1f}")')
splitter_rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$splitter/status)
echo "idle tenant process RSS (median): ${rss} MiB; splitter RSS: ${splitter_rss} MiB"

cat > "$OUT/spread.lua" <<LUA
local i = 0
request = function()
  i = (i + 1) % $TENANTS
  return wrk.format("GET", "/", { ["Host"] = "t" .. i .. ".localhost", ["Connection"] = "close" })
end
LUA
one=(); many=()
for round in $(seq "$ROUNDS"); do
    o=$(taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -H "Host: t0.localhost" -H "Connection: close" http://127.0.0.1:19780/ | awk '/Requests\/sec/ {print $2}')
    m=$(taskset -c 0 wrk -t1 -c64 -d"${DURATION}s" -s "$OUT/spread.lua" http://127.0.0.1:19780/ | awk '/Requests\/sec/ {print $2}')
    echo "round $round: one tenant ${o} req/s, spread over $TENANTS tenants ${m} req/s"
    one+=("$o"); many+=("$m")
done
python3 - "$TENANTS" "$ready_s" "$rss" "$splitter_rss" "${one[*]}" "${many[*]}" > "$OUT/scale.md" <<'PY'
import statistics, sys
tenants, ready_s, rss, splitter_rss, one, many = sys.argv[1:]
one = statistics.median(float(x) for x in one.split()); many = statistics.median(float(x) for x in many.split())
print(f"| tenants | all ready after | idle tenant RSS (median) | splitter RSS | Connection: close req/s, one tenant | spread over all | ratio |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| {tenants} | {ready_s} s | {rss} MiB | {splitter_rss} MiB | {one:,.0f} | {many:,.0f} | {many/one:.2f} |")
PY
cat "$OUT/scale.md"

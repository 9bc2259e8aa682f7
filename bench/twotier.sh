#!/usr/bin/env bash
# Quick side-by-side of the single tier (one `l7proxy --listen`) and the two
# tiers (splitter + l7proxy) for the same tenant, same threads, same upstream,
# interleaved A B A B … so machine drift hits both alike.
#
#   bench/twotier.sh                 # 3 rounds of 5 s per cell
#   ROUNDS=5 DURATION=10 bench/twotier.sh
#
# Proxies run on CPU 1, wrk and the upstream on CPU 0 (taskset). Access logs are
# off (RUST_LOG=warn) in both setups. Results: bench/out/twotier.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
OUT=bench/out
mkdir -p "$OUT/tenants"

echo "==> building release binaries"
cargo build --release --bins

cat > "$OUT/tenants/bench.toml" <<TOML
[tls]
self_signed = true
[[upstream]]
name = "app"
servers = ["127.0.0.1:18201"]
[[route]]
path = "/"
upstream = "app"
TOML
cat > "$OUT/host.toml" <<TOML
[splitter]
runtime_dir = "run"
threads = 1
[[listen]]
addr = "127.0.0.1:18443"
protocol = "tls"
[[listen]]
addr = "127.0.0.1:18080"
protocol = "http"
[[tenant]]
name = "bench"
hosts = ["localhost"]
config = "tenants/bench.toml"
processes = 1
threads = 1
TOML

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
export RUST_LOG=warn
taskset -c 0 ./target/release/echo-upstream --listen 127.0.0.1:18201 --body-size 100 2>/dev/null & pids+=($!)
taskset -c 1 ./target/release/splitter --config "$OUT/host.toml" & pids+=($!)
splitter_pid=$!
taskset -c 1 ./target/release/l7proxy --tenant bench --config "$OUT/host.toml" --listen 127.0.0.1:18543,tls & pids+=($!)
single_tls_pid=$!
taskset -c 1 ./target/release/l7proxy --tenant bench --config "$OUT/host.toml" --listen 127.0.0.1:18180 & pids+=($!)
single_http_pid=$!
for url in https://localhost:18443/ http://localhost:18080/ https://localhost:18543/ http://localhost:18180/; do
    for _ in $(seq 100); do curl -skf -o /dev/null "$url" && break; sleep 0.1; done
done

# cpu_ticks PID...: user+system ticks of the processes and their children.
cpu_ticks() {
    local total=0 pid
    for pid in "$@" $(for p in "$@"; do cat /proc/$p/task/*/children 2>/dev/null; done); do
        [ -r /proc/$pid/stat ] || continue
        total=$((total + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' /proc/$pid/stat)))
    done
    echo $total
}

results="$OUT/twotier.raw"
: > "$results"
run() { # setup scheme url conn_header pids...
    local setup=$1 mode=$2 url=$3 header=$4; shift 4
    local t0 t1 out rps errors
    t0=$(cpu_ticks "$@")
    if [ -n "$header" ]; then
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "$header" "$url" 2>&1)
    else
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$url" 2>&1)
    fi
    t1=$(cpu_ticks "$@")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    local reqs; reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    local us_per_req; us_per_req=$(awk -v t=$((t1 - t0)) -v r="$reqs" 'BEGIN { if (r > 0) printf "%.1f", t * 10000 / r; else print "nan" }')
    echo "$setup $mode $rps $us_per_req ${errors:-none}" | tee -a "$results"
}

echo "==> $ROUNDS rounds × ${DURATION}s, wrk -t1 -c$CONNS; proxies on CPU 1, wrk + upstream on CPU 0"
for round in $(seq "$ROUNDS"); do
    echo "-- round $round"
    run single  tls-keepalive  https://localhost:18543/ "" $single_tls_pid
    run twotier tls-keepalive  https://localhost:18443/ "" $splitter_pid
    run single  http-keepalive http://localhost:18180/  "" $single_http_pid
    run twotier http-keepalive http://localhost:18080/  "" $splitter_pid
    run single  tls-close      https://localhost:18543/ "Connection: close" $single_tls_pid
    run twotier tls-close      https://localhost:18443/ "Connection: close" $splitter_pid
    run single  http-close     http://localhost:18180/  "Connection: close" $single_http_pid
    run twotier http-close     http://localhost:18080/  "Connection: close" $splitter_pid
done

python3 - "$results" "$OUT/twotier.md" "$ROUNDS" "$DURATION" "$CONNS" <<'PY'
import statistics, sys
raw, out, rounds, duration, conns = sys.argv[1:]
cells = {}
errors = {}
for line in open(raw):
    setup, mode, rps, cpu, *err = line.split()
    cells.setdefault((setup, mode), []).append((float(rps), float(cpu)))
    if err != ["none"]:
        errors.setdefault((setup, mode), []).append(" ".join(err))
lines = [f"wrk -t1 -c{conns}, {rounds} rounds × {duration}s, medians; proxies pinned to CPU 1, wrk + upstream (100-byte body) to CPU 0.", "",
         "| scenario | single req/s | two-tier req/s | two-tier ÷ single | single CPU µs/req | two-tier CPU µs/req | errors |",
         "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
for mode in ["tls-keepalive", "http-keepalive", "tls-close", "http-close"]:
    s = cells.get(("single", mode)); t = cells.get(("twotier", mode))
    if not s or not t:
        continue
    srps = statistics.median(r for r, _ in s); trps = statistics.median(r for r, _ in t)
    scpu = statistics.median(c for _, c in s); tcpu = statistics.median(c for _, c in t)
    err = "; ".join(errors.get(("single", mode), []) + errors.get(("twotier", mode), [])) or "none"
    lines.append(f"| {mode} | {srps:,.0f} | {trps:,.0f} | {trps/srps:.2f} | {scpu:.1f} | {tcpu:.1f} | {err} |")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY

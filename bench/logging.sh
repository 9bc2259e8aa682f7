#!/usr/bin/env bash
# What request metrics and an access log cost: one tenant process with both on
# (metrics counted, one JSON access line per request written to a file)
# against the same process with both off, side by side in one interleaved run,
# plaintext keep-alive, CPU per request of the proxy process.
#
#   bench/logging.sh                 # 5 rounds × 5 s per cell
#   ROUNDS=7 DURATION=10 bench/logging.sh
#
# Results: bench/out-logging/results.tsv (raw) and bench/RESULTS-logging.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
OUT=$PWD/bench/out-logging
rm -rf "$OUT"; mkdir -p "$OUT/tenants" "$OUT/run/tenants/on" "$OUT/run/tenants/off"

switchyard_build_release

for setup in on off; do
    case $setup in
        on) log='[log]
access = "access.log"
metrics = true' ;;
        off) log='[log]
metrics = false' ;;
    esac
    cat > "$OUT/tenants/$setup.toml" <<TOML
$log
[[upstream]]
name = "app"
servers = ["127.0.0.1:19001"]
[[route]]
path = "/"
upstream = "app"
TOML
done
cat > "$OUT/host.toml" <<TOML
[splitter]
runtime_dir = "run"
[[listen]]
addr = "127.0.0.1:1"
protocol = "http"
[[tenant]]
name = "on"
hosts = ["on.localhost"]
config = "tenants/on.toml"
[[tenant]]
name = "off"
hosts = ["off.localhost"]
config = "tenants/off.toml"
TOML

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
# Access lines go to the file of the "on" tenant only (stderr lines are off).
export RUST_LOG=error
export MIMALLOC_ARENA_EAGER_COMMIT=0
taskset -c 0 "$BIN/echo-upstream" --listen 127.0.0.1:19001 --body-size 100 2>/dev/null & pids+=($!)
taskset -c 1 "$BIN/l7proxy" --tenant on --config "$OUT/host.toml" --listen 127.0.0.1:19201 & pids+=($!); on_pid=$!
taskset -c 1 "$BIN/l7proxy" --tenant off --config "$OUT/host.toml" --listen 127.0.0.1:19202 & pids+=($!); off_pid=$!
for ready in on:19201 off:19202; do
    for _ in $(seq 100); do curl -sf -o /dev/null -H "Host: ${ready%:*}.localhost" "http://127.0.0.1:${ready#*:}/" && break; sleep 0.1; done
done

printf 'round\tsetup\treq_s\tcpu_us_per_req\n' > "$OUT/results.tsv"
echo "==> $ROUNDS rounds × ${DURATION}s per cell, wrk -t1 -c$CONNS, plaintext keep-alive; proxies on CPU 1"
for round in $(seq "$ROUNDS"); do
    for setup in off on; do
        case $setup in on) pid=$on_pid; port=19201 ;; off) pid=$off_pid; port=19202 ;; esac
        t0=$(switchyard_cpu_ticks "$pid")
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: $setup.localhost" "http://127.0.0.1:$port/" 2>&1)
        if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "error: the $setup proxy answered errors (see above)" >&2; exit 1; fi
        t1=$(switchyard_cpu_ticks "$pid")
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
        cpu=$(python3 -c "print(f'{($t1 - $t0) * 10000 / $reqs:.2f}')")
        printf '%s\t%s\t%s\t%s\n' "$round" "$setup" "$rps" "$cpu" | tee -a "$OUT/results.tsv"
    done
done
lines=$(wc -l < "$OUT/run/tenants/on/access.log")
python3 - "$OUT/results.tsv" "$lines" "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS" > bench/RESULTS-logging.md <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda setup, key: statistics.median(float(r[key]) for r in rows if r["setup"] == setup)
on, off = med("on", "cpu_us_per_req"), med("off", "cpu_us_per_req")
print("# Request metrics and access log: cost per request\n")
print(f"`bench/logging.sh` ({sys.argv[3]}), one `l7proxy --listen` per setup, plaintext keep-alive, proxied to an upstream (wrk sends the tenant's `Host`; the run stops on any non-2xx answer), medians:\n")
print("| setup | req/s | CPU µs/req |\n| --- | ---: | ---: |")
print(f"| metrics + access log to a file | {med('on', 'req_s'):,.0f} | {on:.2f} |")
print(f"| both off | {med('off', 'req_s'):,.0f} | {off:.2f} |")
rounds = sorted({r["round"] for r in rows})
cpu = {(r["round"], r["setup"]): float(r["cpu_us_per_req"]) for r in rows}
paired = statistics.median(cpu[(n, "on")] / cpu[(n, "off")] for n in rounds)
print(f"\nCPU per request, on ÷ off: **{on / off:.3f}** (target ≤ 1.05); the median of the {len(rounds)} per-round ratios (each round runs both, back to back): {paired:.3f}. Access lines written by the \"on\" process: {int(sys.argv[2]):,}.")
PY
cat bench/RESULTS-logging.md

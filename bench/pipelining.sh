#!/usr/bin/env bash
# HTTP/1.1 pipelining: wrk with 16 requests in flight per connection
# (pipelined, answered in order) against the usual one at a time, plaintext
# keep-alive, through the splitter (two-tier) and to one `l7proxy --listen`
# (single), interleaved rounds.
#
#   bench/pipelining.sh                  # 5 rounds × 5 s per cell
#   ROUNDS=7 DURATION=10 bench/pipelining.sh
#
# Results: bench/out-pipelining/results.tsv and bench/RESULTS-pipelining.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
DEPTH=${DEPTH:-16}
OUT=$PWD/bench/out-pipelining
rm -rf "$OUT"; mkdir -p "$OUT/tenants"

switchyard_build_release

printf '[log]\nmetrics = false\n[[upstream]]\nname = "app"\nservers = ["127.0.0.1:19401"]\n[[route]]\npath = "/"\nupstream = "app"\n' > "$OUT/tenants/p.toml"
switchyard_bench_users
printf '[splitter]\nruntime_dir = "run"\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:19402"\nprotocol = "http"\n[[tenant]]\nname = "p"\nhosts = ["p.localhost"]\nconfig = "tenants/p.toml"\n%s\n' \
    "$SY_FRONT_LINE" "$SY_LIMIT_LINES" "$SY_TENANT_LINE" > "$OUT/host.toml"
cat > "$OUT/pipeline.lua" <<LUA
-- $DEPTH requests written at once on each connection; wrk counts each answer.
init = function(args)
  local r = {}
  for i = 1, $DEPTH do
    r[i] = wrk.format("GET", "/", { ["Host"] = "p.localhost" })
  end
  req = table.concat(r)
end
request = function() return req end
LUA

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
export RUST_LOG=error
taskset -c 0 "$BIN/echo-upstream" --listen 127.0.0.1:19401 --body-size 100 2>/dev/null & pids+=($!)
taskset -c 1 "$BIN/l7proxy" --tenant p --config "$OUT/host.toml" --listen 127.0.0.1:19403 & pids+=($!)
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" & pids+=($!)
for port in 19402 19403; do
    for _ in $(seq 200); do curl -sf -o /dev/null -H "Host: p.localhost" "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

printf 'round\tsetup\tmode\treq_s\n' > "$OUT/results.tsv"
echo "==> $ROUNDS rounds × ${DURATION}s per cell, wrk -t1 -c$CONNS, depth 1 and $DEPTH; proxies on CPU 1"
for round in $(seq "$ROUNDS"); do
    for setup in two-tier single; do
        case $setup in two-tier) port=19402 ;; single) port=19403 ;; esac
        for mode in sequential pipelined; do
            case $mode in
                sequential) script=() ;;
                pipelined) script=(-s "$OUT/pipeline.lua") ;;
            esac
            out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Host: p.localhost" "${script[@]}" "http://127.0.0.1:$port/" 2>&1)
            if echo "$out" | grep -qE "Non-2xx|Socket errors"; then echo "$out" >&2; echo "error: $setup $mode had errors (see above)" >&2; exit 1; fi
            rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
            printf '%s\t%s\t%s\t%s\n' "$round" "$setup" "$mode" "$rps" | tee -a "$OUT/results.tsv"
        done
    done
done

python3 - "$OUT/results.tsv" "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS depth=$DEPTH" > bench/RESULTS-pipelining.md <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda setup, mode: statistics.median(float(r["req_s"]) for r in rows if r["setup"] == setup and r["mode"] == mode)
print("# HTTP/1.1 pipelining\n")
print(f"`bench/pipelining.sh` ({sys.argv[2]}): plaintext keep-alive to an upstream, wrk with one request at a time per connection (sequential) or the script's requests written at once (pipelined, answered in order). Medians of req/s:\n")
print("| setup | sequential | pipelined | pipelined ÷ sequential |\n| --- | ---: | ---: | ---: |")
for setup in ("two-tier", "single"):
    s, p = med(setup, "sequential"), med(setup, "pipelined")
    print(f"| {setup} | {s:,.0f} | {p:,.0f} | {p / s:.2f} |")
PY
cat bench/RESULTS-pipelining.md

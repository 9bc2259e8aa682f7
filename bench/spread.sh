#!/usr/bin/env bash
# The spread case with its honest anchor (#16 item 5): TLS `Connection: close`
# load spread over SITES sites, against the same load aimed at one site, for
#   - Switchyard: one splitter, one l7proxy process (one thread) per site;
#   - the anchor: what "one process per site" costs without Switchyard,
#     one nginx instance per site (one worker) behind an nginx `stream`
#     front that routes by `ssl_preread`.
# The ratio spread ÷ one says what having many sites costs each setup. The
# client (tls-close-load, resuming sessions as browsers do, 4 connections at a
# time) runs on CPU 0, every server process on CPU 1. Interleaved rounds.
#   SITES=100 ROUNDS=3 DURATION=5 bench/spread.sh
# Results: bench/out-spread/results.tsv and bench/out-spread/spread.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
switchyard_need_nginx
SITES=${SITES:-100}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
OUT=$PWD/bench/out-spread
SY_PORT=19796
NG_PORT=19797
rm -rf "$OUT"; mkdir -p "$OUT/tenants" "$OUT/nginx"
switchyard_build_release
switchyard_bench_users

echo "==> writing $SITES Switchyard tenants and $SITES nginx sites"
printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/echo.toml"
{
    # Small queues, so that the descriptor budget of 100 tenants fits an
    # open-file limit of 20,000 (the splitter refuses to start otherwise).
    printf '[splitter]\nruntime_dir = "run"\nmax_unacked = 16\nmax_pending = 4000\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:%d"\nprotocol = "tls"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES" "$SY_PORT"
    # One user for all the tenants: a benchmark, not a host (check warns).
    for i in $(seq 0 $((SITES - 1))); do
        printf '[[tenant]]\nname = "t%d"\nhosts = ["t%d.localhost"]\nconfig = "tenants/echo.toml"\n%s\n' "$i" "$i" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"
chmod -R a+rX "$OUT"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:*.localhost" -keyout "$OUT/nginx/key.pem" -out "$OUT/nginx/cert.pem" 2>/dev/null
for i in $(seq 0 $((SITES - 1))); do
    cat > "$OUT/nginx/site$i.conf" <<NGINX
worker_processes 1;
pid $OUT/nginx/site$i.pid;
error_log $OUT/nginx/site$i.log error;
events { worker_connections 1024; }
http {
    access_log off;
    # nginx 1.22 (Debian 12) offers only up to TLS 1.2 unless told.
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen unix:$OUT/nginx/site$i.sock ssl; server_name t$i.localhost;
        ssl_certificate $OUT/nginx/cert.pem; ssl_certificate_key $OUT/nginx/key.pem;
        location / { return 200 "site $i\n"; }
    }
}
NGINX
done
{
    printf 'load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 1;\n'
    printf 'pid %s/nginx/front.pid;\nerror_log %s/nginx/front.log error;\nevents { worker_connections 4096; }\n' "$OUT" "$OUT"
    printf 'stream {\n    map $ssl_preread_server_name $site {\n'
    for i in $(seq 0 $((SITES - 1))); do
        printf '        t%d.localhost unix:%s/nginx/site%d.sock;\n' "$i" "$OUT" "$i"
    done
    printf '        default unix:%s/nginx/site0.sock;\n    }\n' "$OUT"
    printf '    server { listen 127.0.0.1:%d; ssl_preread on; proxy_pass $site; }\n}\n' "$NG_PORT"
} > "$OUT/nginx/front.conf"

stop_all() {
    [ -n "${splitter:-}" ] && kill "$splitter" 2>/dev/null || true
    for pid in "$OUT"/nginx/*.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop_all EXIT

echo "==> starting the splitter with $SITES tenants and $((SITES + 1)) nginx instances"
export RUST_LOG=error
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" &
splitter=$!
for i in $(seq 0 $((SITES - 1))); do
    taskset -c 1 nginx -c "$OUT/nginx/site$i.conf" -p "$OUT/nginx"
done
taskset -c 1 nginx -c "$OUT/nginx/front.conf" -p "$OUT/nginx"
# Ready when every site answers through each front (one second of load
# visits each site several times).
for port in "$SY_PORT" "$NG_PORT"; do
    for _ in $(seq 60); do
        kill -0 "$splitter" 2>/dev/null || { echo "the splitter exited; see its error above" >&2; exit 1; }
        out=$("$BIN/tls-close-load" --addr "127.0.0.1:$port" --host "t{}.localhost" --spread "$SITES" --seconds 1 --threads 1 2>/dev/null || true)
        case "$out" in *'"errors":0'*) break ;; esac
        sleep 0.5
    done
done

load() { # ADDR HOST SPREAD -> connections per second
    local out
    out=$(taskset -c 0 "$BIN/tls-close-load" --addr "$1" --host "$2" --spread "$3" --seconds "$DURATION" --threads 4)
    switchyard_tls_row "$out" "$DURATION" 0 0 | cut -f1
}
printf 'round\tsetup\tsites\tconn_s\n' > "$OUT/results.tsv"
for round in $(seq "$ROUNDS"); do
    for setup in switchyard nginx-anchor; do
        case $setup in
            switchyard) addr="127.0.0.1:$SY_PORT" ;;
            nginx-anchor) addr="127.0.0.1:$NG_PORT" ;;
        esac
        one=$(load "$addr" "t0.localhost" 1)
        many=$(load "$addr" "t{}.localhost" "$SITES")
        printf '%s\t%s\t1\t%s\n%s\t%s\t%s\t%s\n' "$round" "$setup" "$one" "$round" "$setup" "$SITES" "$many" >> "$OUT/results.tsv"
        echo "round $round: $setup: one site $one conn/s, spread over $SITES sites $many conn/s"
    done
done
python3 - "$OUT/results.tsv" "$SITES" > "$OUT/spread.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
sites = sys.argv[2]
print(f"| setup | one site, conn/s | spread over {sites} sites, conn/s | spread ÷ one |")
print("| --- | ---: | ---: | ---: |")
for setup in ("switchyard", "nginx-anchor"):
    one = statistics.median(float(r["conn_s"]) for r in rows if r["setup"] == setup and r["sites"] == "1")
    many = statistics.median(float(r["conn_s"]) for r in rows if r["setup"] == setup and r["sites"] == sites)
    print(f"| {setup} | {one:,.0f} | {many:,.0f} | {many / one:.2f} |")
PY
cat "$OUT/spread.md"

#!/usr/bin/env bash
# Switchyard's benchmark: one command, one interleaved run, all setups against
# the same upstream, so machine drift hits everyone alike.
#
#   bench/run.sh                     # Switchyard (direct, single, two-tier) only
#   PEERS=1 bench/run.sh             # also nginx and HAProxy setups (installs them) and the bare Pingora floor
#   ROUNDS=5 DURATION=10 PEERS=1 bench/run.sh
#   PEERS=1 PEER_HEADERS=1 bench/run.sh   # nginx and HAProxy add the headers Switchyard adds
#
# Setups: direct (wrk → upstream), single (one `l7proxy --listen`), two-tier
# (splitter → l7proxy), nginx-2tier (stream + ssl_preread → http over a Unix
# socket), haproxy-2tier (mode tcp + req.ssl_sni → mode http over a Unix socket),
# nginx-single / haproxy-single (the proxy itself on the port: what a user
# who needs no isolation between sites would compare with), and pingora-plain
# (l7proxy/examples/pingora_plain.rs: the same Pingora, allocator and server
# settings with none of Switchyard's request work, the floor under the l7proxy).
# Modes: keep-alive and Connection: close, TLS and plaintext. Every proxy gets one
# worker thread; proxies run on CPU 1, wrk and the upstream on CPU 0 (taskset).
# Results: bench/out/results.tsv (raw), bench/RESULTS.md (medians and ratios),
# bench/chart.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-64}
PEERS=${PEERS:-0}
# Switchyard adds X-Forwarded-For, Forwarded, X-Real-IP, X-Forwarded-Proto,
# X-Forwarded-Host, Via, X-Request-Id and traceparent to every upstream
# request and Via to every response; the peers' plain configs add none.
# PEER_HEADERS=1 has them add the same (their idioms for each).
PEER_HEADERS=${PEER_HEADERS:-0}
OUT=$PWD/bench/out
rm -rf "$OUT"; mkdir -p "$OUT/tenants" "$OUT/run"

if [ "$PEERS" = 1 ]; then
    switchyard_need_nginx
fi

echo "==> building release binaries"
cargo build --release --bins
if [ "$PEERS" = 1 ]; then
    echo "==> building the bare Pingora proxy (l7proxy/examples/pingora_plain.rs)"
    cargo build --release -p l7proxy --example pingora_plain
fi
BIN=$PWD/target/release

cat > "$OUT/tenants/bench.toml" <<TOML
[tls]
self_signed = true
[[upstream]]
name = "app"
servers = ["127.0.0.1:19001"]
[[route]]
path = "/"
upstream = "app"
TOML
switchyard_bench_users
cat > "$OUT/host.toml" <<TOML
[splitter]
runtime_dir = "run"
threads = 1
$SY_FRONT_LINE
$SY_LIMIT_LINES
[[listen]]
addr = "127.0.0.1:19443"
protocol = "tls"
[[listen]]
addr = "127.0.0.1:19280"
protocol = "http"
[[tenant]]
name = "bench"
hosts = ["localhost"]
config = "tenants/bench.toml"
processes = 1
threads = 1
$SY_TENANT_LINE
TOML

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$OUT/nginx.pid" ] && kill "$(cat "$OUT/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
export RUST_LOG=error   # access logs off for every Switchyard process
# What the splitter gives its tenant processes; the standalone l7proxy gets the same.
export MIMALLOC_ARENA_EAGER_COMMIT=0

taskset -c 0 "$BIN/echo-upstream" --listen 127.0.0.1:19001 --body-size 100 2>/dev/null & pids+=($!)
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" & pids+=($!); twotier_pid=$!
taskset -c 1 "$BIN/l7proxy" --tenant bench --config "$OUT/host.toml" --listen 127.0.0.1:19143,tls & pids+=($!); single_tls_pid=$!
taskset -c 1 "$BIN/l7proxy" --tenant bench --config "$OUT/host.toml" --listen 127.0.0.1:19101 & pids+=($!); single_http_pid=$!

setups="direct single two-tier"
if [ "$PEERS" = 1 ]; then
    ngx_location='proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";'
    haproxy_headers=""
    if [ "$PEER_HEADERS" = 1 ]; then
        ngx_location="$ngx_location"' proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$host\"";
            proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Via "1.1 nginx"; proxy_set_header X-Request-Id $request_id;
            proxy_set_header traceparent "00-$request_id-00f067aa0ba902b7-01"; add_header Via "1.1 nginx";'
        haproxy_headers='    option forwardfor
    http-request set-header X-Real-IP %[src]
    http-request set-header Forwarded "for=%[src];proto=https;host=\"%[req.hdr(host)]\"" if { ssl_fc }
    http-request set-header Forwarded "for=%[src];proto=http;host=\"%[req.hdr(host)]\"" if !{ ssl_fc }
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Via "1.1 haproxy"
    http-request set-header X-Request-Id %[uuid]
    http-request set-header traceparent 00-%[uuid,regsub(-,,g)]-%[rand,hex]-01
    http-response add-header Via "1.1 haproxy"'
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
    cat "$OUT/cert.pem" "$OUT/key.pem" > "$OUT/haproxy.pem"
    cat > "$OUT/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log error;
events { worker_connections 4096; }
stream {
    map \$ssl_preread_server_name \$tenant { localhost unix:$OUT/nginx-tls.sock; default unix:$OUT/nginx-tls.sock; }
    server { listen 127.0.0.1:19543; ssl_preread on; proxy_pass \$tenant; }
    server { listen 127.0.0.1:19580; proxy_pass unix:$OUT/nginx-plain.sock; }
}
http {
    access_log off;
    # nginx 1.22 (Debian 12) offers only up to TLS 1.2 unless told: without
    # this line every nginx row measured TLS 1.2 session resumption (no key
    # exchange) against TLS 1.3 everywhere else.
    ssl_protocols TLSv1.2 TLSv1.3;
    upstream app { server 127.0.0.1:19001; keepalive 64; }
    server {
        listen unix:$OUT/nginx-tls.sock ssl; server_name localhost;
        ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem;
        location / { $ngx_location }
    }
    server {
        listen unix:$OUT/nginx-plain.sock; server_name localhost;
        location / { $ngx_location }
    }
    # Single tier: nginx itself on the port, no isolation between sites.
    server {
        listen 127.0.0.1:19743 ssl; server_name localhost;
        ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem;
        location / { $ngx_location }
    }
    server {
        listen 127.0.0.1:19780; server_name localhost;
        location / { $ngx_location }
    }
}
NGINX
    taskset -c 1 nginx -c "$OUT/nginx.conf" -p "$OUT"
    cat > "$OUT/haproxy.cfg" <<HAPROXY
global
    nbthread 1
    maxconn 8192
defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend tls_front
    mode tcp
    bind 127.0.0.1:19643
    tcp-request inspect-delay 5s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend tls_tenant if { req.ssl_sni -i localhost }
    default_backend tls_tenant
backend tls_tenant
    mode tcp
    server t unix@$OUT/haproxy-tls.sock
frontend plain_front
    mode tcp
    bind 127.0.0.1:19680
    default_backend plain_tenant
backend plain_tenant
    mode tcp
    server t unix@$OUT/haproxy-plain.sock
frontend tenant_tls
    mode http
    bind unix@$OUT/haproxy-tls.sock ssl crt $OUT/haproxy.pem
    default_backend app
frontend tenant_plain
    mode http
    bind unix@$OUT/haproxy-plain.sock
    default_backend app
# Single tier: HAProxy itself on the port, no isolation between sites.
frontend single_tls
    mode http
    bind 127.0.0.1:19843 ssl crt $OUT/haproxy.pem
    default_backend app
frontend single_plain
    mode http
    bind 127.0.0.1:19880
    default_backend app
backend app
    mode http
    http-reuse always
$haproxy_headers
    server up 127.0.0.1:19001
HAPROXY
    taskset -c 1 haproxy -f "$OUT/haproxy.cfg" -q & pids+=($!); haproxy_pid=$!
    taskset -c 1 "$BIN/examples/pingora_plain" 127.0.0.1:19001 127.0.0.1:19901 127.0.0.1:19943 \
        "$OUT/cert.pem" "$OUT/key.pem" & pids+=($!); plain_pid=$!
    setups="$setups nginx-2tier haproxy-2tier nginx-single haproxy-single pingora-plain"
fi

url() { # setup mode
    local scheme=http port
    case "$2" in tls-*) scheme=https ;; esac
    case "$1/$scheme" in
        direct/*) scheme=http; port=19001 ;;
        single/https) port=19143 ;; single/http) port=19101 ;;
        two-tier/https) port=19443 ;; two-tier/http) port=19280 ;;
        nginx-2tier/https) port=19543 ;; nginx-2tier/http) port=19580 ;;
        haproxy-2tier/https) port=19643 ;; haproxy-2tier/http) port=19680 ;;
        nginx-single/https) port=19743 ;; nginx-single/http) port=19780 ;;
        haproxy-single/https) port=19843 ;; haproxy-single/http) port=19880 ;;
        pingora-plain/https) port=19943 ;; pingora-plain/http) port=19901 ;;
    esac
    echo "$scheme://localhost:$port/"
}
# A process and all its descendants (the splitter's tenants are its helper's
# children: the privileged helper spawns them).
descendants() { local p=$1 c; echo "$p"; for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do descendants "$c"; done; }
proxy_pids() { # setup mode
    case "$1" in
        direct) echo "" ;;
        single) case "$2" in tls-*) echo "$single_tls_pid" ;; *) echo "$single_http_pid" ;; esac ;;
        two-tier) descendants "$twotier_pid" | tr '\n' ' ' ;;
        nginx-*) local m; m=$(cat "$OUT/nginx.pid"); echo "$m $(cat /proc/$m/task/*/children 2>/dev/null)" ;;
        haproxy-*) echo "$haproxy_pid" ;;
        pingora-plain) echo "$plain_pid" ;;
    esac
}
ticks() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' /proc/$p/stat))); done; echo $t; }
hwm() { local k=0 p; for p in "$@"; do [ -r /proc/$p/status ] && k=$((k + $(awk '/VmHWM/ {print $2}' /proc/$p/status))); done; echo $k; }

echo "==> waiting for every setup to answer"
for setup in $setups; do
    for mode in tls-keepalive http-keepalive; do
        u=$(url "$setup" "$mode")
        for _ in $(seq 100); do curl -skf -o /dev/null "$u" && break; sleep 0.1; done
        curl -skf -o /dev/null "$u" || { echo "$setup ($u) does not answer"; exit 1; }
    done
    # Every TLS setup must speak the same protocol version to wrk's OpenSSL,
    # or the Connection: close rows compare different handshakes.
    [ "$setup" = direct ] && continue
    port=$(url "$setup" tls-close | sed 's#.*:\([0-9]*\)/$#\1#')
    version=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null \
        | awk -F', ' '/^(New|Reused), / { print $2; exit }')
    [ "$version" = TLSv1.3 ] || { echo "$setup negotiates ${version:-nothing} with OpenSSL, not TLSv1.3: fix its configuration" >&2; exit 1; }
done
echo "==> every TLS setup negotiates TLSv1.3"

modes="tls-keepalive http-keepalive tls-close http-close"
printf 'round\tsetup\tmode\treq_s\tp50_ms\tp99_ms\tcpu_us_per_req\tfront_cpu_us_per_req\trss_kib\terrors\n' > "$OUT/results.tsv"
echo "==> $ROUNDS rounds × ${DURATION}s per cell, wrk -t1 -c$CONNS --latency; proxies on CPU 1, wrk + upstream on CPU 0"
for round in $(seq "$ROUNDS"); do
    for mode in $modes; do
        for setup in $setups; do
            [ "$setup" = direct ] && case "$mode" in tls-*) continue ;; esac
            u=$(url "$setup" "$mode"); ps=$(proxy_pids "$setup" "$mode")
            header=(); case "$mode" in *-close) header=(-H "Connection: close") ;; esac
            front=$(echo $ps | awk '{print $1}')   # the splitter, for two-tier
            t0=$(ticks $ps); f0=$(ticks $front)
            out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${header[@]}" "$u" 2>&1 || true)
            t1=$(ticks $ps); f1=$(ticks $front)
            python3 - "$round" "$setup" "$mode" "$((t1 - t0))" "$(hwm $ps)" "$((f1 - f0))" <<PY >> "$OUT/results.tsv"
import re, sys
out = """$out"""
rnd, setup, mode, ticks, rss, front_ticks = sys.argv[1:]
def lat(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)" % p, out, re.M)
    if not m: return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0
reqs = int(re.search(r"(\d+) requests in", out).group(1)) if "requests in" in out else 0
errs = re.findall(r"(Non-2xx or 3xx responses: \d+|Socket errors: [^\n]+)", out)
cpu = (int(ticks) * 10000 / reqs) if reqs and setup != "direct" else float("nan")
front = (int(front_ticks) * 10000 / reqs) if reqs and setup == "two-tier" else float("nan")
print(f"{rnd}\t{setup}\t{mode}\t{rps:.0f}\t{lat(50):.3f}\t{lat(99):.3f}\t{cpu:.1f}\t{front:.1f}\t{rss}\t{'; '.join(errs) or 'none'}")
PY
            tail -1 "$OUT/results.tsv"
        done
    done
done

python3 bench/summarize.py "$OUT/results.tsv" bench/RESULTS-run.md bench/chart.svg \
    "rounds=$ROUNDS duration=${DURATION}s connections=$CONNS peer_headers=$PEER_HEADERS"
echo "==> wrote bench/RESULTS-run.md and bench/chart.svg (raw: bench/out/results.tsv)"

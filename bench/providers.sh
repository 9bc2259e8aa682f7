#!/usr/bin/env bash
# The crypto provider's share of a TLS handshake: the same tenant (ECDSA
# P-256 self-signed, X25519, TLS 1.3, `Connection: close`, one request per
# connection) served by an l7proxy built with ring (the default) and one
# built with aws-lc-rs (`--features aws-lc`), each behind its own splitter,
# and nginx terminating TLS itself (one worker, OpenSSL) as the reference.
# CPU of the process that terminates TLS, per connection; full handshakes
# and resumed ones. Interleaved rounds. Splitters, tenants and nginx on CPU
# 1, the client on CPU 0.
#
#   bench/providers.sh                   # 3 rounds × 4 s per cell
#   ROUNDS=5 DURATION=5 bench/providers.sh
#
# Results: bench/out-providers/results.tsv and bench/RESULTS-providers.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
switchyard_need_nginx
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
OUT=$PWD/bench/out-providers
rm -rf "$OUT"; mkdir -p "$OUT/ring" "$OUT/aws-lc" "$OUT/tenants" "$OUT/nginx"
switchyard_build_release
cp "$BIN/l7proxy" "$OUT/ring/l7proxy"
echo "==> building the l7proxy again with aws-lc-rs (cargo build --release -p l7proxy --features aws-lc)"
cargo build --release -p l7proxy --features aws-lc
cp "$BIN/l7proxy" "$OUT/aws-lc/l7proxy"
echo "==> building the ring l7proxy back into target/release"
cargo build --release -p l7proxy

printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/site.toml"
switchyard_bench_users
declare -A PORT=([ring]=19801 [aws-lc]=19802 [nginx]=19803)
for provider in ring aws-lc; do
    {
        printf '[splitter]\nruntime_dir = "run-%s"\n%s\n%s\n' "$provider" "$SY_FRONT_LINE" "$SY_LIMIT_LINES"
        printf '[[listen]]\naddr = "127.0.0.1:%d"\nprotocol = "tls"\n' "${PORT[$provider]}"
        printf '[[tenant]]\nname = "site"\nhosts = ["site.localhost"]\nconfig = "tenants/site.toml"\n%s\n' "$SY_TENANT_LINE"
    } > "$OUT/host-$provider.toml"
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=site.localhost \
    -addext "subjectAltName=DNS:site.localhost" -keyout "$OUT/nginx/key.pem" -out "$OUT/nginx/cert.pem" 2>/dev/null
cat > "$OUT/nginx/nginx.conf" <<NGINX
worker_processes 1;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl; server_name site.localhost;
        ssl_protocols TLSv1.2 TLSv1.3;   # nginx 1.22 stops at TLS 1.2 unless told
        ssl_certificate $OUT/nginx/cert.pem; ssl_certificate_key $OUT/nginx/key.pem;
        location / { return 200 "site\n"; }
    }
}
NGINX
chmod -R a+rX "$OUT"

splitters=()
stop_all() {
    kill "${splitters[@]}" 2>/dev/null || true
    [ -f "$OUT/nginx/nginx.pid" ] && kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap stop_all EXIT
export RUST_LOG=error
echo "==> starting a splitter per provider, and nginx"
for provider in ring aws-lc; do
    (cd "$OUT" && SWITCHYARD_L7PROXY="$OUT/$provider/l7proxy" exec taskset -c 1 "$BIN/splitter" --config "$OUT/host-$provider.toml") &
    splitters+=($!)
done
taskset -c 1 nginx -c "$OUT/nginx/nginx.conf" -p "$OUT/nginx"
declare -A PID
for _ in $(seq 300); do
    PID[ring]=$(switchyard_ready_pids "$BIN" "$OUT/host-ring.toml" site)
    PID[aws-lc]=$(switchyard_ready_pids "$BIN" "$OUT/host-aws-lc.toml" site)
    [ -n "${PID[ring]}" ] && [ -n "${PID[aws-lc]}" ] && [ -f "$OUT/nginx/nginx.pid" ] && break
    sleep 0.1
done
[ -n "${PID[ring]}" ] && [ -n "${PID[aws-lc]}" ] || { echo "a tenant did not become ready" >&2; exit 1; }
PID[nginx]=$(pgrep -P "$(cat "$OUT/nginx/nginx.pid")" | head -1)
for provider in ring aws-lc; do
    # The tenant really runs the binary of its provider.
    [ "$(readlink "/proc/${PID[$provider]}/exe")" = "$OUT/$provider/l7proxy" ] \
        || { echo "tenant $provider runs $(readlink "/proc/${PID[$provider]}/exe")" >&2; exit 1; }
done

printf 'round\tserver\tresumption\tconn_s\tresumed\tcpu_us_per_conn\n' > "$OUT/results.tsv"
echo "==> $ROUNDS rounds × ${DURATION}s per cell, 4 client threads"
for round in $(seq "$ROUNDS"); do
    for server in ring aws-lc nginx; do
        for resumption in full resumed; do
            flags=(--group X25519)
            [ "$resumption" = full ] && flags+=(--no-resume)
            t0=$(switchyard_cpu_ticks "${PID[$server]}")
            out=$(taskset -c 0 "$BIN/tls-close-load" --addr "127.0.0.1:${PORT[$server]}" --host site.localhost --seconds "$DURATION" --threads 4 "${flags[@]}")
            t1=$(switchyard_cpu_ticks "${PID[$server]}")
            switchyard_tls_row "$out" "$DURATION" "$t0" "$t1" "$round" "$server" "$resumption" >> "$OUT/results.tsv"
            tail -1 "$OUT/results.tsv"
        done
    done
done

python3 - "$OUT/results.tsv" "rounds=$ROUNDS duration=${DURATION}s" > bench/RESULTS-providers.md <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(server, resumption, field):
    return statistics.median(float(r[field]) for r in rows
                             if (r["server"], r["resumption"]) == (server, resumption))
names = {"ring": "l7proxy, rustls + ring", "aws-lc": "l7proxy, rustls + aws-lc-rs", "nginx": "nginx, OpenSSL (reference)"}
print("# The crypto provider's share of a TLS handshake\n")
print(f"`bench/providers.sh` ({sys.argv[2]}): TLS 1.3 `Connection: close`, ECDSA P-256, X25519, one request per connection. "
      "CPU of the process that terminates TLS, per connection, medians. The l7proxy rows go through the splitter, "
      "nginx is connected to directly, so compare conn/s only between the l7proxy rows.\n")
print("| server | full handshake µs | resumed µs | resumed (share) | full conn/s | resumed conn/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for server in ("ring", "aws-lc", "nginx"):
    print(f"| {names[server]} | {med(server, 'full', 'cpu_us_per_conn'):.0f} | {med(server, 'resumed', 'cpu_us_per_conn'):.0f} "
          f"| {med(server, 'resumed', 'resumed'):.0%} | {med(server, 'full', 'conn_s'):,.0f} | {med(server, 'resumed', 'conn_s'):,.0f} |")
for resumption in ("full", "resumed"):
    ring, aws, nginx = (med(s, resumption, "cpu_us_per_conn") for s in ("ring", "aws-lc", "nginx"))
    print(f"\n{resumption}: aws-lc-rs ÷ ring = {aws / ring:.2f}; ring ÷ nginx = {ring / nginx:.2f}; aws-lc-rs ÷ nginx = {aws / nginx:.2f}.")
PY
cat bench/RESULTS-providers.md

#!/usr/bin/env bash
# What a TLS handshake costs a tenant, factor by factor: `Connection: close`
# over TLS 1.3 through the splitter to a one-process tenant, one request per
# connection, with
#   - resumption: every connection a full handshake, or resumed (a client
#     session cache, as browsers and wrk keep);
#   - the certificate key: ECDSA P-256 (what self_signed and most ACME
#     clients make) or RSA 2048;
#   - the key-exchange group the client offers: X25519 or secp256r1;
#   - the cipher suite: what rustls and OpenSSL clients prefer
#     (TLS13_AES_256_GCM_SHA384, the default) or TLS13_AES_128_GCM_SHA256
#     (ECDSA + X25519 only).
# CPU of the tenant process per connection (the splitter's is not counted:
# it is the same in every cell). Interleaved rounds.
#
#   bench/handshakes.sh                  # 3 rounds × 4 s per cell
#   ROUNDS=5 DURATION=5 bench/handshakes.sh
#
# Results: bench/out-handshakes/results.tsv and bench/RESULTS-handshakes.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-4}
OUT=$PWD/bench/out-handshakes
rm -rf "$OUT"; mkdir -p "$OUT/tenants" "$OUT/certs"
switchyard_build_release

# An RSA 2048 certificate for rsa.localhost (ECDSA comes from self_signed).
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=rsa.localhost" \
    -addext "subjectAltName=DNS:rsa.localhost" \
    -keyout "$OUT/certs/rsa.key" -out "$OUT/certs/rsa.crt" 2>/dev/null
chmod 755 "$OUT" "$OUT/certs"; chmod 644 "$OUT/certs/"*
printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/ecdsa.toml"
printf '[tls]\ncert = "%s"\nkey = "%s"\n[[route]]\npath = "/"\nrespond = "echo"\n' \
    "$OUT/certs/rsa.crt" "$OUT/certs/rsa.key" > "$OUT/tenants/rsa.toml"
switchyard_bench_users
{
    printf '[splitter]\nruntime_dir = "run"\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:19795"\nprotocol = "tls"\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES"
    for t in ecdsa rsa; do
        printf '[[tenant]]\nname = "%s"\nhosts = ["%s.localhost"]\nconfig = "tenants/%s.toml"\n%s\n' "$t" "$t" "$t" "$SY_TENANT_LINE"
    done
} > "$OUT/host.toml"

export RUST_LOG=error
taskset -c 1 "$BIN/splitter" --config "$OUT/host.toml" &
splitter=$!
trap 'kill $splitter 2>/dev/null || true; wait 2>/dev/null || true' EXIT
pid_of() { switchyard_ready_pids "$BIN" "$OUT/host.toml" "$1"; }
for _ in $(seq 300); do
    [ -n "$(pid_of ecdsa)" ] && [ -n "$(pid_of rsa)" ] && break
    sleep 0.1
done

printf 'round\tkey\tgroup\tresumption\tconn_s\tresumed\tcpu_us_per_conn\n' > "$OUT/results.tsv"
cells=()
for key in ecdsa rsa; do
    for group in X25519 secp256r1; do
        for resumption in full resumed; do cells+=("$key $group $resumption"); done
    done
done
cells+=("ecdsa AES128 full" "ecdsa AES128 resumed")
echo "==> $ROUNDS rounds × ${DURATION}s per cell, 4 client threads, TLS 1.3 Connection: close; splitter and tenants on CPU 1, the client on CPU 0"
for round in $(seq "$ROUNDS"); do
    for cell in "${cells[@]}"; do
        read -r key group resumption <<< "$cell"
        pid=$(pid_of "$key")
        case $group in
            AES128) flags=(--group X25519 --suite TLS13_AES_128_GCM_SHA256) ;;
            *) flags=(--group "$group") ;;
        esac
        [ "$resumption" = full ] && flags+=(--no-resume)
        t0=$(switchyard_cpu_ticks "$pid")
        out=$(taskset -c 0 "$BIN/tls-close-load" --addr 127.0.0.1:19795 --host "$key.localhost" --seconds "$DURATION" --threads 4 "${flags[@]}")
        t1=$(switchyard_cpu_ticks "$pid")
        switchyard_tls_row "$out" "$DURATION" "$t0" "$t1" "$round" "$key" "$group" "$resumption" >> "$OUT/results.tsv"
        tail -1 "$OUT/results.tsv"
    done
done

python3 - "$OUT/results.tsv" "rounds=$ROUNDS duration=${DURATION}s" > bench/RESULTS-handshakes.md <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(key, group, resumption, field):
    return statistics.median(float(r[field]) for r in rows
                             if (r["key"], r["group"], r["resumption"]) == (key, group, resumption))
print("# What a TLS handshake costs a tenant, factor by factor\n")
print(f"`bench/handshakes.sh` ({sys.argv[2]}): TLS 1.3 `Connection: close` through the splitter to a one-process tenant (rustls, ring), one request per connection; CPU of the tenant process per connection, medians.\n")
print("| certificate key | group | full handshake µs | resumed µs | resumed (share) | full conn/s | resumed conn/s |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
for key in ("ecdsa", "rsa"):
    for group in ("X25519", "secp256r1"):
        print(f"| {'ECDSA P-256' if key == 'ecdsa' else 'RSA 2048'} | {group} | {med(key, group, 'full', 'cpu_us_per_conn'):.0f} | {med(key, group, 'resumed', 'cpu_us_per_conn'):.0f} | {med(key, group, 'resumed', 'resumed'):.0%} | {med(key, group, 'full', 'conn_s'):,.0f} | {med(key, group, 'resumed', 'conn_s'):,.0f} |")
base = med("ecdsa", "X25519", "full", "cpu_us_per_conn")
print("\nShares, from the ECDSA P-256 + X25519 full handshake "
      f"({base:.0f} µs):\n")
print(f"- resumption saves {base - med('ecdsa', 'X25519', 'resumed', 'cpu_us_per_conn'):.0f} µs "
      f"({(base - med('ecdsa', 'X25519', 'resumed', 'cpu_us_per_conn')) / base:.0%});")
print(f"- an RSA 2048 key instead adds {med('rsa', 'X25519', 'full', 'cpu_us_per_conn') - base:.0f} µs to a full handshake "
      f"and {med('rsa', 'X25519', 'resumed', 'cpu_us_per_conn') - med('ecdsa', 'X25519', 'resumed', 'cpu_us_per_conn'):.0f} µs to a resumed one;")
print(f"- secp256r1 instead of X25519 adds {med('ecdsa', 'secp256r1', 'full', 'cpu_us_per_conn') - base:.0f} µs (full) "
      f"and {med('ecdsa', 'secp256r1', 'resumed', 'cpu_us_per_conn') - med('ecdsa', 'X25519', 'resumed', 'cpu_us_per_conn'):.0f} µs (resumed);")
print(f"- TLS13_AES_128_GCM_SHA256 instead of the AES-256/SHA-384 suite clients prefer changes a full handshake by {med('ecdsa', 'AES128', 'full', 'cpu_us_per_conn') - base:.0f} µs "
      f"and a resumed one by {med('ecdsa', 'AES128', 'resumed', 'cpu_us_per_conn') - med('ecdsa', 'X25519', 'resumed', 'cpu_us_per_conn'):.0f} µs "
      f"(ECDSA, X25519: {med('ecdsa', 'AES128', 'full', 'cpu_us_per_conn'):.0f} and {med('ecdsa', 'AES128', 'resumed', 'cpu_us_per_conn'):.0f} µs).")
PY
cat bench/RESULTS-handshakes.md

#!/usr/bin/env bash
# The splitter's memory with 10,000 connections peeking: each sends half a
# ClientHello and waits. Prints the splitter's RSS before, with the crowd, and
# its CPU while they wait. Results: bench/out-peeking/peeking.md.
#   CONNECTIONS=10000 bench/peeking.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
switchyard_need_packages
CONNECTIONS=${CONNECTIONS:-10000}
OUT=$PWD/bench/out-peeking
rm -rf "$OUT"; mkdir -p "$OUT/tenants"
echo "==> building release binaries"
cargo build --release --bins
ulimit -n "$(ulimit -Hn)"   # the clients and the splitter each hold CONNECTIONS sockets
printf '[tls]\nself_signed = true\n[[route]]\npath = "/"\nrespond = "echo"\n' > "$OUT/tenants/echo.toml"
switchyard_bench_users
printf '[splitter]\nruntime_dir = "run"\npeek_timeout = "60s"\nmax_pending = 20000\n%s\n%s\n[[listen]]\naddr = "127.0.0.1:19843"\nprotocol = "tls"\n[[tenant]]\nname = "echo"\nhosts = ["localhost"]\nconfig = "tenants/echo.toml"\n%s\n' "$SY_FRONT_LINE" "$SY_LIMIT_LINES" "$SY_TENANT_LINE" > "$OUT/host.toml"
RUST_LOG=error ./target/release/splitter --config "$OUT/host.toml" &
splitter=$!
trap 'kill $splitter 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -skf -o /dev/null https://localhost:19843/ && break; sleep 0.1; done
python3 - "$splitter" "$CONNECTIONS" "$OUT/peeking.md" <<'PY'
import socket, ssl, sys, time
pid, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def rss():
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])
def ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
# A real ClientHello (Python's ssl), cut in half.
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
inc, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, outb, server_hostname="localhost")
try: obj.do_handshake()
except ssl.SSLWantReadError: pass
hello = outb.read()
before = rss()
crowd = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 19843)); s.sendall(hello[: len(hello) // 2]); crowd.append(s)
time.sleep(2)
with_crowd = rss(); t0 = ticks(); time.sleep(10); used = ticks() - t0
line = f"| {n} | {len(hello)//2} B of {len(hello)} | {before/1024:.1f} MiB | {with_crowd/1024:.1f} MiB | {(with_crowd-before)/n*1024:.0f} B | {used/100:.2f} s in 10 s |"
text = "| connections peeking | sent each | splitter RSS before | with them | per connection | splitter CPU while they wait |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n" + line + "\n"
open(out, "w").write(text); print(text)
PY

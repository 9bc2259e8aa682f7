# Sourced by demo.sh, test.sh and .ci/run: installs what a fresh Debian machine lacks.
# Pingora's build needs cmake (zlib-ng through flate2); the load tests need wrk;
# the ACME tests pebble.
set -euo pipefail

switchyard_need_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # The ACME tests run a real ACME CA (pebble and its DNS, pebble-challtestsrv).
    command -v pebble >/dev/null 2>&1 || missing+=(pebble)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (Debian packages; needs root)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo is not on PATH: install the Rust toolchain (https://rustup.rs) first" >&2
        exit 1
    fi
}

# Benchmarks: one row of `tls-close-load` results, tab-separated: the labels
# given, then connections/s, the share resumed, and CPU µs per connection of
# the processes whose ticks were taken before and after (0 0: not measured).
# Fails when any connection failed.
#   switchyard_tls_row JSON DURATION TICKS_BEFORE TICKS_AFTER LABEL...
switchyard_tls_row() {
    python3 - "$@" <<'PY'
import json, sys
out, duration, t0, t1, *labels = sys.argv[1:]
r = json.loads(out)
if r["errors"]:
    sys.exit(f"error: {r['errors']} failed connections for {' '.join(labels)}")
conns = r["connections"]
print("\t".join(labels + [f"{conns / float(duration):.0f}", f"{r['resumed'] / conns:.3f}",
                          f"{(float(t1) - float(t0)) * 10000 / conns:.1f}"]))
PY
}

# Benchmarks that compare with nginx: nginx and its stream module (for
# ssl_preread), installed when missing.
switchyard_need_nginx() {
    local missing=()
    command -v nginx >/dev/null 2>&1 || missing+=(nginx)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} (Debian packages; needs root)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Benchmarks: when run as root, the splitter's front and its tenants need users
# of their own (README, "Security model"); these two are created once. Sets
# SY_FRONT_LINE and SY_TENANT_LINE to the host-file lines naming them (empty
# when not root). Every load comes from 127.0.0.1, so benchmark host files also
# lift the per-source limits (SY_LIMIT_LINES).
switchyard_bench_users() {
    SY_FRONT_LINE=""
    SY_TENANT_LINE=""
    SY_LIMIT_LINES=$'max_conn_rate_per_ip = 0\nmax_pending_per_ip = 1000000'
    if [ "$(id -u)" -eq 0 ]; then
        local user
        for user in switchyard sy-bench; do
            id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
        done
        SY_FRONT_LINE='user = "switchyard"'
        SY_TENANT_LINE='user = "sy-bench"'
    fi
}

# Benchmarks: builds the release binaries (saying so; the first build takes
# minutes) and sets BIN to where they are.
switchyard_build_release() {
    echo "==> building release binaries"
    cargo build --release --bins
    BIN=$PWD/target/release
}

# Benchmarks: the pids of tenant $3's ready processes, from the splitter
# binary in $1 running host file $2 (`ctl status`); empty when it is not up.
switchyard_ready_pids() {
    "$1/splitter" ctl --config "$2" status --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(str(p["pid"]) for t in d["tenants"] if t["name"]==sys.argv[1] for p in t["processes"] if p["state"]=="ready"))' "$3" 2>/dev/null || true
}

# Benchmarks: user + system CPU ticks of the given processes, summed.
switchyard_cpu_ticks() {
    local p
    for p in "$@"; do awk '{ sub(/.*\) /, ""); print $12 + $13 }' /proc/"$p"/stat; done \
        | awk '{ s += $1 } END { print s }'
}

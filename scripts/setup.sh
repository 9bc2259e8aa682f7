# Sourced by demo.sh, test.sh and .ci/run: installs what a fresh Debian machine lacks.
# Pingora's build needs cmake (zlib-ng through flate2); the load tests need wrk.
set -euo pipefail

switchyard_need_packages() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
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

#!/usr/bin/env bash
# Runs the demo: an echo upstream on 127.0.0.1:18101 and the splitter with two
# tenants (config/demo.toml). Then, from another terminal:
#   curl -k https://alpha.localhost:8443/       # tenant alpha, proxied to the upstream
#   curl http://beta.localhost:8080/            # tenant beta, built-in echo
#   curl --unix-socket .demo/run/tenants/alpha/register.sock http://x/v1/upstreams   # alpha's pool (as root)
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
switchyard_need_packages
echo "==> building (release; the first build compiles Pingora: several minutes)"
cargo build --release --bins
# Started as root, the front runs as "switchyard" and each tenant as its own user.
if [ "$(id -u)" -eq 0 ]; then
    for user in switchyard sy-alpha sy-beta; do
        id -u "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
    done
fi
./target/release/splitter check --config config/demo.toml
./target/release/echo-upstream --listen 127.0.0.1:18101 --name demo-app &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
echo "==> splitter on https://127.0.0.1:8443 (SNI) and http://127.0.0.1:8080 (Host); Ctrl-C to stop"
echo "    try: curl -k https://alpha.localhost:8443/   and   curl http://beta.localhost:8080/"
echo "    alpha's pool (as root or alpha's user): curl --unix-socket .demo/run/tenants/alpha/register.sock http://x/v1/upstreams"
./target/release/splitter --config config/demo.toml

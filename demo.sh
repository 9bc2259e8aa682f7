#!/usr/bin/env bash
# Runs the demo: an echo upstream on 127.0.0.1:18101 and the splitter with two
# tenants (config/demo.toml). Then, from another terminal:
#   curl -k https://alpha.localhost:8443/       # tenant alpha, proxied to the upstream
#   curl http://beta.localhost:8080/            # tenant beta, built-in echo
#   curl http://127.0.0.1:9901/v1/upstreams     # alpha's upstream pool (registration API)
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/setup.sh
switchyard_need_packages
echo "==> building (release; the first build compiles Pingora: several minutes)"
cargo build --release --bins
./target/release/splitter check --config config/demo.toml
./target/release/echo-upstream --listen 127.0.0.1:18101 --name demo-app &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
echo "==> splitter on https://127.0.0.1:8443 (SNI) and http://127.0.0.1:8080 (Host); Ctrl-C to stop"
echo "    try: curl -k https://alpha.localhost:8443/   and   curl http://beta.localhost:8080/"
echo "    alpha's pool: curl http://127.0.0.1:9901/v1/upstreams  (add a backend: see README, Upstream pools)"
./target/release/splitter --config config/demo.toml

//! The floor under the l7proxy: a Pingora proxy that does nothing but proxy.
//!
//! Same Pingora (with this repository's patches), the same allocator and the
//! same server settings as `l7proxy`, one upstream, and none of Switchyard's
//! request work: no routing, no host check, no forwarding headers, no header or
//! upstream timeouts, no metrics, no access log. `bench/run.sh` (with `PEERS=1`) measures it beside the
//! l7proxy and the nginx and HAProxy setups, which shows how much of the
//! l7proxy's CPU per request is Pingora's and how much is Switchyard's.
//!
//! ```text
//! cargo run --release -p l7proxy --example pingora_plain -- \
//!     UPSTREAM PLAIN_ADDR TLS_ADDR CERT_PEM KEY_PEM
//! ```

use async_trait::async_trait;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sends every request to one upstream, as it came.
struct Plain {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, plain, tls, cert, key] = args.as_slice() else {
        eprintln!("usage: pingora_plain UPSTREAM PLAIN_ADDR TLS_ADDR CERT_PEM KEY_PEM");
        std::process::exit(2);
    };
    // As `l7proxy` sets them (one thread in the benchmark, timeouts on
    // tokio's timer, no pid file or upgrade socket).
    let conf = ServerConf {
        threads: 1,
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        pid_file: String::new(),
        upgrade_sock: String::new(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        Plain {
            upstream: upstream.clone(),
        },
    );
    service.add_tcp(plain);
    if let Err(e) = service.add_tls(tls, cert, key) {
        eprintln!("pingora_plain: cannot load {cert} / {key}: {e}");
        std::process::exit(1);
    }
    server.add_service(service);
    server.run_forever();
}

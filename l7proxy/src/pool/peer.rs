//! How the proxy reaches a pool's servers: timeouts, keep-alive idle time,
//! TLS (SNI, verification, CA) and HTTP/2, as a Pingora `HttpPeer` template.

use super::discovery::socket_addr;
use super::error::PoolError;
use super::server::Lease;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use switchyard_shared::config::UpstreamConfig;

/// The settings every connection to one pool's servers shares.
pub struct PeerTemplate {
    template: HttpPeer,
}

impl PeerTemplate {
    /// The template of `config`'s group.
    pub fn new(config: &UpstreamConfig) -> Result<PeerTemplate, PoolError> {
        let (tls, sni) = match &config.tls {
            Some(tls) => (true, tls.sni.clone().unwrap_or_default()),
            None => (false, String::new()),
        };
        let mut template = HttpPeer::new("0.0.0.0:1", tls, sni);
        let options = &mut template.options;
        options.connection_timeout = Some(config.connect_timeout);
        options.total_connection_timeout = Some(config.connect_timeout * 2);
        options.read_timeout = Some(config.read_timeout);
        // Not reset by each read (third_party/PATCHES.md, patch 1).
        options.response_header_timeout = Some(config.response_header_timeout);
        options.write_timeout = Some(config.write_timeout);
        options.idle_timeout = Some(config.idle_timeout);
        options.tcp_keepalive = None;
        if let Some(settings) = &config.tls {
            options.verify_cert = settings.verify;
            options.verify_hostname = settings.verify;
            if let Some(path) = &settings.ca {
                let ca_problem = |problem: String| PoolError::CaFile {
                    path: path.clone(),
                    problem,
                };
                let pem = switchyard_shared::files::read_regular(
                    path,
                    switchyard_shared::files::MAX_PEM_BYTES,
                )
                .map_err(|e| ca_problem(format!("cannot read CA certificates: {e}")))?;
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<_, _>>()
                    .map_err(|e| ca_problem(format!("cannot read CA certificates: {e}")))?;
                if certs.is_empty() {
                    return Err(ca_problem(
                        "no CA certificate in the file (PEM expected)".into(),
                    ));
                }
                for cert in &certs {
                    x509_parser::parse_x509_certificate(cert.as_ref())
                        .map_err(|e| ca_problem(format!("a CA certificate does not parse: {e}")))?;
                }
                let wrapped: Vec<WrappedX509> = certs
                    .into_iter()
                    .map(|c| WrappedX509::new(c.as_ref().to_vec(), parse_x509))
                    .collect();
                options.ca = Some(Arc::from(wrapped.into_boxed_slice()));
            }
        }
        options.alpn = match (config.h2, tls) {
            (false, _) => ALPN::H1,
            (true, true) => ALPN::H2H1,
            // Without TLS there is no negotiation: HTTP/2 with prior knowledge.
            (true, false) => ALPN::H2,
        };
        Ok(PeerTemplate { template })
    }

    /// The SNI of a TLS pool (empty when none is sent); `None` without TLS.
    pub fn tls_sni(&self) -> Option<&str> {
        self.template.is_tls().then_some(self.template.sni.as_str())
    }

    /// The peer for the server a request holds a lease on.
    pub fn peer_for_server(&self, lease: &Lease) -> Box<HttpPeer> {
        let mut peer = Box::new(self.template.clone());
        if let Some(addr) = socket_addr(&lease.server().addr) {
            peer._address = addr;
        }
        peer
    }

    /// The peer template of the pool's HTTP health checks.
    pub fn health_peer(&self, timeout: Duration) -> HttpPeer {
        let mut peer = self.template.clone();
        peer.options.connection_timeout = Some(timeout);
        peer.options.total_connection_timeout = Some(timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.response_header_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.alpn = ALPN::H1;
        peer
    }
}

//! The tenant's TLS: its own certificate (PEM files, or one generated at start
//! for the demo), ALPN `h2` then `http/1.1`, through Pingora's rustls acceptor.

use pingora::listeners::tls::TlsSettings;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use switchyard_shared::config::TlsSource;
use switchyard_shared::host::HostPattern;

/// Serves one certificate to every client (the splitter only sends this tenant
/// names of this tenant).
#[derive(Debug)]
struct OneCertificate(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Loads or generates the tenant's certificate and key.
pub fn load_certificate(
    source: &TlsSource,
    hosts: &[HostPattern],
) -> Result<Arc<CertifiedKey>, String> {
    let (certs, key) = match source {
        TlsSource::Files { cert, key } => {
            let read = |path: &std::path::Path| {
                switchyard_shared::files::read_regular(
                    path,
                    switchyard_shared::files::MAX_PEM_BYTES,
                )
                .map_err(|e| format!("{}: {e}", path.display()))
            };
            let cert_pem = read(cert)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    format!("{}: cannot read the certificate chain: {e}", cert.display())
                })?;
            if certs.is_empty() {
                return Err(format!(
                    "{}: no certificate in the file (PEM expected)",
                    cert.display()
                ));
            }
            let key_pem = read(key)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| format!("{}: cannot read the private key: {e}", key.display()))?;
            (certs, key)
        }
        TlsSource::SelfSigned => {
            let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            let generated = rcgen::generate_simple_self_signed(names)
                .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
            let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
                .map_err(|e| format!("generated key unusable: {e}"))?;
            (vec![generated.cert.der().clone()], key)
        }
    };
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the private key is not usable for TLS: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

/// Pingora TLS settings serving `cert`, with ALPN h2 and http/1.1.
pub fn settings(cert: Arc<CertifiedKey>) -> TlsSettings {
    // Paths stay empty: the resolver supplies the certificate.
    let mut settings = TlsSettings::intermediate("", "").expect("infallible");
    settings.set_cert_resolver(Arc::new(OneCertificate(cert)));
    settings.enable_h2();
    settings
}

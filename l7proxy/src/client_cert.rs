//! Client certificates (mTLS, `[tls] client_auth`): the verifier that checks
//! them against the tenant's CA, and the verified subject, recorded on the
//! connection at the end of its handshake and sent upstream in
//! [`SUBJECT_HEADER`]. A client's own header of that name is always removed,
//! so an upstream can trust what it reads there.

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::Session;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use std::any::Any;
use std::sync::Arc;
use switchyard_shared::config::ClientAuth;

/// The request header that carries the verified client certificate's subject
/// (RFC 4514 text) to upstreams.
pub const SUBJECT_HEADER: &str = "X-Client-Cert-Subject";
/// [`SUBJECT_HEADER`] in lower case, as `http::HeaderName::from_static` wants it.
pub const SUBJECT_HEADER_LOWER: &str = "x-client-cert-subject";

/// Most bytes of a subject passed upstream.
const MAX_SUBJECT_LEN: usize = 1024;

/// The verified client certificate of a connection.
#[derive(Debug)]
pub struct ClientCertificate {
    /// The subject, RFC 4514, bytes outside printable ASCII as `\HH`.
    pub subject: String,
}

/// The verifier for `auth`: client certificates must chain to its CA file;
/// without one a client is refused when `required`, else served without the
/// subject header. `Err`: located problems with the CA file.
pub fn verifier(
    auth: &ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Vec<String>> {
    let located = |message: String| vec![auth.ca_at.error(message).to_string()];
    let pem =
        switchyard_shared::files::read_regular(&auth.ca, switchyard_shared::files::MAX_PEM_BYTES)
            .map_err(|e| {
            located(format!(
                "cannot read the client CA {}: {e}",
                auth.ca.display()
            ))
        })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            located(format!(
                "{}: the client CA does not parse as PEM: {e}",
                auth.ca.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            located(format!(
                "{}: a certificate in the client CA is not a usable trust anchor: {e}",
                auth.ca.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(located(format!(
            "{}: no certificate in the client CA file (PEM \"BEGIN CERTIFICATE\" expected)",
            auth.ca.display()
        )));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| located(format!("client_auth: {e}")))
}

/// Records the verified client certificate's subject on the connection
/// (Pingora keeps it in the TLS digest's extension).
pub struct RecordSubject;

#[async_trait]
impl TlsAccept for RecordSubject {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Arc::new(ClientCertificate {
            subject: header_safe(&cert.subject().to_string()),
        }))
    }
}

/// `text` with every byte outside printable ASCII (and `\`) as `\HH`, cut to
/// [`MAX_SUBJECT_LEN`].
fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SUBJECT_LEN));
    for &b in text.as_bytes() {
        if out.len() + 3 > MAX_SUBJECT_LEN {
            break;
        }
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\{b:02X}"));
        }
    }
    out
}

/// The verified client certificate's subject on `session`'s connection.
pub fn subject(session: &Session) -> Option<&str> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<ClientCertificate>()
        .map(|c| c.subject.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_case_name_is_the_header_name() {
        assert_eq!(SUBJECT_HEADER.to_ascii_lowercase(), SUBJECT_HEADER_LOWER);
    }

    #[test]
    fn subjects_are_made_header_safe() {
        assert_eq!(header_safe("CN=alice,O=Shop"), "CN=alice,O=Shop");
        assert_eq!(header_safe("CN=é\n\\"), "CN=\\C3\\A9\\0A\\5C");
        assert!(header_safe(&"x".repeat(5000)).len() <= MAX_SUBJECT_LEN);
    }
}

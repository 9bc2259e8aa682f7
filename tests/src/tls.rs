//! A rustls client that accepts the tenants' generated certificates.

use super::*;

/// Accepts any server certificate: the tests' tenants use generated ones.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration for the tests (HTTP/1.1 ALPN, any certificate).
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    finish(accept_any_cert().with_no_client_auth())
}

/// [`tls_config`] offering only the key-exchange `group` (rustls's name,
/// e.g. `X25519`, `secp256r1`).
pub fn tls_config_with_group(group: &str) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .kx_groups
        .retain(|g| format!("{:?}", g.name()).eq_ignore_ascii_case(group));
    assert!(
        !provider.kx_groups.is_empty(),
        "no key-exchange group {group}"
    );
    finish(accept_any_cert_with(provider).with_no_client_auth())
}

/// The start of every test client configuration: any server certificate.
fn accept_any_cert() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>
{
    accept_any_cert_with(rustls::crypto::ring::default_provider())
}

fn accept_any_cert_with(
    provider: rustls::crypto::CryptoProvider,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(provider);
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
}

/// HTTP/1.1 ALPN.
fn finish(mut config: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// [`tls_config`] presenting a client certificate (`chain`, `key`).
pub fn tls_config_with_client_cert(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Arc<rustls::ClientConfig> {
    finish(accept_any_cert().with_client_auth_cert(chain, key).unwrap())
}

/// A TLS stream over TCP.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client connection for `server_name` (a DNS name sends SNI, an IP does not).
pub fn tls_client(server_name: &str) -> rustls::ClientConnection {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    rustls::ClientConnection::new(tls_config(), name).unwrap()
}

/// Connects over TLS with SNI `server_name`.
pub fn tls_connect(addr: SocketAddr, server_name: &str) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(rustls::StreamOwned::new(tls_client(server_name), tcp))
}

/// Connects over TLS and sends one request.
pub fn https_get(addr: SocketAddr, server_name: &str, path: &str) -> io::Result<Response> {
    let mut stream = tls_connect(addr, server_name)?;
    request(&mut stream, server_name, path, "")
}

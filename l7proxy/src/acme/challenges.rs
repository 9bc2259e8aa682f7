//! The answers to the CA's pending challenges, read from the files the
//! ordering process writes (so any process of the tenant answers), and the
//! RFC 8737 certificates made for `tls-alpn-01`.

use super::*;

/// RFC 8737 certificates made, per (name, digest).
pub(super) type AlpnCache = HashMap<(String, [u8; 32]), Arc<CertifiedKey>>;

/// The answers to the CA's pending challenges, read from the files the
/// ordering process writes, so that any process of the tenant answers any
/// challenge.
pub struct Challenges {
    /// `TENANT_DIR/acme/challenges`.
    pub(super) dir: PathBuf,
    /// RFC 8737 certificates already made, per (name, digest): the CA checks
    /// from several places at once.
    pub(super) certificates: Mutex<AlpnCache>,
}

impl Challenges {
    /// The challenges of the tenant whose runtime directory is `tenant_dir`.
    pub fn new(tenant_dir: &Path) -> Arc<Challenges> {
        Arc::new(Challenges {
            dir: tenant_dir.join(ACME_DIR).join(CHALLENGES_DIR),
            certificates: Mutex::new(HashMap::new()),
        })
    }

    /// The RFC 8737 certificate for `name` (a TLS server name, as the client
    /// sent it) while a `tls-alpn-01` challenge for it is pending; `None`
    /// otherwise, and for anything that is not a host name.
    pub fn tls_alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = host_name(name)?;
        let text =
            read_regular(&self.dir.join(TLS_ALPN_01).join(&name), MAX_CHALLENGE_BYTES).ok()?;
        let digest = unhex32(std::str::from_utf8(&text).ok()?.trim())?;
        let key = (name, digest);
        let cached = self.cache().get(&key).cloned();
        if cached.is_some() {
            return cached;
        }
        let certified = match alpn_certificate(&key.0, &key.1) {
            Ok(certified) => Arc::new(certified),
            Err(e) => {
                warn!(name = %key.0, error = %e, "cannot make the tls-alpn-01 certificate");
                return None;
            }
        };
        let mut cache = self.cache();
        if cache.len() >= ALPN_CACHE {
            cache.clear();
        }
        cache.insert(key, certified.clone());
        Some(certified)
    }

    /// The body to answer `GET /.well-known/acme-challenge/TOKEN` with while
    /// an `http-01` challenge with that token is pending; `None` otherwise,
    /// and for anything that is not a base64url token.
    pub fn http_response(&self, token: &str) -> Option<String> {
        if !valid_token(token) {
            return None;
        }
        let bytes = read_regular(&self.dir.join(HTTP_01).join(token), MAX_CHALLENGE_BYTES).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        // A key authorization is "TOKEN.THUMBPRINT".
        let answers_token = text
            .strip_prefix(token)
            .is_some_and(|rest| rest.starts_with('.'));
        answers_token.then_some(text)
    }

    pub(super) fn cache(&self) -> std::sync::MutexGuard<'_, AlpnCache> {
        self.certificates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The RFC 8737 certificate for `name`: self-signed, naming only `name`, with
/// the critical acmeIdentifier extension holding `digest`.
pub(super) fn alpn_certificate(name: &str, digest: &[u8; 32]) -> Result<CertifiedKey, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = crate::tls::signing_key(der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// Whether `token` is 1 to 128 base64url characters (RFC 8555 §8.3).
pub(super) fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// 64 hex digits as 32 bytes.
pub(super) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

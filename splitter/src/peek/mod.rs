//! Reading the first bytes of a connection without consuming them.
//!
//! [`tls`] finds the SNI of a ClientHello, [`http`] the `Host` of a request; both
//! are pure functions over the bytes peeked so far, so they are unit-tested and
//! fuzzed without sockets. [`socket`] does the peeking itself without spinning.

pub mod http;
pub mod proxy;
pub mod socket;
pub mod tls;

/// What the bytes seen so far say about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// Not enough bytes yet: wait for more.
    NeedMore,
    /// The routing name was found (normalised), or the client sent none.
    Name(Option<String>),
    /// The bytes are not what this listener expects; close, counting the reason.
    Invalid(Reject),
}

/// Why a connection was refused while peeking; used as the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The first bytes are not a TLS handshake record.
    NotTls,
    /// An SSLv2-compatible ClientHello (no SNI possible).
    Sslv2,
    /// A TLS record or handshake length that no ClientHello has.
    BadRecord,
    /// The first handshake message is not a ClientHello, or does not parse.
    BadClientHello,
    /// The server name sent is not a valid host name.
    BadServerName,
    /// Not an HTTP/1.x request (including the HTTP/2 prior-knowledge preface).
    NotHttp,
    /// The `Host` header (or URI authority) is not a valid host name.
    BadHost,
    /// More than `max_peek_bytes` without a complete ClientHello / header block.
    TooLarge,
    /// A `proxy_protocol` listener's connection without a valid PROXY header.
    BadProxyHeader,
}

impl Reject {
    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::NotTls => "not_tls",
            Reject::Sslv2 => "sslv2",
            Reject::BadRecord => "bad_record",
            Reject::BadClientHello => "bad_client_hello",
            Reject::BadServerName => "bad_server_name",
            Reject::NotHttp => "not_http",
            Reject::BadHost => "bad_host",
            Reject::TooLarge => "too_large",
            Reject::BadProxyHeader => "bad_proxy_header",
        }
    }

    /// Whether a plaintext client should be told `400 Bad Request` before the close.
    pub fn answer_400(self) -> bool {
        matches!(self, Reject::BadHost | Reject::TooLarge)
    }
}

//! Rules every request and response of a tenant meets on the way through,
//! whatever the parser let in: one set of header limits for every request on
//! every path, message framing that cannot be read two ways, and hop-by-hop
//! headers kept to their hop.

use pingora::http::{RequestHeader, ResponseHeader};
use switchyard_shared::config::HttpLimits;

/// Why a request is answered by the proxy instead of forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The URI alone is over `max_request_header_bytes`.
    UriTooLong,
    /// The request line and headers are over `max_request_header_bytes`.
    HeadersTooLarge,
    /// More than `max_request_headers` header lines.
    TooManyHeaders,
    /// A transfer coding other than `chunked` alone.
    UnsupportedTransferCoding,
    /// `Content-Length` values that disagree or are not numbers.
    BadContentLength,
    /// More than one `Host` header line (RFC 9112 §3.2: 400), which the
    /// splitter and an upstream could read differently.
    SeveralHosts,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            Refusal::UriTooLong => 414,
            Refusal::HeadersTooLarge | Refusal::TooManyHeaders => 431,
            Refusal::UnsupportedTransferCoding => 501,
            Refusal::BadContentLength | Refusal::SeveralHosts => 400,
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::UriTooLong => "the request URI is too long",
            Refusal::HeadersTooLarge => "the request headers are too large",
            Refusal::TooManyHeaders => "the request has too many header lines",
            Refusal::UnsupportedTransferCoding => {
                "only Transfer-Encoding: chunked is supported in requests"
            }
            Refusal::BadContentLength => "the request's Content-Length values disagree",
            Refusal::SeveralHosts => "the request has more than one Host header",
        }
    }
}

/// Checks a request head against `limits` and its framing; repeats of one
/// `Content-Length` value are collapsed into one header.
pub fn check_request(req: &mut RequestHeader, limits: &HttpLimits) -> Result<(), Refusal> {
    let max = limits.max_request_header_bytes as usize;
    let uri = req.raw_path().len();
    if uri > max {
        return Err(Refusal::UriTooLong);
    }
    if req.headers.len() > limits.max_request_headers {
        return Err(Refusal::TooManyHeaders);
    }
    // As on the wire: "NAME: VALUE\r\n" per line, plus the request line.
    let size = req.method.as_str().len()
        + uri
        + 11
        + req
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if size > max {
        return Err(Refusal::HeadersTooLarge);
    }
    if req.headers.get_all(http::header::HOST).iter().count() > 1 {
        return Err(Refusal::SeveralHosts);
    }
    let codings: Vec<String> = list_values(&req.headers, http::header::TRANSFER_ENCODING);
    if !codings.is_empty() && codings != ["chunked"] {
        return Err(Refusal::UnsupportedTransferCoding);
    }
    let lengths = list_values(&req.headers, http::header::CONTENT_LENGTH);
    if let Some(first) = lengths.first() {
        if first.parse::<u64>().is_err() || lengths.iter().any(|l| l != first) {
            return Err(Refusal::BadContentLength);
        }
        if lengths.len() > 1 {
            let single = first.clone();
            req.remove_header("content-length");
            req.insert_header("content-length", single)
                .map_err(|_| Refusal::BadContentLength)?;
        }
    }
    Ok(())
}

/// Every element of the comma-separated list header `name`, over all its
/// lines, trimmed and lower-cased.
fn list_values(headers: &http::HeaderMap, name: http::header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether `name` (lower case) frames a message, belongs to one hop, or is
/// `Host`: a look-alike spelled with underscores is dropped on the way
/// upstream (as nginx does), since some servers read `Transfer_Encoding` as
/// `Transfer-Encoding`.
fn framing_hop_or_host(name: &str) -> bool {
    name == "host" || switchyard_shared::config::FRAMING_AND_HOP.contains(&name)
}

/// Prepares a request for the upstream: underscore look-alikes of framing
/// headers dropped, several `Cookie` fields (HTTP/2 sends one per cookie)
/// joined into one with `"; "` (RFC 9113 §8.2.3).
pub fn sanitize_upstream_request(req: &mut RequestHeader) {
    let lookalikes: Vec<String> = req
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| name.contains('_') && framing_hop_or_host(&name.replace('_', "-")))
        .map(str::to_owned)
        .collect();
    for name in lookalikes {
        req.remove_header(&name);
    }
    if req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .nth(1)
        .is_some()
    {
        let joined = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join("; ");
        req.remove_header("cookie");
        let _ = req.insert_header("cookie", joined);
    }
}

/// Keeps an upstream's hop-by-hop headers to its hop: those its `Connection`
/// header names, and `Keep-Alive` / `Proxy-Connection`. (`Upgrade` stays on a
/// `101`, which needs it; Pingora writes the client's own `Connection`.)
pub fn sanitize_response(resp: &mut ResponseHeader) {
    let upgrade = resp.status.as_u16() == 101;
    let named: Vec<String> = list_values(&resp.headers, http::header::CONNECTION)
        .into_iter()
        .filter(|name| name != "close" && !(upgrade && name == "upgrade"))
        .collect();
    for name in named {
        if http::HeaderName::from_bytes(name.as_bytes()).is_ok() {
            resp.remove_header(&name);
        }
    }
    // Names parsed once, not per response.
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    resp.remove_header(&KEEP_ALIVE);
    resp.remove_header(&PROXY_CONNECTION);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/upload", None).unwrap();
        for (name, value) in headers {
            req.append_header(name.to_string(), *value).unwrap();
        }
        req
    }

    #[test]
    fn limits_hold_for_every_request() {
        let limits = HttpLimits::default();
        assert_eq!(
            check_request(&mut request(&[("x-big", &"a".repeat(20_000))]), &limits),
            Err(Refusal::HeadersTooLarge)
        );
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-h{i}"), "1".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            check_request(&mut request(&many), &limits),
            Err(Refusal::TooManyHeaders)
        );
        let mut long =
            RequestHeader::build("GET", format!("/{}", "a".repeat(20_000)).as_bytes(), None)
                .unwrap();
        assert_eq!(check_request(&mut long, &limits), Err(Refusal::UriTooLong));
        assert_eq!(
            check_request(&mut request(&[("x-ok", "1")]), &limits),
            Ok(())
        );
    }

    #[test]
    fn framing_is_read_one_way() {
        let limits = HttpLimits::default();
        assert_eq!(
            check_request(
                &mut request(&[("transfer-encoding", "gzip, chunked")]),
                &limits
            ),
            Err(Refusal::UnsupportedTransferCoding)
        );
        assert_eq!(
            check_request(&mut request(&[("transfer-encoding", "chunked")]), &limits),
            Ok(())
        );
        let mut repeated = request(&[("content-length", "5, 5"), ("content-length", "5")]);
        assert_eq!(check_request(&mut repeated, &limits), Ok(()));
        let values: Vec<_> = repeated.headers.get_all("content-length").iter().collect();
        assert_eq!(values, ["5"]);
        assert_eq!(
            check_request(&mut request(&[("content-length", "5, 6")]), &limits),
            Err(Refusal::BadContentLength)
        );
        assert_eq!(
            check_request(&mut request(&[("content-length", "x")]), &limits),
            Err(Refusal::BadContentLength)
        );
        assert_eq!(
            check_request(
                &mut request(&[("host", "a.test"), ("host", "b.test")]),
                &limits
            ),
            Err(Refusal::SeveralHosts)
        );
    }

    #[test]
    fn lookalikes_dropped_and_cookies_joined() {
        let mut req = request(&[
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_custom", "kept"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        sanitize_upstream_request(&mut req);
        assert!(req.headers.get("transfer_encoding").is_none());
        assert!(req.headers.get("content_length").is_none());
        assert_eq!(req.headers.get("x_custom").unwrap(), "kept");
        let cookies: Vec<_> = req.headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn hop_by_hop_response_headers_stay_on_their_hop() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("connection", "x-secret, close").unwrap();
        resp.append_header("x-secret", "1").unwrap();
        resp.append_header("keep-alive", "timeout=5").unwrap();
        resp.append_header("x-public", "1").unwrap();
        sanitize_response(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert_eq!(resp.headers.get("x-public").unwrap(), "1");
        let mut switching = ResponseHeader::build(101, None).unwrap();
        switching.append_header("connection", "upgrade").unwrap();
        switching.append_header("upgrade", "websocket").unwrap();
        sanitize_response(&mut switching);
        assert_eq!(switching.headers.get("upgrade").unwrap(), "websocket");
    }
}

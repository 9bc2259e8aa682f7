//! Finding the routing name of a plaintext HTTP/1.x request.

use super::{Peeked, Reject};
use switchyard_shared::host::normalize;

/// Most header lines examined; a request with more is refused as too large.
const MAX_HEADERS: usize = 100;

/// Examines the bytes at the start of a connection on an HTTP port.
///
/// The name is the authority of an absolute-form URI if there is one (RFC 9112
/// §3.2.2: it overrides `Host`), else the `Host` header; `Name(None)` when the
/// request has neither (HTTP/1.0 clients). `max` is `max_peek_bytes`.
pub fn peek_request(buf: &[u8], max: usize) -> Peeked {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max {
                Peeked::Invalid(Reject::TooLarge)
            } else {
                Peeked::NeedMore
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Peeked::Invalid(Reject::TooLarge),
        Err(_) => return Peeked::Invalid(Reject::NotHttp),
    }
    if let Some(authority) = request.path.and_then(absolute_form_authority) {
        return name(authority.as_bytes());
    }
    let mut hosts = request
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    match (hosts.next(), hosts.next()) {
        (None, _) => Peeked::Name(None),
        (Some(host), None) => name(host.value),
        // Two Host headers: RFC 9112 §3.2 says respond 400.
        (Some(_), Some(_)) => Peeked::Invalid(Reject::BadHost),
    }
}

fn absolute_form_authority(target: &str) -> Option<&str> {
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // Drop userinfo, which has no place in routing.
    Some(
        authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host),
    )
}

fn name(raw: &[u8]) -> Peeked {
    match std::str::from_utf8(raw).ok().and_then(normalize) {
        Some(name) => Peeked::Name(Some(name)),
        None => Peeked::Invalid(Reject::BadHost),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(request: &str) -> Peeked {
        peek_request(request.as_bytes(), 16384)
    }

    #[test]
    fn host_header_is_normalised() {
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nHost: Beta.Localhost.:8080\r\n\r\n"),
            Peeked::Name(Some("beta.localhost".into()))
        );
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n"),
            Peeked::Name(Some("::1".into()))
        );
    }

    #[test]
    fn absolute_form_wins_over_host() {
        assert_eq!(
            name_of(
                "GET http://user@alpha.localhost:8080/x?y HTTP/1.1\r\nHost: beta.localhost\r\n\r\n"
            ),
            Peeked::Name(Some("alpha.localhost".into()))
        );
    }

    #[test]
    fn http10_without_host_has_no_name() {
        assert_eq!(name_of("GET / HTTP/1.0\r\n\r\n"), Peeked::Name(None));
    }

    #[test]
    fn incomplete_headers_ask_for_more_until_the_limit() {
        let partial = "GET / HTTP/1.1\r\nHost: alpha.localhost\r\n";
        assert_eq!(name_of(partial), Peeked::NeedMore);
        assert_eq!(name_of("G"), Peeked::NeedMore);
        let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(200));
        assert_eq!(
            peek_request(long.as_bytes(), 100),
            Peeked::Invalid(Reject::TooLarge)
        );
    }

    #[test]
    fn refuses_what_is_not_http1() {
        assert_eq!(
            name_of("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Peeked::Invalid(Reject::NotHttp)
        );
        assert_eq!(
            peek_request(&[22, 3, 1, 0, 200, 1], 16384),
            Peeked::Invalid(Reject::NotHttp)
        );
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n"),
            Peeked::Invalid(Reject::NotHttp)
        );
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
            Peeked::Invalid(Reject::BadHost)
        );
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n"),
            Peeked::Invalid(Reject::BadHost)
        );
    }

    #[test]
    fn fuzzer_findings_stay_fixed() {
        // fuzz/corpus/http_peek/regression-ipv6-colon: "[:]" was taken for an
        // IPv6 literal and normalised to ":", which is no host name.
        assert_eq!(
            name_of("GET / HTTP/1.1\r\nHost:[:]\n\r\n"),
            Peeked::Invalid(Reject::BadHost)
        );
    }
}

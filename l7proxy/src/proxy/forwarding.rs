//! The forwarding headers a request carries upstream: `X-Forwarded-For`,
//! `Forwarded`, `X-Real-IP`, `X-Forwarded-Proto`/`-Host`, `Via` and
//! `X-Request-Id`. Only a trusted proxy's own forwarding headers are kept (and
//! appended to); a client's are replaced, so it cannot choose the address the
//! upstream believes.

use super::hosts::request_authority;
use crate::ip_text::IpText;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;

/// The client's address, as the connection shows it.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The client's address as text (empty when there is none).
pub fn client_ip_text(session: &Session) -> IpText {
    client_ip(session).map_or_else(IpText::none, IpText::new)
}

/// `ours` appended to the request's existing `name` list header (`a, b`) —
/// every line of it, in order, as RFC 9110 §5.3 combines them — or `ours` alone
/// when the request has none.
pub fn appended(
    headers: &http::HeaderMap,
    name: impl http::header::AsHeaderName,
    ours: &str,
) -> String {
    let mut value = String::new();
    for previous in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        let previous = previous.trim();
        if previous.is_empty() {
            continue;
        }
        value.push_str(previous);
        value.push_str(", ");
    }
    value.push_str(ours);
    value
}

/// This hop's RFC 7239 `Forwarded` element: `for=…;proto=…;host="…"`. IPv6
/// addresses are quoted and bracketed; quotes are dropped from the host.
fn forwarded_element(ip: IpAddr, ip_text: &str, proto: &str, host: Option<&str>) -> String {
    let mut element = String::with_capacity(32 + host.map_or(0, str::len));
    element.push_str("for=");
    match ip {
        IpAddr::V4(_) => element.push_str(ip_text),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            element.push_str(ip_text);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.extend(host.chars().filter(|&c| c != '"'));
        element.push('"');
    }
    element
}

/// Whether the client connection is TLS.
pub fn is_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Adds this hop to a response's `Via` (after every value it already has, all
/// lines joined).
pub fn add_via(response: &mut pingora::http::ResponseHeader) -> Result<()> {
    let ours = match response.version {
        http::Version::HTTP_2 => "2 switchyard",
        http::Version::HTTP_10 => "1.0 switchyard",
        _ => "1.1 switchyard",
    };
    let via = match response.headers.get(http::header::VIA) {
        Some(_) => HeaderValue::try_from(appended(&response.headers, http::header::VIA, ours))
            .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid Via header"))?,
        None => HeaderValue::from_static(ours),
    };
    response.insert_header("Via", via)
}

/// Sets this hop's forwarding headers on `upstream_request`, replacing a
/// client's own unless it connected from one of `trusted_proxies`.
pub fn set_headers(
    session: &Session,
    upstream_request: &mut RequestHeader,
    trusted_proxies: &[ipnet::IpNet],
    request_id: &str,
) -> Result<()> {
    // Per request, so kept lean: no `format!`, static values where they are
    // static (its cost showed up in callgrind profiles, bench/RESULTS.md;
    // inserting into Pingora's two header maps is most of what is left).
    let tls = is_tls(session);
    let proto = if tls { "https" } else { "http" };
    let via_self = if session.is_http2() {
        "2 switchyard"
    } else {
        "1.1 switchyard"
    };
    let original_host = request_authority(session.req_header());
    let peer = client_ip(session);
    // Only a trusted proxy's forwarding headers are kept (and appended
    // to); a client's own are replaced, so it cannot choose the address
    // the upstream believes.
    let trusted = peer.is_some_and(|ip| switchyard_shared::net::in_any(trusted_proxies, ip));
    match peer {
        Some(ip) => {
            let ip_text = IpText::new(ip);
            let ip_text = ip_text.as_str();
            let element = forwarded_element(ip, ip_text, proto, original_host);
            if trusted {
                let xff = appended(&upstream_request.headers, "x-forwarded-for", ip_text);
                upstream_request.insert_header("X-Forwarded-For", xff)?;
                let forwarded = appended(&upstream_request.headers, "forwarded", &element);
                upstream_request.insert_header("Forwarded", forwarded)?;
                if !upstream_request.headers.contains_key("x-real-ip") {
                    upstream_request.insert_header("X-Real-IP", ip_text)?;
                }
            } else {
                // `insert_header` replaces every line of a name already
                // there, so a client's own are gone without a separate
                // removal (each lookup in Pingora's two header maps shows per
                // request in callgrind).
                upstream_request.insert_header("X-Forwarded-For", ip_text)?;
                upstream_request.insert_header("Forwarded", element)?;
                upstream_request.insert_header("X-Real-IP", ip_text)?;
            }
        }
        // No address to tell (never trusted): only the client's go.
        None => {
            upstream_request.remove_header("X-Forwarded-For");
            upstream_request.remove_header("Forwarded");
            upstream_request.remove_header("X-Real-IP");
        }
    }
    upstream_request.insert_header("X-Forwarded-Proto", HeaderValue::from_static(proto))?;
    if let Some(host) = original_host {
        upstream_request.insert_header("X-Forwarded-Host", host)?;
    }
    let via = match upstream_request.headers.get(http::header::VIA) {
        Some(_) => HeaderValue::try_from(appended(
            &upstream_request.headers,
            http::header::VIA,
            via_self,
        ))
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid Via header"))?,
        None => HeaderValue::from_static(via_self),
    };
    upstream_request.insert_header("Via", via)?;
    upstream_request.insert_header("X-Request-Id", request_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_element_quotes_ipv6_and_drops_quotes_from_the_host() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            forwarded_element(v4, "192.0.2.7", "https", Some("a.example")),
            "for=192.0.2.7;proto=https;host=\"a.example\""
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            forwarded_element(v6, "2001:db8::1", "http", Some("a\"b.example")),
            "for=\"[2001:db8::1]\";proto=http;host=\"ab.example\""
        );
        assert_eq!(
            forwarded_element(v4, "192.0.2.7", "http", None),
            "for=192.0.2.7;proto=http"
        );
    }

    #[test]
    fn list_headers_are_appended_to() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.1 switchyard"
        );
        headers.insert("via", HeaderValue::from_static("1.0 edge"));
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.0 edge, 1.1 switchyard"
        );
        // Every line counts, not only the first.
        headers.append("via", HeaderValue::from_static("1.1 cdn, 1.1 lb"));
        assert_eq!(
            appended(&headers, "via", "1.1 switchyard"),
            "1.0 edge, 1.1 cdn, 1.1 lb, 1.1 switchyard"
        );
    }
}

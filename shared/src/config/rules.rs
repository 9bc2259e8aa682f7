//! Per-route and per-upstream request handling rules: header rules
//! (`request_headers`, `response_headers`) and the route's `rate_limit`.

use super::source::Source;
use crate::units::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// `request_headers` / `response_headers` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderRules {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

/// A header value, with `$host`, `$client_ip`, `$request_id` and `$upstream`
/// replaced per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate(pub Vec<TemplatePart>);

/// One piece of a [`HeaderTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Text as written.
    Text(String),
    /// The request's normalised host.
    Host,
    /// The client's address (as the tenant sees it).
    ClientIp,
    /// The request id.
    RequestId,
    /// The upstream group's name (empty for answers the tenant makes).
    Upstream,
}

/// Header changes applied to a message, in this order: `remove`, `set`
/// (replacing any value), `add` (appending one more line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Headers given this value, replacing any.
    pub set: Vec<(String, HeaderTemplate)>,
    /// Headers given one more line with this value.
    pub add: Vec<(String, HeaderTemplate)>,
    /// Headers removed.
    pub remove: Vec<String>,
}

impl HeaderRules {
    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// Headers that frame a message or belong to one hop (lower case): a header
/// rule may not touch them, and the tenant drops their underscore look-alikes
/// (the proxy keeps framing one way only).
pub const FRAMING_AND_HOP: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn template(text: &str) -> Result<HeaderTemplate, String> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("a header value may not contain CR, LF or NUL".into());
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            parts.push(TemplatePart::Text(rest[..at].to_string()));
        }
        let after = &rest[at + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let part = match &after[..end] {
            "host" => TemplatePart::Host,
            "client_ip" => TemplatePart::ClientIp,
            "request_id" => TemplatePart::RequestId,
            "upstream" => TemplatePart::Upstream,
            other => {
                return Err(format!(
                    "unknown variable ${other}: use $host, $client_ip, $request_id or $upstream"
                ))
            }
        };
        parts.push(part);
        rest = &after[end..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    Ok(HeaderTemplate(parts))
}

/// Validates `raw` (the value of the key at `span`); problems are recorded in
/// `src`.
pub(super) fn validate_header_rules(
    src: &mut Source,
    key: &str,
    raw: &Spanned<RawHeaderRules>,
) -> HeaderRules {
    let span = raw.span();
    let raw = raw.get_ref();
    let mut rules = HeaderRules::default();
    let name_ok = |src: &mut Source, name: &str| {
        let lower = name.to_ascii_lowercase();
        if !valid_name(name) {
            src.error(
                span.clone(),
                format!("{key}: {name:?} is not a header name"),
            );
            return None;
        }
        if FRAMING_AND_HOP.contains(&lower.as_str()) {
            src.error(
                span.clone(),
                format!("{key}: {name} frames the message or belongs to one hop; a rule may not change it"),
            );
            return None;
        }
        Some(lower)
    };
    for (list, target) in [(&raw.set, &mut rules.set), (&raw.add, &mut rules.add)] {
        for (name, value) in list {
            let Some(name) = name_ok(src, name) else {
                continue;
            };
            match template(value) {
                Ok(value) => target.push((name, value)),
                Err(e) => src.error(span.clone(), format!("{key}: {name}: {e}")),
            }
        }
    }
    for name in &raw.remove {
        if let Some(name) = name_ok(src, name) {
            rules.remove.push(name);
        }
    }
    rules
}

/// `rate_limit` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    per: Option<String>,
    requests: u32,
    window: Option<String>,
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's address.
    ClientIp,
    /// A request header's value (requests without it share one count).
    Header(String),
}

/// `rate_limit = { per, requests, window }` on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// What is counted.
    pub per: RateKey,
    /// Requests allowed per key and window (per tenant process).
    pub requests: u32,
    /// The window.
    pub window: Duration,
}

pub(super) fn validate_rate_limit(
    src: &mut Source,
    raw: &Spanned<RawRateLimit>,
) -> Option<RateLimit> {
    let span = raw.span();
    let raw = raw.get_ref();
    let per = match raw.per.as_deref().unwrap_or("client_ip") {
        "client_ip" => RateKey::ClientIp,
        other => match other.strip_prefix("header:") {
            Some(name) if valid_name(name) => RateKey::Header(name.to_ascii_lowercase()),
            _ => {
                src.error(
                    span,
                    format!("rate_limit per = {other:?}: use \"client_ip\" or \"header:NAME\""),
                );
                return None;
            }
        },
    };
    let window = match raw.window.as_deref().map(parse_duration) {
        None => Duration::from_secs(1),
        Some(Ok(window))
            if window >= Duration::from_millis(100) && window <= Duration::from_secs(3600) =>
        {
            window
        }
        Some(Ok(_)) => {
            src.error(
                span,
                "rate_limit window must be between \"100ms\" and \"1h\"",
            );
            return None;
        }
        Some(Err(e)) => {
            src.error(span, format!("rate_limit window: {e}"));
            return None;
        }
    };
    if raw.requests == 0 {
        src.error(span, "rate_limit requests must be at least 1");
        return None;
    }
    Some(RateLimit {
        per,
        requests: raw.requests,
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_their_variables() {
        assert_eq!(
            template("up=$upstream; from $client_ip").unwrap(),
            HeaderTemplate(vec![
                TemplatePart::Text("up=".into()),
                TemplatePart::Upstream,
                TemplatePart::Text("; from ".into()),
                TemplatePart::ClientIp,
            ])
        );
        assert!(template("$nope")
            .unwrap_err()
            .contains("unknown variable $nope"));
        assert!(template("a\r\nb").is_err());
    }
}

//! A route's own rules, applied on the request path: its rate limit
//! (`pingora-limits`' windowed counter, per tenant process) and the header
//! rules of the route and of the upstream group.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora_limits::rate::Rate;
use switchyard_shared::config::{HeaderRules, RateKey, RateLimit, TemplatePart};

/// What a route adds to plain routing.
pub struct RouteRules {
    /// Changes to requests sent upstream.
    pub request_headers: HeaderRules,
    /// Changes to responses from upstream.
    pub response_headers: HeaderRules,
    limit: Option<(RateLimit, Rate)>,
}

impl std::fmt::Debug for RouteRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRules")
            .field("request_headers", &self.request_headers)
            .field("response_headers", &self.response_headers)
            .field("rate_limit", &self.limit.as_ref().map(|(l, _)| l))
            .finish()
    }
}

/// The values a header template may name.
pub struct Vars<'a> {
    /// `$host`.
    pub host: &'a str,
    /// `$client_ip`.
    pub client_ip: &'a str,
    /// `$request_id`.
    pub request_id: &'a str,
    /// `$upstream`.
    pub upstream: &'a str,
}

impl RouteRules {
    /// The rules of one route.
    pub fn new(
        request_headers: HeaderRules,
        response_headers: HeaderRules,
        rate_limit: Option<RateLimit>,
    ) -> RouteRules {
        RouteRules {
            request_headers,
            response_headers,
            limit: rate_limit.map(|limit| {
                let rate = Rate::new(limit.window);
                (limit, rate)
            }),
        }
    }

    /// Whether the route limits its request rate.
    pub fn has_rate_limit(&self) -> bool {
        self.limit.is_some()
    }

    /// Counts a request against the route's rate limit; `Some(seconds)` to
    /// wait when it is over.
    pub fn over_limit(&self, req: &RequestHeader, client_ip: &str) -> Option<u64> {
        let (limit, rate) = self.limit.as_ref()?;
        let key = match &limit.per {
            RateKey::ClientIp => client_ip.as_bytes(),
            RateKey::Header(name) => req
                .headers
                .get(name.as_str())
                .map_or(&b""[..], |v| v.as_bytes()),
        };
        let seen = rate.observe(&key, 1);
        (seen > limit.requests as isize).then(|| limit.window.as_secs().max(1))
    }
}

fn render(parts: &[TemplatePart], vars: &Vars<'_>) -> String {
    let mut value = String::new();
    for part in parts {
        value.push_str(match part {
            TemplatePart::Text(text) => text,
            TemplatePart::Host => vars.host,
            TemplatePart::ClientIp => vars.client_ip,
            TemplatePart::RequestId => vars.request_id,
            TemplatePart::Upstream => vars.upstream,
        });
    }
    value
}

/// Applies `rules` to a request header.
pub fn apply_to_request(
    rules: &HeaderRules,
    req: &mut RequestHeader,
    vars: &Vars<'_>,
) -> pingora::Result<()> {
    for name in &rules.remove {
        req.remove_header(name.as_str());
    }
    for (name, value) in &rules.set {
        req.insert_header(name.clone(), render(&value.0, vars))?;
    }
    for (name, value) in &rules.add {
        req.append_header(name.clone(), render(&value.0, vars))?;
    }
    Ok(())
}

/// Applies `rules` to a response header.
pub fn apply_to_response(
    rules: &HeaderRules,
    resp: &mut ResponseHeader,
    vars: &Vars<'_>,
) -> pingora::Result<()> {
    for name in &rules.remove {
        resp.remove_header(name.as_str());
    }
    for (name, value) in &rules.set {
        resp.insert_header(name.clone(), render(&value.0, vars))?;
    }
    for (name, value) in &rules.add {
        resp.append_header(name.clone(), render(&value.0, vars))?;
    }
    Ok(())
}

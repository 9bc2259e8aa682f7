//! The built-in `respond = "echo"` route: JSON describing the request as the
//! tenant received it (for demos, tests and checking what a client sends).

use super::respond::respond_json;
use super::{RequestCtx, TenantProxy};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Map, Value};

/// The largest request body the echo responder reads.
const ECHO_BODY_LIMIT: usize = 1 << 20;

impl TenantProxy {
    /// Answers the request with its own description.
    pub(super) async fn echo(&self, session: &mut Session, ctx: &RequestCtx) -> Result<()> {
        let mut body_bytes = 0usize;
        while let Some(chunk) = session.read_request_body().await? {
            body_bytes += chunk.len();
            if body_bytes > ECHO_BODY_LIMIT {
                return respond_json(
                    session,
                    413,
                    &json!({"error": "echo reads at most 1 MiB of body"}),
                    &[],
                )
                .await;
            }
        }
        let req = session.req_header();
        let mut headers = Map::new();
        for (name, value) in req.headers.iter() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match headers.get_mut(name.as_str()) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(&value);
                }
                _ => {
                    headers.insert(name.as_str().to_string(), Value::String(value));
                }
            }
        }
        let body = json!({
            "tenant": self.tenant,
            "pid": self.pid,
            "request_id": ctx.request_id,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
            "version": format!("{:?}", req.version),
            "host": ctx.host,
            "headers": headers,
            "body_bytes": body_bytes,
            "client_addr": session.client_addr().map(|a| a.to_string()),
            "tls": super::forwarding::is_tls(session),
        });
        respond_json(session, 200, &body, &[]).await
    }
}

//! The tenant's own answers: short JSON bodies (errors, refusals, the echo)
//! and the bounds on what an error may say.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, Result};
use serde_json::Value;

/// Writes a whole JSON response (`body` and a newline), with `extra` headers.
pub async fn respond_json(
    session: &mut Session,
    status: u16,
    body: &Value,
    extra: &[(&str, &str)],
) -> Result<()> {
    let body = Bytes::from(body.to_string() + "\n");
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    for (name, value) in extra {
        resp.insert_header(name.to_string(), value.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Most bytes of an error's text that reach a log line.
pub const MAX_LOGGED_ERROR: usize = 512;

/// `text` cut to [`MAX_LOGGED_ERROR`] bytes (on a character boundary).
pub fn bounded(text: &str) -> &str {
    switchyard_shared::text::cut(text, MAX_LOGGED_ERROR)
}

/// What a client is told about a failure: the kind of error, never the
/// upstream's address or bytes.
pub fn error_message(e: &Error) -> String {
    let side = match e.esource() {
        ErrorSource::Upstream => "upstream",
        ErrorSource::Downstream => "request",
        ErrorSource::Internal | ErrorSource::Unset => "proxy",
    };
    format!("{side} error: {}", e.etype().as_str())
}

/// Writes a redirect to `location` (no body but a short text).
pub async fn redirect(session: &mut Session, status: u16, location: &str) -> Result<()> {
    let body = Bytes::from(format!("redirecting to {location}\n"));
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Writes a `text/plain` response.
pub async fn plain(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(2))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

//! One access-log line, written by hand straight into the writer's buffer:
//! JSON, or the same fields as `key=value` text.
//!
//! A line is written for every request, so nothing here goes through
//! `core::fmt` or allocates on the common path: integers through `itoa`, IPv4
//! addresses octet by octet, the time from a per-thread cache of the current
//! second, and strings copied whole unless they hold a byte JSON escapes.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use switchyard_shared::config::{LogFormat, ServerAddr};

/// One request, as logged. Borrowed fields: nothing is copied to build it.
pub struct Entry<'a> {
    /// When the request started (written as RFC 3339 UTC, milliseconds).
    pub started_at: SystemTime,
    pub tenant: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// Only when the tenant logs queries (`[log] query = true`).
    pub query: Option<&'a str>,
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: usize,
    /// Response body bytes written to the client.
    pub bytes_out: usize,
    /// From the request head to the end of the response.
    pub duration: Duration,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    /// The server of the last attempt.
    pub server: Option<&'a ServerAddr>,
    /// From the last attempt's start to its response header.
    pub upstream_time: Option<Duration>,
    /// Attempts after the first.
    pub retries: usize,
    pub client: Option<SocketAddr>,
    /// `TLSv1.3`, `TLSv1.2`.
    pub tls_version: Option<&'a str>,
    pub tls_cipher: Option<&'a str>,
    pub alpn: Option<&'static str>,
    pub user_agent: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub request_id: &'a str,
    /// The W3C trace id (written as 32 lower-case hex digits).
    pub trace_id: u128,
    /// Why the request failed, if it did (already bounded).
    pub error: Option<&'a str>,
}

/// Appends `entry` as one line in `format`, with its newline.
pub fn write(out: &mut Vec<u8>, format: LogFormat, entry: &Entry<'_>) {
    out.reserve(1024);
    let mut line = Line { out, format };
    line.text(TIME, Some(rfc3339_cached(entry.started_at).as_str()));
    line.text(key!("tenant"), Some(entry.tenant));
    line.text(key!("host"), Some(entry.host));
    line.text(key!("method"), Some(entry.method));
    line.text(key!("path"), Some(entry.path));
    if let Some(query) = entry.query {
        line.text(key!("query"), Some(query));
    }
    line.number(key!("status"), Some(entry.status as u64));
    line.number(key!("bytes_in"), Some(entry.bytes_in as u64));
    line.number(key!("bytes_out"), Some(entry.bytes_out as u64));
    line.millis(key!("duration_ms"), Some(entry.duration));
    line.text(key!("route"), Some(entry.route));
    line.text(key!("upstream"), entry.upstream);
    match entry.server {
        Some(ServerAddr::Tcp(addr)) => line.socket_addr(key!("server"), Some(*addr)),
        Some(unix) => line.text(key!("server"), Some(&unix.to_string())),
        None => line.text(key!("server"), None),
    }
    line.millis(key!("upstream_ms"), entry.upstream_time);
    line.number(key!("retries"), Some(entry.retries as u64));
    line.ip(key!("client_ip"), entry.client.map(|c| c.ip()));
    line.number(key!("client_port"), entry.client.map(|c| c.port() as u64));
    line.text(key!("tls_version"), entry.tls_version);
    line.text(key!("tls_cipher"), entry.tls_cipher);
    line.text(key!("alpn"), entry.alpn);
    line.text(key!("user_agent"), entry.user_agent);
    line.text(key!("referer"), entry.referer);
    line.text(key!("request_id"), Some(entry.request_id));
    let mut trace_id = [0u8; 32];
    line.text(key!("trace_id"), Some(hex32(entry.trace_id, &mut trace_id)));
    if let Some(error) = entry.error {
        line.text(key!("error"), Some(error));
    }
    line.finish();
}

/// A field's name with what comes before its value, in both formats.
#[derive(Clone, Copy)]
struct Key {
    json: &'static [u8],
    text: &'static [u8],
}

/// The [`Key`] of a field that is not the first.
macro_rules! key {
    ($name:literal) => {
        Key {
            json: concat!(",\"", $name, "\":").as_bytes(),
            text: concat!(" ", $name, "=").as_bytes(),
        }
    };
}
use key;

/// The first field.
const TIME: Key = Key {
    json: b"{\"time\":",
    text: b"time=",
};

/// A line being written: JSON (`{"key":value,…}`) or text (`key=value …`).
struct Line<'o> {
    out: &'o mut Vec<u8>,
    format: LogFormat,
}

impl Line<'_> {
    fn key(&mut self, key: Key) {
        self.out.extend_from_slice(match self.format {
            LogFormat::Json => key.json,
            LogFormat::Text => key.text,
        });
    }

    fn null(&mut self) {
        self.out.extend_from_slice(match self.format {
            LogFormat::Json => b"null",
            LogFormat::Text => b"-",
        });
    }

    fn finish(self) {
        if self.format == LogFormat::Json {
            self.out.push(b'}');
        }
        self.out.push(b'\n');
    }

    /// A string value: JSON-quoted; in text bare unless it is empty or holds
    /// a space, quote, `=` or control character (then JSON-quoted).
    fn text(&mut self, key: Key, value: Option<&str>) {
        self.key(key);
        let Some(value) = value else {
            return self.null();
        };
        let quote = match self.format {
            LogFormat::Json => true,
            LogFormat::Text => {
                value.is_empty()
                    || value.bytes().fold(false, |any, b| {
                        any | (b == b' ') | (b == b'"') | (b == b'=') | (b < 0x20) | (b == 0x7f)
                    })
            }
        };
        if quote {
            json_string(self.out, value);
        } else {
            self.out.extend_from_slice(value.as_bytes());
        }
    }

    /// A value that needs neither quoting in text nor escaping in JSON
    /// (addresses, times), quoted in JSON.
    fn plain(&mut self, key: Key, write: impl FnOnce(&mut Vec<u8>)) {
        self.key(key);
        let json = self.format == LogFormat::Json;
        if json {
            self.out.push(b'"');
        }
        write(self.out);
        if json {
            self.out.push(b'"');
        }
    }

    fn number(&mut self, key: Key, value: Option<u64>) {
        self.key(key);
        match value {
            Some(n) => self
                .out
                .extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            None => self.null(),
        }
    }

    /// Milliseconds with three decimals (microsecond precision).
    fn millis(&mut self, key: Key, value: Option<Duration>) {
        self.key(key);
        let Some(value) = value else {
            return self.null();
        };
        let micros = value.as_micros().min(u64::MAX as u128) as u64;
        self.out
            .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
        let frac = (micros % 1000) as u16;
        self.out.extend_from_slice(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    fn ip(&mut self, key: Key, value: Option<IpAddr>) {
        match value {
            Some(ip) => self.plain(key, |out| write_ip(out, ip)),
            None => self.text(key, None),
        }
    }

    fn socket_addr(&mut self, key: Key, value: Option<SocketAddr>) {
        match value {
            Some(addr) => self.plain(key, |out| {
                match addr.ip() {
                    IpAddr::V4(_) => write_ip(out, addr.ip()),
                    IpAddr::V6(_) => {
                        out.push(b'[');
                        write_ip(out, addr.ip());
                        out.push(b']');
                    }
                }
                out.push(b':');
                out.extend_from_slice(itoa::Buffer::new().format(addr.port()).as_bytes());
            }),
            None => self.text(key, None),
        }
    }
}

/// An IP address as `Display` writes it.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(crate::ip_text::IpText::new(ip).as_str().as_bytes());
}

/// `value` as a JSON string, quoted and escaped as `serde_json` does.
fn json_string(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let bytes = value.as_bytes();
    // Most values need no escape: one pass without branches says so.
    let plain = !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (at, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..at]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        start = at + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `value` as 32 lower-case hex digits in `buf`.
fn hex32(value: u128, buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, digit) in buf.iter_mut().enumerate() {
        *digit = HEX[((value >> (124 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).expect("hex digits are ASCII")
}

/// An RFC 3339 UTC time with milliseconds: `2026-11-30T10:03:04.214Z`.
pub struct TimeText([u8; 24]);

impl TimeText {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("digits and separators are ASCII")
    }
}

thread_local! {
    /// The second last formatted on this thread, and its text up to the dot.
    static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
}

/// `time` as RFC 3339 UTC with milliseconds; the date and time of day are
/// computed once per second per thread.
pub fn rfc3339_cached(time: SystemTime) -> TimeText {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = SECOND.with(|cell| {
        let (cached, prefix) = cell.get();
        if cached == secs {
            return prefix;
        }
        let prefix = second_text(secs);
        cell.set((secs, prefix));
        prefix
    });
    let millis = since.subsec_millis();
    let mut text = [0u8; 24];
    text[..20].copy_from_slice(&prefix);
    text[20] = b'0' + (millis / 100) as u8;
    text[21] = b'0' + (millis / 10 % 10) as u8;
    text[22] = b'0' + (millis % 10) as u8;
    text[23] = b'Z';
    TimeText(text)
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the Unix epoch.
fn second_text(secs: u64) -> [u8; 20] {
    let secs = secs as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999);
    let mut text = [0u8; 20];
    let mut put = |at: usize, value: i64, digits: usize| {
        let mut value = value;
        for i in (0..digits).rev() {
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, rest / 3600, 2);
    put(14, rest % 3600 / 60, 2);
    put(17, rest % 60, 2);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ] {
        text[at] = sep;
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            started_at: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
            tenant: "shop",
            host: "shop.test",
            method: "GET",
            path: "/a b\"c\\\n\u{1}",
            query: None,
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            duration: Duration::from_micros(1_500),
            route: "/",
            upstream: Some("app"),
            server: None,
            upstream_time: Some(Duration::from_micros(250)),
            retries: 0,
            client: Some("192.168.0.10:51234".parse().unwrap()),
            tls_version: Some("TLSv1.3"),
            tls_cipher: None,
            alpn: Some("http/1.1"),
            user_agent: Some("curl/8.0"),
            referer: None,
            request_id: "1-2",
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            error: None,
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let text = |t| rfc3339_cached(t).as_str().to_string();
        assert_eq!(text(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(text(t), "2026-11-18T11:06:40.123Z");
        // The same second again, from the cache, with other milliseconds.
        assert_eq!(
            text(t + Duration::from_millis(800)),
            "2026-11-18T11:06:40.923Z"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(text(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_json_line_parses_with_every_field() {
        let mut out = Vec::new();
        let mut with_server = entry();
        let server = ServerAddr::Tcp("[::1]:8080".parse().unwrap());
        with_server.server = Some(&server);
        with_server.error = Some("upstream said \"no\"");
        write(&mut out, LogFormat::Json, &with_server);
        assert_eq!(out.last(), Some(&b'\n'));
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["time"], "2026-11-18T11:06:40.123Z");
        assert_eq!(line["path"], "/a b\"c\\\n\u{1}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes_out"], 1234);
        assert_eq!(line["duration_ms"].as_f64(), Some(1.5));
        assert_eq!(line["upstream_ms"].as_f64(), Some(0.25));
        assert_eq!(line["server"], "[::1]:8080");
        assert_eq!(line["client_ip"], "192.168.0.10");
        assert_eq!(line["client_port"], 51234);
        assert_eq!(line["tls_cipher"], serde_json::Value::Null);
        assert_eq!(line["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(line["error"], "upstream said \"no\"");
        assert!(line.get("query").is_none());
        // Exactly the escapes serde_json writes.
        let ours = String::from_utf8(out).unwrap();
        let theirs = serde_json::to_string("/a b\"c\\\n\u{1}").unwrap();
        assert!(ours.contains(&format!("\"path\":{theirs}")), "{ours}");
    }

    #[test]
    fn a_text_line_has_the_same_fields() {
        let mut out = Vec::new();
        write(&mut out, LogFormat::Text, &entry());
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("time=2026-11-18T11:06:40.123Z tenant=shop host=shop.test method=GET path=\"/a b\\\"c\\\\\\n\\u0001\" status=200 "), "{line}");
        assert!(line.contains(" duration_ms=1.500 "), "{line}");
        assert!(line.contains(" server=- "), "{line}");
        assert!(
            line.contains(" client_ip=192.168.0.10 client_port=51234 "),
            "{line}"
        );
        assert!(
            line.ends_with(" trace_id=0af7651916cd43dd8448eb211c80319c\n"),
            "{line}"
        );
        assert!(!line.contains("error="), "{line}");
    }
}

//! Request identity across hops: the `X-Request-Id` a trusted client may bring,
//! and the W3C `traceparent` (<https://www.w3.org/TR/trace-context/>), kept
//! when the client sends a valid one and started otherwise, so the upstream and
//! the access line share its trace id.

/// Whether `id` is a request id worth keeping: 1 to 128 characters of
/// `[A-Za-z0-9._:+/=-]` (UUIDs, hex, base64), nothing a log or header could
/// be confused by.
pub fn is_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(&b))
}

/// A `traceparent` value: version 00, trace id, parent (span) id, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: u128,
    parent_id: u64,
    flags: u8,
}

impl TraceParent {
    /// A new trace (random ids, not sampled).
    pub fn new_trace() -> TraceParent {
        TraceParent {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            flags: 0,
        }
    }

    /// Parses a `traceparent` header; `None` when it is not valid (version
    /// `ff`, zero ids, wrong lengths, upper-case hex).
    pub fn parse(text: &str) -> Option<TraceParent> {
        let mut parts = text.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" {
            return None;
        }
        // Version 00 has exactly four fields; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        if !lower_hex(trace, 32) || !lower_hex(parent, 16) || !lower_hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    /// The trace id (logged as 32 lower-case hex digits).
    pub fn trace_id(&self) -> u128 {
        self.trace_id
    }
}

impl TraceParent {
    /// The `traceparent` header value, `00-TRACE-PARENT-FLAGS` (written
    /// without `core::fmt`: it is made for every proxied request).
    pub fn header_value(&self) -> http::HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'-'; 55];
        text[..2].copy_from_slice(b"00");
        let mut put = |at: usize, value: u128, digits: usize| {
            for i in 0..digits {
                text[at + i] = HEX[((value >> (4 * (digits - 1 - i))) & 0xf) as usize];
            }
        };
        put(3, self.trace_id, 32);
        put(36, self.parent_id as u128, 16);
        put(53, self.flags as u128, 2);
        http::HeaderValue::from_bytes(&text).expect("hex digits and dashes")
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.trace_id(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parsed.header_value(), parsed.to_string().as_str());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        let fresh = TraceParent::new_trace();
        assert_eq!(TraceParent::parse(&fresh.to_string()), Some(fresh));
    }

    #[test]
    fn request_ids_are_bounded_plain_tokens() {
        assert!(is_request_id("f3b1c2d4-0000-4000-8000-123456789abc"));
        assert!(is_request_id("abc+/="));
        assert!(!is_request_id(""));
        assert!(!is_request_id(&"a".repeat(129)));
        assert!(!is_request_id("a b"));
        assert!(!is_request_id("a\"b"));
        assert!(!is_request_id("a\nb"));
    }
}

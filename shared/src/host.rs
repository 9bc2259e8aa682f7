//! Host-name normalisation and the table that maps names to their owner.
//!
//! Names from SNI, `Host` headers and configuration all go through
//! [`normalize`] before they are compared, so `Alpha.Localhost.:8443` and
//! `alpha.localhost` are the same name.
//!
//! A pattern is either an exact name (`shop.example.com`) or a leading wildcard
//! (`*.example.com`). A wildcard matches **one or more** labels in front of its
//! suffix — `a.example.com` and `a.b.example.com` — but never the bare suffix
//! `example.com` itself. An exact name always wins over a wildcard, and a longer
//! wildcard suffix wins over a shorter one. A lookup costs one hash probe per label
//! of the name looked up, whatever the number of names in the table.

use std::collections::HashMap;

/// The longest host name accepted (RFC 1035 limits a name to 253 characters).
pub const MAX_HOST_LEN: usize = 253;

/// Normalises a host name as sent by a client or written in a config.
///
/// Lower-cases it, removes one trailing dot and a `:port` suffix, and strips the
/// brackets of an IPv6 literal (`[::1]:443` becomes `::1`). Returns `None` for a
/// name that is empty, too long, or contains characters no host name has
/// (anything but letters, digits, `-`, `_`, `.`, and `:` inside an IPv6 literal).
pub fn normalize(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let name = if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal, optionally followed by :port.
        let end = rest.find(']')?;
        let (literal, after) = rest.split_at(end);
        let after = &after[1..];
        if !(after.is_empty() || valid_port(after.strip_prefix(':')?)) {
            return None;
        }
        return canonical_ipv6(literal);
    } else if raw.matches(':').count() > 1 {
        // A bare IPv6 literal (as SNI never carries, but a config might).
        return canonical_ipv6(raw);
    } else if let Some((host, port)) = raw.rsplit_once(':') {
        if !valid_port(port) {
            return None;
        }
        host
    } else {
        raw
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return None;
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !name.split('.').all(valid_label) {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

/// An IPv6 address in its one canonical text form (RFC 5952), or `None`.
fn canonical_ipv6(literal: &str) -> Option<String> {
    literal
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|addr| addr.to_string())
}

fn valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// A host pattern from configuration, already normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Matches exactly this name.
    Exact(String),
    /// `*.suffix`: matches any name with one or more labels before `suffix`.
    Wildcard(String),
}

impl HostPattern {
    /// Parses `name` or `*.suffix`; `None` when the name is not a valid host name.
    pub fn parse(raw: &str) -> Option<HostPattern> {
        match raw.trim().strip_prefix("*.") {
            Some(suffix) => normalize(suffix).map(HostPattern::Wildcard),
            None => normalize(raw).map(HostPattern::Exact),
        }
    }

    /// Whether this single pattern matches an already normalised `name`.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == name,
            HostPattern::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Maps host patterns to values (tenant indices, routes, …).
#[derive(Debug, Clone)]
pub struct HostTable<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
}

impl<T> Default for HostTable<T> {
    fn default() -> Self {
        HostTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> HostTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pattern; returns the value it replaced, if the pattern was present.
    pub fn insert(&mut self, pattern: HostPattern, value: T) -> Option<T> {
        match pattern {
            HostPattern::Exact(name) => self.exact.insert(name, value),
            HostPattern::Wildcard(suffix) => self.wildcard.insert(suffix, value),
        }
    }

    /// Whether exactly this pattern is in the table.
    pub fn contains_pattern(&self, pattern: &HostPattern) -> bool {
        match pattern {
            HostPattern::Exact(name) => self.exact.contains_key(name),
            HostPattern::Wildcard(suffix) => self.wildcard.contains_key(suffix),
        }
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether the table has no patterns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks up an already normalised name: the exact entry if any, else the
    /// wildcard with the longest matching suffix.
    pub fn lookup(&self, name: &str) -> Option<&T> {
        if let Some(value) = self.exact.get(name) {
            return Some(value);
        }
        if self.wildcard.is_empty() {
            return None;
        }
        // Strip one label at a time: "a.b.example.com" tries "b.example.com",
        // then "example.com", then "com" — longest suffix first.
        let mut rest = name;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(value) = self.wildcard.get(rest) {
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_port_dot_and_ipv6() {
        assert_eq!(
            normalize("Alpha.LocalHost").as_deref(),
            Some("alpha.localhost")
        );
        assert_eq!(
            normalize("alpha.localhost.").as_deref(),
            Some("alpha.localhost")
        );
        assert_eq!(
            normalize("alpha.localhost:8443").as_deref(),
            Some("alpha.localhost")
        );
        assert_eq!(
            normalize("alpha.localhost.:8443").as_deref(),
            Some("alpha.localhost")
        );
        assert_eq!(normalize("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(normalize("[FE80::1]").as_deref(), Some("fe80::1"));
        assert_eq!(normalize("[0:0::1]:443").as_deref(), Some("::1"));
        assert_eq!(normalize("127.0.0.1:80").as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        // Found by the fuzzer: "[:]" was accepted as ":", which is no name at all.
        for bad in [
            "[:]",
            "[::g]",
            ":::",
            "",
            ".",
            "a..b",
            "exa mple.com",
            "a/b",
            "host:",
            "host:port",
            "[::1",
            "a\0b",
            "ü.com",
        ] {
            assert_eq!(normalize(bad), None, "{bad:?} should be refused");
        }
        assert_eq!(normalize(&"a".repeat(64)), None, "label over 63 bytes");
        let long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(normalize(&long), None, "name over 253 bytes");
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_suffix() {
        let pattern = HostPattern::parse("*.Example.com").unwrap();
        assert!(pattern.matches("a.example.com"));
        assert!(pattern.matches("a.b.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches("badexample.com"));
    }

    #[test]
    fn table_prefers_exact_then_longest_wildcard() {
        let mut table = HostTable::new();
        table.insert(HostPattern::parse("*.example.com").unwrap(), "wide");
        table.insert(HostPattern::parse("*.shop.example.com").unwrap(), "shop");
        table.insert(HostPattern::parse("www.shop.example.com").unwrap(), "www");
        assert_eq!(table.lookup("www.shop.example.com"), Some(&"www"));
        assert_eq!(table.lookup("cart.shop.example.com"), Some(&"shop"));
        assert_eq!(table.lookup("a.b.shop.example.com"), Some(&"shop"));
        assert_eq!(table.lookup("shop.example.com"), Some(&"wide"));
        assert_eq!(table.lookup("example.com"), None);
        assert_eq!(table.lookup("other.org"), None);
    }
}

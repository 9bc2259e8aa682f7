//! The PROXY protocol header (v1 text, v2 binary) a trusted load balancer puts
//! before the client's bytes: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.
//!
//! A pure function over the bytes peeked so far, like the TLS and HTTP peeks:
//! it says how many bytes the header takes (the splitter then reads exactly
//! those, leaving the client's own bytes for the routing peek) and which client
//! address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (16 bytes plus addresses and TLVs).
pub const V2_MAX: usize = 16 + 512;

/// What the bytes seen so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not enough bytes yet.
    Incomplete,
    /// A whole header of `len` bytes; `source` is the client's address (`None`
    /// for v2 `LOCAL` and v1 `UNKNOWN`: a health check, use the peer's own).
    Complete {
        /// Header length in bytes.
        len: usize,
        /// The client's address.
        source: Option<SocketAddr>,
    },
    /// Not a valid PROXY header: the reason, for the metrics label's log line.
    Invalid(&'static str),
}

/// Parses a PROXY v1 or v2 header at the start of `buf`.
pub fn parse(buf: &[u8]) -> ProxyHeader {
    if buf.is_empty() {
        return ProxyHeader::Incomplete;
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    ProxyHeader::Invalid("no PROXY header")
}

fn parse_v1(buf: &[u8]) -> ProxyHeader {
    let prefix = b"PROXY ";
    let seen = buf.len().min(prefix.len());
    if buf[..seen] != prefix[..seen] {
        return ProxyHeader::Invalid("no PROXY header");
    }
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            ProxyHeader::Invalid("v1 line too long")
        } else {
            ProxyHeader::Incomplete
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return ProxyHeader::Invalid("v1 line not ended by CRLF");
    }
    let Ok(line) = std::str::from_utf8(&buf[prefix.len()..end - 1]) else {
        return ProxyHeader::Invalid("v1 line not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let len = end + 1;
    match fields.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader::Complete { len, source: None },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (Ok(src), Ok(_dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
                return ProxyHeader::Invalid("v1 address does not parse");
            };
            if (*family == "TCP4") != src.is_ipv4() {
                return ProxyHeader::Invalid("v1 address family mismatch");
            }
            let port = |p: &str| {
                (!p.starts_with('0') || p == "0")
                    .then(|| p.parse::<u16>().ok())
                    .flatten()
            };
            match (port(sport), port(dport)) {
                (Some(sport), Some(_)) => ProxyHeader::Complete {
                    len,
                    source: Some(SocketAddr::new(src, sport)),
                },
                _ => ProxyHeader::Invalid("v1 port does not parse"),
            }
        }
        _ => ProxyHeader::Invalid("v1 line malformed"),
    }
}

fn parse_v2(buf: &[u8]) -> ProxyHeader {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return ProxyHeader::Invalid("no PROXY header");
    }
    if buf.len() < 16 {
        return ProxyHeader::Incomplete;
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return ProxyHeader::Invalid("v2 version is not 2");
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return ProxyHeader::Invalid("v2 header too long");
    }
    if buf.len() < len {
        return ProxyHeader::Incomplete;
    }
    let addresses = &buf[16..len];
    match version_command & 0x0f {
        // LOCAL: the balancer's own connection (health checks).
        0 => ProxyHeader::Complete { len, source: None },
        1 => match buf[13] {
            // TCP over IPv4: src, dst (4 bytes each), sport, dport.
            0x11 if addresses.len() >= 12 => {
                let ip = Ipv4Addr::new(addresses[0], addresses[1], addresses[2], addresses[3]);
                let port = u16::from_be_bytes([addresses[8], addresses[9]]);
                ProxyHeader::Complete {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V4(ip), port)),
                }
            }
            // TCP over IPv6: 16 bytes each.
            0x21 if addresses.len() >= 36 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[..16]);
                let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                ProxyHeader::Complete {
                    len,
                    source: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
                }
            }
            0x11 | 0x21 => ProxyHeader::Invalid("v2 address block too short"),
            // UNSPEC, UDP, Unix: no TCP client address to use.
            0x00 => ProxyHeader::Complete { len, source: None },
            _ => ProxyHeader::Invalid("v2 family or transport not TCP"),
        },
        _ => ProxyHeader::Invalid("v2 command unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut header = V2_SIGNATURE.to_vec();
        header.push(0x20 | command);
        header.push(family);
        header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        header.extend_from_slice(addresses);
        header
    }

    #[test]
    fn v1_lines_give_the_client_address_and_their_length() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(line),
            ProxyHeader::Complete {
                len: 43,
                source: Some("203.0.113.7:51000".parse().unwrap())
            }
        );
        let six = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 80\r\n";
        assert_eq!(
            parse(six),
            ProxyHeader::Complete {
                len: six.len(),
                source: Some("[2001:db8::7]:4000".parse().unwrap())
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Complete {
                len: 15,
                source: None
            }
        );
        // Every prefix of a good line is incomplete, never invalid.
        for cut in 0..line.len().min(42) {
            assert_eq!(parse(&line[..cut]), ProxyHeader::Incomplete, "{cut}");
        }
    }

    #[test]
    fn bad_v1_lines_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 070000 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 01 443\r\n",
            b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\n",
            b"PROXY TCP9 a b 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), ProxyHeader::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b'P', b'R', b'O', b'X', b'Y', b' ']
            .into_iter()
            .chain(std::iter::repeat_n(b'1', 120))
            .collect::<Vec<u8>>();
        assert_eq!(parse(&long), ProxyHeader::Invalid("v1 line too long"));
    }

    #[test]
    fn v2_headers_give_the_client_address_and_their_length() {
        let mut four = vec![203, 0, 113, 7, 10, 0, 0, 1];
        four.extend_from_slice(&51000u16.to_be_bytes());
        four.extend_from_slice(&443u16.to_be_bytes());
        let header = v2(1, 0x11, &four);
        assert_eq!(
            parse(&header),
            ProxyHeader::Complete {
                len: 28,
                source: Some("203.0.113.7:51000".parse().unwrap())
            }
        );
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), ProxyHeader::Incomplete, "{cut}");
        }
        let mut six: Vec<u8> = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        six.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        six.extend_from_slice(&4000u16.to_be_bytes());
        six.extend_from_slice(&80u16.to_be_bytes());
        six.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV after the addresses
        assert_eq!(
            parse(&v2(1, 0x21, &six)),
            ProxyHeader::Complete {
                len: 16 + six.len(),
                source: Some("[2001:db8::7]:4000".parse().unwrap())
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            ProxyHeader::Complete {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert_eq!(
            parse(&wrong_version),
            ProxyHeader::Invalid("v2 version is not 2")
        );
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 4])),
            ProxyHeader::Invalid("v2 address block too short")
        );
        assert_eq!(
            parse(&v2(1, 0x12, &[0; 12])),
            ProxyHeader::Invalid("v2 family or transport not TCP")
        );
        assert_eq!(
            parse(&v2(7, 0x11, &[0; 12])),
            ProxyHeader::Invalid("v2 command unknown")
        );
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&60_000u16.to_be_bytes());
        assert_eq!(parse(&huge), ProxyHeader::Invalid("v2 header too long"));
        assert_eq!(
            parse(b"\r\n\r\nXX"),
            ProxyHeader::Invalid("no PROXY header")
        );
    }
}

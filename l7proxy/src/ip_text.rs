//! An IP address as text without allocating, and IPv4 without `core::fmt`
//! (whose `Ipv4Addr` formatting costs over a thousand instructions): client
//! addresses are written into several headers and the access line of every
//! request.

use std::net::IpAddr;

/// The text of an IP address, as `Display` writes it.
pub struct IpText {
    buf: [u8; 45],
    len: u8,
}

impl IpText {
    /// Formats `ip`.
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; 45],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                let _ = write!(cursor, "{v6}");
                text.len = cursor.position() as u8;
            }
        }
        text
    }

    /// The empty text (no address).
    pub fn none() -> IpText {
        IpText {
            buf: [0; 45],
            len: 0,
        }
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len as usize] = byte;
        self.len += 1;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("ASCII digits and separators")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.100.255",
            "192.168.7.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.0.2.1",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(parsed).as_str(), parsed.to_string(), "{ip}");
        }
        assert_eq!(IpText::none().as_str(), "");
    }
}

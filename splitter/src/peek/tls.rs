//! Finding the SNI in a TLS ClientHello, record by record.
//!
//! A ClientHello may arrive over several TCP segments (a post-quantum key share
//! makes it ~1.8 KB) and may be fragmented over several TLS records. The records
//! are walked one by one and their fragments joined into the handshake message,
//! whose fixed fields `tls-parser` then decodes. Of its extensions only
//! `server_name` is decoded; the others are skipped by their framing (the
//! tenant's TLS stack reads them). With ECH, the outer (public) name is the one
//! found, as intended.

use super::{Peeked, Reject};
use std::borrow::Cow;
use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// The largest TLS plaintext record fragment (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 16384;

/// Examines the bytes at the start of a connection on a TLS port.
///
/// `max` is `max_peek_bytes`: a ClientHello not complete within that many bytes
/// is refused.
pub fn peek_client_hello(buf: &[u8], max: usize) -> Peeked {
    if buf.is_empty() {
        return Peeked::NeedMore;
    }
    if buf[0] & 0x80 != 0 {
        // SSLv2-compatible hello: two-byte length with the high bit set.
        return Peeked::Invalid(Reject::Sslv2);
    }
    if buf[0] != CONTENT_HANDSHAKE {
        return Peeked::Invalid(Reject::NotTls);
    }
    let mut pos = 0;
    // Borrow the fragment when the message fits in one record (the usual case).
    let mut handshake: Cow<[u8]> = Cow::Borrowed(&[]);
    loop {
        if buf.len() < pos + RECORD_HEADER {
            return need_more(pos + RECORD_HEADER, max);
        }
        let header = &buf[pos..pos + RECORD_HEADER];
        if header[0] != CONTENT_HANDSHAKE {
            return Peeked::Invalid(Reject::BadRecord);
        }
        if header[1] != 3 {
            return Peeked::Invalid(Reject::NotTls);
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || len > MAX_FRAGMENT {
            return Peeked::Invalid(Reject::BadRecord);
        }
        let end = pos + RECORD_HEADER + len;
        if buf.len() < end {
            return need_more(end, max);
        }
        let fragment = &buf[pos + RECORD_HEADER..end];
        handshake = if handshake.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            let mut joined = handshake.into_owned();
            joined.extend_from_slice(fragment);
            Cow::Owned(joined)
        };
        pos = end;

        if handshake.len() < 4 {
            continue;
        }
        if handshake[0] != HANDSHAKE_CLIENT_HELLO {
            return Peeked::Invalid(Reject::BadClientHello);
        }
        let body_len = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]) as usize;
        if body_len + 4 > max {
            return Peeked::Invalid(Reject::TooLarge);
        }
        if handshake.len() >= body_len + 4 {
            return server_name(&handshake[..body_len + 4]);
        }
    }
}

fn need_more(wanted: usize, max: usize) -> Peeked {
    if wanted > max {
        Peeked::Invalid(Reject::TooLarge)
    } else {
        Peeked::NeedMore
    }
}

fn server_name(message: &[u8]) -> Peeked {
    let hello = match tls_parser::parse_tls_message_handshake(message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Peeked::Invalid(Reject::BadClientHello),
    };
    let Some(extensions) = hello.ext else {
        return Peeked::Name(None);
    };
    let sni = match find_extension(extensions, EXTENSION_SERVER_NAME) {
        Ok(Some(sni)) => sni,
        Ok(None) => return Peeked::Name(None),
        Err(()) => return Peeked::Invalid(Reject::BadClientHello),
    };
    let names = match tls_parser::parse_tls_extension_sni_content(sni) {
        Ok((&[], TlsExtension::SNI(names))) => names,
        _ => return Peeked::Invalid(Reject::BadClientHello),
    };
    // host_name (type 0) is the only name type defined.
    let Some((_, raw)) = names.iter().find(|(kind, _)| kind.0 == 0) else {
        return Peeked::Name(None);
    };
    match std::str::from_utf8(raw)
        .ok()
        .and_then(switchyard_shared::host::normalize)
    {
        Some(name) => Peeked::Name(Some(name)),
        None => Peeked::Invalid(Reject::BadServerName),
    }
}

/// The `server_name` extension's type (RFC 6066 §3).
const EXTENSION_SERVER_NAME: u16 = 0;

/// Walks the extension block of a ClientHello (each extension: a two-byte
/// type, a two-byte length, that many bytes) and returns the content of
/// extension `wanted`, without decoding the others: the tenant's TLS stack
/// reads them, the splitter needs only the name. `Err` when the block's
/// framing is broken or `wanted` appears twice (duplicate extensions are
/// forbidden, RFC 8446 §4.2, and the TLS stack would refuse the handshake).
fn find_extension(mut block: &[u8], wanted: u16) -> Result<Option<&[u8]>, ()> {
    let mut found = None;
    while !block.is_empty() {
        let [t0, t1, l0, l1, rest @ ..] = block else {
            return Err(());
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if rest.len() < len {
            return Err(());
        }
        let (content, after) = rest.split_at(len);
        if u16::from_be_bytes([*t0, *t1]) == wanted {
            if found.is_some() {
                return Err(());
            }
            found = Some(content);
        }
        block = after;
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ClientHello as rustls sends it, for `server_name`.
    pub fn rustls_client_hello(server_name: &str) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    /// Re-frames a single-record ClientHello into records of at most `size` bytes.
    pub fn split_records(hello: &[u8], size: usize) -> Vec<u8> {
        let body = &hello[RECORD_HEADER..];
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// ClientHellos recorded from real clients (see testdata/client_hello/README.md).
    const RECORDED: &[(&str, &[u8], Option<&str>)] = &[
        (
            "chromium",
            include_bytes!("../../testdata/client_hello/chromium.bin"),
            Some("alpha.localhost"),
        ),
        (
            "curl-openssl",
            include_bytes!("../../testdata/client_hello/curl-openssl.bin"),
            Some("alpha.localhost"),
        ),
        (
            "openssl-s_client",
            include_bytes!("../../testdata/client_hello/openssl-s_client.bin"),
            Some("alpha.localhost"),
        ),
        (
            "python-ssl",
            include_bytes!("../../testdata/client_hello/python-ssl.bin"),
            Some("alpha.localhost"),
        ),
        (
            "python-ssl-ip-literal",
            include_bytes!("../../testdata/client_hello/python-ssl-ip-literal.bin"),
            None,
        ),
    ];

    #[test]
    fn recorded_client_hellos_yield_their_sni_and_every_prefix_asks_for_more() {
        for (client, hello, sni) in RECORDED {
            assert_eq!(
                peek_client_hello(hello, 16384),
                Peeked::Name(sni.map(str::to_string)),
                "{client}"
            );
            for cut in 0..hello.len() {
                assert_eq!(
                    peek_client_hello(&hello[..cut], 16384),
                    Peeked::NeedMore,
                    "{client} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_post_quantum_hello_is_larger_than_one_segment_and_still_parsed() {
        let (_, chromium, _) = RECORDED[0];
        assert!(chromium.len() > 1460, "{} bytes", chromium.len());
        // As the first TCP segment alone would deliver it: not enough yet.
        assert_eq!(
            peek_client_hello(&chromium[..1460], 16384),
            Peeked::NeedMore
        );
        // Re-framed into many small records, too.
        let split = split_records(chromium, 100);
        assert_eq!(
            peek_client_hello(&split, 16384),
            Peeked::Name(Some("alpha.localhost".into()))
        );
    }

    #[test]
    fn finds_sni_of_a_real_client_hello() {
        let hello = rustls_client_hello("Alpha.Localhost");
        assert_eq!(
            peek_client_hello(&hello, 16384),
            Peeked::Name(Some("alpha.localhost".into()))
        );
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let hello = rustls_client_hello("alpha.localhost");
        for cut in 0..hello.len() {
            assert_eq!(
                peek_client_hello(&hello[..cut], 16384),
                Peeked::NeedMore,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn reassembles_a_hello_fragmented_over_records() {
        let hello = rustls_client_hello("beta.localhost");
        for size in [1, 7, 100, 200] {
            let split = split_records(&hello, size);
            assert_eq!(
                peek_client_hello(&split, 1 << 20),
                Peeked::Name(Some("beta.localhost".into())),
                "records of {size} bytes"
            );
        }
    }

    #[test]
    fn ip_literal_clients_send_no_sni() {
        let hello = rustls_client_hello("127.0.0.1");
        assert_eq!(peek_client_hello(&hello, 16384), Peeked::Name(None));
    }

    #[test]
    fn refuses_what_is_not_a_client_hello() {
        assert_eq!(
            peek_client_hello(b"GET / HTTP/1.1\r\n", 16384),
            Peeked::Invalid(Reject::NotTls)
        );
        assert_eq!(
            peek_client_hello(&[0x80, 0x2e, 0x01, 0x03, 0x01], 16384),
            Peeked::Invalid(Reject::Sslv2)
        );
        assert_eq!(
            peek_client_hello(&[22, 3, 1, 0, 0], 16384),
            Peeked::Invalid(Reject::BadRecord)
        );
        assert_eq!(
            peek_client_hello(&[22, 3, 1, 0x48, 0x01], 16384),
            Peeked::Invalid(Reject::BadRecord)
        );
        assert_eq!(
            peek_client_hello(&[22, 9, 1, 0, 4], 16384),
            Peeked::Invalid(Reject::NotTls)
        );
        // A ServerHello where a ClientHello belongs.
        assert_eq!(
            peek_client_hello(&[22, 3, 1, 0, 4, 2, 0, 0, 0], 16384),
            Peeked::Invalid(Reject::BadClientHello)
        );
        // A ClientHello whose body is garbage.
        assert_eq!(
            peek_client_hello(&[22, 3, 1, 0, 6, 1, 0, 0, 2, 0xff, 0xff], 16384),
            Peeked::Invalid(Reject::BadClientHello)
        );
    }

    #[test]
    fn refuses_hellos_beyond_max_peek_bytes() {
        let hello = rustls_client_hello("alpha.localhost");
        assert_eq!(peek_client_hello(&hello[..3], 100), Peeked::NeedMore);
        assert_eq!(
            peek_client_hello(&hello, 100),
            Peeked::Invalid(Reject::TooLarge)
        );
    }

    #[test]
    fn refuses_an_invalid_server_name() {
        let hello = rustls_client_hello("alpha.localhost");
        let at = hello
            .windows(15)
            .position(|w| w == b"alpha.localhost")
            .unwrap();
        let mut bad = hello.clone();
        bad[at + 5] = b'/';
        assert_eq!(
            peek_client_hello(&bad, 16384),
            Peeked::Invalid(Reject::BadServerName)
        );
    }

    #[test]
    fn only_the_server_name_extension_is_decoded() {
        use switchyard_tests::{client_hello, sni_extension};
        // A key share whose content is nonsense: the tenant's TLS stack judges
        // it; the splitter routes by the name.
        let hello = client_hello(&[(51, vec![0xff; 3]), sni_extension(b"Alpha.localhost")]);
        assert_eq!(
            peek_client_hello(&hello, 16384),
            Peeked::Name(Some("alpha.localhost".into()))
        );
        assert_eq!(
            peek_client_hello(&client_hello(&[(43, vec![2, 3, 4])]), 16384),
            Peeked::Name(None)
        );
    }

    #[test]
    fn refuses_a_broken_extension_block_or_a_second_server_name() {
        use switchyard_tests::{client_hello, sni_extension};
        let twice = client_hello(&[sni_extension(b"a.localhost"), sni_extension(b"b.localhost")]);
        assert_eq!(
            peek_client_hello(&twice, 16384),
            Peeked::Invalid(Reject::BadClientHello)
        );
        // An extension claiming more bytes than the block holds: cut the
        // block's last byte and shorten every length above it by one.
        let mut cut = client_hello(&[sni_extension(b"a.localhost")]);
        cut.pop();
        cut[4] -= 1; // record length (fits one byte here)
        cut[8] -= 1; // handshake length
        let block_len_at = 5 + 4 + 2 + 32 + 1 + 4 + 2;
        cut[block_len_at + 1] -= 1;
        assert_eq!(
            peek_client_hello(&cut, 16384),
            Peeked::Invalid(Reject::BadClientHello)
        );
        // Bytes after the name list inside the extension.
        let mut padded = sni_extension(b"a.localhost");
        padded.1.push(0);
        assert_eq!(
            peek_client_hello(&client_hello(&[padded]), 16384),
            Peeked::Invalid(Reject::BadClientHello)
        );
    }
}

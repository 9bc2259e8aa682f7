//! Hand-built TLS ClientHellos and raw byte probes for hostile-input tests.

use super::*;

/// Builds a syntactically valid TLS ClientHello record with these extensions
/// (type, data), for hostile-input tests.
pub fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (kind, data) in extensions {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
        ext.extend_from_slice(data);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut handshake = vec![1];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    split_into_records(&handshake, 16384)
}

/// Frames a handshake message as TLS records of at most `size` bytes each.
pub fn split_into_records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The server_name extension naming `name` (raw bytes, valid or not).
pub fn sni_extension(name: &[u8]) -> (u16, Vec<u8>) {
    let mut entry = vec![0];
    entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
    entry.extend_from_slice(name);
    let mut data = (entry.len() as u16).to_be_bytes().to_vec();
    data.extend_from_slice(&entry);
    (0, data)
}

/// What a server did with bytes a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Closed without answering.
    Closed,
    /// Answered with this HTTP status.
    Status(u16),
    /// Answered with something else (e.g. a TLS ServerHello).
    Other,
    /// Said nothing and kept the connection open.
    Silent,
}

/// Connects to `addr`, sends `bytes`, and reports what came back.
pub fn outcome_of(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if answer.is_empty() {
                    return Outcome::Silent;
                }
                break;
            }
            Err(_) => break, // reset: closed
        }
    }
    if answer.is_empty() {
        return Outcome::Closed;
    }
    let text = String::from_utf8_lossy(&answer);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
    {
        Some(code) => Outcome::Status(code),
        None => Outcome::Other,
    }
}

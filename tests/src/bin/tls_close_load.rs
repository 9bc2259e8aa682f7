//! `tls-close-load`: TLS `Connection: close` load that resumes sessions, as a
//! browser does: every connection makes one request with SNI `--host`, and
//! all of them share one client session cache, so each connection after the
//! first offers a ticket from an earlier one. Bounded by `--seconds`.
//!
//! `--no-resume` makes every handshake a full one; `--group NAME` offers only
//! that key-exchange group (`X25519`, `secp256r1`). `--spread N` spreads the
//! connections over N sites: each `{}` in `--host` becomes 0, 1, … N-1 in turn.
//!
//! Prints one JSON line: connections made, how many resumed, errors.
//!
//! Usage: `tls-close-load --addr IP:PORT --host NAME [--seconds 5] [--threads 4] [--no-resume] [--group NAME] [--spread N]`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|at| args.get(at + 1))
            .cloned()
    };
    let (Some(addr), Some(host)) = (value("--addr"), value("--host")) else {
        eprintln!("usage: tls-close-load --addr IP:PORT --host NAME [--seconds 5] [--threads 4]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("--addr IP:PORT");
    let seconds: u64 = value("--seconds").map_or(5, |s| s.parse().expect("--seconds N"));
    let threads: usize = value("--threads").map_or(4, |s| s.parse().expect("--threads N"));
    let spread: usize = value("--spread").map_or(1, |s| s.parse().expect("--spread N"));
    // (SNI, request) for each site, made once.
    let sites: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..spread.max(1))
            .map(|i| {
                let host = host.replace("{}", &i.to_string());
                let request =
                    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
                (host, request.into_bytes())
            })
            .collect(),
    );
    let mut config = match value("--group") {
        Some(group) => (*switchyard_tests::tls_config_with_group(&group)).clone(),
        None => (*switchyard_tests::tls_config()).clone(),
    };
    config.resumption = match args.iter().any(|a| a == "--no-resume") {
        true => rustls::client::Resumption::disabled(),
        false => rustls::client::Resumption::in_memory_sessions(4096),
    };
    let config = Arc::new(config);
    let (connections, resumed, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (config, sites) = (config.clone(), sites.clone());
            let (connections, resumed, errors) =
                (connections.clone(), resumed.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut answer = Vec::with_capacity(4096);
                let mut next = thread;
                while Instant::now() < until {
                    let (host, request) = &sites[next % sites.len()];
                    next += 1;
                    match one_connection(addr, host, &config, request, &mut answer) {
                        Ok(was_resumed) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            if was_resumed {
                                resumed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    println!(
        "{{\"connections\":{},\"resumed\":{},\"errors\":{}}}",
        connections.load(Ordering::Relaxed),
        resumed.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    );
}

/// One connection, one request, the whole answer read: whether it resumed.
fn one_connection(
    addr: SocketAddr,
    host: &str,
    config: &Arc<rustls::ClientConfig>,
    request: &[u8],
    answer: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let tcp = TcpStream::connect(addr)?;
    // As browsers and wrk do: without it, a resumed handshake's last flight
    // and the request wait for a delayed ACK (40 ms) on some servers (nginx).
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request)?;
    answer.clear();
    match tls.read_to_end(answer) {
        Ok(_) => {}
        // A close without close_notify still delivered the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("not a 200 answer"));
    }
    Ok(tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
}

//! `fake-tenant`: a misbehaving tenant process for the hostile-tenant tests. It
//! joins a tenant's pool through `runtime_dir/tenants/NAME/handoff.sock`, as a
//! process started by hand would, and then does one bad thing:
//!
//! - `--mode no-ack`: says Hello and Ready, reads every `Conn`, never acknowledges;
//! - `--mode garbage`: says Hello and Ready, then sends undecodable datagrams as
//!   fast as it can (at most `--count`, default 300000);
//! - `--mode silent`: connects and says nothing.
//! - `--mode stats-flood`: says Hello and Ready, then sends valid `Stats`
//!   messages (about 10 KiB of JSON each) as fast as it can (at most `--count`).
//! - `--mode descriptors`: says Hello and Ready, then sends one message with
//!   `--count` descriptors (at most 64), which a process may never send.
//! - `--mode ready-flood` / `--mode ack-flood`: says Hello and Ready, then
//!   sends `Ready` again, or `Ack`s of nothing new, as fast as it can: valid
//!   two- and ten-byte messages that cost the front more to read than they
//!   cost to send.
//!
//! `--pid N` makes its `Hello` claim pid N (default 1), as a liar would.
//!
//! It prints what happened on stdout (`received N`, `sent N`, `disconnected`)
//! and exits 0 once the splitter closes the socket.
//!
//! Usage: `fake-tenant --socket PATH --tenant NAME --mode MODE [--count N] [--pid N]`

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;
use switchyard_shared::handoff::{self, Message};

fn main() {
    let mut socket = None;
    let mut tenant = None;
    let mut mode = None;
    let mut count = 300_000u64;
    let mut claimed_pid = 1u32;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => socket = args.next(),
            "--tenant" => tenant = args.next(),
            "--mode" => mode = args.next(),
            "--count" => count = args.next().and_then(|c| c.parse().ok()).unwrap_or(count),
            "--pid" => {
                claimed_pid = args
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(claimed_pid)
            }
            other => {
                eprintln!("fake-tenant: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let (Some(socket), Some(tenant), Some(mode)) = (socket, tenant, mode) else {
        eprintln!("usage: fake-tenant --socket PATH --tenant NAME --mode no-ack|garbage|silent|stats-flood|ready-flood|ack-flood|descriptors [--count N]");
        std::process::exit(2);
    };
    let fd = match handoff::seqpacket_connect(std::path::Path::new(&socket)) {
        Ok(fd) => fd,
        Err(e) => {
            println!("cannot connect: {e}");
            std::process::exit(3);
        }
    };
    let say = |message: &Message| handoff::send(fd.as_fd(), message, None);
    let mut out = std::io::stdout();
    if mode != "silent" {
        let hello = Message::Hello {
            tenant: tenant.clone(),
            pid: claimed_pid,
        };
        if say(&hello).and_then(|()| say(&Message::Ready)).is_err() {
            println!("disconnected before Ready");
            return;
        }
    }
    match mode.as_str() {
        "no-ack" | "silent" => {
            let mut received = 0u64;
            loop {
                match handoff::recv(fd.as_fd()) {
                    // The descriptors are closed at once; the splitter keeps
                    // its own copies until an Ack that never comes.
                    Ok(Some(_)) => {
                        received += 1;
                        let _ = writeln!(out, "received {received}");
                    }
                    Ok(None) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        }
        "descriptors" => {
            // One message carrying `--count` descriptors (of /dev/null): more
            // than a handoff message may carry, and none may go this way.
            let files: Vec<std::fs::File> = (0..count.min(handoff::MAX_PASSED_FDS as u64))
                .map(|_| std::fs::File::open("/dev/null").unwrap())
                .collect();
            let fds: Vec<_> = files.iter().map(|f| f.as_fd()).collect();
            let mut datagram = Vec::new();
            Message::Ready.encode(&mut datagram);
            let _ = handoff::send_with_fds(fd.as_fd(), &datagram, &fds);
            let _ = writeln!(out, "sent {}", fds.len());
            wait_until_closed(fd.as_fd());
        }
        "garbage" | "stats-flood" | "ready-flood" | "ack-flood" => {
            let mut sent = 0u64;
            let stats = switchyard_shared::tenant_stats::TenantStats {
                tls_failures: (0..300)
                    .map(|i| switchyard_shared::tenant_stats::LabelCount {
                        label: format!("reason-{i}"),
                        count: i,
                    })
                    .collect(),
                ..Default::default()
            };
            let mut datagram = Vec::new();
            match mode.as_str() {
                "garbage" => datagram.extend_from_slice(&[0xee, 0xee, 0xee]),
                "ready-flood" => Message::Ready.encode(&mut datagram),
                "ack-flood" => Message::Ack { up_to_seq: 0 }.encode(&mut datagram),
                _ => Message::Stats(Box::new(stats)).encode(&mut datagram),
            }
            while sent < count {
                match handoff::send_bytes(fd.as_fd(), &datagram, None) {
                    Ok(()) => sent += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(_) => break,
                }
            }
            let _ = writeln!(out, "sent {sent}");
            wait_until_closed(fd.as_fd());
        }
        other => {
            eprintln!("fake-tenant: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
    let _ = writeln!(out, "disconnected");
}

/// Reads (and drops) whatever the splitter sends until it closes the socket.
fn wait_until_closed(fd: std::os::fd::BorrowedFd<'_>) {
    loop {
        match handoff::recv(fd) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
}

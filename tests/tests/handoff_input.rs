//! An l7proxy given descriptors it cannot use: it closes each, says why, keeps
//! serving, acknowledges what it received, and its descriptor count returns to
//! where it was.

use std::io::Read;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use switchyard_shared::handoff::{self, ConnMeta, Message, Protocol, HANDOFF_FD_ENV};
use switchyard_tests::*;

fn conn(seq: u64) -> Message {
    Message::Conn(ConnMeta {
        seq,
        protocol: Protocol::Http,
        server_name: Some("alpha.test".into()),
        local_port: 80,
        accepted_at_us: handoff::now_us(),
        client_addr: None,
    })
}

/// Waits for the next message from the l7proxy.
fn next_message(socket: &OwnedFd) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match handoff::recv(socket.as_fd()) {
            Ok(Some(received)) => return received.message.expect("a valid message"),
            Ok(None) => panic!("the l7proxy closed the handoff socket"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no message from the l7proxy");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Starts an l7proxy for tenant alpha (an echo route) on a handoff socket
/// pair, as the splitter would, and waits for its Hello and Ready; returns its
/// directory, the process (stderr piped) and the splitter's end.
fn start_proxy(tag: &str) -> (TempDir, Proc, OwnedFd) {
    let dir = TempDir::new(tag);
    dir.write(
        "tenants/alpha.toml",
        "[[route]]\npath = \"/\"\nrespond = \"echo\"\n",
    );
    let config = dir.write(
        "host.toml",
        "[splitter]\nruntime_dir = \"run\"\norphan_timeout = \"1s\"\n[[listen]]\naddr = \"127.0.0.1:1\"\nprotocol = \"http\"\n\
         [[tenant]]\nname = \"alpha\"\nhosts = [\"alpha.test\"]\nconfig = \"tenants/alpha.toml\"\n",
    );
    let (ours, theirs) = handoff::seqpacket_pair().unwrap();
    let mut command = Command::new(bin("l7proxy"));
    command
        .args(["--tenant", "alpha", "--config"])
        .arg(&config)
        .env(HANDOFF_FD_ENV, theirs.as_raw_fd().to_string())
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped());
    switchyard_shared::sys::inherit_and_die_with_parent(&mut command, theirs.as_fd());
    let proxy = Proc(command.spawn().unwrap());
    drop(theirs);
    assert!(matches!(next_message(&ours), Message::Hello { ref tenant, .. } if tenant == "alpha"));
    assert_eq!(next_message(&ours), Message::Ready);
    (dir, proxy, ours)
}

/// Closes the splitter's end (the process drains and exits after its 1 s
/// orphan_timeout); returns its exit status and everything it logged.
fn stop(mut proxy: Proc, ours: OwnedFd) -> (std::process::ExitStatus, String) {
    drop(ours);
    let status = proxy.0.wait().unwrap();
    let mut log = String::new();
    proxy
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (status, log)
}

#[test]
fn unusable_descriptors_are_closed_with_a_reason_and_nothing_leaks() {
    let (_dir, proxy, ours) = start_proxy("handoff-input");
    let before = fd_count_stable(proxy.pid());

    // 1: a UDP socket; 2: no descriptor; 3: another protocol version, with a
    // descriptor; 4: a Unix stream socket; 5: a real TCP connection.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    handoff::send(ours.as_fd(), &conn(1), Some(udp.as_fd())).unwrap();
    handoff::send(ours.as_fd(), &conn(2), None).unwrap();
    handoff::send_bytes(ours.as_fd(), &[9, 16, 0, 0], Some(udp.as_fd())).unwrap();
    let (unix_a, _unix_b) = std::os::unix::net::UnixStream::pair().unwrap();
    handoff::send(ours.as_fd(), &conn(4), Some(unix_a.as_fd())).unwrap();
    drop((udp, unix_a));

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    handoff::send(ours.as_fd(), &conn(5), Some(accepted.as_fd())).unwrap();
    drop(accepted);
    let answer = request(&mut client, "alpha.test", "/", "Connection: close\r\n").unwrap();
    assert_eq!(answer.status, 200, "the process keeps serving");
    assert_eq!(answer.json()["tenant"], "alpha");
    drop(client);

    // Every Conn is acknowledged, usable or not.
    let mut acked = 0;
    while acked < 5 {
        if let Message::Ack { up_to_seq } = next_message(&ours) {
            acked = up_to_seq;
        }
    }
    let after = fd_count_settled(proxy.pid(), before);
    assert_eq!(
        after, before,
        "l7proxy descriptors before {before}, after {after}"
    );

    // The splitter "goes away": the process drains and exits.
    let (status, log) = stop(proxy, ours);
    assert!(status.success(), "{status}");
    for expected in [
        "unusable descriptor received; closed",
        "received descriptor is not a TCP socket (protocol 17)",
        "received descriptor is not a TCP socket (protocol 0)",
        "Conn message without a descriptor",
        "handoff protocol version 9 received",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
}

/// A process at its open-file limit: the kernel drops a handed descriptor
/// (`MSG_CTRUNC`). The `Conn` is still acknowledged, so the splitter closes
/// its copy instead of taking the process for stuck and killing it.
#[test]
fn a_conn_whose_descriptor_is_lost_at_the_open_file_limit_is_still_acknowledged() {
    let (_dir, proxy, ours) = start_proxy("handoff-nofile");
    // Its soft limit set to what it has open now: no room for another.
    let open = fd_count_stable(proxy.pid()) as u64;
    let pid = proxy.pid() as libc::pid_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on our child with a valid rlimit struct, read first
    // to keep its hard limit.
    let rc = unsafe {
        libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit);
        limit.rlim_cur = open;
        libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut())
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut clients = Vec::new();
    for seq in 1..=5 {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        handoff::send(ours.as_fd(), &conn(seq), Some(accepted.as_fd())).unwrap();
        clients.push(client);
    }
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked < 5 && Instant::now() < deadline {
        match handoff::recv(ours.as_fd()) {
            Ok(Some(received)) => {
                if let Ok(Message::Ack { up_to_seq }) = received.message {
                    acked = up_to_seq;
                }
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }

    let (_, log) = stop(proxy, ours);
    assert_eq!(acked, 5, "every Conn acknowledged:\n{log}");
    assert!(
        log.contains("at its open-file limit"),
        "the lost descriptor is explained:\n{log}"
    );
}

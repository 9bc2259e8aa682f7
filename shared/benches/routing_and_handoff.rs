//! Routing lookups with 10 and 100,000 hosts (exact and wildcard), and one
//! handoff round trip (a `Conn` carrying a real descriptor, then its `Ack`) over
//! a socketpair.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::os::fd::AsFd;
use switchyard_shared::handoff::{self, ConnMeta, Message, Protocol};
use switchyard_shared::host::{HostPattern, HostTable};

fn table(n: usize) -> HostTable<usize> {
    let mut table = HostTable::new();
    for i in 0..n {
        table.insert(
            HostPattern::parse(&format!("site{i}.example.com")).unwrap(),
            i,
        );
        table.insert(
            HostPattern::parse(&format!("*.site{i}.example.net")).unwrap(),
            i,
        );
    }
    table
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("routing");
    for n in [10, 100_000] {
        let t = table(n);
        let exact = format!("site{}.example.com", n / 2);
        let wild = format!("www.shop.site{}.example.net", n / 2);
        group.bench_function(format!("exact_{n}_hosts"), |b| {
            b.iter(|| t.lookup(black_box(&exact)))
        });
        group.bench_function(format!("wildcard_{n}_hosts"), |b| {
            b.iter(|| t.lookup(black_box(&wild)))
        });
        group.bench_function(format!("miss_{n}_hosts"), |b| {
            b.iter(|| t.lookup(black_box("nobody.example.org")))
        });
    }
    group.finish();
}

fn handoff_round_trip(c: &mut Criterion) {
    let (splitter, proxy) = handoff::seqpacket_pair().unwrap();
    let (_client, socket) = std::os::unix::net::UnixStream::pair().unwrap();
    let meta = ConnMeta {
        seq: 1,
        protocol: Protocol::Tls,
        server_name: Some("alpha.localhost".into()),
        local_port: 443,
        accepted_at_us: 0,
        client_addr: None,
    };
    c.bench_function("handoff_round_trip", |b| {
        b.iter(|| {
            handoff::send(
                splitter.as_fd(),
                &Message::Conn(meta.clone()),
                Some(socket.as_fd()),
            )
            .unwrap();
            let received = handoff::recv(proxy.as_fd()).unwrap().unwrap();
            drop(received.fds); // the l7proxy would keep it; closing keeps the fd table flat
            handoff::send(proxy.as_fd(), &Message::Ack { up_to_seq: 1 }, None).unwrap();
            handoff::recv(splitter.as_fd()).unwrap().unwrap()
        })
    });
}

criterion_group!(benches, routing, handoff_round_trip);
criterion_main!(benches);

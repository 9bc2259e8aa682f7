//! Peek-parse cost: a small ClientHello (curl/OpenSSL, 517 bytes), a
//! post-quantum one (Chromium, 1,987 bytes) and an HTTP request head.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use splitter::peek::{http::peek_request, tls::peek_client_hello, Peeked};

fn peek(c: &mut Criterion) {
    let small: &[u8] = include_bytes!("../testdata/client_hello/curl-openssl.bin");
    let pq: &[u8] = include_bytes!("../testdata/client_hello/chromium.bin");
    let request: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: alpha.localhost:8080\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n";
    assert!(matches!(
        peek_client_hello(pq, 16384),
        Peeked::Name(Some(_))
    ));
    let mut group = c.benchmark_group("peek");
    for (name, hello) in [
        ("client_hello_small_517B", small),
        ("client_hello_post_quantum_1987B", pq),
    ] {
        group.throughput(Throughput::Bytes(hello.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| peek_client_hello(black_box(hello), 16384))
        });
    }
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("http_host", |b| {
        b.iter(|| peek_request(black_box(request), 16384))
    });
    group.finish();
}

criterion_group!(benches, peek);
criterion_main!(benches);

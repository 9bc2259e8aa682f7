//! The TLS ClientHello peek parser: never panics; a name it returns is normalised;
//! with a smaller limit it never finds more than with a larger one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitter::peek::{tls::peek_client_hello, Peeked};
use switchyard_shared::host::normalize;

fuzz_target!(|data: &[u8]| {
    let result = peek_client_hello(data, 16384);
    if let Peeked::Name(Some(name)) = &result {
        assert_eq!(normalize(name).as_deref(), Some(name.as_str()));
    }
    if let Peeked::Name(_) = peek_client_hello(data, 512) {
        assert_eq!(peek_client_hello(data, 512), result);
    }
});

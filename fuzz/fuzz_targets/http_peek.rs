//! The HTTP request-head peek parser: never panics; a name it returns is normalised.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitter::peek::{http::peek_request, Peeked};
use switchyard_shared::host::normalize;

fuzz_target!(|data: &[u8]| {
    if let Peeked::Name(Some(name)) = peek_request(data, 16384) {
        assert_eq!(normalize(&name).as_deref(), Some(name.as_str()));
    }
});

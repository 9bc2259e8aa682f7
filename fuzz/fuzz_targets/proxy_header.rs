//! The PROXY protocol header parser: never panics; a complete header never
//! claims more bytes than it was given (the splitter reads exactly that many),
//! and its length does not depend on bytes after it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use splitter::peek::proxy::{parse, ProxyHeader};

fuzz_target!(|data: &[u8]| {
    if let ProxyHeader::Complete { len, source } = parse(data) {
        assert!(len <= data.len());
        assert_eq!(parse(&data[..len]), ProxyHeader::Complete { len, source });
    }
});

//! Host normalisation: never panics, is idempotent, and what it accepts a
//! pattern accepts and matches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_shared::host::{normalize, HostPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(name) = normalize(text) {
        assert_eq!(normalize(&name).as_deref(), Some(name.as_str()));
        if let Some(pattern) = HostPattern::parse(&name) {
            assert!(pattern.matches(&name));
        }
    }
});

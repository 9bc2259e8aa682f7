//! The handoff message decoder: never panics, and what it decodes encodes back
//! to a message that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use switchyard_shared::handoff::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let mut again = Vec::new();
        message.encode(&mut again);
        assert_eq!(Message::decode(&again), Ok(message));
    }
});

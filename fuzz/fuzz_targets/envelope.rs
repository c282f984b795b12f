//! Untrusted bytes into `tickbus::codec::decode_envelope`: no panic, no abort,
//! and an envelope that decodes survives a round trip (see `codec::fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickbus::codec::fuzz::decode_envelope(data);
});

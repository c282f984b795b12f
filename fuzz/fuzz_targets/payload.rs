//! Untrusted bytes into `tickbus::codec::decode_payload`, as a value of any
//! shape and as a typed struct: no panic, no abort (see `codec::fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickbus::fuzz::decode_payload_value(data);
});

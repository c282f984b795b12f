//! Whole stream entries into `tickbus::wire::parse`, as the reader sees them:
//! an arbitrary field list (names, values, how many). No panic, no abort; an
//! entry that parses borrows its payload from the input and survives a round
//! trip through the encoder (see `wire::fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tickbus::fuzz::parse_entry(data);
});

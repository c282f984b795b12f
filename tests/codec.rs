//! The codec against bad input (fault suite items 11-13) and the payload's
//! wire format, through the public API only. (The stream entry around a
//! payload has its own parser, `wire`, unit-tested and fuzzed beside it.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error as _;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tickbus::codec::{decode_payload, encode_payload, CodecLimits};
use tickbus::ErrorKind;

// ---------------------------------------------------------------------------
// Helpers.

/// Counts, per thread, the largest single allocation, so a test can show that
/// decoding did not allocate by a length the input claims.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

// SAFETY: every method forwards to `System` with the arguments it was given;
// the bookkeeping touches only a thread-local `Cell` and never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_allocation_in<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let result = f();
    (result, LARGEST.with(Cell::get))
}

fn limits() -> CodecLimits {
    CodecLimits::default()
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MessagePack of `value`, through the codec itself.
fn enc<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    encode_payload(value, &limits()).unwrap()
}

/// A MessagePack map of `entries` (keys as str, values already encoded), in
/// the order given, duplicates and all.
fn raw_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    assert!(entries.len() < 16);
    let mut out = vec![0x80 | entries.len() as u8];
    for (key, value) in entries {
        out.extend(enc(key));
        out.extend(value);
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fill {
    symbol: String,
    qty: u8,
}

/// The golden payload: `{"symbol": "BTC", "qty": 2}`. A change here is a wire
/// format change.
const GOLDEN_PAYLOAD: &str = concat!(
    "82",             // map, 2 entries
    "a673796d626f6c", // "symbol"
    "a3425443",       // "BTC"
    "a3717479",       // "qty"
    "02",             // 2
);

/// A deterministic xorshift64 generator: no dependency, same inputs every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

// ---------------------------------------------------------------------------
// Round trip and wire format.

#[test]
fn payload_structs_are_maps_keyed_by_field_name() {
    let bytes = encode_payload(
        &Fill {
            symbol: "BTC".into(),
            qty: 2,
        },
        &limits(),
    )
    .unwrap();
    assert_eq!(
        bytes[0] & 0xf0,
        0x80,
        "a fixmap, as Python and TypeScript read it"
    );
    assert_eq!(to_hex(&bytes), GOLDEN_PAYLOAD);

    #[derive(Serialize)]
    struct Outer {
        fill: Fill,
        ids: Vec<u8>,
    }
    let outer = Outer {
        fill: Fill {
            symbol: "X".into(),
            qty: 1,
        },
        ids: vec![7],
    };
    let bytes = encode_payload(&outer, &limits()).unwrap();
    // {"fill": {"symbol": "X", "qty": 1}, "ids": [7]}
    assert_eq!(
        to_hex(&bytes),
        "82a466696c6c82a673796d626f6ca158a371747901a36964739107"
    );
}

#[test]
fn payload_decodes_map_and_array_forms() {
    let fill = Fill {
        symbol: "ETH".into(),
        qty: 9,
    };
    let as_map = encode_payload(&fill, &limits()).unwrap();
    let as_array = enc(&("ETH", 9u8));
    assert_eq!(decode_payload::<Fill>(&as_map, &limits()).unwrap(), fill);
    assert_eq!(decode_payload::<Fill>(&as_array, &limits()).unwrap(), fill);
}

// ---------------------------------------------------------------------------
// Item 11: oversized.

#[test]
fn oversized_payload_is_refused_when_encoding() {
    let big = serde_bytes::ByteBuf::from(vec![1u8; 2 * 1024 * 1024]);
    let (result, largest) = largest_allocation_in(|| encode_payload(&big, &limits()));
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.message().contains("1048576"), "{err}");
    assert!(
        err.message().contains("2097157"),
        "names the size reached: {err}"
    );
    assert!(
        largest < 64 * 1024,
        "encoding built {largest} bytes before refusing"
    );

    // Many small writes: stops at the limit too.
    let small = CodecLimits {
        max_encoded_size: 100,
        ..limits()
    };
    let err = encode_payload(&vec![1u32; 1000], &small).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(encode_payload(&vec![1u32; 90], &small).is_ok());
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    // Starts with the reserved marker: if any decoding happened it would be Malformed.
    let mut input = vec![0xc1u8; 1024 * 1024 + 1];
    let err = decode_payload::<IgnoredAny>(&input, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(
        err.message().contains("1048577") && err.message().contains("1048576"),
        "{err}"
    );

    input.pop();
    assert_eq!(
        decode_payload::<IgnoredAny>(&input, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );

    let small = CodecLimits {
        max_encoded_size: 16,
        ..limits()
    };
    let payload = hex(GOLDEN_PAYLOAD);
    assert_eq!(
        decode_payload::<Fill>(&payload, &small).unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    let exact = CodecLimits {
        max_encoded_size: payload.len(),
        ..limits()
    };
    assert!(decode_payload::<Fill>(&payload, &exact).is_ok());
}

// ---------------------------------------------------------------------------
// Item 12: malformed MessagePack.

#[test]
fn random_and_mutated_bytes_never_panic() {
    let golden = hex(GOLDEN_PAYLOAD);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut seen: HashMap<Result<(), ErrorKind>, usize> = HashMap::new();
    for round in 0..30_000 {
        let input: Vec<u8> = match round % 3 {
            // Pure noise.
            0 => (0..rng.below(64)).map(|_| rng.byte()).collect(),
            // Noise behind a map marker, so the struct decoder gets further.
            1 => {
                let mut bytes = vec![0x80 | rng.below(4) as u8];
                for _ in 0..rng.below(5) {
                    let key = ["symbol", "qty", "x"][rng.below(3)];
                    bytes.extend(enc(key));
                    let len = rng.below(6);
                    bytes.extend((0..len).map(|_| rng.byte()));
                }
                bytes
            }
            // The golden payload with a few bytes changed, cut or added.
            _ => {
                let mut bytes = golden.clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(bytes.len());
                    match rng.below(4) {
                        0 => bytes[at] ^= 1 << rng.below(8),
                        1 => bytes[at] = rng.byte(),
                        2 => bytes.truncate(at),
                        _ => bytes.insert(at, rng.byte()),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            }
        };
        let fill = decode_payload::<Fill>(&input, &limits());
        *seen
            .entry(fill.map(|_| ()).map_err(|e| e.kind()))
            .or_default() += 1;
        for result in [
            decode_payload::<IgnoredAny>(&input, &limits()).map(|_| ()),
            decode_payload::<Fill>(&input, &limits()).map(|_| ()),
            decode_payload::<Vec<HashMap<String, Vec<u8>>>>(&input, &limits()).map(|_| ()),
        ] {
            if let Err(err) = result {
                assert!(
                    matches!(err.kind(), ErrorKind::Malformed | ErrorKind::WrongShape),
                    "{err} for {}",
                    to_hex(&input)
                );
            }
        }
    }
    // The generator reaches every outcome, so the loop tests the deep paths too.
    for outcome in [
        Ok(()),
        Err(ErrorKind::Malformed),
        Err(ErrorKind::WrongShape),
    ] {
        assert!(
            seen.contains_key(&outcome),
            "never saw {outcome:?}: {seen:?}"
        );
    }
}

#[test]
fn every_truncation_is_malformed() {
    let payload = hex(GOLDEN_PAYLOAD);
    for cut in 0..payload.len() {
        let err = decode_payload::<Fill>(&payload[..cut], &limits()).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Malformed,
            "prefix of {cut} bytes: {err}"
        );
    }
}

#[test]
fn ten_thousand_nested_arrays_are_malformed() {
    let mut arrays = vec![0x91u8; 10_000];
    arrays.push(0x90);
    let err = decode_payload::<IgnoredAny>(&arrays, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.message().contains("depth limit of 32"), "{err}");

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(u8),
        Node(Vec<Tree>),
    }
    assert_eq!(
        decode_payload::<Tree>(&arrays, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );

    // Maps nest the same way: {"a": {"a": ...}}.
    let mut maps = [0x81u8, 0xa1, b'a'].repeat(10_000);
    maps.push(0xc0);
    assert_eq!(
        decode_payload::<IgnoredAny>(&maps, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );

    // Inside a struct, under a key the struct does not know.
    let inside = raw_map(&[("symbol", enc("BTC")), ("qty", enc(&1u8)), ("x", arrays)]);
    assert_eq!(
        decode_payload::<Fill>(&inside, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );
}

#[test]
fn depth_limit_is_exact() {
    let nested = |levels: usize| {
        let mut bytes = vec![0x91u8; levels - 1];
        bytes.push(0x90);
        bytes
    };
    assert!(decode_payload::<IgnoredAny>(&nested(32), &limits()).is_ok());
    assert_eq!(
        decode_payload::<IgnoredAny>(&nested(33), &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );
    let shallow = CodecLimits {
        max_depth: 2,
        ..limits()
    };
    assert!(decode_payload::<Vec<Vec<u8>>>(&enc(&vec![vec![1u8]]), &shallow).is_ok());
    assert_eq!(
        decode_payload::<Vec<Vec<Vec<u8>>>>(&enc(&vec![vec![vec![1u8]]]), &shallow)
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );
}

#[test]
fn huge_length_prefixes_fail_fast_without_allocating() {
    let claims: [(&str, Vec<u8>); 4] = [
        ("bin32 of 4 GiB", hex("c6ffffffff0102030405")),
        ("str32 of 4 GiB", hex("dbffffffff6162636465")),
        ("array32 of 4 Gi items", hex("ddffffffff0102030405")),
        ("map32 of 4 Gi entries", hex("dfffffffffa161a162")),
    ];
    for (what, input) in &claims {
        let start = Instant::now();
        let (results, largest) = largest_allocation_in(|| {
            [
                decode_payload::<serde_bytes::ByteBuf>(input, &limits()).map(|_| ()),
                decode_payload::<String>(input, &limits()).map(|_| ()),
                decode_payload::<Vec<u64>>(input, &limits()).map(|_| ()),
                decode_payload::<HashMap<String, String>>(input, &limits()).map(|_| ()),
                decode_payload::<IgnoredAny>(input, &limits()).map(|_| ()),
            ]
        });
        for result in results {
            let err = result.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Malformed, "{what}: {err}");
            assert!(err.message().contains("truncated"), "{what}: {err}");
        }
        assert!(largest < 4096, "{what}: an allocation of {largest} bytes");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: took {:?}",
            start.elapsed()
        );
    }

    // As a field of a struct.
    let inside = raw_map(&[("symbol", hex("dbffffffff00")), ("qty", enc(&1u8))]);
    let (result, largest) = largest_allocation_in(|| decode_payload::<Fill>(&inside, &limits()));
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Malformed);
    assert!(largest < 4096, "an allocation of {largest} bytes");
}

#[test]
fn invalid_utf8_is_malformed() {
    let bad_str = hex("a3ff6162"); // str of 3 bytes, not UTF-8
    let payload = raw_map(&[("symbol", bad_str.clone()), ("qty", enc(&1u8))]);
    let err = decode_payload::<Fill>(&payload, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(
        err.source().unwrap().to_string().contains("utf8"),
        "{:?}",
        err.source()
    );
    assert_eq!(
        decode_payload::<String>(&bad_str, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::Malformed
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut payload = hex(GOLDEN_PAYLOAD);
    payload.push(0xc0);
    let err = decode_payload::<Fill>(&payload, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.message().contains("1 trailing byte "), "{err}");

    payload.extend([0x00]);
    let err = decode_payload::<Fill>(&payload, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert!(err.message().contains("2 trailing bytes"), "{err}");
}

#[test]
fn reserved_marker_and_empty_input_are_malformed() {
    for input in [&[][..], &[0xc1], &[0x92, 0x01, 0xc1]] {
        assert_eq!(
            decode_payload::<IgnoredAny>(input, &limits())
                .unwrap_err()
                .kind(),
            ErrorKind::Malformed
        );
    }
}

// ---------------------------------------------------------------------------
// Item 13: wrong shapes.

#[test]
fn payload_shape_errors_keep_rmp_serde_as_source() {
    let missing = raw_map(&[("symbol", enc("BTC"))]);
    let err = decode_payload::<Fill>(&missing, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongShape);
    assert!(err.message().contains("Fill"), "names the type: {err}");
    let source = err.source().expect("rmp-serde's error is kept");
    assert!(source.downcast_ref::<rmp_serde::decode::Error>().is_some());
    assert!(
        source.to_string().contains("missing field `qty`"),
        "{source}"
    );

    let wrong_type = raw_map(&[("symbol", enc(&5u8)), ("qty", enc(&1u8))]);
    let err = decode_payload::<Fill>(&wrong_type, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongShape);
    assert!(err.source().is_some());

    let out_of_range = raw_map(&[("symbol", enc("BTC")), ("qty", enc(&300u16))]);
    assert_eq!(
        decode_payload::<Fill>(&out_of_range, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::WrongShape
    );

    // Unknown fields are the payload type's business: ignored unless it denies them.
    let extra = raw_map(&[
        ("symbol", enc("BTC")),
        ("qty", enc(&1u8)),
        ("venue", enc("x")),
    ]);
    assert!(decode_payload::<Fill>(&extra, &limits()).is_ok());
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        symbol: String,
        qty: u8,
    }
    assert_eq!(
        decode_payload::<Strict>(&extra, &limits())
            .unwrap_err()
            .kind(),
        ErrorKind::WrongShape
    );
}

#[test]
fn a_failing_serialize_is_an_encode_error_with_its_source() {
    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused on purpose"))
        }
    }
    let err = encode_payload(&Refuses, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Encode);
    assert_eq!(err.source().unwrap().to_string(), "refused on purpose");
}

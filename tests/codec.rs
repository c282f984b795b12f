//! The codec against bad input (fault suite items 11-13) and its wire format,
//! through the public API only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::error::Error as _;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tickbus::codec::{
    decode_envelope, decode_payload, encode_envelope, encode_payload, CodecLimits, Envelope,
};
use tickbus::{ErrorKind, EventId, InstanceId, TopicName};
use uuid::Uuid;

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
    assert!(text.len() % 2 == 0, "odd hex");
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

/// MessagePack bin of `bytes`.
fn bin(bytes: &[u8]) -> Vec<u8> {
    enc(serde_bytes::Bytes::new(bytes))
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

/// The entries of a valid version 1 envelope, in wire order.
fn v1_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("v", enc(&1u8)),
        ("id", bin(&[0x11; 16])),
        ("topic", enc("orders:created")),
        ("src", bin(&[0x22; 16])),
        ("ts", enc(&1_700_000_000_000_000_000u64)),
        ("h", enc(&HashMap::from([("trace", "abc")]))),
        ("data", bin(&[0xc0])),
    ]
}

fn with(entries: &[(&'static str, Vec<u8>)], key: &'static str, value: Vec<u8>) -> Vec<u8> {
    let mut entries = entries.to_vec();
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
    raw_map(&entries)
}

fn without(entries: &[(&'static str, Vec<u8>)], key: &str) -> Vec<u8> {
    let entries: Vec<_> = entries.iter().filter(|(k, _)| *k != key).cloned().collect();
    raw_map(&entries)
}

fn envelope_kind(bytes: &[u8]) -> ErrorKind {
    decode_envelope(bytes, &limits()).unwrap_err().kind()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fill {
    symbol: String,
    qty: u8,
}

fn golden_envelope() -> Envelope {
    Envelope {
        id: EventId::from_uuid(Uuid::from_u128(0x0190_2b3c_4d5e_7f60_8a1b_2c3d_4e5f_6071)),
        topic: TopicName::new("position:updated").unwrap(),
        source: InstanceId::from_uuid(Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888)),
        timestamp_ns: 1_700_000_000_123_456_789,
        headers: vec![("trace".into(), "abc".into())],
        payload: encode_payload(
            &Fill {
                symbol: "BTC".into(),
                qty: 2,
            },
            &limits(),
        )
        .unwrap(),
    }
}

/// The payload of the golden envelope: `{"symbol": "BTC", "qty": 2}`.
const GOLDEN_PAYLOAD: &str = concat!(
    "82",             // map, 2 entries
    "a673796d626f6c", // "symbol"
    "a3425443",       // "BTC"
    "a3717479",       // "qty"
    "02",             // 2
);

/// The golden envelope, field by field. A change here is a wire format change.
const GOLDEN_ENVELOPE: &str = concat!(
    "87",                                 // map, 7 entries
    "a176",                               // "v"
    "01",                                 //   1
    "a26964",                             // "id"
    "c410",                               //   bin8, 16 bytes:
    "01902b3c4d5e7f608a1b2c3d4e5f6071",   //   the UUID's bytes
    "a5746f706963",                       // "topic"
    "b0706f736974696f6e3a75706461746564", //   "position:updated"
    "a3737263",                           // "src"
    "c410",                               //   bin8, 16 bytes:
    "11112222333344445555666677778888",   //   the UUID's bytes
    "a27473",                             // "ts"
    "cf17979cfe3d85cd15",                 //   uint64 1_700_000_000_123_456_789
    "a168",                               // "h"
    "81a57472616365a3616263",             //   {"trace": "abc"}
    "a464617461",                         // "data"
    "c411",                               //   bin8, 17 bytes:
    "82a673796d626f6ca3425443a371747902", //   GOLDEN_PAYLOAD
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
fn envelope_round_trips() {
    let mut envelope = golden_envelope();
    let bytes = encode_envelope(&envelope, &limits()).unwrap();
    assert_eq!(decode_envelope(&bytes, &limits()).unwrap(), envelope);
    let fill: Fill = decode_payload(&envelope.payload, &limits()).unwrap();
    assert_eq!(
        fill,
        Fill {
            symbol: "BTC".into(),
            qty: 2
        }
    );

    // Headers keep their order, repeated names included; none at all round-trips too.
    envelope.headers = vec![
        ("b".into(), "1".into()),
        ("a".into(), "2".into()),
        ("b".into(), "3".into()),
    ];
    let bytes = encode_envelope(&envelope, &limits()).unwrap();
    assert_eq!(decode_envelope(&bytes, &limits()).unwrap(), envelope);
    envelope.headers.clear();
    envelope.payload.clear();
    let bytes = encode_envelope(&envelope, &limits()).unwrap();
    assert_eq!(decode_envelope(&bytes, &limits()).unwrap(), envelope);
}

#[test]
fn golden_envelope_bytes() {
    let bytes = encode_envelope(&golden_envelope(), &limits()).unwrap();
    assert_eq!(to_hex(&bytes), GOLDEN_ENVELOPE);
    assert_eq!(
        decode_envelope(&hex(GOLDEN_ENVELOPE), &limits()).unwrap(),
        golden_envelope()
    );
}

#[test]
fn golden_envelope_without_headers_leaves_out_h() {
    let mut envelope = golden_envelope();
    envelope.headers.clear();
    let bytes = encode_envelope(&envelope, &limits()).unwrap();
    let expected = GOLDEN_ENVELOPE
        .replacen("87", "86", 1)
        .replace("a16881a57472616365a3616263", "");
    assert_eq!(to_hex(&bytes), expected);
}

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
fn oversized_envelope_is_refused_when_encoding() {
    let mut envelope = golden_envelope();
    envelope.payload = vec![0xc0; 1024 * 1024];
    let err = encode_envelope(&envelope, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    assert!(err.message().contains("envelope"), "{err}");
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
    assert_eq!(envelope_kind(&input), ErrorKind::PayloadTooLarge);

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
    let golden = hex(GOLDEN_ENVELOPE);
    assert_eq!(
        decode_envelope(&golden, &small).unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
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
    let golden = hex(GOLDEN_ENVELOPE);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut seen: HashMap<Result<(), ErrorKind>, usize> = HashMap::new();
    for round in 0..30_000 {
        let input: Vec<u8> = match round % 3 {
            // Pure noise.
            0 => (0..rng.below(64)).map(|_| rng.byte()).collect(),
            // Noise behind a map marker, so the envelope decoder gets further.
            1 => {
                let mut bytes = vec![0x80 | rng.below(9) as u8];
                for _ in 0..rng.below(12) {
                    let key = ["v", "id", "topic", "src", "ts", "h", "data", "x"][rng.below(8)];
                    bytes.extend(enc(key));
                    let len = rng.below(20);
                    bytes.extend((0..len).map(|_| rng.byte()));
                }
                bytes
            }
            // The golden envelope with a few bytes changed, cut or added.
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
        let envelope = decode_envelope(&input, &limits());
        match &envelope {
            Ok(decoded) => {
                let again = encode_envelope(decoded, &limits()).unwrap();
                assert_eq!(&decode_envelope(&again, &limits()).unwrap(), decoded);
            }
            Err(err) => assert!(
                matches!(
                    err.kind(),
                    ErrorKind::Malformed
                        | ErrorKind::WrongShape
                        | ErrorKind::UnsupportedVersion
                        | ErrorKind::InvalidTopic
                ),
                "{err} for {}",
                to_hex(&input)
            ),
        }
        *seen
            .entry(envelope.map(|_| ()).map_err(|e| e.kind()))
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
        Err(ErrorKind::UnsupportedVersion),
        Err(ErrorKind::InvalidTopic),
    ] {
        assert!(
            seen.contains_key(&outcome),
            "never saw {outcome:?}: {seen:?}"
        );
    }
}

#[test]
fn every_truncation_is_malformed() {
    let golden = hex(GOLDEN_ENVELOPE);
    for cut in 0..golden.len() {
        let err = decode_envelope(&golden[..cut], &limits()).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Malformed,
            "prefix of {cut} bytes: {err}"
        );
    }
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

    // Inside an envelope, under a key the envelope does not know.
    let envelope = with(&v1_entries(), "x", arrays);
    assert_eq!(envelope_kind(&envelope), ErrorKind::Malformed);
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

    // As the payload of an envelope.
    let mut envelope = without(&v1_entries(), "data");
    envelope[0] += 1;
    envelope.extend(enc("data"));
    envelope.extend(hex("c6ffffffff00"));
    let (result, largest) = largest_allocation_in(|| decode_envelope(&envelope, &limits()));
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

    assert_eq!(
        envelope_kind(&with(&v1_entries(), "topic", bad_str.clone())),
        ErrorKind::Malformed
    );
    let header = raw_map(&[("trace", bad_str)]);
    assert_eq!(
        envelope_kind(&with(&v1_entries(), "h", header)),
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

    let mut envelope = hex(GOLDEN_ENVELOPE);
    envelope.extend([0x00, 0x00]);
    let err = decode_envelope(&envelope, &limits()).unwrap_err();
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
        assert_eq!(envelope_kind(input), ErrorKind::Malformed);
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
fn envelope_missing_field_is_wrong_shape() {
    let entries = v1_entries();
    assert!(
        decode_envelope(&raw_map(&entries), &limits()).is_ok(),
        "the baseline decodes"
    );
    for key in ["id", "topic", "src", "ts", "data"] {
        let err = decode_envelope(&without(&entries, key), &limits()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongShape, "without {key}: {err}");
        assert!(
            err.source()
                .unwrap()
                .to_string()
                .contains(&format!("`{key}`")),
            "{:?}",
            err.source()
        );
    }
    let err = decode_envelope(&without(&entries, "v"), &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongShape);
    assert!(err.message().contains("`v`"), "{err}");
    // `h` may be left out.
    assert!(decode_envelope(&without(&entries, "h"), &limits())
        .unwrap()
        .headers
        .is_empty());
}

#[test]
fn envelope_field_of_wrong_type_is_wrong_shape() {
    let entries = v1_entries();
    let cases: [(&str, Vec<u8>); 8] = [
        ("v", enc("1")),
        ("id", enc(&[0x11u8; 16])), // an array of ints, not a bin
        ("topic", enc(&7u8)),
        ("ts", enc("yesterday")),
        ("ts", enc(&-1i8)),
        ("h", enc(&["trace", "abc"])),
        ("h", raw_map(&[("trace", enc(&1u8))])),
        ("data", enc(&[1u8, 2])),
    ];
    for (key, value) in cases {
        let input = with(&entries, key, value);
        let err = decode_envelope(&input, &limits()).unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::WrongShape,
            "{key} = {}: {err}",
            to_hex(&input)
        );
    }
    for (key, len) in [("id", 15), ("src", 17), ("id", 0)] {
        let err = decode_envelope(&with(&entries, key, bin(&vec![0; len])), &limits()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongShape);
        assert!(
            err.message().contains(&format!("`{key}` is {len} bytes")),
            "{err}"
        );
    }
    // Not a map at all, even with the right values in the right order.
    let values: Vec<u8> = entries.iter().flat_map(|(_, v)| v.clone()).collect();
    let mut as_array = vec![0x97];
    as_array.extend(values);
    let err = decode_envelope(&as_array, &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongShape);
    assert!(err.message().contains("is a MessagePack map"), "{err}");
}

#[test]
fn envelope_unknown_or_repeated_field_is_wrong_shape() {
    let entries = v1_entries();
    let err = decode_envelope(&with(&entries, "extra", enc(&1u8)), &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongShape);
    assert!(
        err.source()
            .unwrap()
            .to_string()
            .contains("unknown field `extra`"),
        "{:?}",
        err.source()
    );

    let mut repeated = entries.clone();
    repeated.push(("ts", enc(&5u8)));
    assert_eq!(envelope_kind(&raw_map(&repeated)), ErrorKind::WrongShape);
}

#[test]
fn envelope_from_a_future_version_is_unsupported() {
    let entries = v1_entries();
    let err = decode_envelope(&with(&entries, "v", enc(&2u8)), &limits()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnsupportedVersion);
    assert!(err.message().contains("version 2"), "{err}");
    assert_eq!(
        envelope_kind(&with(&entries, "v", enc(&0u8))),
        ErrorKind::UnsupportedVersion
    );
    assert_eq!(
        envelope_kind(&with(&entries, "v", enc(&70_000u32))),
        ErrorKind::UnsupportedVersion
    );

    // A version 2 envelope with a new field before `v` and a changed `id`: the
    // version is what gets reported.
    let future = raw_map(&[
        ("trace_ctx", raw_map(&[("a", enc(&1u8))])),
        ("id", enc("0190-...")),
        ("v", enc(&2u8)),
        ("topic", enc("orders:created")),
    ]);
    assert_eq!(envelope_kind(&future), ErrorKind::UnsupportedVersion);
}

#[test]
fn envelope_with_a_bad_topic_is_invalid_topic() {
    let entries = v1_entries();
    for topic in [
        "Orders:created",
        "orders:{eu}",
        "orders",
        "orders:a b",
        "orders:a\0b",
        "",
    ] {
        let err = decode_envelope(&with(&entries, "topic", enc(topic)), &limits()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidTopic, "{topic:?}: {err}");
    }
    let long = format!("a:{}", "b".repeat(10 * 1024));
    assert_eq!(
        envelope_kind(&with(&entries, "topic", enc(&long))),
        ErrorKind::InvalidTopic
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

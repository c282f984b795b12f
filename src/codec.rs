//! MessagePack for what crosses the process boundary: payloads.
//!
//! [`encode_payload`] and [`decode_payload`] turn a user value into MessagePack
//! bytes and back: the `data` field of a Redis stream entry (the entry's other
//! fields, its id, source, time and headers, are described in
//! `docs/redis-layout.md`). Structs are written as maps with field names, so a
//! Python (`msgpack.unpackb`) or TypeScript (`@msgpack/msgpack`) service reads
//! them as plain dictionaries and objects.
//!
//! Decoding treats its input as untrusted: it never panics, never allocates by a
//! length the input claims, and says what was wrong with a typed [`ErrorKind`].
//!
//! ## Limits
//!
//! Every call takes a [`CodecLimits`] (the default is 1 MiB and 32 levels).
//!
//! - **Size.** Encoding stops as soon as the output would pass
//!   [`max_encoded_size`](CodecLimits::max_encoded_size), so an oversized value is
//!   never fully built; decoding compares the input length with it before reading
//!   a single byte. Both fail with [`ErrorKind::PayloadTooLarge`].
//! - **Structure first.** Before any value is built, a pass over the markers
//!   (no allocation besides one small stack of at most `max_depth` counters)
//!   finds where the value ends. It rejects a truncated value, the reserved
//!   marker `0xc1`, a length that runs past the end of the input (a `bin32` that
//!   claims 4 GiB inside a 10-byte message fails here, having allocated nothing),
//!   an array or map that claims more items than there are bytes left, nesting
//!   deeper than [`max_depth`](CodecLimits::max_depth), and trailing bytes. All of
//!   these are [`ErrorKind::Malformed`].
//! - **Preallocation.** After that pass, every length the decoder sees is backed
//!   by real bytes: an array that claims `n` items has at least `n` bytes behind it.
//!   serde's collections also cap what they reserve up front at 1 MiB (its
//!   "cautious" size hint), so a decoded collection's capacity follows the input,
//!   not the claim.
//! - **Depth.** Every array, map and ext value counts as one level, whatever
//!   type reads it (an enum written as a one-entry map too); the limit is capped
//!   at 256 so that decoding fits a 2 MiB thread stack. rmp-serde's own depth
//!   guard is set to the same limit as a second line. Neither can see recursion that goes through `Option` or a
//!   newtype alone without a container in between (msgpack-rust issue #381), so
//!   payload types must not recurse that way.
//! - **Strings** must be valid UTF-8 when they are read into a `String` or
//!   `&str`; invalid UTF-8 is [`ErrorKind::Malformed`].
//!
//! ## Wire format
//!
//! A payload is the MessagePack encoding of the value, structs as maps keyed by
//! field name (rmp-serde's `to_vec_named` form). Decoding accepts a struct as a
//! map or as an array, as rmp-serde does.
//!
//! The bytes of a payload are pinned by a golden test in `tests/codec.rs`
//! (msgpack-python's `packb` of the same dictionary gives the same bytes).
//!
//! ## Errors
//!
//! | kind                                   | meaning                                              |
//! |----------------------------------------|------------------------------------------------------|
//! | [`ErrorKind::PayloadTooLarge`]         | over `max_encoded_size`; nothing was decoded or kept |
//! | [`ErrorKind::Malformed`]               | not one well-formed MessagePack value within limits  |
//! | [`ErrorKind::WrongShape`]              | well-formed, but not the expected type               |
//! | [`ErrorKind::Encode`]                  | the value's `Serialize` failed, or it nests too deep |
//!
//! When rmp-serde reported the problem, its error is the [`source()`] of the
//! returned [`Error`].
//!
//! # Examples
//!
//! A payload:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tickbus::codec::{self, CodecLimits};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Fill {
//!     symbol: String,
//!     qty: i64,
//! }
//!
//! let limits = CodecLimits::default();
//! let fill = Fill { symbol: "BTC-USD".into(), qty: 3 };
//! let payload = codec::encode_payload(&fill, &limits)?;
//! assert_eq!(payload[0], 0x82, "a map of two fields, readable from Python");
//! let back: Fill = codec::decode_payload(&payload, &limits)?;
//! assert_eq!(back, fill);
//! # Ok::<(), tickbus::Error>(())
//! ```
//!
//! Bad input is an error of a kind to match on, never a panic:
//!
//! ```
//! use tickbus::codec::{self, CodecLimits};
//! use tickbus::ErrorKind;
//!
//! let limits = CodecLimits::default();
//! let bytes = codec::encode_payload(&(1u32, "two"), &limits)?;
//!
//! // Cut short: the structure pass sees that the string runs past the end.
//! let err = codec::decode_payload::<(u32, String)>(&bytes[..bytes.len() - 1], &limits)
//!     .unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::Malformed);
//!
//! // Well-formed, but not what was asked for: rmp-serde's error is the source.
//! let err = codec::decode_payload::<(u32, u32)>(&bytes, &limits).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::WrongShape);
//! assert!(std::error::Error::source(&err).is_some());
//! # Ok::<(), tickbus::Error>(())
//! ```
//!
//! [`source()`]: std::error::Error::source

use std::fmt;
use std::io;

use rmp::Marker;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};

/// Bounds on what the codec encodes and accepts. Plain data: build it with
/// struct syntax and `..CodecLimits::default()`.
///
/// # Examples
///
/// ```
/// use tickbus::codec::CodecLimits;
///
/// let limits = CodecLimits { max_encoded_size: 64 * 1024, ..CodecLimits::default() };
/// assert_eq!(limits.max_depth, 32);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodecLimits {
    /// The largest encoding accepted, in bytes: a payload's MessagePack bytes.
    ///
    /// Default: 1 MiB (1 048 576 bytes).
    pub max_encoded_size: usize,
    /// The deepest nesting accepted, in levels: each array, map and ext value
    /// is one level, so a scalar has depth 0, `[1]` and `{"a": 1}` depth 1 and
    /// `[[1]]` depth 2. Applies to decoding, and to encoding so that a value
    /// this side writes is one its peers can read.
    ///
    /// Default: 32. Values above 256 act as 256: decoding recurses once per
    /// level (about 3 KiB of stack per level in a debug build), and the stack of
    /// the calling thread, 2 MiB for a tokio worker, has to hold all of it.
    pub max_depth: usize,
}

impl CodecLimits {
    /// The default of [`max_encoded_size`](CodecLimits::max_encoded_size): 1 MiB.
    pub const DEFAULT_MAX_ENCODED_SIZE: usize = 1024 * 1024;
    /// The default of [`max_depth`](CodecLimits::max_depth): 32 levels.
    pub const DEFAULT_MAX_DEPTH: usize = 32;
    /// The ceiling on [`max_depth`](CodecLimits::max_depth): larger values act as this.
    const MAX_DEPTH_CEILING: usize = 256;

    fn depth(&self) -> usize {
        self.max_depth.min(Self::MAX_DEPTH_CEILING)
    }
}

impl Default for CodecLimits {
    fn default() -> Self {
        CodecLimits {
            max_encoded_size: Self::DEFAULT_MAX_ENCODED_SIZE,
            max_depth: Self::DEFAULT_MAX_DEPTH,
        }
    }
}

/// Encodes `value` as MessagePack, structs as maps keyed by field name.
///
/// # Errors
///
/// - [`ErrorKind::PayloadTooLarge`] when the encoding would be larger than
///   `limits.max_encoded_size`; encoding stops at the limit, the message gives
///   the limit and the size reached.
/// - [`ErrorKind::Encode`] when the value's `Serialize` implementation fails
///   (rmp-serde's error is the source), or when it nests deeper than
///   `limits.max_depth`, which a peer's [`decode_payload`] would refuse.
///
/// # Examples
///
/// ```
/// use tickbus::codec::{encode_payload, CodecLimits};
///
/// #[derive(serde::Serialize)]
/// struct Tick {
///     px: f64,
/// }
///
/// let bytes = encode_payload(&Tick { px: 1.5 }, &CodecLimits::default())?;
/// // {"px": 1.5}: fixmap(1), fixstr "px", float64
/// assert_eq!(&bytes[..4], &[0x81, 0xa2, b'p', b'x']);
/// # Ok::<(), tickbus::Error>(())
/// ```
pub fn encode_payload<T: Serialize + ?Sized>(value: &T, limits: &CodecLimits) -> Result<Vec<u8>> {
    encode_value(value, limits, 64, "payload")
}

/// Decodes one MessagePack value of type `T` from `bytes`, which must hold
/// exactly that value.
///
/// The input is checked before it is decoded: its size, then its structure
/// (see [Limits](self#limits)).
///
/// # Errors
///
/// - [`ErrorKind::PayloadTooLarge`] when `bytes` is longer than
///   `limits.max_encoded_size` (nothing is read).
/// - [`ErrorKind::Malformed`] when `bytes` is not one well-formed MessagePack
///   value: empty, truncated, the reserved marker, nested deeper than
///   `limits.max_depth`, invalid UTF-8 read as a string, or trailing bytes (the
///   message says how many).
/// - [`ErrorKind::WrongShape`] when the value is well-formed but not a `T`: a
///   missing or unknown field (if `T` denies them), a value of the wrong type
///   or out of range. rmp-serde's error is the source.
///
/// # Examples
///
/// ```
/// use tickbus::codec::{decode_payload, CodecLimits};
/// use tickbus::ErrorKind;
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Tick {
///     px: f64,
/// }
///
/// let limits = CodecLimits::default();
/// let bytes = [0x81, 0xa2, b'p', b'x', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0];
/// let tick: Tick = decode_payload(&bytes, &limits)?;
/// assert_eq!(tick.px, 1.5);
///
/// let mut longer = bytes.to_vec();
/// longer.push(0xc0);
/// let err = decode_payload::<Tick>(&longer, &limits).unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Malformed);
/// assert!(err.message().contains("1 trailing byte"));
/// # Ok::<(), tickbus::Error>(())
/// ```
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8], limits: &CodecLimits) -> Result<T> {
    check_value(bytes, limits, "payload")?;
    deserialize_checked(bytes, limits, || {
        format!("payload does not decode as {}", std::any::type_name::<T>())
    })
}

/// As [`decode_payload`], into a type that borrows from `bytes`.
pub(crate) fn decode_borrowed<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    limits: &CodecLimits,
) -> Result<T> {
    check_value(bytes, limits, "record")?;
    deserialize_checked(bytes, limits, || {
        format!("record does not decode as {}", std::any::type_name::<T>())
    })
}

// ---------------------------------------------------------------------------
// Encoding.

/// Encodes `value` with struct-as-map, into a buffer that refuses to grow past
/// the size limit, then checks the depth of what was written.
fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    limits: &CodecLimits,
    size_estimate: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let writer = CappedWriter::new(limits.max_encoded_size, size_estimate);
    let mut serializer = rmp_serde::Serializer::new(writer).with_struct_map();
    if let Err(err) = value.serialize(&mut serializer) {
        if let Some(reached) = serializer.get_ref().overflow {
            return Err(too_large_to_encode(what, reached, limits.max_encoded_size));
        }
        return Err(
            Error::new(ErrorKind::Encode, format!("{what} could not be encoded")).with_source(err),
        );
    }
    let bytes = serializer.into_inner().buf;
    match walk_value(&bytes, limits.depth()) {
        Ok(_) => Ok(bytes),
        Err(Malformation::TooDeep { .. }) => Err(Error::new(
            ErrorKind::Encode,
            format!(
                "{what} nests deeper than the limit of {} levels; peers would refuse it",
                limits.depth()
            ),
        )),
        // rmp-serde writes one well-formed value: anything else is a bug here.
        Err(other) => Err(Error::new(
            ErrorKind::Encode,
            format!("{what} encoded badly: {other}"),
        )),
    }
}

fn too_large_to_encode(what: &str, reached: usize, limit: usize) -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!(
            "encoded {what} is larger than the limit of {limit} bytes \
             (encoding stopped when it reached {reached} bytes)"
        ),
    )
}

/// A `Vec<u8>` writer that fails, and remembers the size it would have reached,
/// instead of growing past `limit`.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflow: Option<usize>,
}

impl CappedWriter {
    fn new(limit: usize, size_estimate: usize) -> Self {
        CappedWriter {
            buf: Vec::with_capacity(size_estimate.min(limit)),
            limit,
            overflow: None,
        }
    }
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let wanted = self.buf.len().saturating_add(data.len());
        if wanted > self.limit {
            self.overflow = Some(wanted);
            return Err(io::Error::other("encoded size limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Decoding.

/// The length of the one MessagePack value at the start of `bytes`: `Ok(None)`
/// when `bytes` ends before it does (read more), an error when it is not
/// MessagePack within the depth limit. For reading a file of concatenated values.
pub(crate) fn value_len(bytes: &[u8], limits: &CodecLimits) -> Result<Option<usize>> {
    match walk_value(bytes, limits.depth()) {
        Ok(end) => Ok(Some(end)),
        Err(
            Malformation::Empty
            | Malformation::Truncated { .. }
            | Malformation::TooManyItems { .. },
        ) => Ok(None),
        Err(malformation) => Err(Error::new(
            ErrorKind::Malformed,
            format!("a record {malformation}"),
        )),
    }
}

/// The checks made before anything is decoded: size, then structure and
/// trailing bytes.
fn check_value(bytes: &[u8], limits: &CodecLimits, what: &str) -> Result<()> {
    if bytes.len() > limits.max_encoded_size {
        return Err(Error::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "{what} is {} bytes, the limit is {} bytes; not decoded",
                bytes.len(),
                limits.max_encoded_size
            ),
        ));
    }
    let end = walk_value(bytes, limits.depth())
        .map_err(|m| Error::new(ErrorKind::Malformed, format!("{what} {m}")))?;
    let trailing = bytes.len() - end;
    if trailing > 0 {
        let plural = if trailing == 1 { "" } else { "s" };
        return Err(Error::new(
            ErrorKind::Malformed,
            format!(
                "{what} has {trailing} trailing byte{plural} after its value ({end} of {} bytes)",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Runs serde over bytes that passed [`check_value`], with rmp-serde's depth
/// guard set to the same limit, and classifies its error.
fn deserialize_checked<'de, T: Deserialize<'de>>(
    bytes: &'de [u8],
    limits: &CodecLimits,
    context: impl FnOnce() -> String,
) -> Result<T> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    // rmp-serde fails when its counter reaches zero on entering a level, so a
    // counter of N allows N - 1 levels.
    deserializer.set_max_depth(limits.depth() + 1);
    T::deserialize(&mut deserializer).map_err(|err| {
        let kind = classify(&err);
        Error::new(kind, context()).with_source(err)
    })
}

/// Sorts rmp-serde's decode errors into "not valid MessagePack" and "valid, but
/// not the expected shape".
fn classify(err: &rmp_serde::decode::Error) -> ErrorKind {
    use rmp_serde::decode::Error as E;
    match err {
        // The bytes themselves are bad: cut short, the reserved marker, not
        // UTF-8 where a string was read, nested too deep.
        E::InvalidMarkerRead(_) | E::InvalidDataRead(_) => ErrorKind::Malformed,
        E::TypeMismatch(Marker::Reserved) => ErrorKind::Malformed,
        E::Utf8Error(_) => ErrorKind::Malformed,
        E::DepthLimitExceeded => ErrorKind::Malformed,
        // Only produced by rmp's low-level string reader (buffer size, UTF-8).
        E::Uncategorized(_) => ErrorKind::Malformed,
        // Well-formed values of the wrong type, length or range, and serde's own
        // errors (missing, unknown or duplicate field, invalid type or value).
        E::TypeMismatch(_) | E::OutOfRange | E::LengthMismatch(_) | E::Syntax(_) => {
            ErrorKind::WrongShape
        }
    }
}

/// What the structure pass found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Malformation {
    /// No bytes at all.
    Empty,
    /// The value starting at this offset runs past the end of the input.
    Truncated { at: usize },
    /// The reserved marker `0xc1` at this offset.
    ReservedMarker { at: usize },
    /// An array, map or ext at this offset would be one level too many.
    TooDeep { at: usize, limit: usize },
    /// An array or map at this offset claims more items than bytes remain.
    TooManyItems {
        at: usize,
        claimed: u64,
        remaining: usize,
    },
}

impl fmt::Display for Malformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformation::Empty => f.write_str("is empty"),
            Malformation::Truncated { at } => {
                write!(f, "is truncated: the value at byte {at} runs past the end")
            }
            Malformation::ReservedMarker { at } => {
                write!(f, "has the reserved marker 0xc1 at byte {at}")
            }
            Malformation::TooDeep { at, limit } => {
                write!(
                    f,
                    "nests deeper than the depth limit of {limit} (at byte {at})"
                )
            }
            Malformation::TooManyItems {
                at,
                claimed,
                remaining,
            } => write!(
                f,
                "is truncated: the array or map at byte {at} claims {claimed} items \
                 but only {remaining} bytes remain"
            ),
        }
    }
}

/// Finds where the one MessagePack value at the start of `bytes` ends, reading
/// only markers and lengths: nothing is decoded, and nothing is allocated but
/// the stack of open containers, which `max_depth` bounds.
fn walk_value(bytes: &[u8], max_depth: usize) -> std::result::Result<usize, Malformation> {
    if bytes.is_empty() {
        return Err(Malformation::Empty);
    }
    // Items still to complete in each open, non-empty array or map, innermost
    // last (a map has two items, key and value, per entry).
    let mut open: Vec<u64> = Vec::new();
    // Items of open containers not yet started: each needs at least one more byte.
    let mut unstarted: u64 = 0;
    let mut pos = 0;
    loop {
        let at = pos;
        let marker = Marker::from_u8(*bytes.get(pos).ok_or(Malformation::Truncated { at })?);
        pos += 1;
        if !open.is_empty() {
            unstarted -= 1; // this value is one of them
        }
        let mut len =
            |width: usize| read_be(bytes, &mut pos, width).ok_or(Malformation::Truncated { at });
        // (bytes of body after the marker and length, items if it is an array or map, is a level)
        let (body, items, level) = match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                (0, None, false)
            }
            Marker::U8 | Marker::I8 => (1, None, false),
            Marker::U16 | Marker::I16 => (2, None, false),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, None, false),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, None, false),
            Marker::FixStr(n) => (u64::from(n), None, false),
            Marker::Str8 | Marker::Bin8 => (len(1)?, None, false),
            Marker::Str16 | Marker::Bin16 => (len(2)?, None, false),
            Marker::Str32 | Marker::Bin32 => (len(4)?, None, false),
            // Ext bodies are a type byte and the data.
            Marker::FixExt1 => (2, None, true),
            Marker::FixExt2 => (3, None, true),
            Marker::FixExt4 => (5, None, true),
            Marker::FixExt8 => (9, None, true),
            Marker::FixExt16 => (17, None, true),
            Marker::Ext8 => (len(1)? + 1, None, true),
            Marker::Ext16 => (len(2)? + 1, None, true),
            Marker::Ext32 => (len(4)? + 1, None, true),
            Marker::FixArray(n) => (0, Some(u64::from(n)), true),
            Marker::Array16 => (0, Some(len(2)?), true),
            Marker::Array32 => (0, Some(len(4)?), true),
            Marker::FixMap(n) => (0, Some(2 * u64::from(n)), true),
            Marker::Map16 => (0, Some(2 * len(2)?), true),
            Marker::Map32 => (0, Some(2 * len(4)?), true),
            Marker::Reserved => return Err(Malformation::ReservedMarker { at }),
        };
        if level && open.len() >= max_depth {
            return Err(Malformation::TooDeep {
                at,
                limit: max_depth,
            });
        }
        let remaining = bytes.len() - pos;
        if body > remaining as u64 {
            return Err(Malformation::Truncated { at });
        }
        pos += body as usize; // body <= remaining, so it fits
        if let Some(items @ 1..) = items {
            unstarted += items; // <= input length + 2^33: no overflow
            if unstarted > remaining as u64 {
                return Err(Malformation::TooManyItems {
                    at,
                    claimed: items,
                    remaining,
                });
            }
            open.push(items);
            continue;
        }
        // A complete value: it is one item of its container, which may complete
        // in turn, and so on outwards.
        loop {
            let Some(left) = open.last_mut() else {
                return Ok(pos);
            };
            *left -= 1;
            if *left > 0 {
                break;
            }
            open.pop();
        }
    }
}

/// Reads a big-endian unsigned length of `width` bytes at `*pos` and moves past it.
fn read_be(bytes: &[u8], pos: &mut usize, width: usize) -> Option<u64> {
    let field = bytes.get(*pos..*pos + width)?;
    *pos += width;
    Some(
        field
            .iter()
            .fold(0, |acc, &byte| (acc << 8) | u64::from(byte)),
    )
}

// ---------------------------------------------------------------------------
// Fuzzing entry points.

/// Entry points for the cargo-fuzz targets in `fuzz/`; not part of the API.
#[doc(hidden)]
pub mod fuzz {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

    use super::CodecLimits;

    /// Decodes `data` as a payload with the default limits, twice: into a value
    /// of any shape, and into a typed struct. The results are ignored.
    pub fn decode_payload_value(data: &[u8]) {
        let limits = CodecLimits::default();
        let _ = super::decode_payload::<AnyValue>(data, &limits);
        let _ = super::decode_payload::<Order>(data, &limits);
    }

    /// A typed payload with the usual suspects: integers, floats, strings,
    /// options, collections, an enum and a tuple. Not recursive.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // Only decoded.
    pub(super) struct Order {
        id: u64,
        symbol: String,
        px: f64,
        qty: i32,
        side: Side,
        tags: Vec<String>,
        meta: Option<BTreeMap<String, u8>>,
        legs: Vec<(u16, bool)>,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // Only decoded.
    enum Side {
        Buy,
        Sell { reason: String },
    }

    /// Any MessagePack value. Recurses only through arrays and maps, which the
    /// depth limits count.
    #[allow(dead_code)] // Only decoded.
    pub(super) enum AnyValue {
        Nil,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Str(String),
        Bin(Vec<u8>),
        Array(Vec<AnyValue>),
        Map(Vec<(AnyValue, AnyValue)>),
    }

    impl<'de> Deserialize<'de> for AnyValue {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(AnyValueVisitor)
        }
    }

    struct AnyValueVisitor;

    impl<'de> Visitor<'de> for AnyValueVisitor {
        type Value = AnyValue;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any MessagePack value")
        }
        fn visit_unit<E>(self) -> Result<AnyValue, E> {
            Ok(AnyValue::Nil)
        }
        fn visit_bool<E>(self, v: bool) -> Result<AnyValue, E> {
            Ok(AnyValue::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<AnyValue, E> {
            Ok(AnyValue::Int(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<AnyValue, E> {
            Ok(AnyValue::UInt(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<AnyValue, E> {
            Ok(AnyValue::Float(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<AnyValue, E> {
            Ok(AnyValue::Str(v.to_owned()))
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<AnyValue, E> {
            Ok(AnyValue::Bin(v.to_vec()))
        }
        /// rmp-serde hands an ext value over as a newtype of `[tag, data]`.
        fn visit_newtype_struct<D: Deserializer<'de>>(self, ext: D) -> Result<AnyValue, D::Error> {
            AnyValue::deserialize(ext)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(AnyValue::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(AnyValue::Map(entries))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value in every MessagePack format family, each in its own encoding.
    fn samples() -> Vec<Vec<u8>> {
        macro_rules! named {
            ($value:expr) => {
                rmp_serde::to_vec_named($value).unwrap()
            };
        }
        let mut out = vec![
            named!(&()),
            named!(&true),
            named!(&5u8),
            named!(&-3i8),
            named!(&200u8),
            named!(&-100i8),
            named!(&60_000u16),
            named!(&-30_000i16),
            named!(&4_000_000_000u32),
            named!(&-2_000_000_000i32),
            named!(&u64::MAX),
            named!(&i64::MIN),
            named!(&1.5f32),
            named!(&2.5f64),
            named!(&"x".repeat(31)),
            named!(&"x".repeat(32)),
            named!(&"x".repeat(300)),
            named!(&"x".repeat(70_000)),
            named!(&serde_bytes::ByteBuf::from(vec![7u8; 10])),
            named!(&serde_bytes::ByteBuf::from(vec![7u8; 300])),
            named!(&serde_bytes::ByteBuf::from(vec![7u8; 70_000])),
            named!(&vec![1u8; 15]),
            named!(&vec![1u32; 16]),
            named!(&vec![0u8; 70_000]),
            named!(&vec![vec![vec![1u8]]]),
            named!(&std::collections::BTreeMap::from([("a", 1), ("b", 2)])),
            named!(&(0..20)
                .map(|i| (i, vec![i; 3]))
                .collect::<std::collections::BTreeMap<_, _>>()),
        ];
        // Ext values, which rmp-serde writes only through its own ext type.
        for len in [1usize, 2, 4, 8, 16, 3, 300, 70_000] {
            let mut ext = Vec::new();
            rmp::encode::write_ext_meta(&mut ext, len as u32, 5).unwrap();
            ext.extend(std::iter::repeat_n(0xab, len));
            out.push(ext);
        }
        out
    }

    #[test]
    fn walk_finds_the_end_of_every_kind_of_value() {
        for bytes in samples() {
            assert_eq!(
                walk_value(&bytes, 32),
                Ok(bytes.len()),
                "{:02x?}",
                &bytes[..bytes.len().min(8)]
            );
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0xc0, 0x01]);
            assert_eq!(walk_value(&longer, 32), Ok(bytes.len()));
        }
    }

    #[test]
    fn walk_refuses_every_truncation() {
        for bytes in samples() {
            for cut in 0..bytes.len() {
                // Long values: check the start, the end, and a sample in between.
                if bytes.len() > 400 && cut > 40 && cut + 40 < bytes.len() && cut % 997 != 0 {
                    continue;
                }
                let result = walk_value(&bytes[..cut], 32);
                assert!(result.is_err(), "prefix {cut} of {} accepted", bytes.len());
            }
        }
    }

    #[test]
    fn walk_names_what_is_wrong() {
        assert_eq!(walk_value(&[], 32), Err(Malformation::Empty));
        assert_eq!(
            walk_value(&[0x92, 0x01, 0xc1], 32),
            Err(Malformation::ReservedMarker { at: 2 })
        );
        // bin32 claiming 4 GiB - 1 with three bytes behind it.
        assert_eq!(
            walk_value(&[0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3], 32),
            Err(Malformation::Truncated { at: 0 })
        );
        // array32 claiming 4 Gi - 1 items with two bytes behind it.
        assert_eq!(
            walk_value(&[0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2], 32),
            Err(Malformation::TooManyItems {
                at: 0,
                claimed: u64::from(u32::MAX),
                remaining: 2
            })
        );
        // map32: two items per entry.
        assert_eq!(
            walk_value(&[0x91, 0xdf, 0x00, 0x00, 0x00, 0x02, 1, 2, 3], 32),
            Err(Malformation::TooManyItems {
                at: 1,
                claimed: 4,
                remaining: 3
            })
        );
        // A length field itself cut short.
        assert_eq!(
            walk_value(&[0x91, 0xda, 0x00], 32),
            Err(Malformation::Truncated { at: 1 })
        );
    }

    #[test]
    fn walk_counts_arrays_maps_and_ext_as_levels() {
        let nested = |levels: usize, innermost: &[u8]| {
            let mut bytes = vec![0x91; levels];
            bytes.extend_from_slice(innermost);
            bytes
        };
        assert_eq!(walk_value(&[0x01], 0), Ok(1));
        assert_eq!(
            walk_value(&[0x90], 0),
            Err(Malformation::TooDeep { at: 0, limit: 0 })
        );
        assert_eq!(walk_value(&nested(31, &[0x90]), 32), Ok(32));
        assert_eq!(
            walk_value(&nested(32, &[0x90]), 32),
            Err(Malformation::TooDeep { at: 32, limit: 32 })
        );
        assert_eq!(
            walk_value(&nested(32, &[0x80]), 32),
            Err(Malformation::TooDeep { at: 32, limit: 32 })
        );
        assert_eq!(walk_value(&nested(31, &[0xd4, 1, 2]), 32), Ok(34));
        assert_eq!(
            walk_value(&nested(32, &[0xd4, 1, 2]), 32),
            Err(Malformation::TooDeep { at: 32, limit: 32 })
        );
        assert_eq!(walk_value(&nested(32, &[0x01]), 32), Ok(33));
        // Siblings do not add up: [[[]], [[]]] is depth 3.
        assert_eq!(walk_value(&[0x92, 0x91, 0x90, 0x91, 0x90], 3), Ok(5));
        assert!(walk_value(&[0x92, 0x91, 0x90, 0x91, 0x90], 2).is_err());
    }

    #[test]
    fn rmp_serde_depth_guard_matches_the_limit_on_its_own() {
        // The serde layer alone, without the structure pass in front of it.
        let limits = CodecLimits::default();
        let nested = |levels: usize| {
            let mut bytes = vec![0x91; levels];
            bytes.push(0x90);
            bytes
        };
        let ok: Result<serde::de::IgnoredAny> =
            deserialize_checked(&nested(31), &limits, String::new);
        assert!(ok.is_ok(), "{ok:?}");
        let deep: Result<serde::de::IgnoredAny> =
            deserialize_checked(&nested(32), &limits, String::new);
        let err = deep.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Malformed);
        let source = std::error::Error::source(&err).unwrap();
        let source = source.downcast_ref::<rmp_serde::decode::Error>().unwrap();
        assert!(
            matches!(source, rmp_serde::decode::Error::DepthLimitExceeded),
            "{source:?}"
        );
        let very_deep: Result<serde::de::IgnoredAny> =
            deserialize_checked(&nested(10_000), &limits, String::new);
        assert_eq!(very_deep.unwrap_err().kind(), ErrorKind::Malformed);
    }

    #[test]
    fn decode_errors_are_classified() {
        use rmp_serde::decode::Error as E;
        let io = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let not_utf8 = vec![0xff];
        let utf8 = std::str::from_utf8(&not_utf8).unwrap_err();
        let cases = [
            (E::InvalidMarkerRead(io()), ErrorKind::Malformed),
            (E::InvalidDataRead(io()), ErrorKind::Malformed),
            (E::TypeMismatch(Marker::Reserved), ErrorKind::Malformed),
            (E::Utf8Error(utf8), ErrorKind::Malformed),
            (E::DepthLimitExceeded, ErrorKind::Malformed),
            (E::Uncategorized("InvalidUtf8".into()), ErrorKind::Malformed),
            (E::TypeMismatch(Marker::Str8), ErrorKind::WrongShape),
            (E::OutOfRange, ErrorKind::WrongShape),
            (E::LengthMismatch(2), ErrorKind::WrongShape),
            (E::Syntax("missing field `x`".into()), ErrorKind::WrongShape),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&err), kind, "{err:?}");
        }
    }

    #[test]
    fn capped_writer_stops_at_the_limit() {
        use std::io::Write;
        let mut writer = CappedWriter::new(4, 100);
        assert!(writer.buf.capacity() <= 100);
        writer.write_all(&[1, 2, 3]).unwrap();
        writer.write_all(&[4]).unwrap();
        assert!(writer.write_all(&[5, 6]).is_err());
        assert_eq!(writer.overflow, Some(6));
        assert_eq!(writer.buf, [1, 2, 3, 4]);
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse_for_depth() {
        let limits = CodecLimits {
            max_depth: 2,
            ..CodecLimits::default()
        };
        assert!(encode_payload(&vec![vec![1u8]], &limits).is_ok());
        let err = encode_payload(&vec![vec![vec![1u8]]], &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode);
        assert!(err.message().contains("limit of 2 levels"), "{err}");
    }

    #[test]
    fn max_depth_is_capped_at_what_a_2_mib_stack_holds() {
        let limits = CodecLimits {
            max_depth: usize::MAX,
            ..CodecLimits::default()
        };
        let ceiling = CodecLimits::MAX_DEPTH_CEILING;
        assert_eq!(limits.depth(), ceiling);
        // As deep as allowed, on a thread with tokio's default worker stack.
        let decode_at = move |levels: usize| {
            std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || {
                    let mut bytes = vec![0x91; levels];
                    bytes.push(0x01);
                    let any = decode_payload::<serde::de::IgnoredAny>(&bytes, &limits).map(|_| ());
                    let typed = decode_payload::<Vec<serde::de::IgnoredAny>>(&bytes, &limits);
                    (
                        any.map_err(|e| e.kind()),
                        typed.map(|_| ()).map_err(|e| e.kind()),
                    )
                })
                .unwrap()
                .join()
                .unwrap()
        };
        assert_eq!(decode_at(ceiling), (Ok(()), Ok(())));
        let too_deep = Err(ErrorKind::Malformed);
        assert_eq!(decode_at(ceiling + 1), (too_deep, too_deep));
    }

    #[test]
    fn fuzz_seeds_reach_the_deep_paths() {
        // The seed corpus in fuzz/seeds, written by msgpack-python: the fuzzer
        // starts from inputs that decode, not only from noise.
        let limits = CodecLimits::default();
        let seed = |name: &str| {
            let path = format!("{}/fuzz/seeds/{name}", env!("CARGO_MANIFEST_DIR"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        for name in ["payload/order", "payload/order-buy"] {
            let result = decode_payload::<fuzz::Order>(&seed(name), &limits);
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        }
        for name in [
            "payload/fill-map",
            "payload/fill-array",
            "payload/nested",
            "payload/ext",
        ] {
            let result = decode_payload::<fuzz::AnyValue>(&seed(name), &limits);
            assert!(result.is_ok(), "{name}: {:?}", result.err());
            fuzz::decode_payload_value(&seed(name));
        }
    }

    #[test]
    fn fuzz_payloads_survive_every_truncation() {
        let bytes = encode_payload(&(1u8, "two", vec![3u16; 4]), &CodecLimits::default()).unwrap();
        for cut in 0..=bytes.len() {
            fuzz::decode_payload_value(&bytes[..cut]);
        }
    }
}

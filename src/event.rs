//! Names and identities: [`TopicName`], [`Pattern`], [`EventId`], [`InstanceId`],
//! and the metadata every event carries ([`Meta`]). Pure data, no I/O.
//!
//! ## Topic names
//!
//! A topic is `component:event_type`: two or more segments joined by `:`, each
//! segment one or more of `a-z 0-9 _ -`, at most [`TopicName::MAX_LEN`] bytes in
//! all. The rules are strict on purpose: a topic name becomes part of a Redis key
//! (`tickbus:stream:{position:updated}`), so characters that mean something to
//! Redis or to Redis Cluster (`{ } * ? [ ]`, spaces, NUL, upper case that would
//! make two keys of one topic) are rejected when the name is created, and can
//! never reach a key.
//!
//! ## Patterns
//!
//! A [`Pattern`] matches topic names segment by segment: `*` matches exactly one
//! segment, `>` (last only) matches one or more remaining segments, anything else
//! matches itself. `trading:>` matches `trading:cycle:start`; `*:updated` matches
//! `position:updated`.

use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};

/// A validated topic name, `component:event_type`. Cheap to clone.
///
/// # Examples
///
/// ```
/// use tickbus::TopicName;
///
/// let topic = TopicName::new("trading:cycle:start")?;
/// assert_eq!(topic.as_str(), "trading:cycle:start");
/// assert_eq!(topic.segments().count(), 3);
///
/// // A name that would be a malformed Redis key is refused, saying why.
/// let err = TopicName::new("orders:{eu}").unwrap_err();
/// assert!(err.to_string().contains("'{'"));
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// The longest topic name accepted, in bytes.
    pub const MAX_LEN: usize = 200;

    /// Validates `name` and returns it as a topic name.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidTopic`] naming the rule that was broken: empty, longer
    /// than [`TopicName::MAX_LEN`], fewer than two segments, an empty segment, or a
    /// character outside `a-z 0-9 _ -` (upper case included).
    pub fn new(name: &str) -> Result<Self> {
        validate_name(name, Kind::Topic)?;
        Ok(TopicName(Arc::from(name)))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `:`-separated segments, in order.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.0.split(':')
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({:?})", &*self.0)
    }
}

impl AsRef<str> for TopicName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for TopicName {
    type Error = Error;
    fn try_from(name: &str) -> Result<Self> {
        TopicName::new(name)
    }
}

/// A validated subscription pattern over topic names.
///
/// `*` matches exactly one segment; `>` matches one or more trailing segments and
/// may appear only last. A pattern without wildcards matches exactly one topic.
///
/// # Examples
///
/// ```
/// use tickbus::{Pattern, TopicName};
///
/// let all_trading = Pattern::new("trading:>")?;
/// assert!(all_trading.matches(&TopicName::new("trading:cycle:start")?));
/// assert!(!all_trading.matches(&TopicName::new("news:scrape:start")?));
///
/// let any_update = Pattern::new("*:updated")?;
/// assert!(any_update.matches(&TopicName::new("position:updated")?));
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: Arc<str>,
}

impl Pattern {
    /// Validates `pattern`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidPattern`] naming the broken rule: the topic rules apply
    /// to every literal segment, a segment is either a wildcard or a literal (never
    /// `ab*`), and `>` may only be the last segment. A pattern may have a single
    /// segment when that segment is `>` (everything).
    pub fn new(pattern: &str) -> Result<Self> {
        validate_name(pattern, Kind::Pattern)?;
        Ok(Pattern {
            text: Arc::from(pattern),
        })
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` matches this pattern.
    pub fn matches(&self, topic: &TopicName) -> bool {
        let mut topic_segments = topic.segments();
        for pattern_segment in self.text.split(':') {
            match pattern_segment {
                ">" => return topic_segments.next().is_some(),
                "*" => {
                    if topic_segments.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_segments.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_segments.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", &*self.text)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Topic,
    Pattern,
}

/// Shows an untrusted name in an error message: escaped, and cut to a readable length.
fn quoted(name: &str) -> String {
    const SHOWN: usize = 64;
    let mut shown: String = name
        .chars()
        .take(SHOWN)
        .collect::<String>()
        .escape_debug()
        .collect();
    if name.chars().count() > SHOWN {
        shown.push_str("...");
    }
    format!("\"{shown}\"")
}

fn validate_name(name: &str, kind: Kind) -> Result<()> {
    let (error_kind, what) = match kind {
        Kind::Topic => (ErrorKind::InvalidTopic, "topic"),
        Kind::Pattern => (ErrorKind::InvalidPattern, "pattern"),
    };
    let fail = |rule: String| {
        Err(Error::new(
            error_kind,
            format!("{what} {}: {rule}", quoted(name)),
        ))
    };
    if name.is_empty() {
        return fail("must not be empty".into());
    }
    if name.len() > TopicName::MAX_LEN {
        return fail(format!(
            "is {} bytes long, the limit is {}",
            name.len(),
            TopicName::MAX_LEN
        ));
    }
    let segment_count = name.split(':').count();
    let is_everything = kind == Kind::Pattern && name == ">";
    if segment_count < 2 && !is_everything {
        return fail("must have at least two ':'-separated segments (component:event_type)".into());
    }
    for (index, segment) in name.split(':').enumerate() {
        if segment.is_empty() {
            return fail(format!("segment {} is empty", index + 1));
        }
        if kind == Kind::Pattern && (segment == "*" || segment == ">") {
            if segment == ">" && index + 1 != segment_count {
                return fail("'>' may only be the last segment".into());
            }
            continue;
        }
        if let Some(bad) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            let rule = if bad.is_ascii_uppercase() {
                format!("{bad:?} is upper case; names are lowercase a-z, 0-9, '_' and '-'")
            } else if kind == Kind::Pattern && (bad == '*' || bad == '>') {
                format!("wildcard {bad:?} must be a whole segment")
            } else {
                format!("{bad:?} is not allowed; names are lowercase a-z, 0-9, '_' and '-' in ':'-separated segments")
            };
            return fail(rule);
        }
    }
    Ok(())
}

/// The identity of one [`Bus`](crate::Bus) value: a random UUID unless one is set
/// on the builder (backtests fix it to make event ids reproducible).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(Uuid);

impl InstanceId {
    /// A new random instance id (UUIDv4).
    pub fn random() -> Self {
        InstanceId(Uuid::new_v4())
    }

    /// An instance id from a given UUID.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        InstanceId(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstanceId({})", self.0)
    }
}

/// The id of one event: a UUIDv7, time-ordered to the millisecond, unique across
/// instances.
///
/// tickbus does not call `Uuid::now_v7()` per event (about 60 ns here, more than a
/// whole publish). It derives the id from the event's timestamp, a 32-bit salt
/// fixed per (instance, topic) and the topic's 42-bit sequence number:
///
/// ```text
///  48 bits unix ms | ver 7 | 12 bits salt[31..20] | var 0b10 | 20 bits salt[19..0] | 42 bits seq
/// ```
///
/// Two ids of one topic differ in their sequence; ids of different topics or
/// instances differ in their salt (random-like, a collision needs the same
/// millisecond and the same sequence as well). Within a topic, ids sort by time,
/// then by sequence.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    /// Derives the id of the event with topic sequence `seq`, published at `unix_ns`,
    /// on a topic whose salt is `salt`.
    pub(crate) fn derive(unix_ns: u64, salt: u32, seq: u64) -> Self {
        const SEQ_BITS: u32 = 42;
        let unix_ms = (unix_ns / 1_000_000) & ((1 << 48) - 1);
        let salt_high = u64::from(salt >> 20); // 12 bits
        let salt_low = u64::from(salt & 0xF_FFFF); // 20 bits
        let high = (unix_ms << 16) | (0x7 << 12) | salt_high;
        let low = (0b10 << 62) | (salt_low << SEQ_BITS) | (seq & ((1 << SEQ_BITS) - 1));
        EventId(Uuid::from_u64_pair(high, low))
    }

    /// An event id from a given UUID (for example one read back from a stream).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        EventId(uuid)
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// The salt of a topic's event ids: a mix of the instance id and the topic name, so
/// that one instance's topics and different instances get different id spaces.
pub(crate) fn topic_salt(instance: &InstanceId, topic: &TopicName) -> u32 {
    // FNV-1a over the name, then splitmix64 with the instance: deterministic, so a
    // backtest with a fixed instance id reproduces its ids.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let (a, b) = instance.0.as_u64_pair();
    let mut z = hash ^ a ^ b.rotate_left(32);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 32) as u32
}

/// The id Redis gave a stream entry: milliseconds of the server clock, then a
/// sequence within that millisecond. Written `1700000000000-0`; ordered as Redis
/// orders entries.
///
/// # Examples
///
/// ```
/// use tickbus::StreamId;
///
/// let id: StreamId = "1700000000000-3".parse()?;
/// assert_eq!((id.ms, id.seq), (1_700_000_000_000, 3));
/// assert_eq!(id.to_string(), "1700000000000-3");
/// assert!(id < "1700000000001-0".parse()?);
/// assert!("1700000000000".parse::<StreamId>().is_err());
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// Milliseconds since the Unix epoch, by the Redis server's clock.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl StreamId {
    /// `0-0`, before every entry.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// A stream id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl std::str::FromStr for StreamId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parsed = text
            .split_once('-')
            .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)));
        match parsed {
            Some((ms, seq)) => Ok(StreamId { ms, seq }),
            None => Err(Error::new(
                ErrorKind::WrongShape,
                format!("not a stream id (`<ms>-<seq>`): {text:?}"),
            )),
        }
    }
}

#[cfg(feature = "redis")]
impl StreamId {
    /// The id just before this one (`ZERO` stays `ZERO`): an exclusive bound
    /// that lets this id itself through.
    pub(crate) const fn predecessor(self) -> StreamId {
        match (self.ms, self.seq) {
            (0, 0) => StreamId::ZERO,
            (ms, 0) => StreamId::new(ms - 1, u64::MAX),
            (ms, seq) => StreamId::new(ms, seq - 1),
        }
    }

    /// The id just after this one (the largest id stays itself): an inclusive
    /// bound that leaves this id out.
    pub(crate) const fn successor(self) -> StreamId {
        match (self.ms, self.seq) {
            (u64::MAX, u64::MAX) => self,
            (ms, u64::MAX) => StreamId::new(ms + 1, 0),
            (ms, seq) => StreamId::new(ms, seq + 1),
        }
    }

    /// The first id of the millisecond `time` falls in.
    pub(crate) fn first_of(time: std::time::SystemTime) -> StreamId {
        let ms = time
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        StreamId::new(ms, 0)
    }
}

/// Where reading a stream starts: one vocabulary for a consumer group
/// ([`GroupConfig::start`](crate::group::GroupConfig)), the cross-instance reader of
/// durable topics ([`RedisConfig::remote_start`](crate::RedisConfig)) and a
/// replay ([`ReplayOptions::from`](crate::replay::ReplayOptions)), as JetStream's
/// `DeliverPolicy` is one for its consumers. Times are the Redis server's
/// (the milliseconds of stream ids).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tickbus::{StartAt, StreamId};
/// use tickbus::group::GroupConfig;
///
/// // A new reporting group takes the last hour of fills, then everything new.
/// let reporting = GroupConfig {
///     start: StartAt::Time(SystemTime::now() - Duration::from_secs(3600)),
///     ..Default::default()
/// };
/// // Pick up after the last entry a previous run processed.
/// let after = StartAt::After("1700000000000-3".parse::<StreamId>()?);
/// assert_ne!(reporting.start, after);
/// # Ok::<(), tickbus::Error>(())
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StartAt {
    /// Every entry the stream still holds.
    Beginning,
    /// Entries written from now on (`$`).
    #[default]
    New,
    /// Entries after this stream id (exclusive).
    After(StreamId),
    /// This stream id and the entries after it (inclusive).
    At(StreamId),
    /// Entries written at or after this time.
    Time(std::time::SystemTime),
    /// Where this reader left off. A group always resumes from its own
    /// position (this is `New` when it is created); the cross-instance reader
    /// from the cursor it saved for this instance id
    /// (`<prefix>:cursor:{<topic>}`; `New` the first time: give the bus a fixed
    /// instance id). A replay has no position of its own: `InvalidConfig`.
    Resume,
}

#[cfg(feature = "redis")]
impl StartAt {
    /// The exclusive id reading starts after (`XGROUP CREATE`, `XREAD`), for
    /// the variants that name one; `None` for `New` and `Resume`, which the
    /// reader resolves.
    pub(crate) fn after_id(self) -> Option<StreamId> {
        match self {
            StartAt::Beginning => Some(StreamId::ZERO),
            StartAt::After(id) => Some(id),
            StartAt::At(id) => Some(id.predecessor()),
            StartAt::Time(time) => Some(StreamId::first_of(time).predecessor()),
            StartAt::New | StartAt::Resume => None,
        }
    }
}

/// An event's headers: `(name, value)` pairs of text, in the order they were
/// given, names repeated if the publisher repeated them (field `h` of a stream
/// entry, `docs/redis-layout.md`). For what travels beside a payload and is not
/// part of it: a trace id, a correlation id, the strategy that sent an order.
///
/// Cheap to clone (shared, not copied), and free when empty: an event published
/// without headers carries no allocation for them.
///
/// # Examples
///
/// ```
/// use tickbus::{Bus, Headers};
///
/// let bus = Bus::builder().build()?;
/// let orders = bus.topic::<u64>("order:new")?;
/// let mut router = orders.subscribe();
/// let headers: Headers = [("trace", "4bf92f35"), ("strategy", "mm-eth")].into_iter().collect();
/// orders.publish_with_headers(7, headers)?;
/// let event = router.try_recv()?;
/// assert_eq!(event.meta.headers().get("trace"), Some("4bf92f35"));
/// assert_eq!(event.meta.headers().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers(Option<Arc<[(String, String)]>>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Headers(None)
    }

    /// How many `(name, value)` pairs.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The value of the first header named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find_map(|(n, value)| (n == name).then_some(value))
    }

    /// The `(name, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.as_slice()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
    }

    /// The pairs as a slice.
    pub fn as_slice(&self) -> &[(String, String)] {
        self.0.as_deref().unwrap_or(&[])
    }
}

impl From<Vec<(String, String)>> for Headers {
    fn from(pairs: Vec<(String, String)>) -> Self {
        if pairs.is_empty() {
            Headers(None)
        } else {
            Headers(Some(pairs.into()))
        }
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Self {
        pairs
            .into_iter()
            .map(|(name, value)| (name.into(), value.into()))
            .collect::<Vec<_>>()
            .into()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The metadata of an event from another instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    pub(crate) id: EventId,
    pub(crate) source: InstanceId,
    pub(crate) stream_id: StreamId,
}

/// What an event carries beyond its sequence and time, for the few that have
/// it: another instance's ids, headers. Shared by the ring's slot and every
/// [`Meta`] of the event (one reference count each, nothing copied).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Extra {
    /// Set for an event from another instance.
    pub(crate) remote: Option<Remote>,
    pub(crate) headers: Headers,
}

impl Extra {
    /// A remote event's extra.
    pub(crate) fn remote(remote: Remote, headers: Headers) -> Option<Arc<Extra>> {
        Some(Arc::new(Extra {
            remote: Some(remote),
            headers,
        }))
    }

    /// A local event's extra: none unless it has headers.
    pub(crate) fn local(headers: Headers) -> Option<Arc<Extra>> {
        (!headers.is_empty()).then(|| {
            Arc::new(Extra {
                remote: None,
                headers,
            })
        })
    }
}

/// What few events carry beyond their sequence and time, as a slot and a
/// [`Meta`] hold it: a nullable shared pointer whose release is out of line, so
/// that the hot paths (a publish drops the value it overwrites, a receive
/// drops its event) do not inline an `Arc` drop (inlined, it grew `publish` by
/// a quarter and a publish + receive cost ~15% more).
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtraSlot(pub(crate) Option<Arc<Extra>>);

impl ExtraSlot {
    pub(crate) const NONE: ExtraSlot = ExtraSlot(None);

    #[inline(always)]
    pub(crate) fn is_none(&self) -> bool {
        self.0.is_none()
    }

    #[inline]
    pub(crate) fn get(&self) -> Option<&Extra> {
        self.0.as_deref()
    }
}

impl From<Option<Arc<Extra>>> for ExtraSlot {
    #[inline]
    fn from(extra: Option<Arc<Extra>>) -> Self {
        ExtraSlot(extra)
    }
}

impl Drop for ExtraSlot {
    #[inline(always)]
    fn drop(&mut self) {
        if self.0.is_some() {
            release(self.0.take());
        }
        #[cold]
        #[inline(never)]
        fn release(extra: Option<Arc<Extra>>) {
            drop(extra);
        }
    }
}

/// What every event carries besides its payload: id, topic sequence, source
/// instance, publish time and [`Headers`]. Built without allocation: the id is
/// derived from the sequence when asked for, and headers are shared, not
/// copied (an event without headers carries none). The topic is the subscriber's
/// ([`Subscriber::topic`](crate::Subscriber::topic)), or [`AnyEvent::topic`](crate::AnyEvent::topic)
/// for pattern subscribers.
///
/// # Examples
///
/// ```
/// use tickbus::Bus;
///
/// let bus = Bus::builder().build()?;
/// let prices = bus.topic::<f64>("price:tick")?;
/// let mut sub = prices.subscribe();
/// prices.publish(101.25)?;
/// let event = sub.try_recv()?;
/// assert_eq!(event.meta.seq(), 0);
/// assert_eq!(event.meta.source(), bus.instance_id());
/// assert!(event.meta.timestamp_ns() > 0);
/// assert!(event.meta.headers().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Meta {
    pub(crate) seq: u64,
    pub(crate) timestamp_ns: u64,
    /// This bus's instance and the topic's salt: a local event's id and source.
    pub(crate) instance: InstanceId,
    pub(crate) salt: u32,
    /// Another instance's ids, headers; `None` for most events. One pointer,
    /// so that a `Meta` stays 48 bytes (it is returned by every receive).
    pub(crate) extra: ExtraSlot,
}

impl Meta {
    /// The event's position in its topic on this bus, from 0, without gaps.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Publish time, nanoseconds since the Unix epoch (from the bus clock, which a
    /// backtest can replace with a virtual one).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// The event id (UUIDv7).
    pub fn id(&self) -> EventId {
        match self.remote() {
            None => EventId::derive(self.timestamp_ns, self.salt, self.seq),
            Some(remote) => remote.id,
        }
    }

    /// The instance that published the event.
    pub fn source(&self) -> InstanceId {
        self.remote().map_or(self.instance, |remote| remote.source)
    }

    /// Whether the event came from another instance, through Redis.
    pub fn is_remote(&self) -> bool {
        self.remote().is_some()
    }

    /// The id of the stream entry the event was read from, for an event that came
    /// from another instance. `None` for events published on this bus (their stream
    /// id, if the topic is durable, is what [`Receipt`](crate::Receipt) resolves to).
    pub fn stream_id(&self) -> Option<StreamId> {
        self.remote().map(|remote| remote.stream_id)
    }

    #[inline]
    fn remote(&self) -> Option<&Remote> {
        self.extra.get().and_then(|extra| extra.remote.as_ref())
    }

    /// The event's headers: what its publisher gave
    /// [`Topic::publish_with_headers`](crate::Topic::publish_with_headers), or
    /// field `h` of the stream entry it was read from. Empty for most events.
    pub fn headers(&self) -> &Headers {
        static NONE: Headers = Headers::new();
        self.extra.get().map_or(&NONE, |extra| &extra.headers)
    }
}

impl fmt::Debug for Meta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meta")
            .field("id", &self.id())
            .field("seq", &self.seq)
            .field("timestamp_ns", &self.timestamp_ns)
            .field("source", &self.source())
            .field("stream_id", &self.stream_id())
            .field("headers", self.headers())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every receive returns a `Meta`: what few events carry beyond it stays
    /// behind one pointer.
    #[test]
    fn meta_stays_small() {
        assert_eq!(std::mem::size_of::<Meta>(), 48);
        assert_eq!(std::mem::size_of::<Headers>(), 16);
    }

    #[test]
    fn topic_rules_name_the_rule_broken() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("position", "two"),
            ("position:", "segment 2 is empty"),
            (":updated", "segment 1 is empty"),
            ("Position:updated", "upper case"),
            ("orders:{eu}", "'{'"),
            ("orders:e*", "'*'"),
            ("orders:a?", "'?'"),
            ("orders:[a]", "'['"),
            ("orders:a b", "' '"),
            ("orders:a\0b", "'\\0'"),
            ("orders:caf\u{e9}", "'\u{e9}'"),
        ];
        for (name, expected) in cases {
            let err = TopicName::new(name).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidTopic, "{name:?}");
            assert!(err.to_string().contains(expected), "{name:?}: {err}");
        }
        let long = format!("a:{}", "b".repeat(10 * 1024));
        let err = TopicName::new(&long).unwrap_err();
        assert!(err.to_string().contains("limit is 200"), "{err}");
        assert!(
            err.to_string().len() < 300,
            "message must not echo 10 KiB: {err}"
        );
    }

    #[test]
    fn valid_topics_are_accepted() {
        for name in [
            "position:updated",
            "trading:cycle:start",
            "a:b",
            "md-feed:btc_usd:l2",
        ] {
            assert_eq!(TopicName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn patterns_match_by_segment() {
        let t = |s: &str| TopicName::new(s).unwrap();
        let p = |s: &str| Pattern::new(s).unwrap();
        assert!(p("trading:>").matches(&t("trading:cycle:start")));
        assert!(p("trading:>").matches(&t("trading:cycle")));
        assert!(!p("trading:>").matches(&t("news:cycle")));
        assert!(p("*:updated").matches(&t("position:updated")));
        assert!(!p("*:updated").matches(&t("position:updated:v2")));
        assert!(p("trading:*:start").matches(&t("trading:cycle:start")));
        assert!(!p("trading:*").matches(&t("trading:cycle:start")));
        assert!(p(">").matches(&t("a:b")));
        assert!(p("a:b").matches(&t("a:b")));
        assert!(!p("a:b").matches(&t("a:b:c")));
    }

    #[test]
    fn pattern_rules() {
        for bad in ["trading:>:x", "trading:ab*", "*", "", "Trading:>"] {
            let err = Pattern::new(bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidPattern, "{bad:?}");
        }
    }

    #[test]
    fn derived_ids_are_v7_unique_and_ordered() {
        let instance = InstanceId::random();
        let salt = topic_salt(&instance, &TopicName::new("a:b").unwrap());
        let first = EventId::derive(1_700_000_000_123_456_789, salt, 7);
        let second = EventId::derive(1_700_000_000_123_456_789, salt, 8);
        let later = EventId::derive(1_700_000_000_124_000_000, salt, 9);
        assert_eq!(first.as_uuid().get_version_num(), 7);
        assert_eq!(first.as_uuid().get_variant(), uuid::Variant::RFC4122);
        assert!(first < second && second < later);
        let ms = first.as_uuid().get_timestamp().unwrap().to_unix();
        assert_eq!((ms.0, ms.1 / 1_000_000), (1_700_000_000, 123));
        let other = topic_salt(&instance, &TopicName::new("a:c").unwrap());
        assert_ne!(salt, other);
    }
}

//! [`ConnectionState`]: the state of the connection to Redis, as
//! [`Bus::health`](crate::Bus::health) returns it and
//! [`HealthReport::connection`](crate::health::HealthReport::connection) serializes it.

use std::time::SystemTime;

use serde::ser::{Serialize, SerializeStruct, Serializer};

/// The state of the connection to Redis, as [`Bus::health`](crate::Bus::health)
/// returns it and [`HealthReport`](crate::health::HealthReport) holds it.
///
/// Serialized (serde) as an object tagged by `state`, `Degraded` with its
/// start as ms since the Unix epoch and its duration so far, computed when it
/// is serialized:
///
/// ```json
/// {"state":"connected"}
/// {"state":"degraded","outbox_depth":12,"last_error":"IO Error: connection refused",
///  "since_unix_ms":1700000000000,"for_ms":2500}
/// ```
///
/// (`embedded` and `closed` as `connected`.)
///
/// # Examples
///
/// ```
/// use tickbus::{Bus, ConnectionState};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bus = Bus::builder().build()?; // no Redis configured
/// match bus.health() {
///     ConnectionState::Embedded | ConnectionState::Connected => {}
///     ConnectionState::Degraded {
///         outbox_depth,
///         last_error,
///         since,
///     } => eprintln!("Redis away since {since:?} ({outbox_depth} waiting): {last_error}"),
///     ConnectionState::Closed => eprintln!("shut down"),
///     _ => {} // the enum is non-exhaustive
/// }
/// assert_eq!(serde_json::to_string(&bus.health())?, r#"{"state":"embedded"}"#);
///
/// let away = ConnectionState::Degraded {
///     outbox_depth: 3,
///     last_error: "connection refused".to_string(),
///     since: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_500),
/// };
/// let json = serde_json::to_value(&away)?;
/// assert_eq!(json["state"], "degraded");
/// assert_eq!(json["outbox_depth"], 3);
/// assert_eq!(json["since_unix_ms"], 1_500);
/// assert!(json["for_ms"].as_u64().unwrap() > 0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// No Redis configured: everything is in-process.
    Embedded,
    /// Redis answers; the outbox is being written as it fills.
    Connected,
    /// Redis does not answer (or refuses) since `since`. Local delivery goes on;
    /// durable events wait in the outbox.
    Degraded {
        /// Durable events waiting for Redis.
        outbox_depth: usize,
        /// The last error, as text (no password in it).
        last_error: String,
        /// When the trouble started.
        since: SystemTime,
    },
    /// The bus is shut down.
    Closed,
}

/// Milliseconds from the Unix epoch to `at` (0 before it).
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Serialize for ConnectionState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        const NAME: &str = "ConnectionState";
        let unit = |serializer: S, state: &'static str| {
            let mut object = serializer.serialize_struct(NAME, 1)?;
            object.serialize_field("state", state)?;
            object.end()
        };
        match self {
            ConnectionState::Embedded => unit(serializer, "embedded"),
            ConnectionState::Connected => unit(serializer, "connected"),
            ConnectionState::Closed => unit(serializer, "closed"),
            ConnectionState::Degraded {
                outbox_depth,
                last_error,
                since,
            } => {
                let for_ms = since.elapsed().unwrap_or_default().as_millis() as u64;
                let mut object = serializer.serialize_struct(NAME, 5)?;
                object.serialize_field("state", "degraded")?;
                object.serialize_field("outbox_depth", outbox_depth)?;
                object.serialize_field("last_error", last_error)?;
                object.serialize_field("since_unix_ms", &unix_ms(*since))?;
                object.serialize_field("for_ms", &for_ms)?;
                object.end()
            }
        }
    }
}

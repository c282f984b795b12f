//! Parsing of the tool's position arguments (`--from`, `--to`): keywords,
//! stream ids, unix milliseconds and RFC 3339 times (the `time` crate's
//! parser). Pure, unit-tested.

use std::time::{Duration, UNIX_EPOCH};

use tickbus::replay::StopAt;
use tickbus::{StartAt, StreamId};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A position as given on the command line (`--from`, `--to`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spot {
    /// `beginning` (or `start`): the oldest entry held.
    Beginning,
    /// `end` (or `now`): the newest entry when the command starts.
    End,
    /// `1700000000000-0`: a stream id.
    Id(StreamId),
    /// `1700000000000` (unix ms) or `2026-12-02T05:00:00Z`: a time, as ms
    /// since the Unix epoch.
    Time(u64),
}

impl Spot {
    /// Where a replay starts (`--from`): `end` is what is written from now on.
    pub(crate) fn start(self) -> StartAt {
        match self {
            Spot::Beginning => StartAt::Beginning,
            Spot::End => StartAt::New,
            Spot::Id(id) => StartAt::At(id),
            Spot::Time(ms) => StartAt::Time(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Where a replay stops (`--to`): `beginning` is before every entry.
    pub(crate) fn stop(self) -> StopAt {
        match self {
            Spot::Beginning => StopAt::Id(StreamId::ZERO),
            Spot::End => StopAt::End,
            Spot::Id(id) => StopAt::Id(id),
            Spot::Time(ms) => StopAt::Time(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The millisecond it stands for, if it names one.
    pub(crate) fn ms(self) -> Option<u64> {
        match self {
            Spot::Id(id) => Some(id.ms),
            Spot::Time(ms) => Some(ms),
            Spot::Beginning | Spot::End => None,
        }
    }
}

/// Parses `beginning`, `end`, a stream id, unix milliseconds or an RFC 3339
/// time (for clap's `value_parser`).
pub(crate) fn spot(text: &str) -> Result<Spot, String> {
    let text = text.trim();
    match text.to_ascii_lowercase().as_str() {
        "beginning" | "start" | "first" => return Ok(Spot::Beginning),
        "end" | "now" | "last" => return Ok(Spot::End),
        _ => {}
    }
    if let Some((ms, seq)) = text.split_once('-') {
        if is_digits(ms) && is_digits(seq) {
            return text
                .parse::<StreamId>()
                .map(Spot::Id)
                .map_err(|_| format!("stream id out of range: {text:?}"));
        }
    }
    if is_digits(text) {
        return text
            .parse::<u64>()
            .map(Spot::Time)
            .map_err(|_| format!("unix milliseconds out of range: {text:?}"));
    }
    rfc3339_ms(text).map(Spot::Time).map_err(|why| {
        format!(
            "{why}; expected `beginning`, `end`, a stream id (1700000000000-0), \
             unix milliseconds (1700000000000) or an RFC 3339 time (2026-12-02T05:00:00Z)"
        )
    })
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// An RFC 3339 time (`2026-12-02T05:00:00Z`, `2026-12-02T06:00:00.250+01:00`)
/// as ms since the Unix epoch, through the `time` crate's RFC 3339 parser (any
/// single character may stand for the `T`, `z` for `Z`; a leap second counts
/// as the second before it; the fraction is cut to milliseconds).
pub(crate) fn rfc3339_ms(text: &str) -> Result<u64, String> {
    let time = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|error| format!("not a valid time ({error}): {text:?}"))?;
    u64::try_from(time.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| format!("not a valid time (before 1970): {text:?}"))
}

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `3h12m`, `2d04h`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let s = duration.as_secs();
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords() {
        assert_eq!(spot("beginning"), Ok(Spot::Beginning));
        assert_eq!(spot("Start"), Ok(Spot::Beginning));
        assert_eq!(spot("end"), Ok(Spot::End));
        assert_eq!(spot("now"), Ok(Spot::End));
    }

    #[test]
    fn stream_ids() {
        assert_eq!(
            spot("1700000000000-0"),
            Ok(Spot::Id(StreamId::new(1_700_000_000_000, 0)))
        );
        assert_eq!(spot("5-12"), Ok(Spot::Id(StreamId::new(5, 12))));
        assert!(spot("99999999999999999999-0").is_err());
        assert!(spot("12-").is_err());
        assert!(spot("-3").is_err());
    }

    #[test]
    fn unix_millis() {
        assert_eq!(spot("1700000000000"), Ok(Spot::Time(1_700_000_000_000)));
        assert_eq!(spot("0"), Ok(Spot::Time(0)));
        assert!(spot("99999999999999999999999").is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(rfc3339_ms("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(rfc3339_ms("2023-11-14T22:13:20.5Z"), Ok(1_700_000_000_500));
        assert_eq!(
            rfc3339_ms("2023-11-14T22:13:20.123456789Z"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(
            rfc3339_ms("2023-11-15T00:13:20+02:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            rfc3339_ms("2023-11-14T17:13:20-05:00"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(rfc3339_ms("2023-11-14 22:13:20z"), Ok(1_700_000_000_000));
        assert_eq!(rfc3339_ms("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        // A leap second stands for the last millisecond before it.
        assert_eq!(rfc3339_ms("2016-12-31T23:59:60Z"), Ok(1_483_228_799_999));
        assert_eq!(
            spot("2026-12-02T05:00:00Z"),
            Ok(Spot::Time(1_796_187_600_000))
        );
    }

    #[test]
    fn bad_times_are_refused_with_a_reason() {
        for text in [
            "2023-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20.Z",
            "1969-12-31T23:59:59Z",
            "yesterday",
            "",
            "2023-11-14T22:13:20Zjunk",
            "２０２３-11-14T22:13:20Z",
        ] {
            let error = spot(text).expect_err(text);
            assert!(error.contains("RFC 3339"), "{text}: {error}");
        }
    }

    #[test]
    fn people_formats() {
        assert_eq!(human_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(human_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(human_duration(Duration::from_secs(3 * 3600 + 720)), "3h12m");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 4 * 3600)),
            "2d04h"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
    }
}

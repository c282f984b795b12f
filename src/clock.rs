//! The bus clock: where event timestamps and "now" come from.
//!
//! Live, it is the CPU's time-stamp counter (through `quanta`), calibrated once
//! against the system clock: about 10 ns a reading instead of ~25 ns for
//! `SystemTime::now()`. In tests and backtests it is a manual clock that only moves
//! when told to, so time-dependent logic is reproducible.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of nanoseconds since the Unix epoch. Cheap to clone.
///
/// # Examples
///
/// ```
/// use tickbus::{Bus, Clock};
///
/// let clock = Clock::manual(1_700_000_000_000_000_000);
/// let bus = Bus::builder().clock(clock.clone()).build()?;
/// assert_eq!(bus.now_ns(), 1_700_000_000_000_000_000);
/// clock.advance_ns(1_000);
/// assert_eq!(bus.now_ns(), 1_700_000_000_000_001_000);
/// # Ok::<(), tickbus::Error>(())
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Counter {
        clock: quanta::Clock,
        base_raw: u64,
        base_unix_ns: u64,
    },
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The live clock: the time-stamp counter, anchored to the system clock now.
    pub fn system() -> Self {
        let clock = quanta::Clock::new();
        let base_raw = clock.raw();
        let base_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Clock {
            inner: Inner::Counter {
                clock,
                base_raw,
                base_unix_ns,
            },
        }
    }

    /// A clock that stands still at `start_unix_ns` until [`set_ns`](Clock::set_ns)
    /// or [`advance_ns`](Clock::advance_ns) moves it. Clones share the time.
    pub fn manual(start_unix_ns: u64) -> Self {
        Clock {
            inner: Inner::Manual(Arc::new(AtomicU64::new(start_unix_ns))),
        }
    }

    /// Nanoseconds since the Unix epoch.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match &self.inner {
            Inner::Counter {
                clock,
                base_raw,
                base_unix_ns,
            } => base_unix_ns + clock.delta_as_nanos(*base_raw, clock.raw()),
            Inner::Manual(now) => now.load(Ordering::Acquire),
        }
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        matches!(self.inner, Inner::Manual(_))
    }

    /// Sets a manual clock (no effect on the system clock; returns `false` then).
    pub fn set_ns(&self, unix_ns: u64) -> bool {
        match &self.inner {
            Inner::Manual(now) => {
                now.store(unix_ns, Ordering::Release);
                true
            }
            Inner::Counter { .. } => false,
        }
    }

    /// Moves a manual clock forward (no effect on the system clock; returns `false`).
    pub fn advance_ns(&self, by_ns: u64) -> bool {
        match &self.inner {
            Inner::Manual(now) => {
                now.fetch_add(by_ns, Ordering::AcqRel);
                true
            }
            Inner::Counter { .. } => false,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Counter { .. } => f.write_str("Clock::System"),
            Inner::Manual(now) => write!(f, "Clock::Manual({})", now.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_tracks_wall_time() {
        let clock = Clock::system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let ours = clock.now_ns();
        assert!(ours.abs_diff(wall) < 50_000_000, "{ours} vs {wall}");
        let later = clock.now_ns();
        assert!(later >= ours);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(10);
        assert_eq!(clock.now_ns(), 10);
        assert!(clock.advance_ns(5));
        assert_eq!(clock.clone().now_ns(), 15);
        assert!(clock.set_ns(3));
        assert_eq!(clock.now_ns(), 3);
        assert!(!Clock::system().set_ns(1));
    }
}

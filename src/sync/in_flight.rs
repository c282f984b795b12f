//! The in-flight word of a consumer group: how many of its `max` places are
//! taken, both kinds in one word so that one load sees a consistent pair.
//!
//! * **Held** places (bits 0..32): deliveries handed out or queued, not yet
//!   acked. What `GroupStats::in_flight` reports.
//! * **Reserved** places (bits 32..64): taken by a read or claim under way,
//!   before Redis says how many entries it returns.
//!
//! A read [`reserve`](InFlight::reserve)s up to its batch, then
//! [`settle`](InFlight::settle)s: the places its entries use become held, the
//! rest are given back. An ack, nack or dead letter [`release`](InFlight::release)s
//! a held place. `settle` and `release` say whether they made room, and the
//! caller then wakes its reader (the group's `tokio::sync::Notify::notify_one`,
//! which keeps a permit when nobody waits yet: a reader that found no room and
//! waits after the release is still woken; the loom model stands a permit flag
//! in for it).
//!
//! # Memory ordering
//!
//! Every change is one read-modify-write of the word (`fetch_update` or
//! `fetch_sub`), so changes never interleave and no place is counted twice or
//! lost. `AcqRel` / `Acquire`, as a semaphore's permits: nothing else rides on
//! the word (deliveries travel through channels), so this is a margin, not a
//! requirement. The stats load is `Acquire` for the same reason.

// Used by the live layer and groups (feature `redis`); built without it too,
// for the loom models.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use super::{AtomicU64, Ordering};

const RESERVED_SHIFT: u32 = 32;
const HELD_MASK: u64 = (1 << RESERVED_SHIFT) - 1;

/// A group member's in-flight places (see the module doc).
pub(crate) struct InFlight {
    /// `reserved << 32 | held`.
    word: AtomicU64,
    max: usize,
}

impl InFlight {
    /// At most `max` places, held and reserved together.
    pub(crate) fn new(max: usize) -> Self {
        InFlight {
            word: AtomicU64::new(0),
            max,
        }
    }

    /// Reserves up to `want` places for a read; returns how many it got (`0`:
    /// no room, wait for a release).
    pub(crate) fn reserve(&self, want: usize) -> usize {
        let mut got = 0;
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |places| {
                let taken = (places & HELD_MASK) + (places >> RESERVED_SHIFT);
                got = want.min(self.max.saturating_sub(taken as usize));
                Some(places + ((got as u64) << RESERVED_SHIFT))
            });
        got
    }

    /// Ends a read that reserved `reserved` places: `used` of them now hold
    /// deliveries, the rest are given back. Returns whether any were (wake the
    /// reader).
    #[must_use = "room was made: wake the reader"]
    pub(crate) fn settle(&self, reserved: usize, used: usize) -> bool {
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |places| {
                Some(places - ((reserved as u64) << RESERVED_SHIFT) + used as u64)
            });
        reserved > used
    }

    /// Gives back the places of `n` deliveries. Returns whether any were (wake
    /// the reader).
    #[must_use = "room was made: wake the reader"]
    pub(crate) fn release(&self, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        self.word.fetch_sub(n as u64, Ordering::AcqRel);
        true
    }

    /// Places holding deliveries (not those reserved by a read under way).
    pub(crate) fn held(&self) -> u64 {
        self.word.load(Ordering::Acquire) & HELD_MASK
    }

    /// Places reserved by reads under way (tests).
    #[cfg(test)]
    fn reserved(&self) -> u64 {
        self.word.load(Ordering::Acquire) >> RESERVED_SHIFT
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reserve_settle_release_keep_the_two_counts() {
        let places = InFlight::new(4);
        assert_eq!(places.reserve(3), 3);
        assert_eq!(places.reserve(3), 1, "only one place left");
        assert_eq!(places.reserve(1), 0);
        assert_eq!((places.held(), places.reserved()), (0, 4));
        assert!(places.settle(3, 2), "one place given back");
        assert!(!places.settle(1, 1));
        assert_eq!((places.held(), places.reserved()), (3, 0));
        assert_eq!(places.reserve(5), 1);
        assert!(places.release(2));
        assert!(!places.release(0));
        assert_eq!((places.held(), places.reserved()), (1, 1));
    }
}

/// loom models of the in-flight word, with the group's wake-up (a
/// `notify_one` that keeps a permit) as a permit flag.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn loom_in_flight_reads_never_overdraw() {
        // Two reads reserve at once from three places, one held by a delivery
        // acked meanwhile: what they get never exceeds the room, and every count
        // is exact.
        loom::model(|| {
            let places = Arc::new(InFlight::new(3));
            assert_eq!(places.reserve(1), 1);
            assert!(!places.settle(1, 1)); // one delivery held
            let reader = {
                let places = places.clone();
                thread::spawn(move || places.reserve(2))
            };
            let acker = {
                let places = places.clone();
                thread::spawn(move || places.release(1))
            };
            let got = places.reserve(2);
            let other = reader.join().unwrap();
            assert!(acker.join().unwrap());
            // Three places, one held until the ack: never more reserved, and
            // never room left unreserved.
            assert!(got + other <= 3, "{got} + {other} places of 3");
            assert!(got + other >= 2, "{got} + {other}: room left unreserved");
            assert_eq!(
                (places.held(), places.reserved()),
                (0, (got + other) as u64)
            );
            // Each read keeps one delivery (if it got a place), gives the rest back.
            assert_eq!(places.settle(got, got.min(1)), got > 1);
            assert_eq!(places.settle(other, other.min(1)), other > 1);
            let held = (got.min(1) + other.min(1)) as u64;
            assert_eq!((places.held(), places.reserved()), (held, 0));
        });
    }

    #[test]
    fn loom_in_flight_a_reader_without_room_is_woken_by_an_ack() {
        loom::model(|| {
            let places = Arc::new(InFlight::new(1));
            let permit = Arc::new(AtomicBool::new(false));
            assert_eq!(places.reserve(1), 1);
            assert!(!places.settle(1, 1)); // the one place holds a delivery
            let acker = {
                let (places, permit) = (places.clone(), permit.clone());
                thread::spawn(move || {
                    if places.release(1) {
                        permit.store(true, Ordering::Release); // notify_one
                    }
                })
            };
            // The reader loop: reserve, or wait for the permit and try again.
            let got = loop {
                match places.reserve(1) {
                    0 => {
                        // One permit is all this model's acker gives.
                        while !permit.load(Ordering::Acquire) {
                            thread::yield_now();
                        }
                    }
                    got => break got,
                }
            };
            acker.join().unwrap();
            assert_eq!(got, 1);
            assert_eq!((places.held(), places.reserved()), (0, 1));
        });
    }
}

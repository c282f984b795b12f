//! A bounded count of places: taken one at a time (waiting for one, if asked,
//! parked on a [`Handshake`]), given back in any number, and closed. The outbox
//! bounds its durable events with it.
//!
//! # Memory ordering
//!
//! * `taken`: a CAS that never goes past `capacity` takes a place; a `fetch_sub`
//!   gives places back. `AcqRel` on both, as a semaphore's permits: whatever the
//!   giver did before giving a place back happens before the next taker's use of
//!   it (the outbox's queue has its own lock, so nothing relies on more). The
//!   full-place waiter's look is `Relaxed`: the handshake's barriers order it
//!   against the giver's `fetch_sub` (see `handshake.rs`).
//! * `closed`: `Release` store, `Acquire` loads; a closing wakes every waiter
//!   ([`Handshake::wake_all`]), and a waiter reads the flag in its look, after
//!   registering.

// Used by the live layer and groups (feature `redis`); built without it too,
// for the loom models.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use super::{AtomicBool, AtomicUsize, Handshake, Ordering};

/// Why a place was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Every place is taken (and the taker would not wait).
    Full,
    /// Closed: no place will be given from now on.
    Closed,
}

/// A bounded count of places (see the module doc).
pub(crate) struct Places {
    /// Places taken and not given back.
    taken: AtomicUsize,
    capacity: usize,
    closed: AtomicBool,
    /// Takers waiting for a place.
    room: Handshake,
}

impl Places {
    pub(crate) fn new(capacity: usize) -> Self {
        Places {
            taken: AtomicUsize::new(0),
            capacity,
            closed: AtomicBool::new(false),
            room: Handshake::new(),
        }
    }

    /// Takes a place, parking until one is given back if `wait`.
    ///
    /// # Errors
    ///
    /// [`Refused::Closed`] once closed; [`Refused::Full`] when every place is
    /// taken and not `wait`.
    pub(crate) fn take(&self, wait: bool) -> Result<(), Refused> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Refused::Closed);
            }
            let taken = self.taken.load(Ordering::Relaxed);
            if taken < self.capacity {
                if self
                    .taken
                    .compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !wait {
                return Err(Refused::Full);
            }
            // Look again once counted as parked: a place given back or a close
            // after this look wakes us (see `give_back`, `close`).
            let _ = self.room.park_unless(|| {
                (self.taken.load(Ordering::Relaxed) < self.capacity
                    || self.closed.load(Ordering::Acquire))
                .then_some(())
            });
        }
    }

    /// Gives back `n` places, waking takers parked for one.
    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.taken.fetch_sub(n, Ordering::AcqRel);
        self.room.wake();
    }

    /// Refuses every take from now on, and wakes the parked takers.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.room.wake_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Places taken now (a gauge).
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn takes_up_to_capacity_then_refuses() {
        let places = Places::new(2);
        assert_eq!(places.take(false), Ok(()));
        assert_eq!(places.take(false), Ok(()));
        assert_eq!(places.take(false), Err(Refused::Full));
        assert_eq!(places.taken(), 2);
        places.give_back(2);
        assert_eq!(places.taken(), 0);
        places.close();
        assert_eq!(places.take(false), Err(Refused::Closed));
        assert_eq!(places.take(true), Err(Refused::Closed));
    }

    #[test]
    fn a_waiting_taker_gets_a_place_given_back() {
        let places = Arc::new(Places::new(1));
        places.take(false).unwrap();
        let taker = {
            let places = Arc::clone(&places);
            std::thread::spawn(move || places.take(true))
        };
        while places.room.parked() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        places.give_back(1);
        assert_eq!(taker.join().unwrap(), Ok(()));
        assert_eq!(places.taken(), 1);
    }

    #[test]
    fn close_ends_a_wait() {
        let places = Arc::new(Places::new(1));
        places.take(false).unwrap();
        let taker = {
            let places = Arc::clone(&places);
            std::thread::spawn(move || places.take(true))
        };
        while places.room.parked() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        places.close();
        assert_eq!(taker.join().unwrap(), Err(Refused::Closed));
    }
}

/// loom models of the outbox's places (`src/live/outbox.rs` is this type and
/// a queue behind a lock).
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    #[test]
    fn loom_outbox_a_full_waiter_gets_the_place_given_back() {
        loom::model(|| {
            let places = Arc::new(Places::new(1));
            places.take(false).unwrap();
            let giver = {
                let places = places.clone();
                thread::spawn(move || places.give_back(1))
            };
            assert_eq!(places.take(true), Ok(()), "woken, never left parked");
            giver.join().unwrap();
            assert_eq!(places.taken(), 1);
        });
    }

    #[test]
    fn loom_outbox_close_ends_a_full_wait() {
        loom::model(|| {
            let places = Arc::new(Places::new(1));
            places.take(false).unwrap();
            let closer = {
                let places = places.clone();
                thread::spawn(move || places.close())
            };
            assert_eq!(places.take(true), Err(Refused::Closed));
            closer.join().unwrap();
        });
    }

    #[test]
    fn loom_outbox_places_are_never_overdrawn() {
        // Two takers race for the last place while a third is given back:
        // exactly as many takes succeed as there are places.
        loom::model(|| {
            let places = Arc::new(Places::new(2));
            places.take(false).unwrap();
            places.take(false).unwrap();
            let giver = {
                let places = places.clone();
                thread::spawn(move || places.give_back(1))
            };
            let taker = {
                let places = places.clone();
                thread::spawn(move || places.take(false).is_ok())
            };
            let mine = places.take(false).is_ok();
            let theirs = taker.join().unwrap();
            giver.join().unwrap();
            assert!(!(mine && theirs), "two takes for one place");
            assert_eq!(places.taken(), 1 + usize::from(mine) + usize::from(theirs));
        });
    }
}

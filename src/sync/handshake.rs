//! The park/wake handshake: a thread that cannot go on parks until another
//! thread changes what it waits for, and a wake-up is never lost.
//!
//! # The protocol
//!
//! The waiting side (cold: it has already spun and yielded) runs one round of
//! [`Handshake::park_unless`]:
//!
//! 1. registers a listener on the `event` (from here on, a notify reaches it);
//! 2. counts itself in `parked`;
//! 3. runs the heavy barrier;
//! 4. looks at its condition again (the caller's `ready`), and parks on the
//!    listener only if it still cannot go on;
//! 5. uncounts itself.
//!
//! The waking side ([`Handshake::wake`], hot: a backpressure subscriber's gate
//! flush, the outbox writer's confirmed batch) first changes the condition (its
//! own store, before the call), then runs the light barrier and loads `parked`;
//! only if it is non-zero does it notify (event-listener's lock and, for a parked
//! thread, a syscall). Nobody parked: a compiler fence and one load.
//!
//! Steps 2-4 and the waking side are a Dekker pair: each side stores (the count;
//! the condition), barriers, then loads what the other stored. Either the waiter's
//! look sees the changed condition and it does not park, or the waker's load sees
//! the count and it notifies a listener registered before the count was raised.
//!
//! # Memory ordering
//!
//! * `parked` is `Relaxed` everywhere: the barriers order it. The waiter's
//!   `fetch_add` is followed by [`heavy_barrier`], the waker's load is preceded
//!   by [`light_barrier`]; the pair acts as a `SeqCst` fence on both sides
//!   (`membarrier(2)`; `SeqCst` fences under loom), so the waker's load and the
//!   waiter's look cannot both miss the other side's store.
//! * The condition itself (a gate, a count of places, a closed flag) orders its
//!   own data; the handshake only promises the look or the wake-up.
//! * The listener's registration happens before the count is raised, and the
//!   notify takes event-listener's lock (after a `SeqCst` fence of its own), so a
//!   waker that saw the count reaches the listener.
//! * A stale count (a waiter that already left) costs one spurious notify.
//!
//! Closing ([`Handshake::wake_all`]) notifies unconditionally: it is rare, and
//! the closed flag it follows is read by the waiter's look after registering.

use event_listener::{Event, Listener as _};

use super::{heavy_barrier, light_barrier, AtomicUsize, Ordering};

/// A park/wake handshake (see the module doc): waiters park on it until a
/// waker that changed their condition calls [`wake`](Handshake::wake).
pub(crate) struct Handshake {
    /// Threads inside a [`park_unless`](Handshake::park_unless) round (parked, or
    /// about to look and park).
    parked: AtomicUsize,
    /// Where they park (a thread or, through its listeners, a future).
    event: Event,
}

impl Handshake {
    pub(crate) fn new() -> Self {
        Handshake {
            parked: AtomicUsize::new(0),
            event: Event::new(),
        }
    }

    /// One round of waiting: looks at the condition with `ready` after counting
    /// itself as parked, and parks until woken unless `ready` says the wait is
    /// over (`Some`). Returns what `ready` returned: `None` after a wake-up (look
    /// again; wake-ups may be spurious).
    #[cold]
    pub(crate) fn park_unless<R>(&self, ready: impl FnOnce() -> Option<R>) -> Option<R> {
        // Registered before the count: a waker that sees the count reaches it.
        let listener = self.event.listen();
        // Relaxed: ordered by the barrier below (pairs with `wake`'s).
        self.parked.fetch_add(1, Ordering::Relaxed);
        heavy_barrier();
        let result = ready();
        if result.is_none() {
            listener.wait();
        }
        // Relaxed: leaving early only costs a waker a spurious notify.
        self.parked.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// Wakes every parked waiter, if there is one. Call it after changing what
    /// they wait for (the store must come before this call).
    #[inline]
    pub(crate) fn wake(&self) {
        // Pairs with the heavy barrier in `park_unless`: either its look sees our
        // change, or this load sees its count.
        light_barrier();
        if self.parked.load(Ordering::Relaxed) > 0 {
            self.wake_all();
        }
    }

    /// Wakes every parked waiter, counted or not (close, shutdown).
    #[cold]
    #[inline(never)]
    pub(crate) fn wake_all(&self) {
        self.event.notify(usize::MAX);
    }

    /// How many waiters are inside a round now (tests).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_ready_condition_does_not_park() {
        let handshake = Handshake::new();
        assert_eq!(handshake.park_unless(|| Some(7)), Some(7));
        assert_eq!(handshake.parked(), 0);
        handshake.wake(); // nobody parked: nothing to do
    }

    #[test]
    fn a_parked_waiter_is_woken_by_wake() {
        let handshake = Arc::new(Handshake::new());
        let ready = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (handshake, ready) = (Arc::clone(&handshake), Arc::clone(&ready));
            std::thread::spawn(move || {
                let mut rounds = 0;
                while handshake
                    .park_unless(|| ready.load(Ordering::Acquire).then_some(()))
                    .is_none()
                {
                    rounds += 1;
                }
                rounds
            })
        };
        while handshake.parked() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        ready.store(true, Ordering::Release);
        handshake.wake();
        let rounds = waiter.join().unwrap();
        assert!(rounds >= 1, "the waiter parked at least once");
        assert_eq!(handshake.parked(), 0);
    }

    #[test]
    fn wake_all_wakes_every_waiter() {
        let handshake = Arc::new(Handshake::new());
        let closed = Arc::new(AtomicBool::new(false));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (handshake, closed) = (Arc::clone(&handshake), Arc::clone(&closed));
                std::thread::spawn(move || {
                    while handshake
                        .park_unless(|| closed.load(Ordering::Acquire).then_some(()))
                        .is_none()
                    {}
                })
            })
            .collect();
        while handshake.parked() < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        closed.store(true, Ordering::Release);
        handshake.wake_all();
        for waiter in waiters {
            waiter.join().unwrap();
        }
    }
}

/// loom models of the handshake, with event-listener's own loom build: a
/// waiter left parked is a deadlock loom reports.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    /// Waits until `ready`, parking between looks.
    fn wait_for(handshake: &Handshake, ready: &AtomicBool) {
        while handshake
            .park_unless(|| ready.load(Ordering::Relaxed).then_some(()))
            .is_none()
        {}
    }

    #[test]
    fn loom_handshake_a_parked_waiter_is_always_woken() {
        // The condition is a Relaxed flag: only the barriers can make the waker
        // see the count or the waiter see the flag.
        loom::model(|| {
            let handshake = Arc::new(Handshake::new());
            let ready = Arc::new(AtomicBool::new(false));
            let waker = {
                let (handshake, ready) = (handshake.clone(), ready.clone());
                thread::spawn(move || {
                    ready.store(true, Ordering::Relaxed);
                    handshake.wake();
                })
            };
            wait_for(&handshake, &ready);
            waker.join().unwrap();
            assert_eq!(handshake.parked.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_handshake_close_wakes_a_waiter_uncounted() {
        // `wake_all` after a Release store: no barrier on the closing side.
        loom::model(|| {
            let handshake = Arc::new(Handshake::new());
            let closed = Arc::new(AtomicBool::new(false));
            let closer = {
                let (handshake, closed) = (handshake.clone(), closed.clone());
                thread::spawn(move || {
                    closed.store(true, Ordering::Release);
                    handshake.wake_all();
                })
            };
            while handshake
                .park_unless(|| closed.load(Ordering::Acquire).then_some(()))
                .is_none()
            {}
            closer.join().unwrap();
        });
    }
}

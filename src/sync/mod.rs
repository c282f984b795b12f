//! The std / loom shim: everything lock-free imports its atomics and cells from here,
//! so the `loom` models (`RUSTFLAGS="--cfg loom"`) check the very code that ships.
//!
//! Beside the shim, the few lock-free protocols that code outside the ring
//! shares, each written once, with its atomics' orderings and its loom models:
//!
//! * [`Handshake`] (`handshake.rs`): the park/wake handshake. A thread that
//!   cannot go on parks until another thread changes what it waits for; the
//!   waking side pays a compiler fence and a load when nobody is parked.
//!   Publishers parked for room in a topic or in the outbox use it.
//! * [`Places`] (`places.rs`): a bounded count of places that a closing can
//!   end, whose takers park on a [`Handshake`] while it is full: the outbox.
//! * [`InFlight`] (`in_flight.rs`): the in-flight word of a consumer group
//!   (deliveries held and places reserved by a read, in one word).

mod handshake;
mod in_flight;
mod places;

pub(crate) use handshake::Handshake;
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use in_flight::InFlight;
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use places::{Places, Refused};

#[cfg(loom)]
pub(crate) use loom::cell::{ConstPtr, UnsafeCell};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use self::cell::{ConstPtr, UnsafeCell};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex};

/// The fast side of an asymmetric barrier pair: a compiler fence, no instruction.
///
/// Paired with [`heavy_barrier`] on another thread it acts as a `SeqCst` fence on
/// both sides (the Dekker pattern: each stores, barriers, then loads what the other
/// stored), at no run-time cost here. `membarrier(2)` underneath
/// (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`), through the `membarrier2` crate; where the
/// OS has none, both sides fall back to a `SeqCst` fence. Under loom both sides are
/// loom's `SeqCst` fence, which is how the models check every protocol built on it.
#[inline(always)]
pub(crate) fn light_barrier() {
    membarrier2::light();
}

/// The slow side of an asymmetric barrier pair (see [`light_barrier`]): a system
/// call that makes every thread of the process run a full barrier (microseconds).
/// Only on cold paths: a subscriber going to sleep, a close, a lag subscriber
/// registering, a publisher widening its window while lag subscribers exist.
#[inline(never)]
pub(crate) fn heavy_barrier() {
    membarrier2::heavy();
}

/// One step of a short wait inside the lock-free core (a slot another thread is
/// finishing). Under loom it yields, so the model checker can schedule the other
/// thread; otherwise it spins, then yields the core after `SPINS_BEFORE_YIELD` tries.
#[inline]
pub(crate) fn backoff(attempt: &mut u32) {
    #[cfg(loom)]
    {
        let _ = attempt;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    {
        const SPINS_BEFORE_YIELD: u32 = 64;
        if *attempt < SPINS_BEFORE_YIELD {
            *attempt += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(not(loom))]
mod cell {
    /// `std::cell::UnsafeCell` with loom's access API (`get`, `get_mut`), so that the
    /// same code compiles against both.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            UnsafeCell(std::cell::UnsafeCell::new(value))
        }

        #[inline(always)]
        pub(crate) fn get(&self) -> ConstPtr<T> {
            ConstPtr(self.0.get())
        }

        #[inline(always)]
        pub(crate) fn get_mut(&self) -> MutPtr<T> {
            MutPtr(self.0.get())
        }
    }

    /// A shared-access pointer into an [`UnsafeCell`] (loom tracks its lifetime).
    #[derive(Debug)]
    pub(crate) struct ConstPtr<T>(*const T);

    impl<T> ConstPtr<T> {
        /// # Safety
        /// No `&mut` to the value may exist for the returned lifetime.
        #[inline(always)]
        pub(crate) unsafe fn deref(&self) -> &T {
            // SAFETY: forwarded to the caller (see above).
            unsafe { &*self.0 }
        }
    }

    /// An exclusive-access pointer into an [`UnsafeCell`].
    #[derive(Debug)]
    pub(crate) struct MutPtr<T>(*mut T);

    impl<T> MutPtr<T> {
        /// # Safety
        /// No other reference to the value may exist while the pointer is used.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0)
        }
    }
}

//! A subscriber's side of the ring: its cursor, and the pinned event it reads.

use super::exclusive::Hazard;
use super::{Ring, Slot};
use crate::sync::{Arc, ConstPtr, Ordering};
use std::mem::MaybeUninit;

/// A subscriber's private position in a ring.
#[derive(Debug)]
pub(crate) struct Cursor {
    /// The next sequence to read.
    pub(super) next: u64,
    /// Index of this subscriber's gate (backpressure mode).
    pub(super) gate: Option<usize>,
    /// Reads since the gate was last published.
    pub(super) unflushed: u32,
    /// Publish the gate every this many reads.
    pub(super) flush_every: u32,
    /// A read reached `flush_every`; publish the gate once the value is released.
    pub(super) flush_pending: bool,
    /// The gate was published by a read (`try_read`) since `take_gate_moved`.
    pub(super) gate_moved: bool,
    /// Exclusive ring: the published count last loaded (reads below it need no
    /// atomic at all).
    pub(super) published: u64,
    /// Exclusive ring, lag mode: what this subscriber announces it is reading.
    pub(super) hazard: Option<Arc<Hazard>>,
}

impl Cursor {
    pub(super) fn new(next: u64, gate: Option<usize>, capacity: u64) -> Self {
        // A quarter of the ring, at most 32: publishers see progress often enough to
        // keep the ring from looking full, and the gate store stays off the hot path.
        let flush_every = (capacity / 4).clamp(1, 32) as u32;
        Cursor {
            next,
            gate,
            unflushed: 0,
            flush_every,
            flush_pending: false,
            gate_moved: false,
            published: 0,
            hazard: None,
        }
    }

    /// The next sequence this cursor will read.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Whether a `try_read` moved the gate since the last call: blocked publishers
    /// should be woken.
    pub(crate) fn take_gate_moved(&mut self) -> bool {
        std::mem::take(&mut self.gate_moved)
    }

    /// Whether this cursor holds a gate (backpressure mode).
    pub(crate) fn is_gated(&self) -> bool {
        self.gate.is_some()
    }
}

/// What holds a pinned slot, and so how it is released.
pub(super) enum Hold<'a> {
    /// Lag mode: decrement the slot's reader count.
    Reader,
    /// Backpressure mode: maybe publish the gate.
    Gate(&'a mut Cursor),
    /// Exclusive ring, lag mode: withdraw the hazard.
    Hazard(&'a Hazard),
}

/// A pinned event in the ring, lent out without copying.
pub(crate) struct Pinned<'a, V> {
    pub(super) ring: &'a Ring<V>,
    pub(super) slot: &'a Slot<V>,
    /// The shared access to the value: `Some` until unpinned, and dropped *before*
    /// the slot is released (loom tracks the access for as long as it lives).
    pub(super) value: Option<ConstPtr<MaybeUninit<V>>>,
    pub(super) hold: Hold<'a>,
}

impl<V> Pinned<'_, V> {
    /// The event.
    #[inline]
    pub(crate) fn get(&self) -> &V {
        // SAFETY: the slot is published for the lap we expect (checked in `try_pin`),
        // so its value is initialised; and it cannot be written until this `Pinned`
        // is dropped: in lag mode our reader count blocks the writer's CAS, in
        // backpressure mode our gate (not yet past this sequence) blocks the claim.
        match &self.value {
            Some(value) => unsafe { value.deref().assume_init_ref() },
            None => unreachable!("a Pinned is unpinned only when consumed or dropped"),
        }
    }
}

impl<V> Pinned<'_, V> {
    /// Unpins now and says whether a backpressure gate moved (publishers to wake).
    #[inline]
    pub(crate) fn release(mut self) -> bool {
        self.unpin() // `Drop` then finds it unpinned.
    }

    #[inline]
    fn unpin(&mut self) -> bool {
        if self.value.take().is_none() {
            return false; // Already unpinned.
        }
        match &mut self.hold {
            Hold::Reader => {
                // Release: our reads of the value happen before the writer's Acquire CAS.
                self.slot.state.fetch_sub(1, Ordering::Release);
                false
            }
            Hold::Gate(cursor) => {
                if cursor.flush_pending {
                    cursor.flush_pending = false;
                    self.ring.flush_gate(cursor)
                } else {
                    false
                }
            }
            Hold::Hazard(hazard) => {
                hazard.withdraw();
                false
            }
        }
    }
}

impl<V> Drop for Pinned<'_, V> {
    #[inline]
    fn drop(&mut self) {
        self.unpin();
    }
}

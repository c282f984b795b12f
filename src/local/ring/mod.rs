//! The lock-free broadcast ring: many publishers, many subscribers, one topic.
//!
//! This file and nothing else in tickbus holds `unsafe` code and raw atomics for the
//! local bus. It imports nothing from tokio, fred, serde or tracing; waking parked
//! or async subscribers is the job of the layer above (`topic.rs`).
//!
//! # The algorithm
//!
//! A power-of-two array of slots, a shared `tail` (the next sequence to claim), and a
//! private cursor per subscriber, as in the LMAX Disruptor. What differs is how
//! overwriting is made safe for non-`Copy` values:
//!
//! * Each slot has one `state` word holding a **stamp** (which lap of the ring the
//!   slot's value belongs to), a **writing** flag and a **reader count**.
//! * A publisher claims a sequence `seq` by a CAS on `tail`, then takes the slot by
//!   one CAS on its state: from "previous lap, published, no readers" to "this lap,
//!   writing". It drops the old value, writes the new one and releases the slot with
//!   a store of "this lap, published, no readers".
//! * A subscriber in **lag** mode (it may be overwritten) pins the slot by a CAS that
//!   increments the reader count, but only from "the lap I expect, published". It
//!   clones (or lends) the value and unpins with a `fetch_sub`. A publisher can only
//!   take a slot whose reader count is zero, and a subscriber can only pin a slot
//!   that is not being written: both go through CAS on the same word, so one total
//!   order on that word decides every race. A reader therefore never sees a value
//!   that is being rewritten; a writer never frees a value being cloned.
//! * A subscriber in **backpressure** mode owns a *gate*: an atomic holding the
//!   next sequence it will read. Publishers never claim `seq` unless
//!   `seq < min(gates) + capacity`, so such a slot cannot be overwritten until the
//!   subscriber has moved past it, and the subscriber reads it without pinning.
//!   Gates are published in batches (every [`Cursor::flush_every`] reads, and
//!   whenever the subscriber runs dry), so the hot path is a plain load.
//! * The minimum over gates is cached (`gate_cache`, a lower bound that only
//!   grows); publishers rescan the gates only when the cached bound blocks them.
//! * A subscriber about to sleep sets a **waiter** bit in the state of the slot it
//!   waits for (by CAS, only while the slot still holds an older lap and is not
//!   being written). The publisher's CAS that takes the slot returns the old state,
//!   so it learns for free whether anyone sleeps on this slot, and wakes them only
//!   then: no fence, no lock and no syscall on the publish path when nobody waits.
//!
//! # Encodings
//!
//! `tail` (`u64`): bit 63 is `CLOSED`; bits 0..63 are the next sequence to claim.
//! Sequences are 63-bit: at 10⁹ events a second they last 292 years.
//!
//! `Slot::state` (`u64`):
//! ```text
//!  63                    18   17      16      15            0
//! +------------------------+-------+-------+----------------+
//! | stamp (46 bits)        |WAITER |WRITING| readers (16)   |
//! +------------------------+-------+-------+----------------+
//! ```
//! `stamp(seq) = (seq / capacity + 1) mod 2^46`; `0` marks a slot never written (it
//! reads as "the lap before lap 0"). Readers compare stamps by wrapping difference
//! read as signed: `0` is the expected lap, negative an older one (not published
//! yet; claims may run several laps ahead of a slow writer), positive a later one
//! (the subscriber was overrun). Writers wait for exactly the previous lap.
//!
//! Gates (`u64`): the next sequence the subscriber will read, or `GATE_FREE`.
//!
//! # Memory ordering
//!
//! * Value hand-over, writer → reader: the writer's `Release` store of the published
//!   state; the reader's `Acquire` load (and, in lag mode, its `Acquire` CAS).
//! * Value hand-back, reader → next writer of the slot: the reader's `Release`
//!   `fetch_sub` (lag mode) or `Release` gate store (backpressure); the writer's
//!   `Acquire` CAS on the state (the `fetch_sub`s are RMWs, so they head release
//!   sequences the CAS reads from) or `Acquire` gate load.
//! * Gate registration versus gate scans is a store-then-load handshake on two
//!   locations (the gate, then `tail`; `tail`, then the gates), so each side puts a
//!   `SeqCst` fence between its two accesses. Both are cold paths: the publish fast
//!   path reads only the cached bound (`Acquire`).

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::{backoff, fence, AtomicU64, Ordering, UnsafeCell};

mod cursor;
mod exclusive;

use cursor::Hold;
pub(crate) use cursor::{Cursor, Pinned};

pub(crate) use exclusive::{Claimer, Taken};

use exclusive::Exclusive;

const READER_BITS: u32 = 16;
const READER_MASK: u64 = (1 << READER_BITS) - 1;
const WRITING: u64 = 1 << READER_BITS;
const WAITER: u64 = 1 << (READER_BITS + 1);
const STAMP_SHIFT: u32 = READER_BITS + 2;
const STAMP_MASK: u64 = (1 << (64 - STAMP_SHIFT)) - 1;

const CLOSED: u64 = 1 << 63;
const SEQ_MASK: u64 = CLOSED - 1;
const GATE_FREE: u64 = u64::MAX;

/// What an exclusive ring asks of a value it writes: whether dropping it would do
/// anything. A slot whose value's drop does nothing is overwritten without being
/// read first (the disruptor's plain overwrite).
pub(crate) trait SlotValue {
    /// `true` when dropping this value runs no code and frees nothing.
    #[inline(always)]
    fn drop_is_trivial(&self) -> bool {
        !std::mem::needs_drop::<Self>()
    }
}

/// Why a read found no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Nothing new yet.
    Empty,
    /// The subscriber was overrun; this many events were skipped and the cursor now
    /// points at the oldest event still in the ring.
    Lagged(u64),
    /// The ring is closed and everything published has been read.
    Closed,
}

/// Why a claim failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// A backpressure subscriber has not yet read the event this claim would overwrite.
    Full,
    /// The ring is closed.
    Closed,
    /// The ring takes events only from its exclusive publisher
    /// ([`Ring::new_exclusive`]).
    Exclusive,
}

/// All gates are taken: the topic already has its maximum of backpressure subscribers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NoFreeGate;

/// One slot, aligned to a cache line so that a publisher writing slot `n + 1`
/// does not pull the line a subscriber is reading slot `n` from (with 64-byte
/// payloads, unaligned 88-byte slots shared lines and halved throughput).
#[repr(align(64))]
struct Slot<V> {
    state: AtomicU64,
    value: UnsafeCell<MaybeUninit<V>>,
}

/// A bounded broadcast ring of `V`.
pub(crate) struct Ring<V> {
    tail: CachePadded<AtomicU64>,
    /// 1 once `CLOSED` is set in `tail`: a read-mostly copy, so that subscribers
    /// polling an empty ring do not pull `tail`'s cache line away from publishers.
    closed_hint: CachePadded<AtomicU64>,
    gate_cache: CachePadded<AtomicU64>,
    gates: Box<[CachePadded<AtomicU64>]>,
    slots: Box<[Slot<V>]>,
    lap_shift: u32,
    mask: u64,
    /// Set for a single-publisher ring (`exclusive.rs`): one cursor instead of
    /// slot states, hazards instead of pins. Fixed at creation.
    exclusive: Option<Box<Exclusive>>,
}

// SAFETY: values move into the ring from publishing threads (`V: Send`) and are read
// through shared references or cloned by subscribing threads on other threads
// (`V: Sync`). All other state is atomics.
unsafe impl<V: Send + Sync> Send for Ring<V> {}
// SAFETY: as above; every access to a slot's value is ordered by its state word.
unsafe impl<V: Send + Sync> Sync for Ring<V> {}

impl<V> std::fmt::Debug for Ring<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = self.tail.load(Ordering::Relaxed);
        f.debug_struct("Ring")
            .field("capacity", &self.slots.len())
            .field("tail", &(tail & SEQ_MASK))
            .field("closed", &(tail & CLOSED != 0))
            .finish()
    }
}

#[inline]
fn stamp_of(state: u64) -> u64 {
    state >> STAMP_SHIFT
}

/// Whether a slot's lap is the one a reader expects, an older one (not yet
/// written: claims can run ahead of slow writers by several laps), or a later one
/// (the reader was overrun).
#[derive(PartialEq, Eq, Debug)]
enum Lap {
    Expected,
    Older,
    Later,
}

/// Compares stamps by their wrapping difference read as a signed 46-bit number, so
/// the comparison holds across the wrap as long as a reader and a slot are fewer
/// than 2^45 laps apart.
#[inline]
fn compare_lap(actual: u64, expected: u64) -> Lap {
    const SIGN: u64 = 1 << (64 - STAMP_SHIFT - 1);
    match actual.wrapping_sub(expected) & STAMP_MASK {
        0 => Lap::Expected,
        difference if difference & SIGN != 0 => Lap::Older,
        _ => Lap::Later,
    }
}

impl<V> Ring<V> {
    /// A ring of `capacity` slots (a power of two, at least 1) with room for
    /// `max_gates` backpressure subscribers.
    pub(crate) fn new(capacity: usize, max_gates: usize) -> Self {
        assert!(
            capacity.is_power_of_two(),
            "ring capacity must be a power of two"
        );
        let slots = (0..capacity)
            .map(|_| Slot {
                state: AtomicU64::new(0),
                value: UnsafeCell::new(MaybeUninit::uninit()),
            })
            .collect();
        let gates = (0..max_gates)
            .map(|_| CachePadded::new(AtomicU64::new(GATE_FREE)))
            .collect();
        Ring {
            tail: CachePadded::new(AtomicU64::new(0)),
            closed_hint: CachePadded::new(AtomicU64::new(0)),
            gate_cache: CachePadded::new(AtomicU64::new(0)),
            gates,
            slots,
            lap_shift: capacity.trailing_zeros(),
            mask: capacity as u64 - 1,
            exclusive: None,
        }
    }

    /// A ring that one [`Claimer`] at a time publishes to (see `exclusive.rs`).
    pub(crate) fn new_exclusive(capacity: usize, max_gates: usize) -> Self {
        let mut ring = Ring::new(capacity, max_gates);
        ring.exclusive = Some(Box::new(Exclusive::new(capacity as u64)));
        ring
    }

    /// Whether this ring has a single publisher.
    pub(crate) fn is_exclusive(&self) -> bool {
        self.exclusive.is_some()
    }

    /// The next sequence to be claimed (shared ring) or published (exclusive).
    #[inline]
    fn head(&self) -> u64 {
        match &self.exclusive {
            Some(exclusive) => exclusive.published.load(Ordering::Acquire),
            None => self.tail.load(Ordering::Acquire) & SEQ_MASK,
        }
    }

    /// Number of slots.
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    #[inline]
    fn stamp(&self, seq: u64) -> u64 {
        ((seq >> self.lap_shift) + 1) & STAMP_MASK
    }

    #[inline]
    fn slot(&self, seq: u64) -> &Slot<V> {
        // The index is masked, so it is always in bounds; `get_unchecked` would save
        // one compare, not worth an `unsafe`.
        &self.slots[(seq & self.mask) as usize]
    }

    /// The next sequence to be claimed, and whether the ring is closed.
    pub(crate) fn tail(&self) -> (u64, bool) {
        if let Some(exclusive) = &self.exclusive {
            return exclusive.tail();
        }
        let tail = self.tail.load(Ordering::Acquire);
        (tail & SEQ_MASK, tail & CLOSED != 0)
    }

    /// Closes the ring: no claim succeeds afterwards; what was claimed is still
    /// written and can be read. Returns `false` if it was already closed.
    pub(crate) fn close(&self) -> bool {
        if let Some(exclusive) = &self.exclusive {
            let first = exclusive.close();
            self.closed_hint.store(1, Ordering::Release);
            return first;
        }
        let first = self.tail.fetch_or(CLOSED, Ordering::SeqCst) & CLOSED == 0;
        self.closed_hint.store(1, Ordering::Release);
        first
    }

    /// Whether a publisher may claim `seq` without overwriting an event that a
    /// backpressure subscriber has not read.
    #[inline]
    fn gates_allow(&self, seq: u64) -> bool {
        let capacity = self.capacity();
        if seq
            < self
                .gate_cache
                .load(Ordering::Acquire)
                .saturating_add(capacity)
        {
            return true;
        }
        self.rescan_gates().saturating_add(capacity) > seq
    }

    /// Recomputes the lower bound of all gates (the tail when there are none).
    ///
    /// The result stays a lower bound of every gate, present and future: a gate
    /// this scan misses was registered with its fence after ours in the `SeqCst`
    /// order, so its tail load saw at least our `tail` (see [`Ring::subscribe`]).
    #[cold]
    fn rescan_gates(&self) -> u64 {
        let mut bound = self.head();
        // Pairs with the fence in `subscribe` (store gate; fence; load tail): one of
        // the two fences comes first, and the thread after it sees the other's
        // write (our gate load sees the gate, or its tail load sees our tail).
        fence(Ordering::SeqCst);
        for gate in self.gates.iter() {
            let position = gate.load(Ordering::Acquire);
            if position != GATE_FREE {
                bound = bound.min(position);
            }
        }
        let previous = self.gate_cache.fetch_max(bound, Ordering::AcqRel);
        previous.max(bound)
    }

    /// Claims the next sequence, unless the ring is closed or a backpressure
    /// subscriber would be overrun.
    ///
    /// The caller must then [`write`](Ring::write) exactly once at the returned
    /// sequence: readers wait for every claimed sequence.
    #[inline]
    pub(crate) fn try_claim(&self) -> Result<u64, ClaimError> {
        if self.exclusive.is_some() {
            return Err(ClaimError::Exclusive);
        }
        let mut tail = self.tail.load(Ordering::Acquire);
        loop {
            if tail & CLOSED != 0 {
                return Err(ClaimError::Closed);
            }
            if !self.gates_allow(tail) {
                return Err(ClaimError::Full);
            }
            // AcqRel: a later claimer or gate scan that reads this tail acquires it,
            // which the fence argument in `rescan_gates` relies on.
            match self.tail.compare_exchange_weak(
                tail,
                tail + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(tail),
                Err(actual) => tail = actual,
            }
        }
    }

    /// Writes `value` at the claimed sequence `seq` and publishes it. Returns
    /// whether a subscriber sleeps waiting for this slot (the caller wakes them).
    ///
    /// Waits (briefly, spinning) while the slot still belongs to the previous lap's
    /// publisher or while lag-mode subscribers are cloning the previous value.
    #[inline]
    #[must_use = "sleeping subscribers must be woken"]
    pub(crate) fn write(&self, seq: u64, value: V) -> bool {
        let slot = self.slot(seq);
        let stamp = self.stamp(seq);
        let previous = stamp.wrapping_sub(1) & STAMP_MASK;
        let mut attempt = 0;
        let old_state = loop {
            let state = slot.state.load(Ordering::Relaxed);
            let ready = stamp_of(state) == previous && state & (WRITING | READER_MASK) == 0;
            if ready {
                // Take the slot: "previous lap, published, no readers" -> "writing",
                // clearing any waiter bit (we report it to the caller).
                // Acquire: the readers' `Release` unpins, the previous writer's
                // `Release` publish and a waiter's `Release` mark happen before.
                match slot.state.compare_exchange_weak(
                    state,
                    (stamp << STAMP_SHIFT) | WRITING,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break state,
                    Err(_) => continue,
                }
            }
            backoff(&mut attempt);
        };
        slot.value.get_mut().with(|cell| {
            // SAFETY: the WRITING flag we set by CAS excludes every other access: readers
            // only pin from a published state with our stamp (not yet stored), the next
            // lap's writer waits for our published state, and backpressure readers are
            // excluded by the gates (`try_claim`). Past the first lap, the previous lap
            // left an initialised value, which we drop exactly once before overwriting.
            unsafe {
                if seq > self.mask {
                    (*cell).assume_init_drop();
                }
                (*cell).write(value);
            }
        });
        // Publish: "this lap, published, no readers". Release: the value write above
        // happens before any reader's Acquire of this state. A plain store is enough:
        // while WRITING is set nobody else changes the word (readers only pin, and
        // waiters only mark, a state that is not being written).
        slot.state.store(stamp << STAMP_SHIFT, Ordering::Release);
        old_state & WAITER != 0
    }

    /// Prepares the subscriber at `cursor` to sleep: marks its next slot so that the
    /// publisher of that slot wakes it. The caller must have registered its wake-up
    /// (listener) before calling.
    ///
    /// Returns `false` when it must not sleep: the event is there or about to be
    /// (being written), the subscriber was overrun, or the ring is closed and
    /// drained. The caller then looks again instead.
    pub(crate) fn mark_waiting(&self, cursor: &Cursor) -> bool {
        if let Some(exclusive) = &self.exclusive {
            return exclusive.mark_waiting(cursor.next);
        }
        let seq = cursor.next;
        let slot = self.slot(seq);
        let stamp = self.stamp(seq);
        loop {
            let state = slot.state.load(Ordering::Acquire);
            if compare_lap(stamp_of(state), stamp) != Lap::Older || state & WRITING != 0 {
                return false;
            }
            if state & WAITER != 0 {
                break;
            }
            // Release: our listener registration happens before the publisher that
            // takes this slot (Acquire CAS) sees the mark and wakes listeners.
            if slot
                .state
                .compare_exchange_weak(state, state | WAITER, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        // Closing wakes every listener, so a close after this check is not missed.
        let (tail, closed) = self.tail();
        !(closed && seq >= tail)
    }

    /// Registers a subscriber that starts at the next event to be published. A
    /// `gated` subscriber takes a gate and applies backpressure to publishers.
    pub(crate) fn subscribe(&self, gated: bool) -> Result<Cursor, NoFreeGate> {
        if !gated {
            let mut hazard = None;
            if let Some(exclusive) = &self.exclusive {
                hazard = Some(exclusive.register_hazard());
            }
            let (next, _) = self.tail();
            let mut cursor = Cursor::new(next, None, self.capacity());
            cursor.hazard = hazard;
            return Ok(cursor);
        }
        // Take a free gate, at a position no later than where we will start.
        let first = self.head();
        let index = self
            .gates
            .iter()
            .position(|gate| {
                gate.compare_exchange(GATE_FREE, first, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(NoFreeGate)?;
        // Handshake with `rescan_gates` (load tail; fence; load gates): either a scan
        // sees our gate, or our tail load below sees the tail that scan saw, so the
        // bound it caches is at most `next`, and no claim it allows can overwrite an
        // event at or after `next`.
        fence(Ordering::SeqCst);
        let next = self.head();
        self.gates[index].store(next, Ordering::Release);
        Ok(Cursor::new(next, Some(index), self.capacity()))
    }

    /// Releases the cursor's gate, if it has one (dropping a subscriber).
    pub(crate) fn unsubscribe(&self, cursor: &mut Cursor) {
        if let Some(index) = cursor.gate.take() {
            self.gates[index].store(GATE_FREE, Ordering::Release);
        }
        if let (Some(hazard), Some(exclusive)) = (cursor.hazard.take(), &self.exclusive) {
            exclusive.deregister_hazard(&hazard);
        }
    }

    /// Publishes the cursor's gate position (so blocked publishers can go on).
    /// Returns `true` if the gate moved.
    pub(crate) fn flush_gate(&self, cursor: &mut Cursor) -> bool {
        match cursor.gate {
            Some(index) if cursor.unflushed > 0 => {
                cursor.unflushed = 0;
                // Release: our reads of every sequence below `next` happen before a
                // publisher's Acquire of this gate lets it overwrite them.
                self.gates[index].store(cursor.next, Ordering::Release);
                true
            }
            _ => false,
        }
    }

    /// Classifies a miss at the cursor: empty, closed, or overrun (then moves the
    /// cursor to the oldest retained event).
    #[cold]
    fn miss(&self, cursor: &mut Cursor, lap: Lap) -> Miss {
        if lap == Lap::Later {
            let (tail, _) = self.tail();
            let oldest = tail.saturating_sub(self.capacity()).max(cursor.next + 1);
            let missed = oldest - cursor.next;
            cursor.next = oldest;
            return Miss::Lagged(missed);
        }
        if self.closed_hint.load(Ordering::Acquire) == 0 {
            return Miss::Empty;
        }
        let (tail, closed) = self.tail();
        if closed && cursor.next >= tail {
            Miss::Closed
        } else {
            Miss::Empty
        }
    }

    /// Reads the next event at the cursor through `read`, without copying it out of
    /// the ring, and advances the cursor.
    ///
    /// `read` runs while the slot is pinned (lag mode) or gated (backpressure mode):
    /// publishers that come round to this slot wait for it, so keep it short.
    #[inline(always)]
    pub(crate) fn try_read<R>(
        &self,
        cursor: &mut Cursor,
        read: impl FnOnce(&V) -> R,
    ) -> Result<R, Miss> {
        let (result, moved) = match self.try_pin(cursor) {
            Ok(pinned) => {
                let value = read(pinned.get());
                (Ok(value), pinned.release())
            }
            Err((miss, moved)) => (Err(miss), moved),
        };
        cursor.gate_moved |= moved;
        result
    }

    /// Pins the next event at the cursor and advances the cursor. The event stays
    /// valid, and its slot unwritable, until the returned [`Pinned`] is dropped.
    ///
    /// On a miss, also says whether the backpressure gate moved (publishers to wake):
    /// the caller cannot ask the cursor, which the result still borrows.
    #[inline(always)]
    pub(crate) fn try_pin<'a>(
        &'a self,
        cursor: &'a mut Cursor,
    ) -> Result<Pinned<'a, V>, (Miss, bool)> {
        if let Some(exclusive) = &self.exclusive {
            return self.try_pin_exclusive(exclusive, cursor);
        }
        let seq = cursor.next;
        let slot = self.slot(seq);
        let stamp = self.stamp(seq);
        if cursor.gate.is_some() {
            let state = slot.state.load(Ordering::Acquire);
            let lap = compare_lap(stamp_of(state), stamp);
            if lap != Lap::Expected || state & WRITING != 0 {
                let moved = self.flush_gate(cursor);
                return Err((self.miss(cursor, lap), moved));
            }
            cursor.next = seq + 1;
            cursor.unflushed += 1;
            if cursor.unflushed >= cursor.flush_every {
                // Flushed after the read (in `Pinned::drop`), not now: the gate must
                // not pass `seq` while the value is lent out.
                cursor.flush_pending = true;
            }
            return Ok(Pinned {
                ring: self,
                slot,
                value: Some(slot.value.get()),
                hold: Hold::Gate(cursor),
            });
        }
        let mut attempt = 0;
        loop {
            let state = slot.state.load(Ordering::Acquire);
            let lap = compare_lap(stamp_of(state), stamp);
            if lap != Lap::Expected || state & WRITING != 0 {
                return Err((self.miss(cursor, lap), false));
            }
            if state & READER_MASK == READER_MASK {
                // 65 535 readers inside this very slot: wait for one to leave.
                backoff(&mut attempt);
                continue;
            }
            // Pin: only from "this lap, published"; a writer cannot take the slot
            // while the count is non-zero.
            if slot
                .state
                .compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                cursor.next = seq + 1;
                return Ok(Pinned {
                    ring: self,
                    slot,
                    value: Some(slot.value.get()),
                    hold: Hold::Reader,
                });
            }
        }
    }
}

impl<V> Ring<V> {
    /// Reads up to `max` events at the cursor in place, in order, calling `read`
    /// with each sequence and value. Returns how many were read (at least one), or
    /// the miss when there was none; a miss after some events (an overrun, the end)
    /// is reported by the next call.
    ///
    /// On an exclusive ring the batch costs one `Acquire` load of the published
    /// count; on the shared ring each event is pinned as by [`Ring::try_pin`].
    #[inline]
    pub(crate) fn read_batch(
        &self,
        cursor: &mut Cursor,
        max: u64,
        mut read: impl FnMut(u64, &V),
    ) -> Result<u64, Miss> {
        if let Some(exclusive) = &self.exclusive {
            return self.read_batch_exclusive(exclusive, cursor, max, read);
        }
        let mut count = 0;
        let mut moved = false;
        while count < max {
            let seq = cursor.next;
            let outcome = match self.try_pin(cursor) {
                Ok(pinned) => {
                    read(seq, pinned.get());
                    Ok(pinned.release())
                }
                Err(miss) => Err(miss),
            };
            match outcome {
                Ok(gate_moved) => {
                    moved |= gate_moved;
                    count += 1;
                }
                Err((miss, gate_moved)) => {
                    moved |= gate_moved;
                    if count == 0 {
                        cursor.gate_moved |= moved;
                        return Err(miss);
                    }
                    if let Miss::Lagged(_) = miss {
                        // Undo the skip: the next call finds the overrun again and
                        // reports it, with the count as it is then.
                        cursor.next = seq;
                    }
                    break;
                }
            }
        }
        cursor.gate_moved |= moved;
        Ok(count)
    }
}

impl<V> Drop for Ring<V> {
    fn drop(&mut self) {
        let written = self.head().min(self.capacity());
        for slot in self.slots.iter().take(written as usize) {
            slot.value.get_mut().with(|cell| {
                // SAFETY: `&mut self`: no publisher or subscriber remains, and every
                // claimed sequence was written (a claim is always followed by its write
                // in the same call). Slots below min(tail, capacity) have been written at
                // least once, and `write` drops an old value before writing a new one,
                // so each holds exactly one live value.
                unsafe { (*cell).assume_init_drop() }
            });
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn read_all(ring: &Ring<String>, cursor: &mut Cursor) -> (Vec<String>, u64) {
        let mut seen = Vec::new();
        let mut missed = 0;
        loop {
            match ring.try_read(cursor, String::clone) {
                Ok(value) => seen.push(value),
                Err(Miss::Lagged(n)) => missed += n,
                Err(Miss::Empty | Miss::Closed) => return (seen, missed),
            }
        }
    }

    #[test]
    fn lag_reader_is_told_how_many_it_missed() {
        let ring = Ring::new(4, 0);
        let mut cursor = ring.subscribe(false).unwrap();
        for i in 0..10 {
            let seq = ring.try_claim().unwrap();
            assert!(!ring.write(seq, i.to_string()), "nobody sleeps here");
        }
        let (seen, missed) = read_all(&ring, &mut cursor);
        assert_eq!(seen, ["6", "7", "8", "9"]);
        assert_eq!(missed, 6);
    }

    #[test]
    fn gated_reader_blocks_claims_until_it_reads() {
        let ring = Ring::new(4, 1);
        let mut cursor = ring.subscribe(true).unwrap();
        for i in 0..4 {
            let seq = ring.try_claim().unwrap();
            assert!(!ring.write(seq, i.to_string()), "nobody sleeps here");
        }
        assert_eq!(ring.try_claim(), Err(ClaimError::Full));
        assert_eq!(
            ring.try_read(&mut cursor, String::clone),
            Ok("0".to_string())
        );
        // The gate is published in batches (here every read: capacity 4 / 4), so
        // one read frees one slot.
        let seq = ring.try_claim().unwrap();
        assert!(!ring.write(seq, "4".into()));
        let (seen, missed) = read_all(&ring, &mut cursor);
        assert_eq!((seen.len(), missed), (4, 0));
        ring.unsubscribe(&mut cursor);
        assert!(
            ring.try_claim().is_ok(),
            "a released gate holds nobody back"
        );
    }

    #[test]
    fn no_free_gate_is_an_error() {
        let ring: Ring<String> = Ring::new(4, 1);
        let _first = ring.subscribe(true).unwrap();
        assert_eq!(ring.subscribe(true).unwrap_err(), NoFreeGate);
    }

    #[test]
    fn closed_after_drain() {
        let ring = Ring::new(2, 0);
        let mut cursor = ring.subscribe(false).unwrap();
        let seq = ring.try_claim().unwrap();
        assert!(!ring.write(seq, "last".to_string()));
        assert!(ring.close());
        assert!(!ring.close());
        assert_eq!(ring.try_claim(), Err(ClaimError::Closed));
        assert_eq!(
            ring.try_read(&mut cursor, String::clone),
            Ok("last".to_string())
        );
        assert_eq!(ring.try_read(&mut cursor, String::clone), Err(Miss::Closed));
    }

    #[test]
    fn drop_releases_every_value_once() {
        use std::sync::Arc;
        let token = Arc::new(());
        {
            let ring = Ring::new(4, 0);
            for _ in 0..6 {
                let seq = ring.try_claim().unwrap();
                assert!(!ring.write(seq, Arc::clone(&token)));
            }
            assert_eq!(
                Arc::strong_count(&token),
                5,
                "4 held by the ring, 2 dropped on overwrite"
            );
        }
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn a_marked_slot_makes_its_publisher_wake() {
        let ring = Ring::new(2, 0);
        let cursor = ring.subscribe(false).unwrap();
        assert!(ring.mark_waiting(&cursor), "empty and open: may sleep");
        let seq = ring.try_claim().unwrap();
        assert!(
            ring.write(seq, "a".to_string()),
            "the publisher learns of the sleeper"
        );
        assert!(
            !ring.mark_waiting(&cursor),
            "an event is there: do not sleep"
        );
        let seq = ring.try_claim().unwrap();
        assert!(!ring.write(seq, "b".to_string()), "nobody marked this slot");
        ring.close();
        let mut drained = ring.subscribe(false).unwrap();
        assert_eq!(
            ring.try_read(&mut drained, String::clone),
            Err(Miss::Closed)
        );
        assert!(
            !ring.mark_waiting(&drained),
            "closed and drained: do not sleep"
        );
    }

    #[test]
    fn stamps_compare_across_the_wrap() {
        assert_eq!(compare_lap(0, STAMP_MASK), Lap::Later);
        assert_eq!(compare_lap(STAMP_MASK, 0), Lap::Older);
        assert_eq!(compare_lap(5, 5), Lap::Expected);
        assert_eq!(compare_lap(4, 5), Lap::Older);
        assert_eq!(compare_lap(3, 5), Lap::Older, "a writer two laps behind");
        assert_eq!(compare_lap(7, 5), Lap::Later);
    }
}

/// loom models of the ring. Run with
/// `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom`.
///
/// Payloads are `loom::sync::Arc`s: loom reports any value the ring leaks or drops
/// twice, and any read of a slot concurrent with its write (`UnsafeCell` tracking).
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    type Value = Arc<u64>;

    fn publish(ring: &Ring<Value>, value: u64) {
        let seq = ring.try_claim().expect("open ring, no gates");
        let _wake = ring.write(seq, Arc::new(value));
    }

    /// Publishes, yielding while a backpressure gate says the ring is full.
    fn publish_waiting(ring: &Ring<Value>, value: u64) {
        loop {
            match ring.try_claim() {
                Ok(seq) => {
                    let _wake = ring.write(seq, Arc::new(value));
                    return;
                }
                Err(ClaimError::Full) => thread::yield_now(),
                Err(ClaimError::Closed | ClaimError::Exclusive) => {
                    unreachable!("a shared ring nobody closes")
                }
            }
        }
    }

    /// A thread that publishes `values` in order, with `how`.
    fn spawn_publisher(
        ring: &Arc<Ring<Value>>,
        values: std::ops::Range<u64>,
        how: fn(&Ring<Value>, u64),
    ) -> thread::JoinHandle<()> {
        let ring = ring.clone();
        thread::spawn(move || values.for_each(|value| how(&ring, value)))
    }

    /// Reads until `until` values (seen + missed) are accounted for, or closed.
    fn drain(ring: &Ring<Value>, cursor: &mut Cursor, until: u64) -> (Vec<u64>, u64) {
        let mut seen = Vec::new();
        let mut missed = 0;
        while (seen.len() as u64) + missed < until {
            match ring.try_read(cursor, |value| **value) {
                Ok(value) => seen.push(value),
                Err(Miss::Lagged(n)) => missed += n,
                Err(Miss::Empty) => thread::yield_now(),
                Err(Miss::Closed) => break,
            }
        }
        (seen, missed)
    }

    #[test]
    fn loom_publish_and_receive() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = spawn_publisher(&ring, 0..2, publish);
            let (seen, missed) = drain(&ring, &mut cursor, 2);
            writer.join().unwrap();
            assert_eq!((seen, missed), (vec![0, 1], 0));
        });
    }

    #[test]
    fn loom_overwrite_while_reading() {
        // Capacity 1: every publish overwrites the slot the reader may be cloning.
        loom::model(|| {
            let ring = Arc::new(Ring::new(1, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = spawn_publisher(&ring, 0..3, publish);
            let (seen, missed) = drain(&ring, &mut cursor, 3);
            writer.join().unwrap();
            // Whatever was seen is in order, and seen + missed covers every event.
            assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
            assert_eq!(seen.len() as u64 + missed, 3);
            assert_eq!(seen.last(), Some(&2), "the newest event is never skipped");
        });
    }

    #[test]
    fn loom_pinned_value_blocks_overwrite() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(1, 0));
            publish(&ring, 0);
            let mut cursor = Cursor::new(0, None, 1);
            let pinned = ring.try_pin(&mut cursor).unwrap();
            let writer = spawn_publisher(&ring, 1..2, publish);
            assert_eq!(
                **pinned.get(),
                0,
                "the lent value is never rewritten under us"
            );
            drop(pinned);
            writer.join().unwrap();
            let mut cursor = Cursor::new(1, None, 1);
            assert_eq!(ring.try_read(&mut cursor, |v| **v), Ok(1));
        });
    }

    #[test]
    fn loom_a_sleeping_subscriber_is_always_woken() {
        // The subscriber marks its slot and "sleeps" (spins on a flag only a
        // publisher that saw the mark sets). If the publisher could miss the mark,
        // loom finds the schedule where the subscriber never wakes.
        use loom::sync::atomic::AtomicBool;
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, 0));
            let woken = Arc::new(AtomicBool::new(false));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = {
                let (ring, woken) = (ring.clone(), woken.clone());
                thread::spawn(move || {
                    let seq = ring.try_claim().unwrap();
                    if ring.write(seq, Arc::new(5)) {
                        woken.store(true, Ordering::Release);
                    }
                })
            };
            loop {
                match ring.try_read(&mut cursor, |v| **v) {
                    Ok(value) => {
                        assert_eq!(value, 5);
                        break;
                    }
                    Err(Miss::Empty) => {
                        if ring.mark_waiting(&cursor) {
                            // Sleep: only a wake-up gets us out.
                            while !woken.load(Ordering::Acquire) {
                                thread::yield_now();
                            }
                        } else {
                            thread::yield_now(); // told to look again
                        }
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_several_producers() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writers: Vec<_> = (0..2)
                .map(|id| spawn_publisher(&ring, id..id + 1, publish))
                .collect();
            let (mut seen, missed) = drain(&ring, &mut cursor, 2);
            for writer in writers {
                writer.join().unwrap();
            }
            assert_eq!(missed, 0);
            seen.sort_unstable();
            assert_eq!(seen, [0, 1]);
        });
    }

    #[test]
    fn loom_producers_lap_each_other() {
        // Two producers on one slot: the second writer of the slot must wait for the
        // first to finish, and each value is dropped exactly once (Arc leak check).
        loom::model(|| {
            let ring = Arc::new(Ring::new(1, 0));
            let writers: Vec<_> = (0..2)
                .map(|id| spawn_publisher(&ring, id..id + 1, publish))
                .collect();
            for writer in writers {
                writer.join().unwrap();
            }
            assert_eq!(ring.tail(), (2, false));
        });
    }

    #[test]
    fn loom_close_delivers_what_was_published() {
        loom::model(|| {
            let ring = Arc::new(Ring::new(2, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    publish(&ring, 7);
                    ring.close();
                })
            };
            let (seen, missed) = drain(&ring, &mut cursor, u64::MAX);
            writer.join().unwrap();
            assert_eq!((seen, missed), (vec![7], 0));
            assert_eq!(ring.try_claim(), Err(ClaimError::Closed));
        });
    }

    #[test]
    fn loom_backpressure_never_overruns() {
        // Capacity 1, a gated reader: the writer must wait for every read, so the
        // reader sees all three events and never lags.
        loom::model(|| {
            let ring = Arc::new(Ring::new(1, 1));
            let mut cursor = ring.subscribe(true).unwrap();
            let writer = spawn_publisher(&ring, 0..3, publish_waiting);
            let (seen, missed) = drain(&ring, &mut cursor, 3);
            writer.join().unwrap();
            assert_eq!((seen, missed), (vec![0, 1, 2], 0));
        });
    }

    #[test]
    fn loom_gate_registration_races_claims() {
        // A backpressure subscriber registers while a publisher runs: from wherever
        // it starts, it sees consecutive events and is never overrun.
        loom::model(|| {
            let ring = Arc::new(Ring::new(1, 1));
            // Values equal their sequence numbers: one publisher, from 0.
            let writer = spawn_publisher(&ring, 0..3, publish_waiting);
            let mut cursor = ring.subscribe(true).unwrap();
            let start = cursor.next();
            let (seen, missed) = drain(&ring, &mut cursor, 3 - start);
            writer.join().unwrap();
            assert_eq!(missed, 0);
            assert_eq!(seen, (start..3).collect::<Vec<_>>());
        });
    }
}

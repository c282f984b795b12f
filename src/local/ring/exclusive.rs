//! The single-publisher ring: one cursor published per batch, no atomic
//! read-modify-write and no fence on the publish path or the receive path.
//!
//! A topic created with `TopicOptions::exclusive_publisher` has one publisher at a
//! time (a [`Claimer`], owned by the public `Publisher` handle). That is what the
//! LMAX Disruptor's single-producer sequencer exploits, and this file does the
//! same, with the two things tickbus adds: lag subscribers that may be overrun
//! while they clone a non-`Copy` value, and subscribers that sleep.
//!
//! # The protocol
//!
//! * **Publishing.** The claimer keeps the next sequence in a plain field, writes
//!   the values of a batch into their slots and then stores `published` (the count
//!   of events published) once, `Release`. The slot `state` words of the shared
//!   ring are not used.
//! * **Backpressure subscribers** keep their gates exactly as on the shared ring:
//!   the claimer never writes `seq` unless `seq < min(gates) + capacity` (the
//!   cached bound, rescanned when it blocks). They read `published` once (`Acquire`)
//!   and then every slot below it with plain loads: one atomic per batch.
//! * **Lag subscribers** must not read a slot while it is rewritten, but must not
//!   hold the publisher back either. The claimer announces a **window**: `limit`,
//!   the sequence it will not reach without looking at the lag subscribers again.
//!   A lag subscriber about to read from `seq` stores its **hazard** (`seq`), and
//!   then loads `limit`. If `seq + capacity < limit`, the slot may be rewritten
//!   already: it was overrun, and skips to `limit - capacity`. Otherwise everything
//!   from `seq` on is safe until it withdraws the hazard: to move `limit` past
//!   `seq + capacity`, the claimer stores the new `limit`, then loads every hazard,
//!   and waits for the ones it would overrun (a clone in progress, never a slow
//!   subscriber: a hazard is held only during a read).
//! * **Sleeping subscribers** register their wake-up, set `sleepers`, then look
//!   at `published` once more. The claimer, after storing `published`, loads
//!   `sleepers` and wakes everyone if it is set.
//! * **Closing** sets `closing`, then waits while the claimer is inside a publish
//!   (`busy`), then records the final count (`closed_at`). The claimer sets `busy`,
//!   then loads `closing`, and refuses to publish once it is set.
//!
//! The last three are each a store-then-load on two locations by two threads (the
//! Dekker pattern), which needs a `SeqCst` fence on both sides. Here the frequent
//! side (the claimer on every publish, a lag subscriber on every read) pays only a
//! compiler fence, [`light_barrier`], and the rare side pays [`heavy_barrier`], a
//! `membarrier(2)` system call that makes every thread of the process run a full
//! barrier: a subscriber going to sleep, a close, a lag subscriber registering, or
//! the claimer widening its window while lag subscribers exist (once per half a
//! ring of events). With no lag subscriber and no sleeper the publish path is two
//! plain stores per batch and two plain loads of read-mostly lines.
//!
//! # Encodings
//!
//! `published`, `limit`, `closed_at` (`u64`): sequences; `closed_at` is `OPEN`
//! until closed. A hazard holds the sequence its subscriber reads from, or `NONE`.
//! `busy`, `sleepers`, `closing`: 0 or 1. `taken`: 0, `TAKEN_HELD` or `TAKEN_ONCE`.
//!
//! # Memory ordering
//!
//! * Value hand-over, claimer → subscriber: the claimer's `Release` store of
//!   `published`; the subscriber's `Acquire` load of it.
//! * Value hand-back to the claimer: a backpressure subscriber's `Release` gate
//!   store (as on the shared ring); a lag subscriber's `Release` withdrawal of its
//!   hazard, which the claimer's `Acquire` hazard load reads before it overwrites.
//! * The three handshakes above: [`light_barrier`] / [`heavy_barrier`]; the `Release`
//!   store of `busy = 0` after `published` makes the final count visible to the
//!   closer's `Acquire` load of `busy`.

use crossbeam_utils::CachePadded;

use super::{ClaimError, Cursor, Hold, Miss, Pinned, Ring, SlotValue};
use crate::sync::{backoff, heavy_barrier, light_barrier, Arc, AtomicU64, Mutex, Ordering};

const OPEN: u64 = u64::MAX;
const NONE: u64 = u64::MAX;

/// What a lag subscriber of an exclusive ring announces: the sequence it reads
/// from, while it reads.
pub(crate) struct Hazard(pub(super) CachePadded<AtomicU64>);

impl std::fmt::Debug for Hazard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Hazard")
            .field(&self.0.load(Ordering::Relaxed))
            .finish()
    }
}

impl Hazard {
    /// Ends a read: the claimer may overwrite what it covered.
    #[inline]
    pub(super) fn withdraw(&self) {
        // Release: our reads of the slots happen before the claimer's Acquire load
        // of the hazard that lets it overwrite them.
        self.0.store(NONE, Ordering::Release);
    }
}

/// Words the claimer loads on every publish and others write rarely.
struct Signals {
    /// 1 when a subscriber may be asleep waiting for the next event.
    sleepers: AtomicU64,
    /// 1 once `close` started.
    closing: AtomicU64,
}

/// The words only claimers touch on the publish path, and a closer rarely.
struct Busy {
    /// 1 while the claimer is inside a publish.
    flag: AtomicU64,
    /// 1 + the last sequence written with a value whose drop is not trivial (0:
    /// none yet). Overwriting an older slot then skips the drop, and with it a
    /// load of a line the subscribers read last. Claimers hand it over through
    /// `taken` (Acquire/Release), so `Relaxed` is enough.
    last_owning: AtomicU64,
}

/// The state an exclusive ring adds to [`Ring`].
pub(crate) struct Exclusive {
    /// Events published: every sequence below it is written.
    pub(super) published: CachePadded<AtomicU64>,
    /// The claimer writes no sequence at or above it without checking the hazards.
    limit: CachePadded<AtomicU64>,
    signals: CachePadded<Signals>,
    /// 1 while the claimer is inside a publish (on the claimer's own line).
    busy: CachePadded<Busy>,
    /// The final count once closed, `OPEN` before.
    closed_at: AtomicU64,
    /// 0, or who holds the [`Claimer`]: `TAKEN_HELD` or `TAKEN_ONCE`.
    taken: AtomicU64,
    /// Lag subscribers registered (the claimer skips the hazard scan when none).
    lag_subscribers: AtomicU64,
    /// Bumped on every (de)registration: the claimer refreshes its copy of the
    /// hazard list when it changed.
    hazards_version: AtomicU64,
    hazards: Mutex<Vec<Arc<Hazard>>>,
    /// How far a window reaches past the next sequence: half the ring.
    window: u64,
}

impl Exclusive {
    pub(super) fn new(capacity: u64) -> Self {
        Exclusive {
            published: CachePadded::new(AtomicU64::new(0)),
            // The first lap overwrites nothing.
            limit: CachePadded::new(AtomicU64::new(capacity)),
            signals: CachePadded::new(Signals {
                sleepers: AtomicU64::new(0),
                closing: AtomicU64::new(0),
            }),
            busy: CachePadded::new(Busy {
                flag: AtomicU64::new(0),
                last_owning: AtomicU64::new(0),
            }),
            closed_at: AtomicU64::new(OPEN),
            taken: AtomicU64::new(0),
            lag_subscribers: AtomicU64::new(0),
            hazards_version: AtomicU64::new(0),
            hazards: Mutex::new(Vec::new()),
            window: (capacity / 2).max(1),
        }
    }

    /// `(published, closed)`; once closed, the final count.
    pub(super) fn tail(&self) -> (u64, bool) {
        match self.closed_at.load(Ordering::Acquire) {
            OPEN => (self.published.load(Ordering::Acquire), false),
            closed_at => (closed_at, true),
        }
    }

    /// Closes: no publish starts afterwards, and the one in progress (if any)
    /// finishes before the final count is taken.
    pub(super) fn close(&self) -> bool {
        if self.signals.closing.swap(1, Ordering::AcqRel) != 0 {
            return false;
        }
        // Dekker with `Claimer::begin` (busy = 1; light; load closing): either the
        // claimer sees `closing`, or we see its `busy`.
        heavy_barrier();
        let mut attempt = 0;
        // Acquire: pairs with the claimer's Release `busy = 0`, after its last
        // `published` store.
        while self.busy.flag.load(Ordering::Acquire) != 0 {
            backoff(&mut attempt);
        }
        let last = self.published.load(Ordering::Acquire);
        self.closed_at.store(last, Ordering::Release);
        true
    }

    /// Prepares a subscriber whose next event is `next` to sleep; `false` when it
    /// must look again instead.
    pub(super) fn mark_waiting(&self, next: u64) -> bool {
        self.signals.sleepers.store(1, Ordering::Relaxed);
        // Dekker with `Claimer::end` (published; light; load sleepers): either it
        // sees our mark and wakes us, or we see what it published.
        heavy_barrier();
        if self.published.load(Ordering::Acquire) > next {
            return false;
        }
        // Closing wakes every listener; a close that finished is seen here.
        match self.closed_at.load(Ordering::Acquire) {
            OPEN => true,
            closed_at => next < closed_at,
        }
    }

    /// Registers a lag subscriber's hazard. The caller takes its start position
    /// afterwards.
    pub(super) fn register_hazard(&self) -> Arc<Hazard> {
        let hazard = Arc::new(Hazard(CachePadded::new(AtomicU64::new(NONE))));
        {
            let mut hazards = self.hazards.lock().unwrap_or_else(|p| p.into_inner());
            hazards.push(Arc::clone(&hazard));
            self.lag_subscribers.fetch_add(1, Ordering::Relaxed);
            self.hazards_version.fetch_add(1, Ordering::Release);
        }
        // Dekker with `Claimer::widen` (limit; light; load lag_subscribers): a
        // claimer that missed us has its new limit visible to our first read.
        heavy_barrier();
        hazard
    }

    pub(super) fn deregister_hazard(&self, hazard: &Arc<Hazard>) {
        let mut hazards = self.hazards.lock().unwrap_or_else(|p| p.into_inner());
        hazards.retain(|other| !Arc::ptr_eq(other, hazard));
        self.lag_subscribers.fetch_sub(1, Ordering::Relaxed);
        self.hazards_version.fetch_add(1, Ordering::Release);
    }

    /// Copies the hazard list into the claimer if it changed since its last copy
    /// (so `widen` locks nothing, and allocates only when subscribers came).
    fn refresh_hazards(&self, claimer: &mut Claimer) {
        let version = self.hazards_version.load(Ordering::Acquire);
        if version != claimer.hazards_version {
            let hazards = self.hazards.lock().unwrap_or_else(|p| p.into_inner());
            claimer.hazards.clone_from(&hazards);
            claimer.hazards_version = version;
        }
    }

    /// The first sequence that a lag subscriber whose hazard stands at `seq` can
    /// read safely: `seq` itself, or later when it was overrun.
    #[inline]
    fn oldest_safe(&self, seq: u64, capacity: u64) -> u64 {
        let limit = self.limit.load(Ordering::Acquire);
        seq.max(limit.saturating_sub(capacity))
    }

    /// Whether the subscriber at `next` is done: closed and everything read.
    #[cold]
    fn miss(&self, next: u64) -> Miss {
        match self.closed_at.load(Ordering::Acquire) {
            OPEN => Miss::Empty,
            closed_at if next >= closed_at => Miss::Closed,
            _ => Miss::Empty,
        }
    }
}

/// Who holds an exclusive ring's publisher role, when it cannot be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// A `Publisher` handle, for as long as it lives.
    Held,
    /// Another thread, for one publish through the topic handle.
    Once,
}

const TAKEN_HELD: u64 = 1;
const TAKEN_ONCE: u64 = 2;

/// The one publisher of an exclusive ring: its private cursor and cached bounds.
/// Taken with [`Ring::take_claimer`], given back with [`Ring::return_claimer`].
pub(crate) struct Claimer {
    /// The next sequence to write.
    next: u64,
    /// The claimer may write every sequence below it without looking at anything
    /// shared: `min(gate bound + capacity, limit)`.
    room: u64,
    /// The window announced last.
    limit: u64,
    hazards: Vec<Arc<Hazard>>,
    hazards_version: u64,
}

impl Claimer {
    /// The sequence the next published event gets.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }
}

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimer")
            .field("next", &self.next)
            .field("room", &self.room)
            .finish()
    }
}

impl<V> Ring<V> {
    fn exclusive(&self) -> &Exclusive {
        match &self.exclusive {
            Some(exclusive) => exclusive,
            None => unreachable!("an exclusive ring's method on a shared ring"),
        }
    }

    /// Takes the single publisher's role for a `Publisher` handle (`held`) or for
    /// one publish through the topic handle; `Err` with who holds it now. The
    /// caller checks [`Ring::is_exclusive`] first.
    pub(crate) fn take_claimer(&self, held: bool) -> Result<Claimer, Taken> {
        let exclusive = self.exclusive();
        let mine = if held { TAKEN_HELD } else { TAKEN_ONCE };
        if let Err(other) =
            exclusive
                .taken
                .compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
        {
            return Err(if other == TAKEN_HELD {
                Taken::Held
            } else {
                Taken::Once
            });
        }
        let mut claimer = Claimer {
            next: exclusive.published.load(Ordering::Acquire),
            room: 0,
            limit: exclusive.limit.load(Ordering::Acquire),
            hazards: Vec::new(),
            hazards_version: u64::MAX,
        };
        if held {
            // A `Publisher` copies the list now, not on its publish path.
            exclusive.refresh_hazards(&mut claimer);
        }
        Ok(claimer)
    }

    /// Lag subscribers registered (for tests of their owners' `Drop`).
    #[cfg(test)]
    pub(crate) fn registered_lag_subscribers(&self) -> u64 {
        self.exclusive().lag_subscribers.load(Ordering::Relaxed)
    }

    /// Gives the publisher's role back.
    pub(crate) fn return_claimer(&self, claimer: Claimer) {
        drop(claimer);
        // Release: the next claimer's Acquire sees our last `published` and `limit`.
        self.exclusive().taken.store(0, Ordering::Release);
    }

    /// How many sequences the claimer may write now without waiting: at least 1,
    /// or `Full` (a backpressure subscriber has not read what the next write would
    /// overwrite) or `Closed`.
    #[inline]
    pub(crate) fn claimable(&self, claimer: &mut Claimer) -> Result<u64, ClaimError> {
        if claimer.next < claimer.room {
            return Ok(claimer.room - claimer.next);
        }
        self.refresh_room(claimer)
    }

    #[cold]
    #[inline(never)]
    fn refresh_room(&self, claimer: &mut Claimer) -> Result<u64, ClaimError> {
        let exclusive = self.exclusive();
        if exclusive.signals.closing.load(Ordering::Acquire) != 0 {
            return Err(ClaimError::Closed);
        }
        let capacity = self.capacity();
        let mut gate_bound = self
            .gate_cache
            .load(Ordering::Acquire)
            .saturating_add(capacity);
        if gate_bound <= claimer.next {
            gate_bound = self.rescan_gates().saturating_add(capacity);
            if gate_bound <= claimer.next {
                return Err(ClaimError::Full);
            }
        }
        if claimer.limit <= claimer.next {
            self.widen(claimer);
        }
        claimer.room = gate_bound.min(claimer.limit);
        Ok(claimer.room - claimer.next)
    }

    /// Announces a new window, waiting for any lag subscriber reading a slot the
    /// window would overwrite.
    #[cold]
    fn widen(&self, claimer: &mut Claimer) {
        let exclusive = self.exclusive();
        let capacity = self.capacity();
        let limit = claimer.next + exclusive.window;
        exclusive.limit.store(limit, Ordering::Release);
        light_barrier();
        if exclusive.lag_subscribers.load(Ordering::Relaxed) != 0 {
            // Dekker with a lag subscriber's read (hazard; light; load limit).
            heavy_barrier();
            exclusive.refresh_hazards(claimer);
            for hazard in &claimer.hazards {
                let mut attempt = 0;
                loop {
                    // Acquire: pairs with `Hazard::withdraw`.
                    let seq = hazard.0.load(Ordering::Acquire);
                    if seq == NONE || limit <= seq + capacity {
                        break;
                    }
                    backoff(&mut attempt);
                }
            }
        }
        claimer.limit = limit;
    }

    /// Publishes what `next_value` yields, at most `max` values (at most what
    /// [`claimable`](Ring::claimable) said), with one store of the published count.
    /// Returns how many were published and whether subscribers sleep (the caller
    /// wakes them); `Err(Closed)` before taking any value once the ring is closing.
    #[inline]
    pub(crate) fn publish_exclusive(
        &self,
        claimer: &mut Claimer,
        max: u64,
        mut next_value: impl FnMut() -> Option<V>,
    ) -> Result<(u64, bool), ClaimError>
    where
        V: SlotValue,
    {
        let exclusive = self.exclusive();
        // Announce the publish, then look for a close (see `Exclusive::close`).
        exclusive.busy.flag.store(1, Ordering::Relaxed);
        light_barrier();
        if exclusive.signals.closing.load(Ordering::Relaxed) != 0 {
            exclusive.busy.flag.store(0, Ordering::Release);
            return Err(ClaimError::Closed);
        }
        let start = claimer.next;
        let end = start + max.min(claimer.room - start);
        let mut last_owning = exclusive.busy.last_owning.load(Ordering::Relaxed);
        while claimer.next < end {
            let Some(value) = next_value() else { break };
            let seq = claimer.next;
            // The value this write replaces (if any) owns something only if it was
            // written at or after the last owning write: else skip its drop.
            let drop_old = seq > self.mask && last_owning > seq - self.capacity();
            if !value.drop_is_trivial() {
                last_owning = seq + 1;
            }
            self.slot(seq).value.get_mut().with(|cell| {
                // SAFETY: only the claimer writes values, and `seq < room`: no
                // backpressure subscriber still reads this slot's previous value
                // (`seq < min(gates) + capacity`, as on the shared ring), no lag
                // subscriber reads it (`seq < limit`, and `widen` waited for every
                // hazard at or below `seq - capacity`), and subscribers read only
                // sequences below `published`, which `seq` is not yet. Past the first
                // lap the slot holds an initialised value, dropped exactly once here.
                // A skipped drop is of a value whose drop does nothing.
                unsafe {
                    if drop_old {
                        (*cell).assume_init_drop();
                    }
                    (*cell).write(value);
                }
            });
            claimer.next = seq + 1;
        }
        exclusive
            .busy
            .last_owning
            .store(last_owning, Ordering::Relaxed);
        let count = claimer.next - start;
        if count > 0 {
            // Release: the value writes above happen before any subscriber's
            // Acquire of this count.
            exclusive.published.store(claimer.next, Ordering::Release);
        }
        // Release: `published` is visible to a closer that sees `busy = 0`.
        exclusive.busy.flag.store(0, Ordering::Release);
        // Dekker with `Exclusive::mark_waiting` (sleepers; heavy; load published).
        light_barrier();
        let wake = count > 0 && exclusive.signals.sleepers.load(Ordering::Relaxed) != 0;
        if wake {
            exclusive.signals.sleepers.store(0, Ordering::Relaxed);
        }
        Ok((count, wake))
    }

    /// `try_pin` of an exclusive ring.
    #[inline(always)]
    pub(super) fn try_pin_exclusive<'a>(
        &'a self,
        exclusive: &'a Exclusive,
        cursor: &'a mut Cursor,
    ) -> Result<Pinned<'a, V>, (Miss, bool)> {
        self.begin_read_exclusive(exclusive, cursor)?;
        let seq = cursor.next;
        let slot = self.slot(seq);
        cursor.next = seq + 1;
        let hold = if cursor.hazard.is_some() {
            // The hazard is withdrawn when the `Pinned` is released.
            let cursor: &'a Cursor = cursor;
            match cursor.hazard.as_deref() {
                Some(hazard) => Hold::Hazard(hazard),
                None => unreachable!("checked above"),
            }
        } else {
            cursor.unflushed += 1;
            if cursor.unflushed >= cursor.flush_every {
                // Flushed once the value is released, as on the shared ring.
                cursor.flush_pending = true;
            }
            Hold::Gate(cursor)
        };
        Ok(Pinned {
            ring: self,
            slot,
            value: Some(slot.value.get()),
            hold,
        })
    }

    /// Starts a read at the cursor: there is at least one event, and (lag mode)
    /// the hazard is set and the cursor past anything overrun. Returns how many
    /// events can be read from the cursor.
    #[inline(always)]
    fn begin_read_exclusive(
        &self,
        exclusive: &Exclusive,
        cursor: &mut Cursor,
    ) -> Result<u64, (Miss, bool)> {
        let seq = cursor.next;
        if let Some(hazard) = &cursor.hazard {
            hazard.0.store(seq, Ordering::Relaxed);
            // Dekker with `widen` (limit; heavy; load hazards).
            light_barrier();
            let oldest = exclusive.oldest_safe(seq, self.capacity());
            if oldest > seq {
                // Overrun: every event from `oldest` on stays safe while the hazard
                // (at `seq`, below it) stands, but report the loss first.
                hazard.withdraw();
                cursor.next = oldest;
                return Err((Miss::Lagged(oldest - seq), false));
            }
        }
        if seq >= cursor.published {
            cursor.published = exclusive.published.load(Ordering::Acquire);
            if seq >= cursor.published {
                if let Some(hazard) = &cursor.hazard {
                    hazard.withdraw();
                }
                let moved = self.flush_gate(cursor);
                return Err((exclusive.miss(seq), moved));
            }
        }
        Ok(cursor.published - seq)
    }

    /// Reads up to `max` events at the cursor in place, calling `read` with each
    /// sequence and value: one `Acquire` load for the whole batch, and (lag mode) one
    /// hazard. Returns how many were read; a miss only when none was.
    #[inline(always)]
    pub(super) fn read_batch_exclusive(
        &self,
        exclusive: &Exclusive,
        cursor: &mut Cursor,
        max: u64,
        mut read: impl FnMut(u64, &V),
    ) -> Result<u64, Miss> {
        let available = match self.begin_read_exclusive(exclusive, cursor) {
            Ok(available) => available,
            Err((miss, moved)) => {
                cursor.gate_moved |= moved;
                return Err(miss);
            }
        };
        let start = cursor.next;
        let end = start + available.min(max);
        for seq in start..end {
            let value = self.slot(seq).value.get();
            // SAFETY: `seq < published` (Acquire above): the value is written and
            // initialised. It is not rewritten while we read: a backpressure
            // subscriber's gate is still at or below `start`, and a lag subscriber's
            // hazard at `start` holds the claimer's window at or below
            // `start + capacity` (`begin_read_exclusive` checked it). No `&mut`
            // exists: only the claimer writes, and not these slots.
            read(seq, unsafe { value.deref().assume_init_ref() });
        }
        cursor.next = end;
        match &cursor.hazard {
            Some(hazard) => hazard.withdraw(),
            None => {
                cursor.unflushed = cursor.unflushed.saturating_add((end - start) as u32);
                if cursor.unflushed >= cursor.flush_every {
                    cursor.gate_moved |= self.flush_gate(cursor);
                }
            }
        }
        Ok(end - start)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::ClaimError;
    use super::*;

    impl SlotValue for String {}
    impl SlotValue for std::sync::Arc<()> {}

    /// Publishes every value of `values` (the ring must have room), a window at
    /// a time.
    fn publish(ring: &Ring<String>, claimer: &mut Claimer, values: &[&str]) {
        let mut values = values.iter().map(|value| value.to_string()).peekable();
        while values.peek().is_some() {
            let room = ring.claimable(claimer).expect("room");
            ring.publish_exclusive(claimer, room, || values.next())
                .expect("open");
        }
    }

    fn read_all(ring: &Ring<String>, cursor: &mut Cursor) -> (Vec<String>, u64) {
        let mut seen = Vec::new();
        let mut missed = 0;
        loop {
            match ring.read_batch(cursor, 3, |_, value| seen.push(value.clone())) {
                Ok(_) => {}
                Err(Miss::Lagged(n)) => missed += n,
                Err(Miss::Empty | Miss::Closed) => return (seen, missed),
            }
        }
    }

    #[test]
    fn one_claimer_at_a_time() {
        let ring = Ring::<String>::new_exclusive(4, 1);
        let claimer = ring.take_claimer(true).unwrap();
        assert_eq!(ring.take_claimer(true).unwrap_err(), Taken::Held);
        assert_eq!(ring.take_claimer(false).unwrap_err(), Taken::Held);
        assert_eq!(ring.try_claim(), Err(ClaimError::Exclusive));
        ring.return_claimer(claimer);
        let once = ring.take_claimer(false).unwrap();
        assert_eq!(ring.take_claimer(true).unwrap_err(), Taken::Once);
        ring.return_claimer(once);
    }

    #[test]
    fn batches_are_read_in_order_across_laps() {
        let ring = Ring::<String>::new_exclusive(4, 1);
        let mut cursor = ring.subscribe(true).unwrap();
        let mut claimer = ring.take_claimer(true).unwrap();
        let mut received = Vec::new();
        for lap in 0..5 {
            let values: Vec<String> = (0..4).map(|i| format!("{lap}.{i}")).collect();
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            publish(&ring, &mut claimer, &refs);
            assert_eq!(ring.claimable(&mut claimer), Err(ClaimError::Full));
            let (seen, missed) = read_all(&ring, &mut cursor);
            assert_eq!((seen.len(), missed), (4, 0));
            received.extend(seen);
        }
        assert_eq!(received.len(), 20);
        assert_eq!(received[19], "4.3");
        assert_eq!(ring.tail(), (20, false));
    }

    #[test]
    fn a_lag_reader_learns_how_many_it_missed() {
        let ring = Ring::<String>::new_exclusive(4, 0);
        let mut cursor = ring.subscribe(false).unwrap();
        let mut claimer = ring.take_claimer(true).unwrap();
        for i in 0..10 {
            publish(&ring, &mut claimer, &[&i.to_string()]);
        }
        let (seen, missed) = read_all(&ring, &mut cursor);
        // The window reaches half a ring ahead: at least the last two are kept.
        assert_eq!(seen.len() as u64 + missed, 10);
        assert!(seen.len() >= 2, "{seen:?}");
        assert_eq!(seen.last().map(String::as_str), Some("9"));
        let numbers: Vec<u64> = seen.iter().map(|s| s.parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|pair| pair[1] == pair[0] + 1));
    }

    #[test]
    fn close_refuses_then_drains() {
        let ring = Ring::<String>::new_exclusive(4, 0);
        let mut cursor = ring.subscribe(false).unwrap();
        let mut claimer = ring.take_claimer(true).unwrap();
        publish(&ring, &mut claimer, &["a"]);
        assert!(ring.close());
        assert!(!ring.close());
        let mut values = std::iter::once("b".to_string());
        assert_eq!(
            ring.publish_exclusive(&mut claimer, 1, || values.next()),
            Err(ClaimError::Closed)
        );
        assert_eq!(values.next().as_deref(), Some("b"), "nothing taken");
        let (seen, _) = read_all(&ring, &mut cursor);
        assert_eq!(seen, ["a"]);
        assert_eq!(
            ring.read_batch(&mut cursor, 1, |_, _| {}),
            Err(Miss::Closed)
        );
        assert_eq!(ring.tail(), (1, true));
    }

    #[test]
    fn a_sleeper_is_reported_once() {
        let ring = Ring::<String>::new_exclusive(4, 0);
        let cursor = ring.subscribe(false).unwrap();
        let mut claimer = ring.take_claimer(true).unwrap();
        assert!(ring.mark_waiting(&cursor), "nothing published: sleep");
        let mut values = ["x".to_string(), "y".to_string()].into_iter();
        ring.claimable(&mut claimer).unwrap();
        assert_eq!(
            ring.publish_exclusive(&mut claimer, 1, || values.next()),
            Ok((1, true))
        );
        assert_eq!(
            ring.publish_exclusive(&mut claimer, 1, || values.next()),
            Ok((1, false))
        );
        assert!(!ring.mark_waiting(&cursor), "events wait: do not sleep");
    }

    #[test]
    fn lag_subscribers_come_and_go() {
        let ring = Ring::<String>::new_exclusive(4, 0);
        let exclusive = ring.exclusive();
        let mut first = ring.subscribe(false).unwrap();
        let mut second = ring.subscribe(false).unwrap();
        assert_eq!(exclusive.lag_subscribers.load(Ordering::Relaxed), 2);
        ring.unsubscribe(&mut first);
        ring.unsubscribe(&mut second);
        ring.unsubscribe(&mut second); // twice is harmless
        assert_eq!(exclusive.lag_subscribers.load(Ordering::Relaxed), 0);
        assert!(exclusive.hazards.lock().unwrap().is_empty());
    }

    #[test]
    fn drop_releases_every_value_once() {
        let value = std::sync::Arc::new(());
        {
            let ring = Ring::new_exclusive(2, 0);
            let mut claimer = ring.take_claimer(true).unwrap();
            for _ in 0..5 {
                ring.claimable(&mut claimer).unwrap();
                let mut once = Some(std::sync::Arc::clone(&value));
                ring.publish_exclusive(&mut claimer, 1, || once.take())
                    .unwrap();
            }
            assert_eq!(std::sync::Arc::strong_count(&value), 3);
            ring.return_claimer(claimer);
        }
        assert_eq!(std::sync::Arc::strong_count(&value), 1);
    }
}

/// loom models of the single-publisher protocol (see the top of this file). Run
/// with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib
/// --no-default-features loom_exclusive`. Both sides of the asymmetric barrier are
/// `SeqCst` fences under loom, which is the guarantee `membarrier(2)` gives.
///
/// Payloads are `loom::sync::Arc`s: loom reports a value leaked or dropped twice,
/// and any read of a slot concurrent with its write.
#[cfg(all(test, loom))]
mod loom_models {
    use super::super::ClaimError;
    use super::*;
    use loom::sync::atomic::AtomicBool;
    use loom::thread;

    type Value = Arc<u64>;

    impl SlotValue for Value {}

    /// Publishes `values` one by one, yielding while the ring is full; returns
    /// how many were published before a close.
    fn publish_all(ring: &Ring<Value>, values: std::ops::Range<u64>) -> u64 {
        let mut claimer = ring.take_claimer(true).expect("free");
        let mut published = 0;
        for value in values {
            loop {
                match ring.claimable(&mut claimer) {
                    Ok(_) => break,
                    Err(ClaimError::Full) => thread::yield_now(),
                    Err(_) => {
                        ring.return_claimer(claimer);
                        return published;
                    }
                }
            }
            let mut once = Some(Arc::new(value));
            match ring.publish_exclusive(&mut claimer, 1, || once.take()) {
                Ok(_) => published += 1,
                Err(_) => break,
            }
        }
        ring.return_claimer(claimer);
        published
    }

    fn spawn_publisher(
        ring: &Arc<Ring<Value>>,
        values: std::ops::Range<u64>,
    ) -> thread::JoinHandle<u64> {
        let ring = ring.clone();
        thread::spawn(move || publish_all(&ring, values))
    }

    /// Reads in batches until `until` values (seen + missed) are accounted for, or
    /// closed.
    fn drain(ring: &Ring<Value>, cursor: &mut Cursor, until: u64) -> (Vec<u64>, u64) {
        let mut seen = Vec::new();
        let mut missed = 0;
        while (seen.len() as u64) + missed < until {
            match ring.read_batch(cursor, 2, |_, value| seen.push(**value)) {
                Ok(_) => {}
                Err(Miss::Lagged(n)) => missed += n,
                Err(Miss::Empty) => thread::yield_now(),
                Err(Miss::Closed) => break,
            }
        }
        (seen, missed)
    }

    #[test]
    fn loom_exclusive_publish_and_batch_receive() {
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(2, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = spawn_publisher(&ring, 0..2);
            let (seen, missed) = drain(&ring, &mut cursor, 2);
            assert_eq!(writer.join().unwrap(), 2);
            assert_eq!((seen, missed), (vec![0, 1], 0));
        });
    }

    #[test]
    fn loom_exclusive_lag_reader_is_never_torn() {
        // Capacity 1 (a window of one): every publish overwrites the slot a lag
        // reader may be reading.
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(1, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = spawn_publisher(&ring, 0..3);
            let (seen, missed) = drain(&ring, &mut cursor, 3);
            writer.join().unwrap();
            assert!(seen.windows(2).all(|pair| pair[0] < pair[1]), "{seen:?}");
            assert_eq!(seen.len() as u64 + missed, 3);
            assert_eq!(seen.last(), Some(&2), "the newest event is never skipped");
        });
    }

    #[test]
    fn loom_exclusive_backpressure_never_overruns() {
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(1, 1));
            let mut cursor = ring.subscribe(true).unwrap();
            let writer = spawn_publisher(&ring, 0..3);
            let (seen, missed) = drain(&ring, &mut cursor, 3);
            writer.join().unwrap();
            assert_eq!((seen, missed), (vec![0, 1, 2], 0));
        });
    }

    #[test]
    fn loom_exclusive_a_sleeping_subscriber_is_always_woken() {
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(2, 0));
            let woken = Arc::new(AtomicBool::new(false));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = {
                let (ring, woken) = (ring.clone(), woken.clone());
                thread::spawn(move || {
                    let mut claimer = ring.take_claimer(true).unwrap();
                    ring.claimable(&mut claimer).unwrap();
                    let mut once = Some(Arc::new(5));
                    let (_, wake) = ring
                        .publish_exclusive(&mut claimer, 1, || once.take())
                        .unwrap();
                    if wake {
                        woken.store(true, Ordering::Release);
                    }
                    ring.return_claimer(claimer);
                })
            };
            loop {
                match ring.read_batch(&mut cursor, 1, |_, value| assert_eq!(**value, 5)) {
                    Ok(_) => break,
                    Err(Miss::Empty) => {
                        if ring.mark_waiting(&cursor) {
                            while !woken.load(Ordering::Acquire) {
                                thread::yield_now();
                            }
                        } else {
                            thread::yield_now();
                        }
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            writer.join().unwrap();
        });
    }

    #[test]
    fn loom_exclusive_close_races_a_publish() {
        // Whatever the publisher was told it published is read before `Closed`.
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(2, 0));
            let mut cursor = ring.subscribe(false).unwrap();
            let writer = spawn_publisher(&ring, 0..2);
            ring.close();
            let (seen, missed) = drain(&ring, &mut cursor, u64::MAX);
            let published = writer.join().unwrap();
            assert_eq!(missed, 0);
            assert_eq!(seen, (0..published).collect::<Vec<_>>());
        });
    }

    #[test]
    fn loom_exclusive_lag_registration_races_the_window() {
        // A lag subscriber registers while the publisher laps a one-slot ring:
        // from wherever it starts, it never reads a slot being written.
        loom::model(|| {
            let ring = Arc::new(Ring::new_exclusive(1, 0));
            let writer = spawn_publisher(&ring, 0..3);
            let mut cursor = ring.subscribe(false).unwrap();
            let start = cursor.next();
            let (seen, missed) = drain(&ring, &mut cursor, 3 - start);
            writer.join().unwrap();
            assert_eq!(seen.len() as u64 + missed, 3 - start);
            assert!(seen.iter().all(|value| *value >= start));
        });
    }
}

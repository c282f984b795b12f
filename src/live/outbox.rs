//! The outbox: durable events waiting for Redis, bounded, in publish order.

use crate::config::OutboxFull;
use crate::io::lock;
use crate::receipt::ReceiptSender;
use crate::transport::WireEntry;
use event_listener::{Event as Notify, Listener as _};
use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify as AsyncNotify;

/// One queued durable event.
pub(super) struct Pending {
    pub(super) entry: WireEntry,
    pub(super) fsync: bool,
    pub(super) receipt: Option<ReceiptSender>,
    /// Sent at least once without a clear answer.
    pub(super) unknown: bool,
    /// When it was published, for the publish → durable latency.
    #[cfg(feature = "metrics")]
    pub(super) queued_at: quanta::Instant,
}

/// Durable events waiting for Redis: bounded by `depth` (places taken from
/// `reserve` until Redis confirms), queued in publish order.
pub(super) struct Outbox {
    pub(super) queue: Mutex<VecDeque<Pending>>,
    pub(super) depth: AtomicUsize,
    pub(super) capacity: usize,
    pub(super) policy: OutboxFull,
    pub(super) closed: AtomicBool,
    /// Publishers waiting for room.
    pub(super) space: Notify,
    pub(super) space_waiters: AtomicUsize,
    /// Wakes the writer.
    pub(super) wake_writer: AsyncNotify,
}

pub(super) enum Refused {
    Full,
    Closed,
}

impl Outbox {
    /// Takes a place, waiting for one if `wait`.
    pub(super) fn reserve(&self, wait: bool) -> std::result::Result<(), Refused> {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Refused::Closed);
            }
            let depth = self.depth.load(Ordering::Relaxed);
            if depth < self.capacity {
                if self
                    .depth
                    .compare_exchange_weak(depth, depth + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !wait {
                return Err(Refused::Full);
            }
            // Listen, count ourselves as waiting, fence, look again: pairs with
            // `release`, which fences between lowering the depth and reading the count.
            let listener = self.space.listen();
            self.space_waiters.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let full = self.depth.load(Ordering::Relaxed) >= self.capacity
                && !self.closed.load(Ordering::Acquire);
            if full {
                listener.wait();
            }
            self.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Gives back `n` places.
    pub(super) fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.depth.fetch_sub(n, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        if self.space_waiters.load(Ordering::Relaxed) > 0 {
            self.space.notify(usize::MAX);
        }
    }

    pub(super) fn push(&self, pending: Pending) {
        lock(&self.queue).push_back(pending);
        self.wake_writer.notify_one();
    }

    pub(super) fn take(&self, max: usize, into: &mut VecDeque<Pending>) {
        let mut queue = lock(&self.queue);
        let n = queue.len().min(max);
        into.extend(queue.drain(..n));
    }

    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.space.notify(usize::MAX);
        self.wake_writer.notify_one();
    }
}

//! The outbox: durable events waiting for Redis, bounded, in publish order.

use crate::config::OutboxFull;
use crate::io::lock;
use crate::receipt::ReceiptSender;
use crate::sync::Places;
pub(super) use crate::sync::Refused;
use crate::transport::WireEntry;
use std::collections::VecDeque;
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

/// Durable events waiting for Redis: bounded by `places` (taken by a publish,
/// given back once Redis confirms), queued in publish order.
pub(super) struct Outbox {
    pub(super) queue: Mutex<VecDeque<Pending>>,
    /// The bound, closed at shutdown; a publisher waiting for a place parks on
    /// its handshake (`sync::Places`, with its loom models).
    pub(super) places: Places,
    pub(super) policy: OutboxFull,
    /// Wakes the writer.
    pub(super) wake_writer: AsyncNotify,
}

impl Outbox {
    /// Takes a place, waiting for one if `wait`.
    pub(super) fn reserve(&self, wait: bool) -> std::result::Result<(), Refused> {
        self.places.take(wait)
    }

    /// Gives back `n` places.
    pub(super) fn release(&self, n: usize) {
        self.places.give_back(n);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.places.is_closed()
    }

    /// Places taken (events not yet confirmed by Redis).
    pub(super) fn depth(&self) -> usize {
        self.places.taken()
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
        self.places.close();
        self.wake_writer.notify_one();
    }
}

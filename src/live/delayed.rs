//! Scheduled events (`DurableTopic::publish_at`): the sorted set of a topic's
//! jobs waiting for their time, and the mover that appends what is due to the
//! stream.
//!
//! Scheduling is one `ZADD` of the whole entry (its fields as a MessagePack
//! array, `wire::encode_scheduled`), scored by its due time. The member holds the
//! event id, so a `ZADD` sent again after a lost reply schedules nothing twice.
//!
//! Moving is one script run (`transport::redis::delayed`): by the server's
//! clock, what is due is appended to the stream and removed from the set, in
//! one atomic step. Any number of instances may run movers for a topic; each
//! job is appended once, early never, and a mover killed mid-run changes
//! nothing (the script runs to its end in Redis). An instance's mover starts
//! with its first scheduled job, or with the topic when
//! `DurableOptions::delayed_poll` is set. It sleeps until the next job is due
//! (the script says when), at most the poll interval (so that it notices what
//! other instances schedule), and wakes at once when this instance schedules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify as AsyncNotify;

use crate::error::ErrorKind;
use crate::event::EventId;
use crate::io::{now_ms, Backoff};
use crate::local::persist::Due;
use crate::receipt::{Receipt, ReceiptSender};
use crate::transport::redis::Connection;

use super::{Core, Counters};

/// Jobs moved per script run (the script runs again at once when it moved
/// this many).
const MOVE_BATCH: usize = 256;
/// Without `DurableOptions::delayed_poll`, how often a running mover looks for
/// jobs other instances scheduled.
pub(super) const DEFAULT_POLL: Duration = Duration::from_secs(1);
/// Attempts of one `ZADD` whose outcome was unknown (it is idempotent).
const SCHEDULE_ATTEMPTS: usize = 3;

/// One topic's scheduled jobs, on one bus.
pub(super) struct Scheduler {
    pub(super) core: Arc<Core>,
    pub(super) writer: Connection,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) delayed_key: Arc<str>,
    pub(super) stream_key: Arc<str>,
    pub(super) max_len: Option<u64>,
    pub(super) poll: Duration,
    pub(super) started: AtomicBool,
    /// Wakes the mover when this instance schedules a job.
    pub(super) wake: AsyncNotify,
}

impl Scheduler {
    /// `ZADD`s the job, then makes sure the mover runs and looks again. The
    /// receipt resolves to `id` once Redis holds the job.
    pub(super) fn schedule(
        self: &Arc<Self>,
        id: EventId,
        member: Bytes,
        due: Due,
    ) -> Receipt<EventId> {
        let (receipt, sender): (Receipt<EventId>, ReceiptSender<EventId>) = Receipt::pair();
        let scheduler = Arc::clone(self);
        self.runtime.spawn(async move {
            let mut backoff = Backoff::new(&scheduler.core.config);
            let mut attempt = 1;
            let result = loop {
                match scheduler
                    .writer
                    .schedule(&scheduler.delayed_key, due, member.clone())
                    .await
                {
                    Ok(()) => break Ok(id),
                    // Refused: say so. Unknown outcome: send the same member
                    // again, which cannot schedule it twice.
                    Err(error) if error.kind() == ErrorKind::Redis => break Err(error),
                    Err(error) if attempt >= SCHEDULE_ATTEMPTS => break Err(error),
                    Err(_) => {
                        attempt += 1;
                        backoff.sleep().await;
                    }
                }
            };
            if result.is_ok() {
                Counters::add(&scheduler.core.counters.scheduled, 1);
                scheduler.start();
                scheduler.wake.notify_one();
            }
            sender.send(result);
        });
        receipt
    }

    /// Starts the mover, once.
    pub(super) fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::AcqRel) {
            self.runtime.spawn(mover_loop(Arc::clone(self)));
        }
    }
}

/// Moves due jobs into the stream until the bus shuts down (the writer's
/// runtime, which it runs on, ends then).
async fn mover_loop(scheduler: Arc<Scheduler>) {
    let core = &scheduler.core;
    let mut backoff = Backoff::new(&core.config);
    while !core.closed.load(Ordering::Acquire) {
        // Registered before the run: a job scheduled during it wakes the next wait.
        let woken = scheduler.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let wait = match scheduler
            .writer
            .move_due(
                &scheduler.delayed_key,
                &scheduler.stream_key,
                MOVE_BATCH,
                scheduler.max_len,
            )
            .await
        {
            Ok(moved) => {
                backoff.reset();
                Counters::add(&core.counters.delayed_moved, moved.moved);
                if moved.refused > 0 {
                    Counters::add(&core.counters.skipped, moved.refused);
                    tracing::warn!(
                        key = %scheduler.delayed_key,
                        refused = moved.refused,
                        "tickbus: scheduled entries that were not entries, or that XADD \
                         refused, were removed"
                    );
                }
                if moved.moved + moved.refused >= MOVE_BATCH as u64 {
                    continue; // more may be due
                }
                match moved.next_due_ms {
                    // Never less than a millisecond: a client clock behind the
                    // server's must not make this spin.
                    Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(1))
                        .min(scheduler.poll),
                    None => scheduler.poll,
                }
            }
            Err(error) => {
                tracing::warn!(key = %scheduler.delayed_key, %error, "tickbus: moving due jobs failed");
                Counters::add(&core.counters.redis_errors, 1);
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

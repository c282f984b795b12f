//! The publish side of a durable topic: encode, take an outbox place, queue.

use crate::codec::{self, CodecLimits};
use crate::config::OutboxFull;
use crate::event::Extra;
use crate::event::{EventId, Headers};
use crate::io::lock;
use crate::local::persist::Due;
use crate::local::topic::{Persist, PersistMode, TopicShared};
use crate::local::PublishError;
use crate::receipt::Receipt;
use crate::transport::WireEntry;
use crate::wire::{self, EncodedEntry, EntryLimits};
use bytes::Bytes;
use serde::Serialize;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use super::outbox::{Pending, Refused};
use super::{Core, FollowGate, Scheduler};

/// The publish side of a durable topic.
pub(super) struct DurablePersist<T> {
    /// The read target, until the first subscriber.
    pub(super) gate: Arc<Mutex<FollowGate>>,
    pub(super) core: Arc<Core>,
    pub(super) key: Arc<str>,
    pub(super) max_len: Option<u64>,
    pub(super) fsync: bool,
    pub(super) limits: CodecLimits,
    /// One order for the ring and the outbox.
    pub(super) order: Mutex<()>,
    /// The topic's scheduled events.
    pub(super) scheduler: Arc<Scheduler>,
    pub(super) _payload: PhantomData<fn(T)>,
}

impl<T: Serialize> DurablePersist<T> {
    /// The payload and the `h` field, within the limits.
    fn encode(
        &self,
        value: &T,
        headers: &Headers,
    ) -> crate::error::Result<(Vec<u8>, Option<Bytes>)> {
        let data = codec::encode_payload(value, &self.limits)?;
        let h = wire::encode_headers(headers.as_slice(), &EntryLimits::new(&self.limits))?;
        Ok((data, h))
    }
}

impl<T: Serialize + Clone + Send + Sync + 'static> Persist<T> for DurablePersist<T> {
    fn publish(
        &self,
        topic: &TopicShared<T>,
        value: T,
        headers: Headers,
        mode: PersistMode,
    ) -> std::result::Result<(u64, Option<Receipt>), PublishError<T>> {
        let span = tracing::trace_span!(
            target: "tickbus::publish",
            "tickbus.publish",
            topic = %topic.name,
            durable = true,
            seq = tracing::field::Empty,
            event_id = tracing::field::Empty,
        );
        let _entered = span.enter();
        // Encode first: an event that cannot be persisted is refused before any
        // subscriber sees it.
        let (data, h) = match self.encode(&value, &headers) {
            Ok(encoded) => encoded,
            Err(error) => return Err(PublishError::Rejected(value, error)),
        };
        let outbox = &self.core.outbox;
        let wait = mode != PersistMode::Try && outbox.policy == OutboxFull::Wait;
        match outbox.reserve(wait) {
            Ok(()) => {}
            Err(Refused::Full) => return Err(PublishError::Backpressure(value)),
            Err(Refused::Closed) => return Err(PublishError::Closed(value)),
        }
        let order = lock(&self.order);
        let mut stored = topic.stored(value);
        stored.extra = Extra::local(headers).into();
        let timestamp_ns = stored.timestamp_ns;
        let published = match mode {
            PersistMode::Try => topic
                .try_publish_stored(stored)
                .map_err(|(error, stored)| topic.publish_error(error, stored.into_value())),
            _ => topic
                .publish_stored(stored)
                .map_err(|(error, stored)| topic.publish_error(error, stored.into_value())),
        };
        let seq = match published {
            Ok(seq) => seq,
            Err(error) => {
                drop(order);
                outbox.release(1);
                return Err(error);
            }
        };
        let id = EventId::derive(timestamp_ns, topic.salt, seq);
        if !span.is_disabled() {
            span.record("seq", seq);
            span.record("event_id", tracing::field::display(id));
        }
        let (receipt, sender) = match mode {
            PersistMode::Receipt => {
                let (receipt, sender) = Receipt::pair();
                (Some(receipt), Some(sender))
            }
            _ => (None, None),
        };
        outbox.push(Pending {
            entry: WireEntry {
                key: Arc::clone(&self.key),
                // The codec held the payload to `self.limits`, the entry's
                // payload limit too.
                event: EncodedEntry {
                    headers: h,
                    ..EncodedEntry::new(id, self.core.src.clone(), timestamp_ns, Bytes::from(data))
                },
                max_len: self.max_len,
            },
            fsync: self.fsync,
            receipt: sender,
            unknown: false,
            #[cfg(feature = "metrics")]
            queued_at: quanta::Instant::now(),
        });
        drop(order);
        Ok((seq, receipt))
    }

    fn schedule(
        &self,
        topic: &TopicShared<T>,
        value: T,
        headers: Headers,
        due: Due,
    ) -> std::result::Result<Receipt<EventId>, PublishError<T>> {
        if self.core.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(PublishError::Closed(value));
        }
        let (data, h) = match self.encode(&value, &headers) {
            Ok(encoded) => encoded,
            Err(error) => return Err(PublishError::Rejected(value, error)),
        };
        let timestamp_ns = topic.clock.now_ns();
        // Not a ring event: no topic sequence to derive the id from, so random
        // bits take the place of the salt and sequence.
        let (salt, seq) = uuid::Uuid::new_v4().as_u64_pair();
        let id = EventId::derive(timestamp_ns, salt as u32, seq);
        let entry = EncodedEntry {
            headers: h,
            ..EncodedEntry::new(id, self.core.src.clone(), timestamp_ns, Bytes::from(data))
        };
        let member = wire::encode_scheduled(&entry);
        Ok(self.scheduler.schedule(id, member, due))
    }

    fn subscribed(&self) {
        let mut gate = lock(&self.gate);
        gate.subscribed = true;
        if let Some(target) = gate.target.take() {
            drop(gate);
            self.core.follow(target);
        }
    }
}

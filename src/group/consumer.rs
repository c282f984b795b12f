//! [`Consumer`], one member of a group (receiving, decoding, its I/O
//! thread's commands), and [`SeenWindow`].

use std::collections::VecDeque;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::{
    closed, validate_name, worker, Acker, Command, Counters, Delivery, DeliveryInfo, GroupConfig,
    GroupCore, GroupInfo, GroupStats, GroupStream, Incoming, ReadEntry, Subject, RECEIVED_BATCH,
};
use crate::codec::{self, CodecLimits};
use crate::config::RedisConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{EventId, InstanceId, StreamId};
use crate::io::Join;
use crate::sync::InFlight;
use crate::wire::{self, EntryLimits};

/// One member of a consumer group: a `Stream` of [`Delivery`]s (also
/// [`recv`](Consumer::recv) and [`recv_blocking`](Consumer::recv_blocking)).
/// Created by [`LiveBus::group`](crate::LiveBus::group).
///
/// It holds at most `max_in_flight` deliveries (handed out and not yet acked);
/// at the limit it stops reading until acks make room. Dropping it (or
/// [`shutdown`](Consumer::shutdown)) sends the acks already given (bounded by
/// `RedisConfig::shutdown_timeout`) and stops its I/O thread; deliveries still
/// held stay pending and are delivered again after the ack wait.
pub struct Consumer<T> {
    core: Arc<GroupCore>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// The entries of the last read not yet received, and when it was read.
    queue: VecDeque<ReadEntry>,
    read_at: std::time::Instant,
    /// Received entries still in [`GroupCore::queued`] (taken off in batches).
    received: Vec<(usize, StreamId)>,
    worker: Option<worker::Worker>,
    ended: bool,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.core.group)
            .field("consumer", &self.core.consumer)
            .field("subject", &self.core.subject)
            .finish_non_exhaustive()
    }
}
impl<T: DeserializeOwned + Send + 'static> Consumer<T> {
    pub(crate) fn start(
        redis: RedisConfig,
        group: &str,
        subject: Subject,
        config: GroupConfig,
    ) -> Result<Self> {
        validate_name(group, "group")?;
        config.validate()?;
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let core = Arc::new(GroupCore {
            group: group.to_string(),
            consumer: config.consumer_name(),
            limits: CodecLimits::default(),
            in_flight: InFlight::new(config.max_in_flight),
            config,
            redis,
            subject,
            counters: Counters::default(),
            room: tokio::sync::Notify::new(),
            commands,
            acks: Mutex::new(Vec::new()),
            acks_ready: tokio::sync::Notify::new(),
            stop: tokio::sync::watch::channel(false).0,
            streams: Mutex::new(Vec::new()),
            nacked: Mutex::new(HashSet::new()),
            queued: Mutex::new(HashSet::new()),
            observed: Mutex::new(None),
            unread_seen: Mutex::new(HashMap::new()),
        });
        let worker = worker::Worker::start(Arc::clone(&core), command_rx, incoming_tx)?;
        Ok(Consumer {
            core,
            incoming,
            queue: VecDeque::new(),
            read_at: std::time::Instant::now(),
            received: Vec::with_capacity(RECEIVED_BATCH),
            worker: Some(worker),
            ended: false,
            _type: PhantomData,
        })
    }

    /// The next delivery; `None` once the consumer has stopped. Cancel safe.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::GroupMissing`] (once, then `None`) when the group vanished and
    /// the configuration says [`OnMissingGroup::Stop`](super::OnMissingGroup::Stop).
    pub async fn recv(&mut self) -> Option<Result<Delivery<T>>> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// As [`recv`](Consumer::recv), blocking this thread. Do not call it from
    /// async code.
    pub fn recv_blocking(&mut self) -> Option<Result<Delivery<T>>> {
        loop {
            if let Some(entry) = self.queue.pop_front() {
                match self.accept(entry) {
                    Some(delivery) => return Some(delivery),
                    None => continue,
                }
            }
            self.forget_received();
            let incoming = if self.ended {
                None
            } else {
                self.incoming.blocking_recv()
            };
            if let Some(end) = self.take(incoming) {
                return end;
            }
        }
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery<T>>>> {
        loop {
            if let Some(entry) = self.queue.pop_front() {
                match self.accept(entry) {
                    Some(delivery) => return Poll::Ready(Some(delivery)),
                    None => continue,
                }
            }
            self.forget_received();
            if self.ended {
                return Poll::Ready(None);
            }
            let incoming = match self.incoming.poll_recv(cx) {
                Poll::Ready(incoming) => incoming,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(end) = self.take(incoming) {
                return Poll::Ready(end);
            }
        }
    }

    /// Takes what the I/O thread sent: a read's entries join the local queue
    /// (`None` returned); an error or the end is returned.
    fn take(&mut self, incoming: Option<Incoming>) -> Option<Option<Result<Delivery<T>>>> {
        match incoming {
            None => {
                self.ended = true;
                Some(None)
            }
            Some(Incoming::Failed(error)) => {
                if error.kind() == ErrorKind::GroupMissing {
                    self.ended = true;
                }
                Some(Some(Err(error)))
            }
            Some(Incoming::Entries { entries, read_at }) => {
                self.queue.extend(entries);
                self.read_at = read_at;
                None
            }
        }
    }

    /// Turns a queued entry into a delivery: `None` when it was dead-lettered
    /// instead (too many deliveries, undecodable).
    fn accept(&mut self, entry: ReadEntry) -> Option<Result<Delivery<T>>> {
        self.received(&entry.stream, entry.id);
        self.decode(entry.stream, entry.id, entry.fields, entry.deliveries)
    }

    /// The application has an entry now: its ack wait starts. An entry that
    /// waited in the queue for more than a quarter of the ack wait gets its
    /// idle time reset first (and stays off the claims until then), so that the
    /// handler has at least three quarters of the ack wait.
    fn received(&mut self, stream: &Arc<GroupStream>, id: StreamId) {
        if self.read_at.elapsed() > self.core.config.ack_wait / 4 {
            let sent = self.core.send(Command::Progress {
                stream: Arc::clone(stream),
                id,
                received: true,
            });
            if sent {
                return;
            }
        }
        self.received.push((stream.tag(), id));
        if self.received.len() >= RECEIVED_BATCH {
            self.forget_received();
        }
    }

    /// Takes the received entries off the queued set, under one lock. Until
    /// then a claim of this member's idle entries refreshes them rather than
    /// delivering them again: at most [`RECEIVED_BATCH`] received entries, for
    /// as long as the application takes to ask for that many more.
    fn forget_received(&mut self) {
        if self.received.is_empty() {
            return;
        }
        let mut queued = self
            .core
            .queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for held in self.received.drain(..) {
            queued.remove(&held);
        }
    }

    fn decode(
        &self,
        stream: Arc<GroupStream>,
        id: StreamId,
        fields: Vec<(Bytes, Bytes)>,
        deliveries: u32,
    ) -> Option<Result<Delivery<T>>> {
        let max = self.core.config.max_deliveries;
        let limits = &self.core.limits;
        // The entry, then its payload: either failing dead-letters it (an
        // entry that parses keeps its ids in the log and the dead letter).
        let ((event_id, source, timestamp_ns, headers), decoded) =
            match wire::parse(&fields[..], &EntryLimits::new(limits)) {
                Ok(entry) => (
                    (
                        entry.event_id,
                        entry.source,
                        entry.timestamp_ns,
                        entry.headers,
                    ),
                    codec::decode_payload::<T>(entry.payload, limits),
                ),
                Err(error) => (
                    (
                        EventId::from_uuid(uuid::Uuid::nil()),
                        InstanceId::from_uuid(uuid::Uuid::nil()),
                        0,
                        Vec::new(),
                    ),
                    Err(Error::from(error)),
                ),
            };
        let mut acker = Acker {
            core: Arc::clone(&self.core),
            info: DeliveryInfo {
                event_id,
                topic: stream.topic.clone(),
                stream_id: id,
                source,
                timestamp_ns,
                deliveries,
                headers,
            },
            stream,
            fields: Vec::new(),
            done: true,
            span: tracing::Span::none(),
        };
        let outcome = match decoded {
            _ if deliveries > max => Err((
                "max_deliveries",
                format!("delivered {deliveries} times (max {max}) without an ack"),
            )),
            Err(error) => Err(("decode", error.to_string())),
            Ok(value) => Ok(value),
        };
        match outcome {
            Ok(value) => {
                Counters::add(&self.core.counters.delivered, 1);
                if deliveries > 1 {
                    Counters::add(&self.core.counters.redelivered, 1);
                }
                acker.fields = fields;
                acker.done = false;
                acker.span = tracing::debug_span!(
                    target: "tickbus::group",
                    "tickbus.delivery",
                    group = %self.core.group,
                    consumer = %self.core.consumer,
                    topic = %acker.info.topic,
                    event_id = %acker.info.event_id,
                    stream_id = %id,
                    deliveries,
                );
                Some(Ok(Delivery { value, acker }))
            }
            Err((reason, error)) => {
                tracing::warn!(
                    group = %self.core.group,
                    topic = %acker.info.topic,
                    entry = %id,
                    reason,
                    %error,
                    "tickbus: dead-lettering an event"
                );
                acker.fields = fields;
                acker.dead_letter(reason, error);
                None
            }
        }
    }

    /// Counters since this consumer started.
    pub fn stats(&self) -> GroupStats {
        self.core.stats()
    }

    /// The state this consumer shares with its I/O thread (the bus keeps a weak
    /// reference, for metrics and the health report).
    pub(crate) fn core(&self) -> &Arc<GroupCore> {
        &self.core
    }

    /// The group's state in Redis: pending and lag per stream, the members.
    ///
    /// # Errors
    ///
    /// The Redis errors (`Unavailable`, `Timeout`), `Closed` after shutdown.
    pub fn info(&self) -> impl Future<Output = Result<GroupInfo>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.core.send(Command::Info(tx));
        async move {
            if !sent {
                return Err(closed());
            }
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
    }

    /// Effectively-once helper: `false` the first time the group asks about
    /// `event` within `ttl`, `true` afterwards (`SET <prefix>:seen:{<group>}:<id> NX
    /// PX ttl`, shared by every member of the group). Ask before the effect;
    /// the window is `ttl`, so choose one longer than the ack wait times
    /// `max_deliveries`. A handler that crashes between asking and its effect
    /// loses that effect on redelivery: use it where the effect and the ack can be
    /// made atomic or idempotent, or use [`SeenWindow`] for an in-process window.
    ///
    /// # Errors
    ///
    /// The Redis errors, `Closed` after shutdown.
    pub fn seen_before(
        &self,
        event: EventId,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let sent = self.core.send(Command::SeenBefore { event, ttl, done });
        async move {
            if !sent {
                return Err(closed());
            }
            rx.await.unwrap_or_else(|_| Err(closed()))
        }
    }

    /// This member's name in the group.
    pub fn name(&self) -> &str {
        &self.core.consumer
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.core.group
    }

    /// Sends the acks already given (bounded by `RedisConfig::shutdown_timeout`),
    /// stops the I/O thread and waits for it. Deliveries still held stay pending.
    /// From async code, [`close`](Consumer::close).
    pub fn shutdown(mut self) {
        self.stop(Join::Wait);
    }

    /// As [`shutdown`](Consumer::shutdown), without blocking the caller's
    /// executor: resolves once the acks already given are sent (or
    /// `shutdown_timeout` has passed) and the I/O thread has ended.
    ///
    /// Dropping a consumer stops it too, but inside an async runtime a drop
    /// does not wait (a destructor must not block an executor thread): the
    /// thread sends the acks and ends by itself.
    pub fn close(self) -> impl Future<Output = ()> + Send + 'static
    where
        T: 'static,
    {
        let stopping = crate::io::off_thread(move || {
            self.shutdown();
            Ok(())
        });
        async move {
            let _ = stopping.await;
        }
    }
}

impl<T> Consumer<T> {
    fn stop(&mut self, join: Join) {
        if let Some(worker) = self.worker.take() {
            worker.stop(&self.core, join);
        }
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.stop(Join::unless_in_runtime());
    }
}

impl<T: DeserializeOwned + Send + 'static> futures_core::Stream for Consumer<T> {
    type Item = Result<Delivery<T>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_delivery(cx)
    }
}

impl<T> Unpin for Consumer<T> {}

/// An in-process window of recently handled event ids, for effectively-once
/// handling within one process: remembers the last `capacity` ids.
///
/// # Examples
///
/// ```
/// use tickbus::EventId;
/// use tickbus::group::SeenWindow;
///
/// let mut seen = SeenWindow::new(2);
/// let [a, b, c] = [1u128, 2, 3].map(|n| EventId::from_uuid(uuid::Uuid::from_u128(n)));
/// assert!(!seen.seen_before(a));
/// assert!(seen.seen_before(a));
/// assert!(!seen.seen_before(b));
/// assert!(!seen.seen_before(c)); // `a` falls out of the window
/// assert!(!seen.seen_before(a));
/// ```
#[derive(Debug, Clone)]
pub struct SeenWindow {
    set: std::collections::HashSet<u128>,
    order: std::collections::VecDeque<u128>,
    capacity: usize,
}

impl SeenWindow {
    /// A window of the last `capacity` ids (at least 1).
    pub fn new(capacity: usize) -> Self {
        SeenWindow {
            set: std::collections::HashSet::with_capacity(capacity.max(1)),
            order: std::collections::VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
        }
    }

    /// `true` if `id` is in the window; otherwise adds it and returns `false`.
    pub fn seen_before(&mut self, id: EventId) -> bool {
        let id = id.as_uuid().as_u128();
        if !self.set.insert(id) {
            return true;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        false
    }
}

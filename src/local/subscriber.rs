//! Typed subscriptions: synchronous, blocking and async receives over one topic.

use std::cell::OnceCell;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use event_listener::EventListener;
use futures_core::Stream;

use super::error::{RecvError, TryRecvError, UndecodableEvent};
use super::ring::{Cursor, Miss, Pinned};
use super::topic::{Stored, TopicShared};
use super::wait::{recv_blocking, SpinYieldPark, WaitStrategy, Waitable};
use crate::event::{Meta, TopicName};

/// An event received by value: the payload and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Event<T> {
    /// The payload, cloned out of the ring.
    pub value: T,
    /// Id, sequence, source and timestamp.
    pub meta: Meta,
}

impl<T> Event<T> {
    /// The payload, without the metadata.
    pub fn into_value(self) -> T {
        self.value
    }
}

/// An event lent out of the ring without copying it (see
/// [`Subscriber::try_recv_ref`] and [`Subscriber::recv_batch`]). Dereferences to
/// the payload.
///
/// While it lives, the slot it points into cannot be overwritten: a publisher that
/// comes round the ring to this slot waits for it. Drop it promptly.
pub struct EventRef<'a, T> {
    /// Always `Some` until dropped.
    lent: Option<Lent<'a, T>>,
    seq: u64,
    /// Built on the first `meta()`: a batch whose handler reads only values
    /// does not pay for it.
    meta: OnceCell<Meta>,
    shared: &'a TopicShared<T>,
}

/// How an [`EventRef`] holds its slot.
enum Lent<'a, T> {
    /// Pinned by `try_recv_ref`: released on drop.
    Pinned(Pinned<'a, Stored<T>>),
    /// Borrowed inside a `recv_batch`, which holds the slot for the whole batch.
    Borrowed(&'a Stored<T>),
}

impl<T> Drop for EventRef<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if let Some(Lent::Pinned(pinned)) = self.lent.take() {
            if pinned.release() {
                // Our backpressure gate moved on: wake publishers waiting for room.
                self.shared.wake_publishers();
            }
        }
    }
}

impl<'a, T> EventRef<'a, T> {
    /// Id, sequence, source and timestamp.
    #[inline]
    pub fn meta(&self) -> &Meta {
        self.meta
            .get_or_init(|| self.shared.meta(self.seq, self.stored()))
    }

    #[inline]
    fn stored(&self) -> &Stored<T> {
        match &self.lent {
            Some(Lent::Pinned(pinned)) => pinned.get(),
            Some(Lent::Borrowed(stored)) => stored,
            None => unreachable!("an EventRef holds its slot until dropped"),
        }
    }

    /// The topic the event was published to.
    pub fn topic(&self) -> &'a TopicName {
        &self.shared.name
    }
}

impl<T> Deref for EventRef<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.stored().value
    }
}

impl<T: fmt::Debug> fmt::Debug for EventRef<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRef")
            .field("value", &**self)
            .field("meta", self.meta())
            .finish()
    }
}

/// A subscription to one topic, created by [`Topic::subscribe`](crate::Topic::subscribe).
///
/// It receives every event published to the topic after it was created, in the
/// topic's order (the same order for every subscriber). Receive it from a pinned
/// thread with [`try_recv`](Subscriber::try_recv) or
/// [`recv_blocking_with`](Subscriber::recv_blocking_with), or from async code with
/// [`recv`](Subscriber::recv) or as a [`Stream`].
///
/// Dropping it unsubscribes; in backpressure mode that releases any publisher it
/// was holding back.
pub struct Subscriber<T> {
    shared: Arc<TopicShared<T>>,
    cursor: Cursor,
    /// The registered wake-up of a pending `poll_next`.
    listener: Option<EventListener>,
    /// Looks before registering a waker (`SubscribeOptions::async_spin_polls`).
    async_spin_polls: u32,
    /// The last undecodable-event report received (`TopicShared::undecodable_count`).
    undecodable_seen: u64,
    /// The ring position of the next report not yet due (0: look it up).
    undecodable_at: u64,
}

impl<T> fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("topic", &self.shared.name)
            .field("next_seq", &self.cursor.next())
            .field("backpressure", &self.cursor.is_gated())
            .finish()
    }
}

impl<T> Drop for Subscriber<T> {
    fn drop(&mut self) {
        let gated = self.cursor.is_gated();
        // Frees the gate, or (single-publisher topic, lag mode) the hazard.
        self.shared.ring.unsubscribe(&mut self.cursor);
        if gated {
            self.shared.wake_publishers();
        }
    }
}

fn miss_to_try<T>(shared: &TopicShared<T>, miss: Miss) -> TryRecvError {
    match miss {
        Miss::Empty => TryRecvError::Empty,
        Miss::Lagged(n) => {
            shared.count_lagged(n);
            TryRecvError::Lagged(n)
        }
        Miss::Closed => TryRecvError::Closed,
    }
}

impl<T: Clone + Send + Sync + 'static> Subscriber<T> {
    pub(crate) fn new(shared: Arc<TopicShared<T>>, cursor: Cursor, async_spin_polls: u32) -> Self {
        if let Some(persist) = &shared.persist {
            persist.subscribed();
        }
        let undecodable_seen = shared.undecodable_count.load(Ordering::Acquire);
        Subscriber {
            undecodable_seen,
            undecodable_at: 0,
            shared,
            cursor,
            listener: None,
            async_spin_polls,
        }
    }

    /// The topic this subscription reads.
    pub fn topic(&self) -> &TopicName {
        &self.shared.name
    }

    /// Registers a wake-up for the next event and marks the slot so its publisher
    /// fires it. `None` means "do not sleep, look again" (the event is there or
    /// nearly, the subscriber lagged, or the topic is closed and drained).
    pub(crate) fn listen_and_mark(&self) -> Option<EventListener> {
        let listener = self.shared.data_ready.listen();
        self.shared
            .ring
            .mark_waiting(&self.cursor)
            .then_some(listener)
    }

    /// The sequence number of the next event this subscriber will receive.
    pub fn next_seq(&self) -> u64 {
        self.cursor.next()
    }

    /// Whether an undecodable remote event may stand before the next event: one
    /// load of a line that is written only when such an event arrives.
    #[inline(always)]
    fn undecodable_due(&self) -> bool {
        self.shared.undecodable_count.load(Ordering::Acquire) != self.undecodable_seen
            && self.cursor.next() >= self.undecodable_at
    }

    /// The report due before the next event, if there is one.
    #[cold]
    #[inline(never)]
    fn take_undecodable(&mut self) -> Option<UndecodableEvent> {
        match self
            .shared
            .next_undecodable(self.undecodable_seen, self.cursor.next())
        {
            Ok((number, report)) => {
                self.undecodable_seen = number;
                self.undecodable_at = 0;
                Some(report)
            }
            Err(u64::MAX) => {
                // Older reports were dropped (the topic keeps the last 1 024).
                self.undecodable_seen = self.shared.undecodable_count.load(Ordering::Acquire);
                None
            }
            Err(position) => {
                self.undecodable_at = position;
                None
            }
        }
    }

    /// Wakes publishers held back by this subscriber's gate, if it moved.
    #[inline]
    fn release_publishers(&mut self) {
        if self.cursor.take_gate_moved() {
            self.shared.wake_publishers();
        }
    }

    /// Lends the next event without copying it.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing new has been published,
    /// [`TryRecvError::Lagged`] when events were overwritten before this subscriber
    /// read them (it then continues from the oldest event held), and
    /// [`TryRecvError::Closed`] once the bus is shut down and everything is read.
    ///
    /// # Examples
    ///
    /// ```
    /// # let bus = tickbus::Bus::builder().build()?;
    /// let book = bus.topic::<[f64; 8]>("orderbook:btc")?;
    /// let mut sub = book.subscribe();
    /// book.publish([1.0; 8])?;
    /// let best_bid = sub.try_recv_ref()?[0]; // reads inside the ring
    /// assert_eq!(best_bid, 1.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn try_recv_ref(&mut self) -> Result<EventRef<'_, T>, TryRecvError> {
        if self.undecodable_due() {
            if let Some(report) = self.take_undecodable() {
                return Err(TryRecvError::Undecodable(report));
            }
        }
        let seq = self.cursor.next();
        let shared = &*self.shared;
        match shared.ring.try_pin(&mut self.cursor) {
            Ok(pinned) => Ok(EventRef {
                lent: Some(Lent::Pinned(pinned)),
                seq,
                meta: OnceCell::new(),
                shared,
            }),
            Err((miss, gate_moved)) => {
                if gate_moved {
                    // The subscriber ran dry and published its gate.
                    shared.wake_publishers();
                }
                Err(miss_to_try(shared, miss))
            }
        }
    }

    /// Receives the next event, cloned out of the ring, without waiting.
    ///
    /// # Errors
    ///
    /// As [`try_recv_ref`](Subscriber::try_recv_ref).
    #[inline(always)]
    pub fn try_recv(&mut self) -> Result<Event<T>, TryRecvError> {
        if self.undecodable_due() {
            if let Some(report) = self.take_undecodable() {
                return Err(TryRecvError::Undecodable(report));
            }
        }
        let seq = self.cursor.next();
        let shared = &self.shared;
        let result = shared.ring.try_read(&mut self.cursor, |stored| Event {
            value: stored.value.clone(),
            meta: shared.meta(seq, stored),
        });
        self.release_publishers();
        result.map_err(|miss| miss_to_try(&self.shared, miss))
    }

    /// Receives up to `max` events in place, in order, calling `handle` with each,
    /// without waiting; returns how many were handled (at least one).
    ///
    /// The fast receive: no clone, and on a topic with an exclusive
    /// [`Publisher`](crate::Publisher) one `Acquire` load of the published count
    /// for the whole batch, after which every event is a plain read of its slot
    /// (the LMAX Disruptor's batch consumer). On other topics each event is pinned
    /// as by [`try_recv_ref`](Subscriber::try_recv_ref).
    ///
    /// The batch holds its slots until `handle` returns for the last one: a
    /// publisher that comes round the ring to them waits. Keep `handle` short, or
    /// `max` small.
    ///
    /// # Errors
    ///
    /// As [`try_recv_ref`](Subscriber::try_recv_ref), only when no event was
    /// handled: an overrun or the end found after some events is reported by the
    /// next call. `max == 0` handles nothing and returns `Ok(0)`.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, TopicOptions};
    ///
    /// let bus = Bus::builder().build()?;
    /// let options = TopicOptions { exclusive_publisher: true, ..Default::default() };
    /// let fills = bus.topic_with::<(u32, f64)>("execution:fill", options)?;
    /// let mut position = fills.subscribe();
    /// fills.publisher()?.publish_batch([(1, 2.0), (1, -0.5), (2, 1.0)])?;
    ///
    /// let mut net = 0.0;
    /// let handled = position.recv_batch(100, |fill| {
    ///     if fill.0 == 1 {
    ///         net += fill.1;
    ///     }
    ///     assert!(fill.meta().seq() < 3);
    /// })?;
    /// assert_eq!((handled, net), (3, 1.5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_batch(
        &mut self,
        max: usize,
        mut handle: impl FnMut(EventRef<'_, T>),
    ) -> Result<usize, TryRecvError> {
        if max == 0 {
            return Ok(0);
        }
        if self.undecodable_due() {
            if let Some(report) = self.take_undecodable() {
                return Err(TryRecvError::Undecodable(report));
            }
        }
        let shared = &*self.shared;
        // Undecodable reports stand between events: stop the batch at the next one.
        let max = if shared.undecodable_count.load(Ordering::Relaxed) == self.undecodable_seen {
            max as u64
        } else {
            self.undecodable_at
                .saturating_sub(self.cursor.next())
                .clamp(1, max as u64)
        };
        let result = shared
            .ring
            .read_batch(&mut self.cursor, max, |seq, stored| {
                handle(EventRef {
                    lent: Some(Lent::Borrowed(stored)),
                    seq,
                    meta: OnceCell::new(),
                    shared,
                });
            });
        self.release_publishers();
        match result {
            Ok(count) => Ok(count as usize),
            Err(miss) => Err(miss_to_try(&self.shared, miss)),
        }
    }

    /// [`recv_batch`](Subscriber::recv_batch), waiting for the first event with
    /// the given strategy.
    ///
    /// # Errors
    ///
    /// As [`recv_blocking`](Subscriber::recv_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, BusySpin, TopicOptions};
    ///
    /// let bus = Bus::builder().build()?;
    /// let options = TopicOptions { exclusive_publisher: true, ..Default::default() };
    /// let ticks = bus.topic_with::<u64>("md:tick", options)?;
    /// let mut sub = ticks.subscribe();
    /// let mut feed = ticks.publisher()?;
    /// let handler = std::thread::spawn(move || feed.publish_batch(1..=10));
    /// let mut sum = 0;
    /// while sum < 55 {
    ///     sub.recv_batch_blocking_with(16, &mut BusySpin, |tick| sum += *tick)?;
    /// }
    /// assert_eq!(handler.join().unwrap()?, 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn recv_batch_blocking_with<W: WaitStrategy + ?Sized>(
        &mut self,
        max: usize,
        wait: &mut W,
        handle: impl FnMut(EventRef<'_, T>),
    ) -> Result<usize, RecvError> {
        let mut batch = Batch {
            subscriber: self,
            max: max.max(1),
            handle,
        };
        recv_blocking(&mut batch, wait)
    }

    /// [`recv_batch`](Subscriber::recv_batch), waiting asynchronously for the first
    /// event. Cancel safe: a dropped future handled nothing.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscriber::recv).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let bus = tickbus::Bus::builder().build()?;
    /// let pnl = bus.topic::<f64>("pnl:calculated")?;
    /// let mut sub = pnl.subscribe();
    /// pnl.publish(1.5)?;
    /// pnl.publish(-0.5)?;
    /// let mut total = 0.0;
    /// let handled = sub.recv_batch_async(8, |value| total += *value).await?;
    /// assert_eq!((handled, total), (2, 1.0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv_batch_async(
        &mut self,
        max: usize,
        mut handle: impl FnMut(EventRef<'_, T>),
    ) -> Result<usize, RecvError> {
        let max = max.max(1);
        std::future::poll_fn(|cx| {
            self.poll_with(cx, &mut |subscriber: &mut Self| {
                subscriber.recv_batch(max, &mut handle)
            })
        })
        .await
    }

    /// Receives the next event, waiting with the default [`SpinYieldPark`] strategy.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] and [`RecvError::Closed`], as for
    /// [`try_recv`](Subscriber::try_recv).
    pub fn recv_blocking(&mut self) -> Result<Event<T>, RecvError> {
        self.recv_blocking_with(&mut SpinYieldPark::default())
    }

    /// Receives the next event, waiting with the given strategy. For threads that
    /// must not touch an async runtime.
    ///
    /// # Errors
    ///
    /// As [`recv_blocking`](Subscriber::recv_blocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use tickbus::{Bus, BusySpin};
    ///
    /// let bus = Bus::builder().build()?;
    /// let ticks = bus.topic::<u64>("md:tick")?;
    /// let mut sub = ticks.subscribe();
    /// let publisher = std::thread::spawn({
    ///     let ticks = ticks.clone();
    ///     move || ticks.publish(42)
    /// });
    /// assert_eq!(sub.recv_blocking_with(&mut BusySpin)?.value, 42);
    /// publisher.join().unwrap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_blocking_with<W: WaitStrategy + ?Sized>(
        &mut self,
        wait: &mut W,
    ) -> Result<Event<T>, RecvError> {
        recv_blocking(self, wait)
    }

    /// Receives the next event, waiting asynchronously. Runtime-agnostic: it needs
    /// no tokio, only a waker.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no event was
    /// taken, and the next receive returns it.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] and [`RecvError::Closed`], as for
    /// [`try_recv`](Subscriber::try_recv).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tickbus::{Bus, RecvError};
    ///
    /// let bus = Bus::builder().build()?;
    /// let fills = bus.topic::<u32>("order:filled")?;
    /// let mut sub = fills.subscribe();
    /// fills.publish(7)?;
    /// bus.shutdown();
    /// assert_eq!(sub.recv().await?.value, 7); // published before shutdown: delivered
    /// assert_eq!(sub.recv().await, Err(RecvError::Closed));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Result<Event<T>, RecvError> {
        RecvFuture { subscriber: self }.await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Event<T>, RecvError>> {
        self.poll_with(cx, &mut Self::try_recv)
    }

    /// Polls a receive (`try_once`: one event, or a batch) with the async spin,
    /// then a registered wake-up.
    fn poll_with<R>(
        &mut self,
        cx: &mut Context<'_>,
        try_once: &mut impl FnMut(&mut Self) -> Result<R, TryRecvError>,
    ) -> Poll<Result<R, RecvError>> {
        if self.listener.is_none() {
            // Not yet registered: look a few more times before paying for a park.
            for _ in 0..self.async_spin_polls {
                match try_once(self) {
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Ok(event) => return Poll::Ready(Ok(event)),
                    Err(TryRecvError::Lagged(n)) => return Poll::Ready(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Closed) => return Poll::Ready(Err(RecvError::Closed)),
                    Err(TryRecvError::Undecodable(event)) => {
                        return Poll::Ready(Err(RecvError::Undecodable(event)))
                    }
                }
            }
        }
        loop {
            match try_once(self) {
                Ok(event) => {
                    self.listener = None;
                    return Poll::Ready(Ok(event));
                }
                Err(TryRecvError::Lagged(n)) => {
                    self.listener = None;
                    return Poll::Ready(Err(RecvError::Lagged(n)));
                }
                Err(TryRecvError::Closed) => {
                    self.listener = None;
                    return Poll::Ready(Err(RecvError::Closed));
                }
                Err(TryRecvError::Undecodable(event)) => {
                    self.listener = None;
                    return Poll::Ready(Err(RecvError::Undecodable(event)));
                }
                Err(TryRecvError::Empty) => {}
            }
            match &mut self.listener {
                None => match self.listen_and_mark() {
                    // Registered: look again before sleeping.
                    Some(listener) => self.listener = Some(listener),
                    // The event is being written: let others run, then look again.
                    None => {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                },
                Some(listener) => match Pin::new(listener).poll(cx) {
                    Poll::Ready(()) => self.listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Waitable for Subscriber<T> {
    type Item = Event<T>;
    type Wakeup = Option<EventListener>;
    #[inline(always)]
    fn try_once(&mut self) -> Result<Event<T>, TryRecvError> {
        self.try_recv()
    }
    fn register(&self) -> Option<EventListener> {
        self.listen_and_mark()
    }
}

/// A batch receive as something [`recv_blocking`] can wait on.
struct Batch<'s, T, F> {
    subscriber: &'s mut Subscriber<T>,
    max: usize,
    handle: F,
}

impl<T: Clone + Send + Sync + 'static, F: FnMut(EventRef<'_, T>)> Waitable for Batch<'_, T, F> {
    type Item = usize;
    type Wakeup = Option<EventListener>;
    #[inline(always)]
    fn try_once(&mut self) -> Result<usize, TryRecvError> {
        self.subscriber.recv_batch(self.max, &mut self.handle)
    }
    fn register(&self) -> Option<EventListener> {
        self.subscriber.listen_and_mark()
    }
}

struct RecvFuture<'a, T> {
    subscriber: &'a mut Subscriber<T>,
}

impl<T: Clone + Send + Sync + 'static> Future for RecvFuture<'_, T> {
    type Output = Result<Event<T>, RecvError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.subscriber.poll_recv(cx)
    }
}

/// The subscriber as a `Stream` of events. A lag is an item,
/// `Err(RecvError::Lagged(n))`, and the stream goes on; it ends after shutdown,
/// once everything published before it has been yielded.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
///
/// let bus = tickbus::Bus::builder().build()?;
/// let pnl = bus.topic::<f64>("pnl:calculated")?;
/// let sub = pnl.subscribe();
/// for value in [1.5, -0.5] {
///     pnl.publish(value)?;
/// }
/// bus.shutdown();
/// let total: f64 = sub.map(|event| event.unwrap().value).collect::<Vec<_>>().await.iter().sum();
/// assert_eq!(total, 1.0);
/// # Ok(())
/// # }
/// ```
impl<T: Clone + Send + Sync + 'static> Stream for Subscriber<T> {
    type Item = Result<Event<T>, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().poll_recv(cx) {
            Poll::Ready(Err(RecvError::Closed)) => Poll::Ready(None),
            Poll::Ready(other) => Poll::Ready(Some(other)),
            Poll::Pending => Poll::Pending,
        }
    }
}

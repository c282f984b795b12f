//! Pattern subscriptions: type-erased events from every topic matching a pattern,
//! including topics created after the subscription.

use std::any::Any;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use event_listener::{Event as Notify, EventListener};
use futures_core::Stream;

use super::error::{RecvError, TryRecvError, UndecodableEvent};
use super::subscriber::Subscriber;
use super::topic::TopicShared;
use super::wait::{recv_blocking, SpinYieldPark, WaitStrategy, Waitable, Wakeup};
use crate::config::SubscribeOptions;
use crate::error::Result;
use crate::event::{Meta, Pattern, TopicName};
use crate::sync::{AtomicBool, Ordering};

/// An event of any type, received by a [`PatternSubscriber`]: downcast it to the
/// topic's payload type.
///
/// Receiving it clones the payload into a `Box` (one allocation); use
/// [`PatternSubscriber::try_recv_with`] to look at events in the ring without one.
pub struct AnyEvent {
    /// The topic the event was published to.
    pub topic: TopicName,
    /// Id, sequence, source and timestamp.
    pub meta: Meta,
    value: Box<dyn Any + Send>,
    type_name: &'static str,
}

impl AnyEvent {
    /// The payload, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref()
    }

    /// The payload as a `T`, or the event back if it is of another type.
    ///
    /// # Errors
    ///
    /// The unchanged event, when its payload is not a `T`.
    pub fn downcast<T: 'static>(self) -> std::result::Result<T, AnyEvent> {
        if self.value.is::<T>() {
            match self.value.downcast::<T>() {
                Ok(value) => Ok(*value),
                Err(_) => unreachable!("checked with `is` above"),
            }
        } else {
            Err(self)
        }
    }

    /// The Rust type name of the payload (for logs; not stable across compilers).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEvent")
            .field("topic", &self.topic)
            .field("meta", &self.meta)
            .field("type", &self.type_name)
            .finish()
    }
}

/// An event of any type, lent out of the ring to the closure of
/// [`PatternSubscriber::try_recv_with`].
#[derive(Clone, Copy)]
pub struct AnyEventRef<'a> {
    /// The topic the event was published to.
    pub topic: &'a TopicName,
    /// Id, sequence, source, timestamp and headers.
    pub meta: &'a Meta,
    value: &'a (dyn Any + Send + Sync),
    type_name: &'static str,
}

impl<'a> AnyEventRef<'a> {
    /// The payload, if it is a `T`.
    pub fn downcast_ref<T: 'static>(&self) -> Option<&'a T> {
        self.value.downcast_ref()
    }

    /// The Rust type name of the payload.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl fmt::Debug for AnyEventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEventRef")
            .field("topic", &self.topic)
            .field("meta", &self.meta)
            .field("type", &self.type_name)
            .finish()
    }
}

/// One topic's subscription with its payload type erased.
pub(crate) trait ErasedSubscriber: Send {
    fn try_recv_any(&mut self) -> std::result::Result<AnyEvent, TryRecvError>;
    fn try_recv_with(
        &mut self,
        read: &mut dyn FnMut(AnyEventRef<'_>),
    ) -> std::result::Result<(), TryRecvError>;
    /// See [`Subscriber::listen_and_mark`].
    fn listen_and_mark(&self) -> Option<EventListener>;
}

impl<T: Clone + Send + Sync + 'static> ErasedSubscriber for Subscriber<T> {
    fn try_recv_any(&mut self) -> std::result::Result<AnyEvent, TryRecvError> {
        let event = self.try_recv()?;
        Ok(AnyEvent {
            topic: self.topic().clone(),
            meta: event.meta,
            value: Box::new(event.value),
            type_name: std::any::type_name::<T>(),
        })
    }

    fn try_recv_with(
        &mut self,
        read: &mut dyn FnMut(AnyEventRef<'_>),
    ) -> std::result::Result<(), TryRecvError> {
        // The name is borrowed from the topic, not cloned: no reference-count
        // traffic per event.
        let event = self.try_recv_ref()?;
        read(AnyEventRef {
            topic: event.topic(),
            meta: event.meta(),
            value: &*event,
            type_name: std::any::type_name::<T>(),
        });
        Ok(())
    }

    fn listen_and_mark(&self) -> Option<EventListener> {
        Subscriber::listen_and_mark(self)
    }
}

/// State shared between a pattern subscription and the bus registry.
pub(crate) struct PatternShared {
    pub(crate) pattern: Pattern,
    pub(crate) options: SubscribeOptions,
    /// Subscriptions to topics created after the pattern subscribed, not yet taken
    /// by the subscriber. Touched only when a topic is created (never per event).
    added: Mutex<Vec<Box<dyn ErasedSubscriber>>>,
    has_added: AtomicBool,
    /// Set once the bus has shut down (no topic can be added any more).
    closed: AtomicBool,
    /// Notified when a topic is added or the bus shuts down.
    changed: Notify,
}

impl PatternShared {
    pub(crate) fn new(pattern: Pattern, options: SubscribeOptions) -> Self {
        PatternShared {
            pattern,
            options,
            added: Mutex::new(Vec::new()),
            has_added: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// Hands a new topic's subscription to the pattern subscriber.
    pub(crate) fn add(&self, subscriber: Box<dyn ErasedSubscriber>) {
        self.added
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(subscriber);
        self.has_added.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify(usize::MAX);
    }
}

/// A subscription to every topic whose name matches a [`Pattern`], including
/// topics created after it, receiving type-erased events.
///
/// Created by [`Bus::subscribe_pattern`](crate::Bus::subscribe_pattern). Events of
/// one topic arrive in that topic's order; between topics, it takes from each in
/// turn. It starts at each existing topic's next event and at the first event of a
/// topic created later.
///
/// # Examples
///
/// ```
/// use tickbus::Bus;
///
/// let bus = Bus::builder().build()?;
/// let mut audit = bus.subscribe_pattern("trading:>")?;
/// // Created after the subscription, and still seen:
/// let starts = bus.topic::<u64>("trading:cycle:start")?;
/// starts.publish(17)?;
///
/// let event = audit.try_recv()?;
/// assert_eq!(event.topic.as_str(), "trading:cycle:start");
/// assert_eq!(event.downcast_ref::<u64>(), Some(&17));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PatternSubscriber {
    shared: Arc<PatternShared>,
    subscribers: Vec<Box<dyn ErasedSubscriber>>,
    /// Where the next round-robin look starts.
    start: usize,
    /// Wake-ups registered by a pending async receive or `poll_next`.
    listeners: Option<Vec<EventListener>>,
}

impl fmt::Debug for PatternSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatternSubscriber")
            .field("pattern", &self.shared.pattern)
            .field("topics", &self.subscribers.len())
            .finish()
    }
}

/// The outcome of one look over all topics.
enum Look<R> {
    Got(R),
    Lagged(u64),
    Undecodable(UndecodableEvent),
    Empty,
    Closed,
}

impl PatternSubscriber {
    pub(crate) fn new(
        shared: Arc<PatternShared>,
        subscribers: Vec<Box<dyn ErasedSubscriber>>,
    ) -> Self {
        PatternSubscriber {
            shared,
            subscribers,
            start: 0,
            listeners: None,
        }
    }

    /// The pattern.
    pub fn pattern(&self) -> &Pattern {
        &self.shared.pattern
    }

    /// How many topics this subscription currently reads.
    pub fn topic_count(&mut self) -> usize {
        self.take_added();
        self.subscribers.len()
    }

    fn take_added(&mut self) {
        if self.shared.has_added.swap(false, Ordering::Acquire) {
            let mut added = self
                .shared
                .added
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.subscribers.append(&mut added);
        }
    }

    /// Looks at every topic once, starting after the last one that delivered.
    fn look<R>(
        &mut self,
        mut take: impl FnMut(&mut dyn ErasedSubscriber) -> std::result::Result<R, TryRecvError>,
    ) -> Look<R> {
        // Closed is read before the last take of new topics: once it is set no topic
        // is added, so an empty look after it is final.
        let closed = self.shared.closed.load(Ordering::Acquire);
        self.take_added();
        let count = self.subscribers.len();
        let mut index = 0;
        while index < count.min(self.subscribers.len()) {
            let at = (self.start + index) % self.subscribers.len();
            match take(&mut *self.subscribers[at]) {
                Ok(value) => {
                    self.start = at + 1;
                    return Look::Got(value);
                }
                Err(TryRecvError::Lagged(n)) => {
                    self.start = at;
                    return Look::Lagged(n);
                }
                Err(TryRecvError::Undecodable(event)) => {
                    self.start = at + 1;
                    return Look::Undecodable(event);
                }
                Err(TryRecvError::Closed) => {
                    // Drained and closed: forget it.
                    drop(self.subscribers.swap_remove(at));
                }
                Err(TryRecvError::Empty) => index += 1,
            }
        }
        if closed && self.subscribers.is_empty() {
            Look::Closed
        } else {
            Look::Empty
        }
    }

    /// Receives the next event from any matching topic, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`], [`TryRecvError::Lagged`] (for one of the topics; the
    /// subscription continues), or [`TryRecvError::Closed`] once the bus is shut
    /// down and every topic is drained.
    pub fn try_recv(&mut self) -> std::result::Result<AnyEvent, TryRecvError> {
        match self.look(|subscriber| subscriber.try_recv_any()) {
            Look::Got(event) => Ok(event),
            Look::Lagged(n) => Err(TryRecvError::Lagged(n)),
            Look::Undecodable(event) => Err(TryRecvError::Undecodable(event)),
            Look::Empty => Err(TryRecvError::Empty),
            Look::Closed => Err(TryRecvError::Closed),
        }
    }

    /// Lends the next event from any matching topic to `read`, without copying or
    /// allocating, and returns what `read` returns.
    ///
    /// # Errors
    ///
    /// As [`try_recv`](PatternSubscriber::try_recv).
    ///
    /// # Examples
    ///
    /// ```
    /// # let bus = tickbus::Bus::builder().build()?;
    /// let mut all = bus.subscribe_pattern(">")?;
    /// bus.topic::<f64>("risk:calculated")?.publish(0.25)?;
    /// let value = all.try_recv_with(|event| event.downcast_ref::<f64>().copied())?;
    /// assert_eq!(value, Some(0.25));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_recv_with<R>(
        &mut self,
        read: impl FnOnce(AnyEventRef<'_>) -> R,
    ) -> std::result::Result<R, TryRecvError> {
        let mut read = Some(read);
        let mut result = None;
        let look = self.look(|subscriber| {
            subscriber.try_recv_with(&mut |event| {
                if let Some(read) = read.take() {
                    result = Some(read(event));
                }
            })
        });
        match look {
            Look::Got(()) => match result {
                Some(result) => Ok(result),
                None => unreachable!("a delivered event calls the reader once"),
            },
            Look::Lagged(n) => Err(TryRecvError::Lagged(n)),
            Look::Undecodable(event) => Err(TryRecvError::Undecodable(event)),
            Look::Empty => Err(TryRecvError::Empty),
            Look::Closed => Err(TryRecvError::Closed),
        }
    }

    /// Wake-ups for every topic and for "topic added"; `None` when some topic has
    /// an event (nearly) there, so the caller must look again instead of sleeping.
    fn listeners(&self) -> Option<Vec<EventListener>> {
        let mut listeners = Vec::with_capacity(self.subscribers.len() + 1);
        listeners.push(self.shared.changed.listen());
        if self.shared.has_added.load(Ordering::Acquire)
            || self.shared.closed.load(Ordering::Acquire)
        {
            return None;
        }
        for subscriber in &self.subscribers {
            listeners.push(subscriber.listen_and_mark()?);
        }
        Some(listeners)
    }

    /// Receives the next event, waiting with the default [`SpinYieldPark`] strategy.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] or [`RecvError::Closed`].
    pub fn recv_blocking(&mut self) -> std::result::Result<AnyEvent, RecvError> {
        self.recv_blocking_with(&mut SpinYieldPark::default())
    }

    /// Receives the next event, waiting with the given strategy.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] or [`RecvError::Closed`].
    pub fn recv_blocking_with<W: WaitStrategy + ?Sized>(
        &mut self,
        wait: &mut W,
    ) -> std::result::Result<AnyEvent, RecvError> {
        recv_blocking(self, wait)
    }

    /// Receives the next event, waiting asynchronously.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no event is taken unless it is returned.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] or [`RecvError::Closed`].
    pub async fn recv(&mut self) -> std::result::Result<AnyEvent, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<AnyEvent, RecvError>> {
        loop {
            let ready = match self.try_recv() {
                Ok(event) => Ok(event),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Undecodable(event)) => Err(RecvError::Undecodable(event)),
                Err(TryRecvError::Empty) => match &mut self.listeners {
                    None => match self.listeners() {
                        // Registered: look again before sleeping.
                        Some(listeners) => {
                            self.listeners = Some(listeners);
                            continue;
                        }
                        // An event is being written: let others run, then look again.
                        None => {
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    },
                    Some(listeners) => {
                        let fired = listeners
                            .iter_mut()
                            .any(|listener| Pin::new(listener).poll(cx).is_ready());
                        if !fired {
                            return Poll::Pending;
                        }
                        self.listeners = None;
                        continue;
                    }
                },
            };
            self.listeners = None;
            return Poll::Ready(ready);
        }
    }
}

impl Waitable for PatternSubscriber {
    type Item = AnyEvent;
    type Wakeup = AnyOf;
    fn try_once(&mut self) -> std::result::Result<AnyEvent, TryRecvError> {
        self.try_recv()
    }
    fn register(&self) -> AnyOf {
        AnyOf(self.listeners())
    }
}

/// Wake-ups of every topic of a pattern subscription, and of its "topic added";
/// `None`: look again.
pub(crate) struct AnyOf(Option<Vec<EventListener>>);

impl Wakeup for AnyOf {
    fn block(self) {
        if let Some(mut listeners) = self.0 {
            park_until_any(&mut listeners);
        }
    }
}

/// Parks the thread until one of `listeners` fires.
fn park_until_any(listeners: &mut [EventListener]) {
    struct Unparker(Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if listeners
            .iter_mut()
            .any(|listener| Pin::new(listener).poll(&mut cx).is_ready())
        {
            return;
        }
        thread::park();
    }
}

impl Stream for PatternSubscriber {
    type Item = std::result::Result<AnyEvent, RecvError>;

    /// Yields events from every matching topic; a lag is an item; ends after
    /// shutdown once drained.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().poll_recv(cx) {
            Poll::Ready(Err(RecvError::Closed)) => Poll::Ready(None),
            Poll::Ready(other) => Poll::Ready(Some(other)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Creates the erased subscription a pattern keeps for one topic.
pub(crate) fn subscribe_erased<T: Clone + Send + Sync + 'static>(
    topic: &Arc<TopicShared<T>>,
    options: SubscribeOptions,
) -> Result<Box<dyn ErasedSubscriber>> {
    let handle = super::topic::Topic {
        shared: Arc::clone(topic),
    };
    Ok(Box::new(handle.subscribe_with(options)?))
}

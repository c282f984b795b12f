//! The exclusive publisher of a single-publisher topic.

use std::cell::Cell;
use std::fmt;
use std::iter::Peekable;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::sync::Arc;

use super::error::{PublishError, TryPublishError};
use super::ring::{ClaimError, Claimer, Taken};
use super::topic::{Stored, TopicShared};
use crate::error::{Error, ErrorKind, Result};
use crate::event::ExtraSlot;

/// The one publisher of a topic created with
/// [`TopicOptions::exclusive_publisher`](crate::TopicOptions::exclusive_publisher),
/// from [`Topic::publisher`](crate::Topic::publisher).
///
/// It publishes as the single producer of the LMAX Disruptor does: the next
/// sequence is a plain field of this handle, values go into their slots with plain
/// stores, and one `Release` store of the published count makes a whole batch
/// visible. No atomic read-modify-write, no fence. Subscribers keep their meaning:
/// a [`Backpressure`](crate::SlowPolicy::Backpressure) subscriber still holds this
/// publisher back and never loses an event; a [`Lag`](crate::SlowPolicy::Lag)
/// subscriber is never waited for (beyond a clone in progress) and learns
/// exactly how many events it missed.
///
/// `Send` but neither `Clone` nor `Sync`: move it to the thread that feeds the
/// topic. While it lives, [`Topic::publish`](crate::Topic::publish) on the topic
/// is refused with [`ErrorKind::ExclusivePublisher`]; drop it to give the role
/// back.
///
/// # Examples
///
/// ```
/// use tickbus::{Bus, SlowPolicy, SubscribeOptions, TopicOptions};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// struct Quote { bid: f64, ask: f64 }
///
/// let bus = Bus::builder().build()?;
/// let options = TopicOptions { exclusive_publisher: true, ..Default::default() };
/// let quotes = bus.topic_with::<Quote>("md:quote:btc", options)?;
/// let mut strategy = quotes.subscribe_with(SubscribeOptions::with_policy(SlowPolicy::Backpressure))?;
///
/// let mut feed = quotes.publisher()?; // the feed handler's thread owns it
/// feed.publish(Quote { bid: 99.5, ask: 100.5 })?;
/// feed.publish_batch([Quote { bid: 99.0, ask: 100.0 }, Quote { bid: 98.5, ask: 99.5 }])?;
///
/// let mut spread = Vec::new();
/// strategy.recv_batch(64, |quote| spread.push(quote.ask - quote.bid))?;
/// assert_eq!(spread, [1.0, 1.0, 1.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// It cannot be shared between threads, nor cloned:
///
/// ```compile_fail
/// fn shared<T: Sync>(_: &T) {}
/// # let bus = tickbus::Bus::builder().build().unwrap();
/// # let options = tickbus::TopicOptions { exclusive_publisher: true, ..Default::default() };
/// let publisher = bus.topic_with::<u64>("md:tick", options).unwrap().publisher().unwrap();
/// shared(&publisher);
/// ```
///
/// ```compile_fail
/// # let bus = tickbus::Bus::builder().build().unwrap();
/// # let options = tickbus::TopicOptions { exclusive_publisher: true, ..Default::default() };
/// let publisher = bus.topic_with::<u64>("md:tick", options).unwrap().publisher().unwrap();
/// let second = publisher.clone();
/// ```
pub struct Publisher<T> {
    shared: Arc<TopicShared<T>>,
    /// `Some` until dropped.
    claimer: Option<Claimer>,
    /// Not `Sync`: the claimer's cursor is plain data.
    _not_sync: PhantomData<Cell<()>>,
}

impl<T> fmt::Debug for Publisher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.shared.name)
            .field("claimer", &self.claimer)
            .finish()
    }
}

impl<T> Drop for Publisher<T> {
    fn drop(&mut self) {
        if let Some(claimer) = self.claimer.take() {
            self.shared.ring.return_claimer(claimer);
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Publisher<T> {
    /// Takes the topic's publisher role.
    pub(crate) fn new(shared: Arc<TopicShared<T>>) -> Result<Self> {
        if !shared.ring.is_exclusive() {
            return Err(Error::new(
                ErrorKind::ExclusivePublisher,
                format!(
                    "topic {} has shared publishers: create it with \
                     TopicOptions {{ exclusive_publisher: true, .. }} for a Publisher",
                    shared.name
                ),
            ));
        }
        let mut attempt = 0;
        let claimer = loop {
            match shared.ring.take_claimer(true) {
                Ok(claimer) => break claimer,
                Err(Taken::Held) => {
                    return Err(Error::new(
                        ErrorKind::ExclusivePublisher,
                        format!("topic {} already has its Publisher", shared.name),
                    ))
                }
                // A publish through the topic handle: done in a moment.
                Err(Taken::Once) => crate::sync::backoff(&mut attempt),
            }
        };
        Ok(Publisher {
            shared,
            claimer: Some(claimer),
            _not_sync: PhantomData,
        })
    }

    /// The sequence number the next published event gets.
    pub fn next_seq(&self) -> u64 {
        self.claimer.as_ref().map_or(0, Claimer::next)
    }

    /// Publishes what `next_value` yields, up to `max`, waiting for room as
    /// `wait` says; returns how many.
    #[inline(always)]
    fn publish_some(
        &mut self,
        max: u64,
        wait: bool,
        next_value: impl FnMut() -> Option<T>,
    ) -> std::result::Result<u64, ClaimError> {
        // Borrow the two fields apart: an `Arc` clone here would be two atomic
        // read-modify-writes per publish on a line the subscribers read.
        let shared = &*self.shared;
        let Some(claimer) = self.claimer.as_mut() else {
            unreachable!("the claimer is taken only on drop")
        };
        let room = match shared.ring.claimable(claimer) {
            Ok(room) => room,
            Err(ClaimError::Full) if wait => {
                shared.wait_for_room(|| match shared.ring.claimable(claimer) {
                    Err(ClaimError::Full) => ControlFlow::Continue(()),
                    other => ControlFlow::Break(other),
                })?
            }
            Err(error) => return Err(error),
        };
        // One clock reading per batch: the events of a batch are published at once.
        let timestamp_ns = shared.clock.now_ns();
        let mut next_value = next_value;
        let first = claimer.next();
        let (count, wake) = shared.ring.publish_exclusive(claimer, room.min(max), || {
            next_value().map(|value| Stored {
                value,
                timestamp_ns,
                extra: ExtraSlot::NONE,
            })
        })?;
        if wake {
            shared.data_ready.notify(usize::MAX);
        }
        #[cfg(feature = "tracing")]
        for seq in first..first + count {
            shared.trace_publish(seq, timestamp_ns);
        }
        #[cfg(not(feature = "tracing"))]
        let _ = first;
        Ok(count)
    }

    /// Publishes `value` and returns its sequence number, waiting (spinning,
    /// yielding, then parked) while a backpressure subscriber has not read the
    /// event it would overwrite.
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`] with the value once the topic is closed.
    #[inline]
    pub fn publish(&mut self, value: T) -> std::result::Result<u64, PublishError<T>> {
        let seq = self.next_seq();
        let mut value = Some(value);
        match self.publish_some(1, true, || value.take()) {
            Ok(_) => Ok(seq),
            Err(_) => match value {
                Some(value) => Err(PublishError::Closed(value)),
                None => unreachable!("a refused publish takes no value"),
            },
        }
    }

    /// Publishes `value` unless that would have to wait for a backpressure
    /// subscriber.
    ///
    /// # Errors
    ///
    /// [`TryPublishError::Full`] or [`TryPublishError::Closed`], with the value.
    #[inline]
    pub fn try_publish(&mut self, value: T) -> std::result::Result<u64, TryPublishError<T>> {
        let seq = self.next_seq();
        let mut value = Some(value);
        let result = self.publish_some(1, false, || value.take());
        match (result, value) {
            (Ok(_), None) => Ok(seq),
            (Err(ClaimError::Full), Some(value)) => Err(TryPublishError::Full(value)),
            (Err(_), Some(value)) => Err(TryPublishError::Closed(value)),
            _ => unreachable!("a value is taken exactly when it is published"),
        }
    }

    /// Publishes every value of `values` in order, as few stores of the
    /// published count as the ring's room allows (one, when it has room for all):
    /// subscribers see the batch at once. Waits for room as
    /// [`publish`](Publisher::publish) does. Returns how many were published.
    ///
    /// A value is taken from the iterator only when it is published, so on error
    /// nothing is lost: the iterator comes back with the rest.
    ///
    /// # Errors
    ///
    /// [`PublishError::Closed`] with the iterator (the values not published) once
    /// the topic is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// # use tickbus::{Bus, TopicOptions};
    /// # let bus = Bus::builder().build()?;
    /// let options = TopicOptions { exclusive_publisher: true, ..Default::default() };
    /// let trades = bus.topic_with::<u64>("md:trade", options)?;
    /// let mut tape = trades.subscribe();
    /// let mut publisher = trades.publisher()?;
    /// assert_eq!(publisher.publish_batch(0..100)?, 100);
    /// trades.close();
    /// let rest = publisher.publish_batch(100..200).unwrap_err().into_inner();
    /// assert_eq!(rest.count(), 100, "nothing was taken from a closed topic");
    /// let mut sum = 0;
    /// while let Ok(n) = tape.recv_batch(32, |trade| sum += *trade) {
    ///     assert!(n <= 32);
    /// }
    /// assert_eq!(sum, (0..100).sum::<u64>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn publish_batch<I>(
        &mut self,
        values: I,
    ) -> std::result::Result<u64, PublishError<Peekable<I::IntoIter>>>
    where
        I: IntoIterator<Item = T>,
    {
        let mut values = values.into_iter().peekable();
        let mut published = 0;
        while values.peek().is_some() {
            match self.publish_some(u64::MAX, true, || values.next()) {
                Ok(count) => published += count,
                Err(_) => return Err(PublishError::Closed(values)),
            }
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Bus, TopicOptions};

    #[test]
    fn dropped_lag_subscribers_leave_no_hazard_behind() {
        // Each registration left behind would cost the publisher a process-wide
        // barrier per half ring, for ever.
        let bus = Bus::builder().build().unwrap();
        let options = TopicOptions {
            exclusive_publisher: true,
            capacity: 8,
            ..TopicOptions::default()
        };
        let topic = bus.topic_with::<u64>("md:solo", options).unwrap();
        let mut publisher = topic.publisher().unwrap();
        let ring = &topic.shared.ring;
        for round in 0..10u64 {
            let mut sub = topic.subscribe();
            let pattern = bus.subscribe_pattern("md:>").unwrap();
            assert_eq!(ring.registered_lag_subscribers(), 2);
            publisher.publish_batch(round * 4..round * 4 + 4).unwrap();
            assert_eq!(sub.recv_batch(2, |_| ()), Ok(2));
            drop((sub, pattern));
            assert_eq!(ring.registered_lag_subscribers(), 0);
        }
    }
}

//! [`Receipt`]: the answer to a durable publish, resolved by the outbox writer.
//!
//! Runtime-agnostic (an `event-listener` wake-up, no tokio): await it from any
//! executor, or [`wait`](Receipt::wait) on it from a plain thread.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use event_listener::{Event as Notify, EventListener, Listener as _};

use crate::error::{Error, ErrorKind, Result};
use crate::event::StreamId;

struct Shared<R> {
    done: AtomicBool,
    result: Mutex<Option<Result<R>>>,
    ready: Notify,
}

/// Resolves once Redis holds a durable event: to its stream id for
/// [`DurableTopic::publish_durable`](crate::DurableTopic::publish_durable), to
/// its event id for a scheduled one
/// ([`DurableTopic::publish_at`](crate::DurableTopic::publish_at)).
///
/// # Cancel safety
///
/// Dropping the receipt (or a future awaiting it) does not cancel the write: the
/// event stays in the outbox and is written in order.
///
/// # Errors
///
/// The receipt resolves to an error when the entry cannot be written
/// ([`ErrorKind::Redis`]: for example the key holds another type now), or when the
/// bus shut down before Redis confirmed it ([`ErrorKind::Closed`]; the event may or
/// may not be in the stream). While Redis is merely unreachable the receipt stays
/// pending: the event waits in the outbox.
#[must_use = "a receipt does nothing unless awaited or waited on; drop it to not wait"]
pub struct Receipt<R = StreamId> {
    shared: Arc<Shared<R>>,
    listener: Option<EventListener>,
}

/// The writer's end of a [`Receipt`]. Dropping it unresolved resolves the receipt
/// with a `Closed` error, so that no receipt waits forever.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct ReceiptSender<R = StreamId> {
    shared: Option<Arc<Shared<R>>>,
}

impl<R> Receipt<R> {
    /// A receipt and the writer's end of it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn pair() -> (Receipt<R>, ReceiptSender<R>) {
        let shared = Arc::new(Shared {
            done: AtomicBool::new(false),
            result: Mutex::new(None),
            ready: Notify::new(),
        });
        (
            Receipt {
                shared: Arc::clone(&shared),
                listener: None,
            },
            ReceiptSender {
                shared: Some(shared),
            },
        )
    }

    fn take(&self) -> Option<Result<R>> {
        if !self.shared.done.load(Ordering::Acquire) {
            return None;
        }
        let mut result = self
            .shared
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(result.take().unwrap_or_else(|| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                "this receipt's result was already taken",
            ))
        }))
    }

    /// Whether the receipt has resolved (then `wait` returns at once).
    pub fn is_resolved(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Blocks the thread until the receipt resolves.
    ///
    /// # Errors
    ///
    /// See [`Receipt`].
    pub fn wait(self) -> Result<R> {
        self.wait_until(None)
    }

    /// As [`wait`](Receipt::wait), giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// See [`Receipt`]; [`ErrorKind::Timeout`] when it did not resolve in time (the
    /// event is still in the outbox and will be written).
    pub fn wait_timeout(self, timeout: Duration) -> Result<R> {
        self.wait_until(Some(Instant::now() + timeout))
            .map_err(|error| match error.kind() {
                ErrorKind::Timeout => Error::new(
                    ErrorKind::Timeout,
                    format!("no receipt from Redis within {timeout:?}"),
                ),
                _ => error,
            })
    }

    fn wait_until(self, deadline: Option<Instant>) -> Result<R> {
        loop {
            if let Some(result) = self.take() {
                return result;
            }
            let listener = self.shared.ready.listen();
            if let Some(result) = self.take() {
                return result;
            }
            match deadline {
                None => listener.wait(),
                Some(deadline) => {
                    if listener.wait_deadline(deadline).is_none() && Instant::now() >= deadline {
                        return self.take().unwrap_or_else(|| {
                            Err(Error::new(ErrorKind::Timeout, "no receipt in time"))
                        });
                    }
                }
            }
        }
    }
}

impl<R> Future for Receipt<R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            if let Some(result) = self.take() {
                self.listener = None;
                return Poll::Ready(result);
            }
            match &mut self.listener {
                None => self.listener = Some(self.shared.ready.listen()),
                Some(listener) => match Pin::new(listener).poll(cx) {
                    Poll::Ready(()) => self.listener = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

impl<R> fmt::Debug for Receipt<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("resolved", &self.is_resolved())
            .finish()
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl<R> ReceiptSender<R> {
    /// Resolves the receipt.
    pub(crate) fn send(mut self, result: Result<R>) {
        if let Some(shared) = self.shared.take() {
            Self::resolve(&shared, result);
        }
    }

    fn resolve(shared: &Shared<R>, result: Result<R>) {
        *shared.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        shared.done.store(true, Ordering::Release);
        shared.ready.notify(usize::MAX);
    }
}

impl<R> Drop for ReceiptSender<R> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            Self::resolve(
                &shared,
                Err(Error::new(
                    ErrorKind::Closed,
                    "the bus shut down before Redis confirmed this event; it may or may not \
                     be in the stream",
                )),
            );
        }
    }
}

impl<R> fmt::Debug for ReceiptSender<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiptSender")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_across_threads() {
        let (receipt, sender) = Receipt::pair();
        let writer = std::thread::spawn(move || sender.send(Ok(StreamId::new(5, 1))));
        assert_eq!(receipt.wait().unwrap(), StreamId::new(5, 1));
        writer.join().unwrap();
    }

    #[test]
    fn dropped_sender_resolves_closed() {
        let (receipt, sender) = Receipt::<StreamId>::pair();
        drop(sender);
        assert_eq!(receipt.wait().unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn wait_timeout_reports_timeout() {
        let (receipt, _sender) = Receipt::<StreamId>::pair();
        let error = receipt.wait_timeout(Duration::from_millis(5)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout);
    }
}

//! Wait strategies: what a pinned trading thread does while its subscription is empty.
//!
//! Each strategy trades latency for CPU. Measured one-way latencies on the 2-core
//! development VM are in `docs/benchmarks.md`; the shape is:
//!
//! | strategy | wake-up latency | CPU while idle |
//! |---|---|---|
//! | [`BusySpin`] | lowest (a cache-line transfer, ~100-300 ns) | one full core, always |
//! | [`SpinThenYield`] | low while busy; a scheduler round when other threads run | one core, shared with runnable threads |
//! | [`SpinYieldPark`] | as above while events flow; a thread wake-up (~30 µs) after parking | none once parked |
//!
//! A publisher never pays for a parked subscriber unless one is actually parked:
//! a subscriber about to sleep marks the slot it waits for, and the publisher learns
//! of the mark from the compare-and-swap it does on that slot anyway.

use event_listener::{EventListener, Listener as _};

use super::error::{RecvError, TryRecvError};

/// What to do after finding a subscription empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStep {
    /// Look again at once. The lowest latency; the core never rests.
    Retry,
    /// Pause the core briefly (`std::hint::spin_loop`, the x86 `pause`
    /// instruction: tens of cycles, friendlier to a sibling hyper-thread and to
    /// power) and look again.
    Spin,
    /// Give the core to another runnable thread, then look again.
    Yield,
    /// Sleep until a publisher (or shutdown) wakes this thread.
    Park,
}

/// A policy for waiting on an empty subscription from a synchronous thread.
///
/// Implement it to build your own (for example spinning only during market hours).
///
/// # Examples
///
/// ```
/// use tickbus::{WaitStep, WaitStrategy};
///
/// /// Spins for ever: for a thread pinned to an isolated core.
/// struct Hot;
/// impl WaitStrategy for Hot {
///     fn next_step(&mut self) -> WaitStep { WaitStep::Retry }
///     fn reset(&mut self) {}
/// }
/// ```
pub trait WaitStrategy {
    /// Called each time the subscription was found empty; says what to do next.
    fn next_step(&mut self) -> WaitStep;
    /// Called when an event (or an error) arrived: start the next wait afresh.
    fn reset(&mut self);
}

/// Poll without pausing until an event arrives, as the LMAX Disruptor's busy-spin
/// does. Lowest latency; burns its core while idle. Use it only on a thread
/// pinned to a core of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct BusySpin;

impl WaitStrategy for BusySpin {
    fn next_step(&mut self) -> WaitStep {
        WaitStep::Retry
    }
    fn reset(&mut self) {}
}

/// Spin `spins` times, then yield the core between looks. Close to [`BusySpin`]'s
/// latency when the thread has its core; shares it politely when it does not.
#[derive(Clone, Copy, Debug)]
pub struct SpinThenYield {
    /// Spins before the first yield. Default 1 000 (a few microseconds).
    pub spins: u32,
    tried: u32,
}

impl SpinThenYield {
    /// Spin `spins` times before yielding.
    pub const fn new(spins: u32) -> Self {
        SpinThenYield { spins, tried: 0 }
    }
}

impl Default for SpinThenYield {
    fn default() -> Self {
        SpinThenYield::new(1_000)
    }
}

impl WaitStrategy for SpinThenYield {
    fn next_step(&mut self) -> WaitStep {
        if self.tried < self.spins {
            self.tried += 1;
            WaitStep::Spin
        } else {
            WaitStep::Yield
        }
    }
    fn reset(&mut self) {
        self.tried = 0;
    }
}

/// Spin, then yield, then park the thread until a publisher wakes it. The default of
/// [`Subscriber::recv_blocking`](crate::Subscriber::recv_blocking): no CPU while
/// idle, microsecond latency while events flow.
#[derive(Clone, Copy, Debug)]
pub struct SpinYieldPark {
    /// Spins before yielding. Default 1 000.
    pub spins: u32,
    /// Yields before parking. Default 10.
    pub yields: u32,
    tried: u32,
}

impl SpinYieldPark {
    /// Spin `spins` times, yield `yields` times, then park.
    pub const fn new(spins: u32, yields: u32) -> Self {
        SpinYieldPark {
            spins,
            yields,
            tried: 0,
        }
    }
}

impl Default for SpinYieldPark {
    fn default() -> Self {
        SpinYieldPark::new(1_000, 10)
    }
}

impl WaitStrategy for SpinYieldPark {
    fn next_step(&mut self) -> WaitStep {
        self.tried = self.tried.saturating_add(1);
        if self.tried <= self.spins {
            WaitStep::Spin
        } else if self.tried <= self.spins.saturating_add(self.yields) {
            WaitStep::Yield
        } else {
            WaitStep::Park
        }
    }
    fn reset(&mut self) {
        self.tried = 0;
    }
}

/// Something a blocking receive can wait on: a typed or a pattern subscription.
pub(crate) trait Waitable {
    type Item;
    type Wakeup: Wakeup;
    /// One look, without waiting.
    fn try_once(&mut self) -> Result<Self::Item, TryRecvError>;
    /// Registers for a wake-up on the next publish (or close).
    fn register(&self) -> Self::Wakeup;
}

/// A registered wake-up that a thread can block on.
pub(crate) trait Wakeup {
    fn block(self);
}

/// `None`: nothing to wait for, look again.
impl Wakeup for Option<EventListener> {
    fn block(self) {
        if let Some(listener) = self {
            listener.wait();
        }
    }
}

/// The blocking receive of every subscription: look, then wait as `wait` says.
///
/// Inlined (with `try_once` and `recv_blocking_with`) so that a strategy that
/// retries at once polls with the same code as a caller's own `try_recv()` loop.
/// Out of line, each empty poll was two calls (`Subscriber::try_recv`, then
/// `Ring::try_pin`) and cost about 40 ns one-way in `benches/local_bus.rs`.
#[inline]
pub(crate) fn recv_blocking<S, W>(source: &mut S, wait: &mut W) -> Result<S::Item, RecvError>
where
    S: Waitable + ?Sized,
    W: WaitStrategy + ?Sized,
{
    let ready = |result: Result<S::Item, TryRecvError>| match result {
        Ok(item) => Some(Ok(item)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
        Err(TryRecvError::Undecodable(event)) => Some(Err(RecvError::Undecodable(event))),
        Err(TryRecvError::Empty) => None,
    };
    wait.reset();
    loop {
        if let Some(result) = ready(source.try_once()) {
            return result;
        }
        match wait.next_step() {
            WaitStep::Retry => {}
            WaitStep::Spin => std::hint::spin_loop(),
            WaitStep::Yield => std::thread::yield_now(),
            WaitStep::Park => {
                // Register first, then look again: a publish between the two is
                // either seen by the look or fires the wake-up.
                let wakeup = source.register();
                if let Some(result) = ready(source.try_once()) {
                    return result;
                }
                wakeup.block();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_yield_park_escalates_and_resets() {
        let mut wait = SpinYieldPark::new(2, 1);
        let steps: Vec<_> = (0..5).map(|_| wait.next_step()).collect();
        assert_eq!(
            steps,
            [
                WaitStep::Spin,
                WaitStep::Spin,
                WaitStep::Yield,
                WaitStep::Park,
                WaitStep::Park
            ]
        );
        wait.reset();
        assert_eq!(wait.next_step(), WaitStep::Spin);
    }

    #[test]
    fn spin_then_yield_never_parks() {
        let mut wait = SpinThenYield::new(1);
        assert_eq!(wait.next_step(), WaitStep::Spin);
        assert!((0..100).all(|_| wait.next_step() == WaitStep::Yield));
    }
}

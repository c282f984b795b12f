//! Backtest mode: an embedded bus driven by recorded events, synchronously.
//!
//! A [`Backtest`] owns an embedded bus with a manual clock. Each recorded event
//! ([`ReplayedEvent`], from a replay of Redis or an imported file) is decoded
//! into its topic's type and published on that bus; then every handler
//! registered with [`Backtest::on`] runs, on the driving thread, until none has
//! anything left (handlers that publish derived events feed other handlers in
//! the same step). Only then does the next recorded event go in. Handlers run in
//! the order they were registered, so a run is deterministic: the same recording
//! gives the same derived events, in the same order, with the same ids and
//! timestamps.
//!
//! A recorded event reaches handlers as it was recorded: its event id, source,
//! stream id and timestamp (`Meta::is_remote` is true). What handlers publish
//! gets ids of the backtest bus, derived from its fixed instance id, the topic
//! and the sequence, so they too are the same from run to run.
//!
//! The clock follows the recorded timestamps (never backwards): components that
//! ask the bus for the time ([`Bus::now_ns`]) see the time of the event being
//! handled. The bus has no Redis: what components publish stays in it.
//!
//! The same component code runs live: write a component as a handler
//! (a `FnMut(&Event<T>)`, or a method called from one), and drive it live from a
//! subscriber's receive loop.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::bus::Bus;
use crate::clock::Clock;
use crate::config::{SlowPolicy, SubscribeOptions, TopicOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Extra, Remote};
use crate::event::{Headers, InstanceId, TopicName};
use crate::local::topic::Stored;
use crate::local::{Event, Subscriber, Topic, TryRecvError};
use crate::recording::ReplayedEvent;

/// How fast a backtest feeds recorded events.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Pace {
    /// As fast as the handlers go.
    #[default]
    AsFastAsPossible,
    /// At the recorded rate times this factor (2.0: twice as fast), by the
    /// recorded timestamps.
    Scaled(f64),
}

/// What a backtest run did ([`Backtest::run`]).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct BacktestReport {
    /// Recorded events fed in (published on the backtest bus).
    pub events: u64,
    /// Recorded events of topics without a route (see [`Backtest::route`]): skipped.
    pub unrouted: u64,
    /// Recorded items that were errors, or events whose payload does not decode
    /// into its route's type: skipped, counted, the first one kept.
    pub skipped: u64,
    /// The first skipped item's error.
    pub first_error: Option<Error>,
    /// Handler calls, over all handlers.
    pub handler_calls: u64,
    /// The virtual clock at the end, ns since the Unix epoch.
    pub end_ns: u64,
}

/// Publishes a recorded event, decoded, on the backtest bus.
trait Route: Send {
    fn publish(&self, event: &ReplayedEvent) -> Result<()>;
}

struct TypedRoute<T: Clone + Send + Sync + 'static> {
    topic: Topic<T>,
}

impl<T: DeserializeOwned + Clone + Send + Sync + 'static> Route for TypedRoute<T> {
    fn publish(&self, event: &ReplayedEvent) -> Result<()> {
        let value = event.decode::<T>().map_err(|error| {
            Error::new(
                error.kind(),
                format!("topic {}, entry {}: {error}", event.topic, event.stream_id),
            )
        })?;
        // Delivered as recorded: its id, source, stream id and timestamp, as a
        // remote event (so duplicates in a recording are seen by event id).
        let stored = Stored {
            value,
            timestamp_ns: event.timestamp_ns,
            extra: Extra::remote(
                Remote {
                    id: event.event_id,
                    source: event.source,
                    stream_id: event.stream_id,
                },
                Headers::from(event.headers.clone()),
            )
            .into(),
        };
        let shared = &self.topic.shared;
        shared
            .publish_stored(stored)
            .map(|_| ())
            .map_err(|(error, _)| shared.refusal(error, "the backtest bus is shut down"))
    }
}

/// A handler: drains its subscriber, calling the function on each event.
trait Handler: Send {
    /// Runs the function on everything pending; how many it handled.
    fn drain(&mut self) -> Result<u64>;
}

struct TypedHandler<T: Clone + Send + Sync + 'static, F> {
    subscriber: Subscriber<T>,
    function: F,
}

impl<T, F> Handler for TypedHandler<T, F>
where
    T: Clone + Send + Sync + 'static,
    F: FnMut(&Event<T>) + Send,
{
    fn drain(&mut self) -> Result<u64> {
        let mut handled = 0;
        loop {
            match self.subscriber.try_recv() {
                Ok(event) => {
                    (self.function)(&event);
                    handled += 1;
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => return Ok(handled),
                Err(TryRecvError::Lagged(missed)) => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!(
                            "a backtest handler of {} missed {missed} events in one step: \
                             a handler published more than the topic's capacity; raise it \
                             (Backtest::with_topic_options)",
                            self.subscriber.topic()
                        ),
                    ))
                }
                Err(other) => {
                    return Err(Error::new(
                        ErrorKind::WrongShape,
                        format!("backtest handler of {}: {other}", self.subscriber.topic()),
                    ))
                }
            }
        }
    }
}

/// An embedded bus driven by recorded events, synchronously and
/// deterministically.
///
/// Each recorded event ([`ReplayedEvent`], from [`LiveBus::replay`](crate::LiveBus::replay) or
/// [`import`](crate::recording::import)) of a [routed](Backtest::route) topic is decoded
/// and published on the backtest bus, with its recorded id, source, stream id
/// and timestamp, after the bus clock is set to that timestamp (never
/// backwards). Then every [handler](Backtest::on) runs on the driving thread, in
/// registration order, pass after pass until none has anything left; only then
/// does the next recorded event go in. The same recording therefore gives the
/// same derived events, in the same order, with the same ids and timestamps.
/// The bus has no Redis: what handlers publish stays in it. See
/// `docs/replay.md`.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tickbus::{codec, EventId, InstanceId, StreamId, TopicName};
/// use tickbus::backtest::Backtest;
/// use tickbus::recording::ReplayedEvent;
///
/// // A recording (from a replay of Redis, or `tickbus::recording::import` of a file).
/// let recorded: Vec<ReplayedEvent> = (0..3_u64)
///     .map(|i| {
///         let payload = codec::encode_payload(&(100.0 + i as f64), &Default::default()).unwrap();
///         let ts = 1_700_000_000_000_000_000 + i * 1_000_000;
///         ReplayedEvent::new(
///             TopicName::new("md:tick").unwrap(),
///             StreamId::new(ts / 1_000_000, 0),
///             EventId::from_uuid(uuid::Uuid::from_u128(i as u128 + 1)),
///             InstanceId::from_uuid(uuid::Uuid::from_u128(99)),
///             ts,
///             payload,
///         )
///     })
///     .collect();
///
/// let mut backtest = Backtest::new();
/// backtest.route::<f64>("md:tick")?;
/// // A component: turns ticks into signals, reading the bus clock.
/// let bus = backtest.bus().clone();
/// let signals = bus.topic::<(u64, bool)>("strategy:signal")?;
/// backtest.on::<f64, _>("md:tick", move |tick| {
///     let _ = signals.publish((bus.now_ns(), tick.value > 100.5));
/// })?;
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// backtest.on::<(u64, bool), _>("strategy:signal", move |s| sink.lock().unwrap().push(s.value))?;
///
/// let report = backtest.run(recorded.into_iter().map(Ok))?;
/// assert_eq!(report.events, 3);
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen[0], (1_700_000_000_000_000_000, false)); // at the tick's own time
/// assert_eq!(seen[1], (1_700_000_000_001_000_000, true));
/// # Ok::<(), tickbus::Error>(())
/// ```
pub struct Backtest {
    bus: Bus,
    routes: HashMap<TopicName, Box<dyn Route>>,
    handlers: Vec<Box<dyn Handler>>,
    pace: Pace,
}

impl fmt::Debug for Backtest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backtest")
            .field("routes", &self.routes.keys().collect::<Vec<_>>())
            .field("handlers", &self.handlers.len())
            .field("pace", &self.pace)
            .finish_non_exhaustive()
    }
}

impl Default for Backtest {
    fn default() -> Self {
        Backtest::new()
    }
}

impl Backtest {
    /// The instance id of every backtest bus, so that derived event ids are the
    /// same from run to run.
    pub const INSTANCE: InstanceId = InstanceId::from_uuid(uuid::Uuid::from_u128(
        0x7b5e_57ed_0000_4000_8000_0000_0000_0001,
    ));

    /// A backtest over a new embedded bus (manual clock at 0, topics of 65 536
    /// slots).
    pub fn new() -> Self {
        Backtest::with_topic_options(TopicOptions {
            capacity: 65_536,
            ..TopicOptions::default()
        })
    }

    /// As [`new`](Backtest::new), with these options for the bus's topics. A
    /// handler step may publish up to a topic's capacity.
    pub fn with_topic_options(options: TopicOptions) -> Self {
        let bus = Bus::builder()
            .clock(Clock::manual(0))
            .instance_id(Self::INSTANCE)
            .topic_options(options)
            .build()
            .expect("an embedded bus always builds");
        Backtest {
            bus,
            routes: HashMap::new(),
            handlers: Vec::new(),
            pace: Pace::AsFastAsPossible,
        }
    }

    /// The backtest bus: give it to components (topics, `now_ns`).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Sets how fast [`run`](Backtest::run) feeds events.
    pub fn pace(&mut self, pace: Pace) -> &mut Self {
        self.pace = pace;
        self
    }

    /// Feeds recorded events of `topic` into the bus, decoded as `T`.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`; `TopicTypeMismatch` if the topic exists with another type.
    pub fn route<T>(&mut self, topic: &str) -> Result<&mut Self>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let name = TopicName::new(topic)?;
        let topic = self.bus.topic::<T>(topic)?;
        self.routes.insert(name, Box::new(TypedRoute { topic }));
        Ok(self)
    }

    /// Runs `handler` on every event of `topic`, on the driving thread, within
    /// the step of the recorded event that caused it.
    ///
    /// # Errors
    ///
    /// `InvalidTopic`; `TopicTypeMismatch`.
    pub fn on<T, F>(&mut self, topic: &str, handler: F) -> Result<&mut Self>
    where
        T: Clone + Send + Sync + 'static,
        F: FnMut(&Event<T>) + Send + 'static,
    {
        let subscriber = self
            .bus
            .topic::<T>(topic)?
            .subscribe_with(SubscribeOptions {
                policy: SlowPolicy::Lag,
                ..SubscribeOptions::default()
            })?;
        self.handlers.push(Box::new(TypedHandler {
            subscriber,
            function: handler,
        }));
        Ok(self)
    }

    /// Feeds `events` in order: for each, sets the clock to its timestamp (never
    /// backwards), publishes it decoded on its routed topic, and runs the
    /// handlers until none has anything left.
    ///
    /// # Errors
    ///
    /// A handler that missed events (it published more than a topic's capacity
    /// in one step: `InvalidConfig`). Items that are errors, and payloads that do
    /// not decode, are skipped and counted in the report (the first one kept),
    /// not fatal: one bad entry does not end a backtest.
    pub fn run<I>(&mut self, events: I) -> Result<BacktestReport>
    where
        I: IntoIterator<Item = Result<ReplayedEvent>>,
    {
        let mut report = BacktestReport::default();
        let clock = self.bus.clock().clone();
        let started = Instant::now();
        let mut first_ts: Option<u64> = None;
        // Anything published before the run (set-up events) is handled first.
        report.handler_calls += self.settle()?;
        for item in events {
            let event = match item {
                Ok(event) => event,
                Err(error) => {
                    skip(&mut report, error);
                    continue;
                }
            };
            let Some(route) = self.routes.get(&event.topic) else {
                report.unrouted += 1;
                continue;
            };
            if let Pace::Scaled(factor) = self.pace {
                let first = *first_ts.get_or_insert(event.timestamp_ns);
                if factor > 0.0 {
                    let due = Duration::from_nanos(event.timestamp_ns.saturating_sub(first))
                        .div_f64(factor);
                    let now = started.elapsed();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
            }
            if event.timestamp_ns > clock.now_ns() {
                clock.set_ns(event.timestamp_ns);
            }
            if let Err(error) = route.publish(&event) {
                skip(&mut report, error);
                continue;
            }
            report.events += 1;
            report.handler_calls += self.settle()?;
        }
        report.end_ns = clock.now_ns();
        Ok(report)
    }

    /// Runs the handlers, in order, until a whole pass handles nothing.
    fn settle(&mut self) -> Result<u64> {
        let mut total = 0;
        loop {
            let mut pass = 0;
            for handler in &mut self.handlers {
                pass += handler.drain()?;
            }
            if pass == 0 {
                return Ok(total);
            }
            total += pass;
        }
    }
}

fn skip(report: &mut BacktestReport, error: Error) {
    report.skipped += 1;
    if report.first_error.is_none() {
        report.first_error = Some(error);
    }
}

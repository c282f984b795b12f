//! The local bus against its anchors, side by side in one criterion run.
//!
//! Criterion groups (results and method in `docs/benchmarks.md`):
//!
//! * `fanout_1x1`, `fanout_1x4`: one publisher, one or four spinning subscribers,
//!   64-byte events, throughput in events/s. tickbus (backpressure and lag
//!   subscribers), `tokio::sync::broadcast` (with and without flow control) and the
//!   `disruptor` crate, plus the harness loop alone as a baseline. Systems:
//!   - `tickbus_backpressure`, `tickbus_backpressure_ref` (1→1 only), `tickbus_lag`:
//!     today's API, `Topic::publish` per event and a `try_recv` (clone) or
//!     `try_recv_ref` busy-spin loop.
//!   - `tickbus_exclusive_batch_recv`: a single-publisher topic
//!     (`TopicOptions::exclusive_publisher`), `Publisher::publish` per event (as the
//!     disruptor's `publish`), backpressure subscribers busy-spinning on
//!     `recv_batch(CAPACITY, ..)` (events borrowed in place) and reporting progress
//!     when it comes back `Empty` (as the disruptor's handler at end of batch).
//!   - `tickbus_exclusive_publish_batch`: the same with `Publisher::publish_batch`
//!     in chunks of 64 events (one store of the published cursor per chunk); its
//!     counterpart is `disruptor_batch_publish`, the disruptor's own
//!     `batch_publish(64, ..)`.
//!   - `tokio_broadcast_flow_controlled`, `tokio_broadcast_lag`.
//!   - `disruptor_busy_spin`: `build_single_producer`, `BusySpin`, `publish` per
//!     event, a handler that goes through the same `Tracker` as every other
//!     subscriber (sequence check per event, progress every 64 events and at end of
//!     batch).
//!   - `disruptor_bare`: the anchor measured bare, a handler with local work only:
//!     it keeps the expected sequence and the count of out-of-order events in its
//!     own variables and touches the shared `Tracker` only at end of batch (one
//!     store of its progress). The gap between the two disruptor figures is the
//!     harness's own cost.
//! * `latency`: one-way latency as half a ping-pong round trip between two pinned
//!   threads, spinning and async, with a bare cache-line ping-pong as the floor.
//! * `single_thread`: publish + receive on one thread, to show the per-event cost
//!   of tickbus's metadata against tokio's broadcast.
//! * `tracing`: the same publish + receive with no `tracing` subscriber and with
//!   one at WARN (the publish path's TRACE event disabled by the level check);
//!   build with `--no-default-features` for tracing compiled out. Also as
//!   interleaved rounds (`rounds/tracing`).
//!
//! Then, printed at the end: **interleaved rounds** (`rounds/...`). On the 2-vCPU
//! development VM the cost of a cache-line transfer flips within seconds between
//! about 45 ns and about 250 ns one-way (the host moves the vCPUs), and every
//! figure moves with it, so two criterion figures taken a minute apart cannot be
//! divided. The rounds measure each system in turn, many times over, in short
//! chunks between two probes of the bare ping-pong, and pool each chunk with the
//! others of the same placement: events/s, p50/p99 latency (hdrhistogram over
//! individual round trips) and the ratios, within one placement only.
//! `rounds/fanout_1x1_arc_str` repeats the 1→1 rounds with a `Fill` event
//! (`seq`, an `Arc<str>` symbol, price, quantity; the publisher clones one shared
//! symbol into each event) that every subscriber clones out per receive:
//! `tickbus_backpressure` (`try_recv`), `tickbus_exclusive_batch_recv` (the
//! `recv_batch` handler clones the event), tokio flow-controlled (`try_recv`) and
//! `disruptor_busy_spin` (the handler clones the event).
//!
//! Every ring has 4 096 slots (the tickbus default). Run with
//! `cargo bench --bench local_bus -- --warm-up-time 1 --measurement-time 5`.
//! A filter also selects the rounds, as a substring of `rounds/fanout_1x1`,
//! `rounds/fanout_1x1_arc_str`, `rounds/fanout_1x4`, `rounds/latency` or
//! `rounds/tracing` (`-- rounds` runs only them; `-- arc_str` only the `Arc<str>`
//! block; `-- rounds/fanout_1x1` both 1→1 blocks).

#[path = "support/args.rs"]
mod args;
use args::Args;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::hint::{black_box, spin_loop};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use disruptor::{
    BusySpin as DisruptorBusySpin, EventPoller, Polling, Producer, SingleProducerBarrier,
};
use hdrhistogram::Histogram;
use tickbus::{
    Bus, BusySpin, Clock, Publisher, RecvError, SlowPolicy, SubscribeOptions, Subscriber, Topic,
    TopicOptions, TryRecvError,
};
use tokio::sync::broadcast;

/// Ring capacity of every system under test (tickbus's default).
const CAPACITY: usize = 4096;
/// Events per criterion iteration in the fan-out groups.
const BATCH: u64 = 1_000_000;
/// Interleaved rounds: how many, and what each system does in one round.
const FANOUT_ROUNDS: usize = 12;
const ROUND_EVENTS_1X1: u64 = 1_000_000;
const ROUND_EVENTS_1X4: u64 = 250_000;
const LATENCY_ROUNDS: usize = 30;
const ROUND_SPIN_TRIPS: u64 = 10_000;
const ROUND_ASYNC_TRIPS: u64 = 1_500;
const TRACING_ROUNDS: usize = 20;
const ROUND_TRACING_EVENTS: u64 = 2_000_000;

/// What the fan-out benchmarks need of an event.
trait BenchEvent: Clone + Debug + Default + Send + Sync + 'static {
    /// How the rounds describe it.
    const DESCRIPTION: &'static str;
    fn new(seq: u64) -> Self;
    fn seq(&self) -> u64;
    /// What a handler does with an event it is lent (`recv_batch`, the disruptor's
    /// handlers): returns its sequence after reading it in place (`Event64`) or
    /// cloning it out (`Fill`, as `try_recv` does).
    fn take_out(&self) -> u64;
}

/// The 64-byte event of every benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Event64 {
    seq: u64,
    pad: [u64; 7],
}

impl BenchEvent for Event64 {
    const DESCRIPTION: &'static str = "64-byte Copy event";

    #[inline]
    fn new(seq: u64) -> Self {
        Event64 { seq, pad: [seq; 7] }
    }

    #[inline]
    fn seq(&self) -> u64 {
        self.seq
    }

    #[inline]
    fn take_out(&self) -> u64 {
        black_box(self).seq
    }
}

const _: () = assert!(std::mem::size_of::<Event64>() == 64);

/// A fill as a trading engine passes it on: the symbol is shared, so every
/// publish and every clone out of a ring is an atomic increment of its count
/// (and every drop a decrement), on one line for all the events.
#[derive(Clone, Debug, Default)]
#[allow(
    dead_code,
    reason = "the symbol, price and quantity are carried and cloned, not read"
)]
struct Fill {
    seq: u64,
    symbol: Arc<str>,
    price: f64,
    qty: f64,
}

impl BenchEvent for Fill {
    const DESCRIPTION: &'static str = "Fill with an Arc<str> symbol, cloned per receive";

    #[inline]
    fn new(seq: u64) -> Self {
        static SYMBOL: OnceLock<Arc<str>> = OnceLock::new();
        Fill {
            seq,
            symbol: Arc::clone(SYMBOL.get_or_init(|| Arc::from("BTC-USD"))),
            price: seq as f64,
            qty: 1.0,
        }
    }

    #[inline]
    fn seq(&self) -> u64 {
        self.seq
    }

    #[inline]
    fn take_out(&self) -> u64 {
        black_box(self.clone()).seq
    }
}

/// An atomic on a cache line (two, against adjacent-line prefetch) of its own.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

fn tickbus_topic(bus: &Bus, name: &str) -> Topic<Event64> {
    tickbus_topic_with(bus, name, false)
}

fn tickbus_topic_with<E: BenchEvent>(bus: &Bus, name: &str, exclusive_publisher: bool) -> Topic<E> {
    let options = TopicOptions {
        capacity: CAPACITY,
        exclusive_publisher,
        ..Default::default()
    };
    bus.topic_with::<E>(name, options).expect("topic")
}

// ---------------------------------------------------------------------------
// Threads and cores
// ---------------------------------------------------------------------------

/// The cores this process may run on, read once before any thread is pinned
/// (`core_affinity` lists only the cores of the calling thread's mask, and
/// threads inherit the mask of the thread that spawns them).
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: OnceLock<Vec<core_affinity::CoreId>> = OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

/// Pins the current thread to the `index`th core, if there is one.
fn pin(index: usize) -> bool {
    cores()
        .get(index)
        .is_some_and(|&core| core_affinity::set_for_current(core))
}

/// The state initialiser of a disruptor handler that runs on the second core: it
/// runs first thing on the handler's own thread. (The disruptor's `pin_at_core`
/// checks the core against `core_affinity::get_core_ids()` on the calling thread,
/// which lists only core 0 once the benchmark thread is pinned there.)
fn pin_handler_thread() {
    pin(1);
}

/// Spins a little, then yields: how the publisher waits for its subscribers
/// (yielding matters when five threads share two cores).
struct Backoff(u32);

impl Backoff {
    fn snooze(&mut self) {
        if self.0 < 1_000 {
            self.0 += 1;
            spin_loop();
        } else {
            thread::yield_now();
        }
    }
}

// ---------------------------------------------------------------------------
// Fan-out throughput
// ---------------------------------------------------------------------------

/// What one subscriber thread reports: how far it got (hot, written by it, read
/// by the publisher only when it waits), and how many events it missed or saw out
/// of order (cold).
#[derive(Default)]
struct SubStats {
    /// The next sequence it expects: every event below it was received or lagged.
    progress: Padded,
    lagged: AtomicU64,
    errors: AtomicU64,
}

/// A subscriber thread's private bookkeeping. It checks every sequence, and
/// reports progress every `PROGRESS_EVERY` events and whenever it runs dry (the
/// way tickbus publishes its backpressure gates and the disruptor its consumer
/// cursor), so the harness does not bounce a cache line per event.
struct Tracker {
    stats: Arc<SubStats>,
    expected: u64,
    reported: u64,
}

const PROGRESS_EVERY: u64 = 64;

impl Tracker {
    fn new(stats: Arc<SubStats>) -> Self {
        Tracker {
            stats,
            expected: 0,
            reported: 0,
        }
    }

    #[inline]
    fn received(&mut self, seq: u64) {
        if seq != self.expected {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.expected = seq + 1;
        if self.expected - self.reported >= PROGRESS_EVERY {
            self.report();
        }
    }

    #[inline]
    fn lagged(&mut self, missed: u64) {
        self.stats.lagged.fetch_add(missed, Ordering::Relaxed);
        self.expected += missed;
    }

    /// For a handler that keeps its own count (`disruptor_bare`): every sequence
    /// below `expected` is accounted for, `errors` of them out of order.
    #[inline]
    fn caught_up(&mut self, expected: u64, errors: u64) {
        if errors != 0 {
            self.stats.errors.fetch_add(errors, Ordering::Relaxed);
        }
        self.expected = expected;
        self.report();
    }

    /// Nothing more to read for now: make the progress visible.
    #[inline]
    fn idle(&mut self) {
        if self.reported != self.expected {
            self.report();
        }
    }

    #[inline]
    fn report(&mut self) {
        self.stats
            .progress
            .0
            .store(self.expected, Ordering::Release);
        self.reported = self.expected;
    }
}

/// The subscriber side of one fan-out set-up: the reports, and the threads.
struct Subscribers {
    stats: Vec<Arc<SubStats>>,
    threads: Vec<JoinHandle<()>>,
}

/// What a fan-out set-up did over its life.
struct FanOutReport {
    published: u64,
    subscribers: u64,
    lagged: u64,
}

impl FanOutReport {
    fn lag_percent(&self) -> f64 {
        100.0 * self.lagged as f64 / (self.published.max(1) * self.subscribers) as f64
    }
}

impl Subscribers {
    fn new(count: usize) -> Self {
        let stats = (0..count).map(|_| Arc::new(SubStats::default())).collect();
        Subscribers {
            stats,
            threads: Vec::new(),
        }
    }

    fn tracker(&self, index: usize) -> Tracker {
        Tracker::new(Arc::clone(&self.stats[index]))
    }

    /// The lowest progress over all subscribers.
    fn min_progress(&self) -> u64 {
        self.stats
            .iter()
            .map(|stats| stats.progress.0.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Waits until every subscriber has accounted for every sequence below `end`.
    fn wait_for(&self, end: u64) {
        let mut backoff = Backoff(0);
        while self.min_progress() < end {
            backoff.snooze();
        }
    }

    /// Joins the (already told to stop) threads and checks that nothing was
    /// received out of order.
    fn finish(self, published: u64) -> FanOutReport {
        for thread in self.threads {
            thread.join().expect("subscriber thread panicked");
        }
        let sum = |field: fn(&SubStats) -> &AtomicU64| -> u64 {
            self.stats
                .iter()
                .map(|stats| field(stats).load(Ordering::Relaxed))
                .sum()
        };
        assert_eq!(
            sum(|stats| &stats.errors),
            0,
            "events out of order or missing"
        );
        FanOutReport {
            published,
            subscribers: self.stats.len() as u64,
            lagged: sum(|stats| &stats.lagged),
        }
    }
}

/// One publisher (the benchmark thread) and its subscriber threads.
trait FanOutRig {
    /// Publishes `events` more events, waits until every subscriber has accounted
    /// for them, and returns the time taken.
    fn run(&mut self, events: u64) -> Duration;
    /// Stops the subscribers and reports.
    fn finish(self: Box<Self>) -> FanOutReport;
}

/// Publishes `events` through `publish`, then waits for the subscribers.
#[inline]
fn publish_and_wait(
    events: u64,
    seq: &mut u64,
    subscribers: &Subscribers,
    mut publish: impl FnMut(u64),
) -> Duration {
    let start = Instant::now();
    for _ in 0..events {
        publish(*seq);
        *seq += 1;
    }
    subscribers.wait_for(*seq);
    start.elapsed()
}

/// Chunks of this many events for the batch publishers.
const PUBLISH_CHUNK: u64 = 64;

/// Publishes `events` through `publish`, `PUBLISH_CHUNK` sequences at a time,
/// then waits for the subscribers.
#[inline]
fn publish_chunks_and_wait(
    events: u64,
    seq: &mut u64,
    subscribers: &Subscribers,
    mut publish: impl FnMut(Range<u64>),
) -> Duration {
    let start = Instant::now();
    let end = *seq + events;
    while *seq < end {
        let chunk_end = end.min(*seq + PUBLISH_CHUNK);
        publish(*seq..chunk_end);
        *seq = chunk_end;
    }
    subscribers.wait_for(end);
    start.elapsed()
}

/// The harness alone: the same loop and end-of-batch wait, with a local counter
/// standing in for the subscriber.
struct Baseline<E> {
    sink: Padded,
    seq: u64,
    _event: PhantomData<fn() -> E>,
}

impl<E: BenchEvent> FanOutRig for Baseline<E> {
    fn run(&mut self, events: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..events {
            let event = black_box(E::new(self.seq));
            self.sink.0.store(event.seq() + 1, Ordering::Release);
            self.seq += 1;
        }
        while self.sink.0.load(Ordering::Acquire) < self.seq {
            spin_loop();
        }
        start.elapsed()
    }

    fn finish(self: Box<Self>) -> FanOutReport {
        FanOutReport {
            published: self.seq,
            subscribers: 1,
            lagged: 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Receive {
    /// `try_recv()`: the event is cloned out with its metadata.
    Clone,
    /// `try_recv_ref()`: the event is read in place.
    Ref,
    /// `recv_batch(CAPACITY, ..)`: the events are lent in place, and the handler
    /// takes each out as the disruptor's does ([`BenchEvent::take_out`]).
    Batch,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// `Topic::publish`, per event.
    Topic,
    /// An exclusive topic's `Publisher::publish`, per event.
    Exclusive,
    /// `Publisher::publish_batch`, `PUBLISH_CHUNK` events at a time.
    ExclusiveBatch,
}

struct TickbusFanOut<E> {
    bus: Bus,
    topic: Topic<E>,
    /// `Some` on an exclusive topic.
    publisher: Option<Publisher<E>>,
    /// Publish through `publish_batch`.
    batch: bool,
    subscribers: Subscribers,
    seq: u64,
}

impl<E: BenchEvent> TickbusFanOut<E> {
    fn new(count: usize, policy: SlowPolicy, receive: Receive, publish: Publish) -> Self {
        let bus = Bus::builder().build().expect("bus");
        let topic = tickbus_topic_with::<E>(&bus, "bench:fanout", publish != Publish::Topic);
        let mut subscribers = Subscribers::new(count);
        for index in 0..count {
            let mut sub = topic
                .subscribe_with(SubscribeOptions::with_policy(policy))
                .expect("subscriber");
            let mut tracker = subscribers.tracker(index);
            subscribers.threads.push(thread::spawn(move || {
                if count == 1 {
                    pin(1);
                }
                loop {
                    // A true busy spin, as the disruptor's `BusySpin`: no pause on `Empty`.
                    let received = match receive {
                        Receive::Clone => sub.try_recv().map(|event| {
                            let event = black_box(event);
                            debug_assert_eq!(event.meta.seq(), event.value.seq());
                            tracker.received(event.value.seq());
                        }),
                        Receive::Ref => sub
                            .try_recv_ref()
                            .map(|event| tracker.received(black_box(&*event).seq())),
                        Receive::Batch => sub
                            .recv_batch(CAPACITY, |event| tracker.received(event.take_out()))
                            .map(drop),
                    };
                    match received {
                        Ok(()) => {}
                        Err(TryRecvError::Empty) => tracker.idle(),
                        Err(TryRecvError::Lagged(missed)) => tracker.lagged(missed),
                        Err(TryRecvError::Closed) => break,
                        Err(error) => panic!("{error}"),
                    }
                }
            }));
        }
        let publisher = match publish {
            Publish::Topic => None,
            Publish::Exclusive | Publish::ExclusiveBatch => {
                Some(topic.publisher().expect("exclusive topic"))
            }
        };
        TickbusFanOut {
            bus,
            topic,
            publisher,
            batch: publish == Publish::ExclusiveBatch,
            subscribers,
            seq: 0,
        }
    }
}

impl<E: BenchEvent> FanOutRig for TickbusFanOut<E> {
    fn run(&mut self, events: u64) -> Duration {
        let (topic, subscribers, seq) = (&self.topic, &self.subscribers, &mut self.seq);
        match self.publisher.as_mut() {
            None => publish_and_wait(events, seq, subscribers, |seq| {
                topic.publish(E::new(seq)).expect("open bus");
            }),
            Some(publisher) if self.batch => {
                publish_chunks_and_wait(events, seq, subscribers, |chunk| {
                    let expected = chunk.end - chunk.start;
                    let published = publisher
                        .publish_batch(chunk.map(E::new))
                        .expect("open bus");
                    debug_assert_eq!(published, expected);
                })
            }
            Some(publisher) => publish_and_wait(events, seq, subscribers, |seq| {
                publisher.publish(E::new(seq)).expect("open bus");
            }),
        }
    }

    fn finish(mut self: Box<Self>) -> FanOutReport {
        drop(self.publisher.take());
        self.bus.shutdown();
        self.subscribers.finish(self.seq)
    }
}

/// tokio's broadcast has no backpressure: a fast sender overwrites, and receivers
/// see `Lagged`. With `flow_control`, the sender never runs more than `CAPACITY`
/// events ahead of the slowest receiver's reported progress (cached, reread only
/// when the cached bound blocks it: the gating tickbus and the disruptor do
/// internally), so nothing is lost and the figure counts delivered events.
/// Without, it shows the lossy rate, as tickbus's lag mode does.
struct TokioFanOut<E> {
    tx: Option<broadcast::Sender<E>>,
    subscribers: Subscribers,
    flow_control: bool,
    allowed_below: u64,
    seq: u64,
}

impl<E: BenchEvent> TokioFanOut<E> {
    fn new(count: usize, flow_control: bool) -> Self {
        let (tx, _) = broadcast::channel::<E>(CAPACITY);
        let mut subscribers = Subscribers::new(count);
        for index in 0..count {
            let mut rx = tx.subscribe();
            let mut tracker = subscribers.tracker(index);
            subscribers.threads.push(thread::spawn(move || {
                if count == 1 {
                    pin(1);
                }
                loop {
                    match rx.try_recv() {
                        Ok(event) => tracker.received(black_box(event).seq()),
                        Err(broadcast::error::TryRecvError::Empty) => tracker.idle(),
                        Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                            tracker.lagged(missed)
                        }
                        Err(broadcast::error::TryRecvError::Closed) => break,
                    }
                }
            }));
        }
        TokioFanOut {
            tx: Some(tx),
            subscribers,
            flow_control,
            allowed_below: 0,
            seq: 0,
        }
    }
}

impl<E: BenchEvent> FanOutRig for TokioFanOut<E> {
    fn run(&mut self, events: u64) -> Duration {
        let tx = self.tx.as_ref().expect("running");
        let (subscribers, flow_control, allowed_below) = (
            &self.subscribers,
            self.flow_control,
            &mut self.allowed_below,
        );
        publish_and_wait(events, &mut self.seq, subscribers, |seq| {
            if flow_control && seq >= *allowed_below {
                let mut backoff = Backoff(0);
                loop {
                    *allowed_below = subscribers.min_progress() + CAPACITY as u64;
                    if seq < *allowed_below {
                        break;
                    }
                    backoff.snooze();
                }
            }
            tx.send(E::new(seq)).expect("receivers alive");
        })
    }

    fn finish(mut self: Box<Self>) -> FanOutReport {
        drop(self.tx.take());
        self.subscribers.finish(self.seq)
    }
}

/// A disruptor event handler that checks sequences and reports progress (the end
/// of a batch is where the disruptor's consumer runs dry): `disruptor_busy_spin`.
fn disruptor_handler<E: BenchEvent>(
    mut tracker: Tracker,
) -> impl FnMut(&mut (), &E, i64, bool) + Send {
    move |_: &mut (), event: &E, _sequence, end_of_batch| {
        tracker.received(event.take_out());
        if end_of_batch {
            tracker.idle();
        }
    }
}

/// The bare handler of `disruptor_bare`: local work only (its own expected
/// sequence and count of out-of-order events), the shared `Tracker` touched only
/// at end of batch.
fn disruptor_bare_handler<E: BenchEvent>(
    mut tracker: Tracker,
) -> impl FnMut(&mut (), &E, i64, bool) + Send {
    let (mut expected, mut errors) = (0, 0);
    move |_: &mut (), event: &E, _sequence, end_of_batch| {
        let seq = event.take_out();
        errors += u64::from(seq != expected);
        expected = seq + 1;
        if end_of_batch {
            tracker.caught_up(expected, std::mem::take(&mut errors));
        }
    }
}

/// The disruptor with `BusySpin` handlers on its managed threads; the 1→1
/// handler is pinned to core 1 as our own subscriber threads are. With `batch`,
/// the producer publishes with `batch_publish`, `PUBLISH_CHUNK` events at a time.
struct DisruptorFanOut<E, P> {
    producer: Option<P>,
    batch: bool,
    subscribers: Subscribers,
    seq: u64,
    _event: PhantomData<fn() -> E>,
}

fn disruptor_fanout<E: BenchEvent, H>(
    count: usize,
    handler: impl Fn(Tracker) -> H,
    batch: bool,
) -> Box<dyn FanOutRig>
where
    H: FnMut(&mut (), &E, i64, bool) + Send + 'static,
{
    let subscribers = Subscribers::new(count);
    let handler = |index| handler(subscribers.tracker(index));
    let builder = disruptor::build_single_producer(CAPACITY, E::default, DisruptorBusySpin);
    // The shapes have different types (single- versus multi-consumer barrier).
    match count {
        1 => DisruptorFanOut::boxed(
            builder
                .handle_events_and_state_with(handler(0), pin_handler_thread)
                .build(),
            subscribers,
            batch,
        ),
        4 => DisruptorFanOut::boxed(
            builder
                .handle_events_and_state_with(handler(0), || ())
                .handle_events_and_state_with(handler(1), || ())
                .handle_events_and_state_with(handler(2), || ())
                .handle_events_and_state_with(handler(3), || ())
                .build(),
            subscribers,
            batch,
        ),
        _ => unimplemented!("1 or 4 subscribers"),
    }
}

impl<E: BenchEvent, P: Producer<E> + 'static> DisruptorFanOut<E, P> {
    fn boxed(producer: P, subscribers: Subscribers, batch: bool) -> Box<dyn FanOutRig> {
        Box::new(DisruptorFanOut {
            producer: Some(producer),
            batch,
            subscribers,
            seq: 0,
            _event: PhantomData,
        })
    }
}

impl<E: BenchEvent, P: Producer<E>> FanOutRig for DisruptorFanOut<E, P> {
    fn run(&mut self, events: u64) -> Duration {
        let producer = self.producer.as_mut().expect("running");
        if self.batch {
            publish_chunks_and_wait(events, &mut self.seq, &self.subscribers, |chunk| {
                let len = (chunk.end - chunk.start) as usize;
                producer.batch_publish(len, |slots| {
                    for (slot, seq) in slots.zip(chunk) {
                        *slot = E::new(seq);
                    }
                })
            })
        } else {
            publish_and_wait(events, &mut self.seq, &self.subscribers, |seq| {
                producer.publish(|slot| *slot = E::new(seq))
            })
        }
    }

    fn finish(mut self: Box<Self>) -> FanOutReport {
        // Dropping the producer drains the ring and joins the handler threads.
        drop(self.producer.take());
        self.subscribers.finish(self.seq)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FanOutSystem {
    Baseline,
    TickbusBackpressure,
    TickbusBackpressureRef,
    TickbusLag,
    TickbusExclusiveBatchRecv,
    TickbusExclusivePublishBatch,
    TokioFlowControlled,
    TokioLag,
    Disruptor,
    DisruptorBare,
    DisruptorBatchPublish,
}

impl FanOutSystem {
    /// The criterion groups' systems, in order.
    const ALL: [FanOutSystem; 11] = [
        FanOutSystem::Baseline,
        FanOutSystem::TickbusBackpressure,
        FanOutSystem::TickbusBackpressureRef,
        FanOutSystem::TickbusLag,
        FanOutSystem::TickbusExclusiveBatchRecv,
        FanOutSystem::TickbusExclusivePublishBatch,
        FanOutSystem::TokioFlowControlled,
        FanOutSystem::TokioLag,
        FanOutSystem::Disruptor,
        FanOutSystem::DisruptorBare,
        FanOutSystem::DisruptorBatchPublish,
    ];

    fn name(self) -> &'static str {
        match self {
            FanOutSystem::Baseline => "baseline_harness_loop",
            FanOutSystem::TickbusBackpressure => "tickbus_backpressure",
            FanOutSystem::TickbusBackpressureRef => "tickbus_backpressure_ref",
            FanOutSystem::TickbusLag => "tickbus_lag",
            FanOutSystem::TickbusExclusiveBatchRecv => "tickbus_exclusive_batch_recv",
            FanOutSystem::TickbusExclusivePublishBatch => "tickbus_exclusive_publish_batch",
            FanOutSystem::TokioFlowControlled => "tokio_broadcast_flow_controlled",
            FanOutSystem::TokioLag => "tokio_broadcast_lag",
            FanOutSystem::Disruptor => "disruptor_busy_spin",
            FanOutSystem::DisruptorBare => "disruptor_bare",
            FanOutSystem::DisruptorBatchPublish => "disruptor_batch_publish",
        }
    }

    fn build<E: BenchEvent>(self, subscribers: usize) -> Box<dyn FanOutRig> {
        let tickbus = |policy, receive, publish| -> Box<dyn FanOutRig> {
            Box::new(TickbusFanOut::<E>::new(
                subscribers,
                policy,
                receive,
                publish,
            ))
        };
        match self {
            FanOutSystem::Baseline => Box::new(Baseline::<E> {
                sink: Padded::default(),
                seq: 0,
                _event: PhantomData,
            }),
            FanOutSystem::TickbusBackpressure => {
                tickbus(SlowPolicy::Backpressure, Receive::Clone, Publish::Topic)
            }
            FanOutSystem::TickbusBackpressureRef => {
                tickbus(SlowPolicy::Backpressure, Receive::Ref, Publish::Topic)
            }
            FanOutSystem::TickbusLag => tickbus(SlowPolicy::Lag, Receive::Clone, Publish::Topic),
            FanOutSystem::TickbusExclusiveBatchRecv => {
                tickbus(SlowPolicy::Backpressure, Receive::Batch, Publish::Exclusive)
            }
            FanOutSystem::TickbusExclusivePublishBatch => tickbus(
                SlowPolicy::Backpressure,
                Receive::Batch,
                Publish::ExclusiveBatch,
            ),
            FanOutSystem::TokioFlowControlled => Box::new(TokioFanOut::<E>::new(subscribers, true)),
            FanOutSystem::TokioLag => Box::new(TokioFanOut::<E>::new(subscribers, false)),
            FanOutSystem::Disruptor => disruptor_fanout(subscribers, disruptor_handler::<E>, false),
            FanOutSystem::DisruptorBare => {
                disruptor_fanout(subscribers, disruptor_bare_handler::<E>, false)
            }
            FanOutSystem::DisruptorBatchPublish => {
                disruptor_fanout(subscribers, disruptor_handler::<E>, true)
            }
        }
    }
}

fn fanout_group(subscribers: usize) -> String {
    format!("fanout_1x{subscribers}")
}

fn fanout_criterion(c: &mut Criterion, subscribers: usize) {
    let group_name = fanout_group(subscribers);
    let mut group = c.benchmark_group(&group_name);
    group.throughput(Throughput::Elements(BATCH));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for system in FanOutSystem::ALL {
        if subscribers != 1 && system == FanOutSystem::TickbusBackpressureRef {
            continue;
        }
        let mut rig = system.build::<Event64>(subscribers);
        group.bench_function(system.name(), |b| {
            b.iter_custom(|iters| rig.run(iters * BATCH))
        });
        let report = rig.finish();
        if system != FanOutSystem::Baseline {
            println!(
                "{group_name}/{}: {} events to {} subscriber(s), lagged (sum over subscribers) {} ({:.2}%)",
                system.name(),
                report.published,
                report.subscribers,
                report.lagged,
                report.lag_percent(),
            );
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Latency by ping-pong
// ---------------------------------------------------------------------------

/// Two threads bouncing an event: the benchmark thread sends `seq`, the echo
/// thread (pinned to the other core) sends it back. One-way latency = RTT / 2.
trait PingPong {
    /// Runs `trips` round trips and returns half their total time. With a
    /// histogram, also records half of each round trip, in nanoseconds.
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration;
}

/// Joins a ping-pong's echo thread (after its input was closed).
fn join_echo(echo: &mut Option<JoinHandle<()>>) {
    if let Some(echo) = echo.take() {
        echo.join().expect("echo thread panicked");
    }
}

/// The timing loop shared by the synchronous ping-pongs.
#[inline]
fn timed_trips(
    trips: u64,
    seq: &mut u64,
    histogram: Option<&mut Histogram<u64>>,
    mut trip: impl FnMut(u64),
) -> Duration {
    let start = Instant::now();
    match histogram {
        None => {
            for _ in 0..trips {
                trip(*seq);
                *seq += 1;
            }
        }
        Some(histogram) => {
            for _ in 0..trips {
                let before = Instant::now();
                trip(*seq);
                let rtt = before.elapsed();
                histogram.saturating_record(rtt.as_nanos() as u64 / 2);
                *seq += 1;
            }
        }
    }
    start.elapsed() / 2
}

/// The floor: two cache lines bounced between the pinned threads, nothing else.
struct AtomicPingPong {
    lines: Arc<(Padded, Padded)>,
    seq: u64,
    echo: Option<JoinHandle<()>>,
}

impl AtomicPingPong {
    const STOP: u64 = u64::MAX;

    fn new() -> Self {
        let lines = Arc::new((Padded::default(), Padded::default()));
        let echo = thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                pin(1);
                let mut seen = 0;
                loop {
                    let ping = lines.0 .0.load(Ordering::Acquire);
                    if ping == Self::STOP {
                        break;
                    }
                    if ping != seen {
                        seen = ping;
                        lines.1 .0.store(ping, Ordering::Release);
                    }
                }
            }
        });
        AtomicPingPong {
            lines,
            seq: 1,
            echo: Some(echo),
        }
    }
}

impl PingPong for AtomicPingPong {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let lines = &*self.lines;
        timed_trips(trips, &mut self.seq, histogram, |seq| {
            lines.0 .0.store(seq, Ordering::Release);
            while lines.1 .0.load(Ordering::Acquire) != seq {}
        })
    }
}

impl Drop for AtomicPingPong {
    fn drop(&mut self) {
        self.lines.0 .0.store(Self::STOP, Ordering::Release);
        join_echo(&mut self.echo);
    }
}

// How a tickbus ping-pong receives. Each way is its own function, and the
// ping-pong is generic over it (a distinct type per function item), so each
// ping-pong is compiled with only its own receive loop.

/// A `try_recv()` loop, no pause (as the disruptor's `BusySpin`).
fn try_recv_loop(sub: &mut Subscriber<Event64>) -> Option<Event64> {
    loop {
        match sub.try_recv() {
            Ok(event) => return Some(event.value),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Closed) => return None,
            Err(error) => panic!("ping-pong: {error}"),
        }
    }
}

/// The documented strategy: `recv_blocking_with(&mut BusySpin)`.
fn busy_spin_strategy(sub: &mut Subscriber<Event64>) -> Option<Event64> {
    match sub.recv_blocking_with(&mut BusySpin) {
        Ok(event) => Some(event.value),
        Err(RecvError::Closed) => None,
        Err(error) => panic!("ping-pong: {error}"),
    }
}

/// Two tickbus topics, `bench:ping` and `bench:pong`, with a subscriber each.
struct TickbusPair {
    bus: Bus,
    ping: Topic<Event64>,
    ping_sub: Subscriber<Event64>,
    pong: Topic<Event64>,
    pong_sub: Subscriber<Event64>,
}

impl TickbusPair {
    fn new(options: SubscribeOptions) -> Self {
        let bus = Bus::builder().build().expect("bus");
        let ping = tickbus_topic(&bus, "bench:ping");
        let pong = tickbus_topic(&bus, "bench:pong");
        let ping_sub = ping.subscribe_with(options).expect("subscriber");
        let pong_sub = pong.subscribe_with(options).expect("subscriber");
        TickbusPair {
            bus,
            ping,
            ping_sub,
            pong,
            pong_sub,
        }
    }
}

struct TickbusSpin<R> {
    bus: Bus,
    ping: Topic<Event64>,
    pong_sub: Subscriber<Event64>,
    recv: R,
    seq: u64,
    echo: Option<JoinHandle<()>>,
}

impl<R: Fn(&mut Subscriber<Event64>) -> Option<Event64> + Copy + Send + 'static> TickbusSpin<R> {
    fn new(policy: SlowPolicy, recv: R) -> Self {
        let TickbusPair {
            bus,
            ping,
            mut ping_sub,
            pong,
            pong_sub,
        } = TickbusPair::new(SubscribeOptions::with_policy(policy));
        let echo = thread::spawn(move || {
            pin(1);
            while let Some(event) = recv(&mut ping_sub) {
                pong.publish(event).expect("open bus");
            }
        });
        TickbusSpin {
            bus,
            ping,
            pong_sub,
            recv,
            seq: 0,
            echo: Some(echo),
        }
    }
}

impl<R: Fn(&mut Subscriber<Event64>) -> Option<Event64>> PingPong for TickbusSpin<R> {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let (ping, pong_sub, recv) = (&self.ping, &mut self.pong_sub, &self.recv);
        timed_trips(trips, &mut self.seq, histogram, |seq| {
            ping.publish(Event64::new(seq)).expect("open bus");
            let echo = recv(pong_sub).expect("open bus");
            assert_eq!(echo.seq, seq);
        })
    }
}

impl<R> Drop for TickbusSpin<R> {
    fn drop(&mut self) {
        self.bus.shutdown();
        join_echo(&mut self.echo);
    }
}

fn tokio_spin_recv(rx: &mut broadcast::Receiver<Event64>) -> Option<Event64> {
    loop {
        match rx.try_recv() {
            Ok(event) => return Some(event),
            Err(broadcast::error::TryRecvError::Empty) => {}
            Err(broadcast::error::TryRecvError::Closed) => return None,
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("ping-pong lagged {n}"),
        }
    }
}

struct TokioSpin {
    ping: Option<broadcast::Sender<Event64>>,
    pong_rx: broadcast::Receiver<Event64>,
    seq: u64,
    echo: Option<JoinHandle<()>>,
}

impl TokioSpin {
    fn new() -> Self {
        let (ping, mut ping_rx) = broadcast::channel::<Event64>(CAPACITY);
        let (pong, pong_rx) = broadcast::channel::<Event64>(CAPACITY);
        let echo = thread::spawn(move || {
            pin(1);
            while let Some(event) = tokio_spin_recv(&mut ping_rx) {
                pong.send(event).expect("receiver alive");
            }
        });
        TokioSpin {
            ping: Some(ping),
            pong_rx,
            seq: 0,
            echo: Some(echo),
        }
    }
}

impl PingPong for TokioSpin {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let (ping, pong_rx) = (self.ping.as_ref().expect("running"), &mut self.pong_rx);
        timed_trips(trips, &mut self.seq, histogram, |seq| {
            ping.send(Event64::new(seq)).expect("receiver alive");
            let echo = tokio_spin_recv(pong_rx).expect("sender alive");
            assert_eq!(echo.seq, seq);
        })
    }
}

impl Drop for TokioSpin {
    fn drop(&mut self) {
        drop(self.ping.take());
        join_echo(&mut self.echo);
    }
}

/// The disruptor's own ping-pong: the echo is a `BusySpin` event handler on a
/// managed thread pinned to core 1 that publishes into a second disruptor, which
/// the benchmark thread busy-polls with an `EventPoller`.
struct DisruptorSpin {
    ping: Option<disruptor::SingleProducer<Event64, disruptor::SingleConsumerBarrier>>,
    pong: EventPoller<Event64, SingleProducerBarrier>,
    seq: u64,
}

impl DisruptorSpin {
    fn new() -> Self {
        let (pong, builder) =
            disruptor::build_single_producer(CAPACITY, Event64::default, DisruptorBusySpin)
                .new_event_poller();
        let mut pong_producer = builder.build();
        let echo = move |_: &mut (), event: &Event64, _sequence: i64, _end_of_batch: bool| {
            let event = *event;
            pong_producer.publish(|slot| *slot = event);
        };
        let ping = disruptor::build_single_producer(CAPACITY, Event64::default, DisruptorBusySpin)
            .handle_events_and_state_with(echo, pin_handler_thread)
            .build();
        DisruptorSpin {
            ping: Some(ping),
            pong,
            seq: 0,
        }
    }
}

impl PingPong for DisruptorSpin {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let (ping, pong) = (self.ping.as_mut().expect("running"), &mut self.pong);
        timed_trips(trips, &mut self.seq, histogram, |seq| {
            ping.publish(|slot| *slot = Event64::new(seq));
            loop {
                match pong.poll() {
                    Ok(mut events) => {
                        let echo = (&mut events).last().expect("at least one event");
                        assert_eq!(echo.seq, seq);
                        break;
                    }
                    Err(Polling::NoEvents) => {}
                    Err(Polling::Shutdown) => panic!("pong disruptor shut down"),
                }
            }
        })
    }
}

impl Drop for DisruptorSpin {
    fn drop(&mut self) {
        // Drains and joins the echo thread, which drops the pong producer.
        drop(self.ping.take());
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// [`timed_trips`] for the async ping-pongs.
async fn timed_trips_async(
    trips: u64,
    seq: &mut u64,
    mut histogram: Option<&mut Histogram<u64>>,
    mut trip: impl AsyncFnMut(u64),
) -> Duration {
    let start = Instant::now();
    for _ in 0..trips {
        let before = Instant::now();
        trip(*seq).await;
        if let Some(histogram) = histogram.as_deref_mut() {
            histogram.saturating_record(before.elapsed().as_nanos() as u64 / 2);
        }
        *seq += 1;
    }
    start.elapsed() / 2
}

/// Async on both sides: the echo thread runs `sub.recv().await` on a tokio
/// current-thread runtime, and so does the benchmark thread for the echo, so each
/// hop is an async wake-up and RTT / 2 is one of them. Both subscribers look
/// `async_spin_polls` times before parking (200 by default; 0 parks at once, as
/// tokio's broadcast does).
struct TickbusAsync {
    bus: Bus,
    ping: Topic<Event64>,
    pong_sub: Subscriber<Event64>,
    runtime: tokio::runtime::Runtime,
    seq: u64,
    echo: Option<JoinHandle<()>>,
}

impl TickbusAsync {
    fn new(async_spin_polls: u32) -> Self {
        let TickbusPair {
            bus,
            ping,
            mut ping_sub,
            pong,
            pong_sub,
        } = TickbusPair::new(SubscribeOptions {
            async_spin_polls,
            ..Default::default()
        });
        let echo = thread::spawn(move || {
            pin(1);
            current_thread_runtime().block_on(async move {
                loop {
                    match ping_sub.recv().await {
                        Ok(event) => {
                            pong.publish(event.value).expect("open bus");
                        }
                        Err(RecvError::Closed) => break,
                        Err(error) => panic!("ping-pong: {error}"),
                    }
                }
            })
        });
        TickbusAsync {
            bus,
            ping,
            pong_sub,
            runtime: current_thread_runtime(),
            seq: 0,
            echo: Some(echo),
        }
    }
}

impl PingPong for TickbusAsync {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let (ping, pong_sub) = (&self.ping, &mut self.pong_sub);
        let trips = timed_trips_async(trips, &mut self.seq, histogram, async |seq| {
            ping.publish(Event64::new(seq)).expect("open bus");
            let echo = pong_sub.recv().await.expect("open bus");
            assert_eq!(echo.value.seq, seq);
        });
        self.runtime.block_on(trips)
    }
}

impl Drop for TickbusAsync {
    fn drop(&mut self) {
        self.bus.shutdown();
        join_echo(&mut self.echo);
    }
}

/// As [`TickbusAsync`], with `rx.recv().await` on tokio broadcast channels.
struct TokioAsync {
    ping: Option<broadcast::Sender<Event64>>,
    pong_rx: broadcast::Receiver<Event64>,
    runtime: tokio::runtime::Runtime,
    seq: u64,
    echo: Option<JoinHandle<()>>,
}

impl TokioAsync {
    fn new() -> Self {
        let (ping, mut ping_rx) = broadcast::channel::<Event64>(CAPACITY);
        let (pong, pong_rx) = broadcast::channel::<Event64>(CAPACITY);
        let echo = thread::spawn(move || {
            pin(1);
            current_thread_runtime().block_on(async move {
                loop {
                    match ping_rx.recv().await {
                        Ok(event) => {
                            pong.send(event).expect("receiver alive");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            panic!("ping-pong lagged {n}")
                        }
                    }
                }
            })
        });
        TokioAsync {
            ping: Some(ping),
            pong_rx,
            runtime: current_thread_runtime(),
            seq: 0,
            echo: Some(echo),
        }
    }
}

impl PingPong for TokioAsync {
    fn run(&mut self, trips: u64, histogram: Option<&mut Histogram<u64>>) -> Duration {
        let (ping, pong_rx) = (self.ping.as_ref().expect("running"), &mut self.pong_rx);
        let trips = timed_trips_async(trips, &mut self.seq, histogram, async |seq| {
            ping.send(Event64::new(seq)).expect("receiver alive");
            let echo = pong_rx.recv().await.expect("sender alive");
            assert_eq!(echo.seq, seq);
        });
        self.runtime.block_on(trips)
    }
}

impl Drop for TokioAsync {
    fn drop(&mut self) {
        drop(self.ping.take());
        join_echo(&mut self.echo);
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LatencySystem {
    AtomicFloor,
    TickbusSpinLag,
    TickbusSpinBackpressure,
    TickbusBusySpinStrategy,
    TokioSpin,
    DisruptorSpin,
    TickbusAsync,
    TickbusAsyncPark,
    TokioAsync,
}

impl LatencySystem {
    const ALL: [LatencySystem; 9] = [
        LatencySystem::AtomicFloor,
        LatencySystem::TickbusSpinLag,
        LatencySystem::TickbusSpinBackpressure,
        LatencySystem::TickbusBusySpinStrategy,
        LatencySystem::TokioSpin,
        LatencySystem::DisruptorSpin,
        LatencySystem::TickbusAsync,
        LatencySystem::TickbusAsyncPark,
        LatencySystem::TokioAsync,
    ];

    fn name(self) -> &'static str {
        match self {
            LatencySystem::AtomicFloor => "baseline_atomic_pingpong",
            LatencySystem::TickbusSpinLag => "tickbus_spin_lag",
            LatencySystem::TickbusSpinBackpressure => "tickbus_spin_backpressure",
            LatencySystem::TickbusBusySpinStrategy => "tickbus_busy_spin_strategy",
            LatencySystem::TokioSpin => "tokio_broadcast_spin",
            LatencySystem::DisruptorSpin => "disruptor_busy_spin",
            LatencySystem::TickbusAsync => "tickbus_async",
            LatencySystem::TickbusAsyncPark => "tickbus_async_park",
            LatencySystem::TokioAsync => "tokio_broadcast_async",
        }
    }

    fn build(self) -> Box<dyn PingPong> {
        match self {
            LatencySystem::AtomicFloor => Box::new(AtomicPingPong::new()),
            LatencySystem::TickbusSpinLag => {
                Box::new(TickbusSpin::new(SlowPolicy::Lag, try_recv_loop))
            }
            LatencySystem::TickbusSpinBackpressure => {
                Box::new(TickbusSpin::new(SlowPolicy::Backpressure, try_recv_loop))
            }
            LatencySystem::TickbusBusySpinStrategy => {
                Box::new(TickbusSpin::new(SlowPolicy::Lag, busy_spin_strategy))
            }
            LatencySystem::TokioSpin => Box::new(TokioSpin::new()),
            LatencySystem::DisruptorSpin => Box::new(DisruptorSpin::new()),
            LatencySystem::TickbusAsync => Box::new(TickbusAsync::new(
                SubscribeOptions::default().async_spin_polls,
            )),
            LatencySystem::TickbusAsyncPark => Box::new(TickbusAsync::new(0)),
            LatencySystem::TokioAsync => Box::new(TokioAsync::new()),
        }
    }

    fn is_async(self) -> bool {
        matches!(
            self,
            LatencySystem::TickbusAsync
                | LatencySystem::TickbusAsyncPark
                | LatencySystem::TokioAsync
        )
    }
}

fn latency_criterion(c: &mut Criterion) {
    let mut group = c.benchmark_group("latency");
    for system in LatencySystem::ALL {
        let mut rig = system.build();
        group.bench_function(system.name(), |b| {
            b.iter_custom(|iters| rig.run(iters, None))
        });
    }
    group.finish();
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram")
}

// ---------------------------------------------------------------------------
// Interleaved rounds, classified by core placement
// ---------------------------------------------------------------------------

/// Where the host has put our two vCPUs, judged by the bare cache-line ping-pong:
/// on this VM it flips, from one second to the next, between about 45 ns one-way
/// (the two vCPUs look like SMT siblings of one host core) and about 250 ns (two
/// host cores further apart). Every figure moves with it, so figures are only
/// compared within one placement.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Placement {
    Near,
    Far,
    /// Threads not pinned (1→4): the scheduler decides, so no classification.
    Unpinned,
}

impl Placement {
    const ALL: [Placement; 3] = [Placement::Near, Placement::Far, Placement::Unpinned];
    /// The one-way p50 of the bare ping-pong that separates the two placements.
    const NEAR_BELOW_NS: u64 = 120;

    fn index(self) -> usize {
        self as usize
    }

    fn describe(self) -> String {
        match self {
            Placement::Near => format!(
                "near (floor p50 < {} ns before and after)",
                Placement::NEAR_BELOW_NS
            ),
            Placement::Far => format!(
                "far (floor p50 >= {} ns before and after)",
                Placement::NEAR_BELOW_NS
            ),
            Placement::Unpinned => "unpinned (5 threads on 2 cores)".to_string(),
        }
    }

    /// Measures the floor now (a few milliseconds).
    fn probe() -> Placement {
        let mut rig = AtomicPingPong::new();
        rig.run(200, None);
        let mut histogram = new_histogram();
        rig.run(2_000, Some(&mut histogram));
        if histogram.value_at_quantile(0.5) < Placement::NEAR_BELOW_NS {
            Placement::Near
        } else {
            Placement::Far
        }
    }
}

/// Runs `measure` between two placement probes; `None` if the placement changed.
fn classified<R>(pinned: bool, measure: impl FnOnce() -> R) -> (Option<Placement>, R) {
    if !pinned {
        return (Some(Placement::Unpinned), measure());
    }
    let before = Placement::probe();
    let result = measure();
    let after = Placement::probe();
    ((before == after).then_some(before), result)
}

fn fmt_ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.3}", n / d),
        _ => "n/a".to_string(),
    }
}

/// One block of fan-out rounds: its systems, and the ratios it prints.
struct FanOutRounds {
    /// After `rounds/fanout_1xN` in the block's id.
    suffix: &'static str,
    systems: &'static [FanOutSystem],
    ratios: &'static [(FanOutSystem, FanOutSystem)],
}

impl FanOutRounds {
    /// The 64-byte event, 1→1 and 1→4.
    const EVENT64: FanOutRounds = {
        use FanOutSystem::*;
        FanOutRounds {
            suffix: "",
            systems: &[
                TickbusBackpressure,
                TickbusLag,
                TickbusExclusiveBatchRecv,
                TickbusExclusivePublishBatch,
                TokioFlowControlled,
                TokioLag,
                Disruptor,
                DisruptorBare,
                DisruptorBatchPublish,
            ],
            ratios: &[
                (TickbusBackpressure, TokioFlowControlled),
                (TickbusBackpressure, Disruptor),
                (TickbusLag, TokioLag),
                (TickbusExclusiveBatchRecv, Disruptor),
                (TickbusExclusiveBatchRecv, DisruptorBare),
                (TickbusExclusivePublishBatch, Disruptor),
                (TickbusExclusivePublishBatch, DisruptorBare),
                (TickbusExclusivePublishBatch, DisruptorBatchPublish),
                (TickbusBackpressure, DisruptorBare),
                (Disruptor, DisruptorBare),
            ],
        }
    };

    /// The `Fill` event with its `Arc<str>` symbol, 1→1.
    const ARC_STR: FanOutRounds = {
        use FanOutSystem::*;
        FanOutRounds {
            suffix: "_arc_str",
            systems: &[
                TickbusBackpressure,
                TickbusExclusiveBatchRecv,
                TokioFlowControlled,
                Disruptor,
            ],
            ratios: &[
                (TickbusBackpressure, Disruptor),
                (TickbusExclusiveBatchRecv, Disruptor),
                (TokioFlowControlled, Disruptor),
                (TickbusBackpressure, TokioFlowControlled),
            ],
        }
    };

    /// `rounds/fanout_1x1`, `rounds/fanout_1x1_arc_str`, ...: what the filter matches.
    fn id(&self, subscribers: usize) -> String {
        format!("rounds/{}{}", fanout_group(subscribers), self.suffix)
    }
}

/// Every fan-out system of `block` in turn, `rounds` times, each in a chunk of
/// `events` events of type `E` between two placement probes: events/s pooled per
/// placement, and the ratios within each placement.
fn fanout_rounds<E: BenchEvent>(
    block: &FanOutRounds,
    subscribers: usize,
    rounds: usize,
    events: u64,
) -> Vec<String> {
    let systems = block.systems;
    let pinned = subscribers == 1;
    // [placement][system]: (events, seconds, chunks, lagged, delivered)
    let mut totals =
        vec![vec![(0u64, 0f64, 0usize, 0u64, 0u64); systems.len()]; Placement::ALL.len()];
    let mut discarded = 0;
    for _ in 0..rounds {
        for (index, system) in systems.iter().enumerate() {
            let (placement, (elapsed, report)) = classified(pinned, || {
                let mut rig = system.build::<E>(subscribers);
                rig.run(events / 10); // warm up
                let elapsed = rig.run(events);
                (elapsed, rig.finish())
            });
            let Some(placement) = placement else {
                discarded += 1;
                continue;
            };
            let total = &mut totals[placement.index()][index];
            total.0 += events;
            total.1 += elapsed.as_secs_f64();
            total.2 += 1;
            total.3 += report.lagged;
            total.4 += report.published * report.subscribers;
        }
    }
    let mut lines = vec![format!(
        "{}: {rounds} rounds of {events} events per system ({}); {discarded} chunk(s) discarded (placement changed)",
        block.id(subscribers),
        E::DESCRIPTION,
    )];
    for placement in Placement::ALL {
        let row = &totals[placement.index()];
        if row.iter().all(|total| total.2 == 0) {
            continue;
        }
        lines.push(format!("  {}:", placement.describe()));
        let rate = |system: FanOutSystem| {
            let total = row[systems.iter().position(|s| *s == system).expect("measured")];
            (total.2 > 0).then(|| total.0 as f64 / total.1)
        };
        for (index, system) in systems.iter().enumerate() {
            let total = row[index];
            lines.push(format!(
                "    {:<32} {:>9} M events/s  ({} chunks, lagged {:.2}%)",
                system.name(),
                rate(*system).map_or("n/a".to_string(), |r| format!("{:.2}", r / 1e6)),
                total.2,
                100.0 * total.3 as f64 / total.4.max(1) as f64,
            ));
        }
        for &(numerator, denominator) in block.ratios {
            lines.push(format!(
                "    ratio {} / {}: {}",
                numerator.name(),
                denominator.name(),
                fmt_ratio(rate(numerator), rate(denominator)),
            ));
        }
    }
    lines
}

/// Every ping-pong in turn, `rounds` times, each in a chunk of round trips
/// between two placement probes: percentiles pooled per placement, and the p50
/// ratios within each placement.
fn latency_rounds(rounds: usize, spin_trips: u64, async_trips: u64) -> Vec<String> {
    use LatencySystem::*;
    let systems = LatencySystem::ALL;
    let mut totals: Vec<Vec<Histogram<u64>>> = Placement::ALL
        .iter()
        .map(|_| systems.iter().map(|_| new_histogram()).collect())
        .collect();
    let mut discarded = 0;
    for _ in 0..rounds {
        for (index, system) in systems.iter().enumerate() {
            let trips = if system.is_async() {
                async_trips
            } else {
                spin_trips
            };
            let (placement, histogram) = classified(true, || {
                let mut rig = system.build();
                rig.run(trips / 10, None); // warm up
                let mut histogram = new_histogram();
                rig.run(trips, Some(&mut histogram));
                histogram
            });
            match placement {
                Some(placement) => totals[placement.index()][index]
                    .add(&histogram)
                    .expect("same bounds"),
                None => discarded += 1,
            }
        }
    }
    let mut lines = vec![format!(
        "rounds/latency: {rounds} rounds of {spin_trips} (spinning) or {async_trips} (async) round trips per system; \
         {discarded} chunk(s) discarded (placement changed). One-way latency = RTT/2, ns:"
    )];
    for placement in Placement::ALL {
        let row = &totals[placement.index()];
        if row.iter().all(|histogram| histogram.is_empty()) {
            continue;
        }
        lines.push(format!("  {}:", placement.describe()));
        lines.push(format!(
            "  | {:<28} | {:>7} | {:>7} | {:>7} | {:>7} | {:>8} | {:>9} | {:>7} |",
            "system", "trips", "p50", "p90", "p99", "p99.9", "max", "mean"
        ));
        lines.push("  |---|---|---|---|---|---|---|---|".to_string());
        for (index, system) in systems.iter().enumerate() {
            let histogram = &row[index];
            if histogram.is_empty() {
                lines.push(format!("  | {:<28} | {:>7} |", system.name(), 0));
                continue;
            }
            let ns = |q: f64| histogram.value_at_quantile(q);
            lines.push(format!(
                "  | {:<28} | {:>7} | {:>7} | {:>7} | {:>7} | {:>8} | {:>9} | {:>7.0} |",
                system.name(),
                histogram.len(),
                ns(0.5),
                ns(0.9),
                ns(0.99),
                ns(0.999),
                histogram.max(),
                histogram.mean(),
            ));
        }
        let quantile = |system: LatencySystem, q: f64| {
            let histogram = &row[systems.iter().position(|s| *s == system).expect("measured")];
            (!histogram.is_empty()).then(|| histogram.value_at_quantile(q) as f64)
        };
        for (numerator, denominator) in [
            (TickbusSpinLag, DisruptorSpin),
            (TickbusSpinBackpressure, DisruptorSpin),
            (TickbusBusySpinStrategy, DisruptorSpin),
            (TickbusSpinLag, TokioSpin),
            (TickbusSpinLag, AtomicFloor),
            (DisruptorSpin, AtomicFloor),
            (TickbusAsync, TokioAsync),
            (TickbusAsyncPark, TokioAsync),
        ] {
            lines.push(format!(
                "    ratio {} / {}: p50 {}, p99 {}",
                numerator.name(),
                denominator.name(),
                fmt_ratio(quantile(numerator, 0.5), quantile(denominator, 0.5)),
                fmt_ratio(quantile(numerator, 0.99), quantile(denominator, 0.99)),
            ));
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// Per-event cost on one thread
// ---------------------------------------------------------------------------

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("single_thread");
    group.throughput(Throughput::Elements(1));

    group.bench_function("baseline_vecdeque", |b| {
        let mut queue = VecDeque::with_capacity(CAPACITY);
        let mut seq = 0;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                queue.push_back(Event64::new(seq));
                black_box(queue.pop_front());
                seq += 1;
            }
            start.elapsed()
        })
    });

    for (name, clock, policy, receive) in [
        (
            "tickbus_publish_try_recv",
            Clock::system(),
            SlowPolicy::Lag,
            Receive::Clone,
        ),
        (
            "tickbus_publish_try_recv_ref",
            Clock::system(),
            SlowPolicy::Lag,
            Receive::Ref,
        ),
        (
            "tickbus_publish_try_recv_backpressure",
            Clock::system(),
            SlowPolicy::Backpressure,
            Receive::Clone,
        ),
        (
            "tickbus_publish_try_recv_manual_clock",
            Clock::manual(0),
            SlowPolicy::Lag,
            Receive::Clone,
        ),
    ] {
        let bus = Bus::builder().clock(clock).build().expect("bus");
        let topic = tickbus_topic(&bus, "bench:single");
        let mut sub = topic
            .subscribe_with(SubscribeOptions::with_policy(policy))
            .expect("subscriber");
        let mut seq = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    topic.publish(Event64::new(seq)).expect("open bus");
                    match receive {
                        Receive::Clone => {
                            black_box(sub.try_recv().expect("just published"));
                        }
                        Receive::Ref => {
                            black_box(&*sub.try_recv_ref().expect("just published"));
                        }
                        Receive::Batch => {
                            sub.recv_batch(1, |event| {
                                black_box(&*event);
                            })
                            .expect("just published");
                        }
                    }
                    seq += 1;
                }
                start.elapsed()
            })
        });
    }

    {
        let (tx, mut rx) = broadcast::channel::<Event64>(CAPACITY);
        let mut seq = 0;
        group.bench_function("tokio_broadcast_send_try_recv", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    tx.send(Event64::new(seq)).expect("receiver alive");
                    black_box(rx.try_recv().expect("just sent"));
                    seq += 1;
                }
                start.elapsed()
            })
        });
    }

    {
        let bus = Bus::builder().build().expect("bus");
        group.bench_function("tickbus_clock_now_ns", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(bus.now_ns());
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Tracing overhead (feature `tracing`, on by default through `redis`)
// ---------------------------------------------------------------------------

/// A `tracing` subscriber at WARN for this thread (output discarded): the
/// publish path's TRACE event is then disabled by the level check, as in a
/// service that logs warnings.
fn warn_subscriber() -> impl Sized {
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::sink)
        .finish()
        .set_default()
}

/// Publish + receive on one thread, `iters` times: the time taken.
fn publish_recv(
    topic: &Topic<Event64>,
    sub: &mut Subscriber<Event64>,
    seq: &mut u64,
    iters: u64,
) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        topic.publish(Event64::new(*seq)).expect("open bus");
        black_box(sub.try_recv().expect("just published"));
        *seq += 1;
    }
    start.elapsed()
}

/// `tracing/publish_try_recv_{no,warn}_subscriber`: the local publish with no
/// tracing subscriber installed and with one at WARN. Build with
/// `--no-default-features` for the figure with tracing compiled out.
fn tracing_criterion(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracing");
    group.throughput(Throughput::Elements(1));
    for (name, with_subscriber) in [
        ("publish_try_recv_no_subscriber", false),
        ("publish_try_recv_warn_subscriber", true),
    ] {
        let bus = Bus::builder().build().expect("bus");
        let topic = tickbus_topic(&bus, "bench:tracing");
        let mut sub = topic.subscribe();
        let mut seq = 0;
        group.bench_function(name, |b| {
            let _subscriber = with_subscriber.then(warn_subscriber);
            b.iter_custom(|iters| publish_recv(&topic, &mut sub, &mut seq, iters))
        });
    }
    group.finish();
}

/// The same pair in interleaved rounds (the VM's speed drifts between two
/// criterion figures): ns per publish + receive, median over the rounds.
fn tracing_rounds(rounds: usize, events: u64) -> Vec<String> {
    let bus = Bus::builder().build().expect("bus");
    let topic = tickbus_topic(&bus, "bench:tracing:rounds");
    let mut sub = topic.subscribe();
    let mut seq = 0;
    let mut none = Vec::with_capacity(rounds);
    let mut warn = Vec::with_capacity(rounds);
    publish_recv(&topic, &mut sub, &mut seq, events); // warm-up
    for _ in 0..rounds {
        none.push(
            publish_recv(&topic, &mut sub, &mut seq, events).as_nanos() as f64 / events as f64,
        );
        let subscriber = warn_subscriber();
        warn.push(
            publish_recv(&topic, &mut sub, &mut seq, events).as_nanos() as f64 / events as f64,
        );
        drop(subscriber);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (none, warn) = (median(&mut none), median(&mut warn));
    vec![format!(
        "rounds/tracing: publish+try_recv, {rounds} rounds x {events} events, median ns/event: \
             no subscriber {none:.2}, WARN subscriber {warn:.2} (ratio {:.3}); tracing feature {}",
        warn / none,
        if cfg!(feature = "tracing") {
            "on"
        } else {
            "off"
        }
    )]
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    let core_count = cores().len();
    let mut criterion = Criterion::default().configure_from_args();
    let mut summary = Vec::new();

    // 1→4 first, from an unpinned thread: threads inherit the affinity of the thread
    // that spawns them, and five threads on two cores are left to the scheduler.
    fanout_criterion(&mut criterion, 4);
    if args.wants(&FanOutRounds::EVENT64.id(4)) {
        summary.extend(fanout_rounds::<Event64>(
            &FanOutRounds::EVENT64,
            4,
            FANOUT_ROUNDS / 2,
            ROUND_EVENTS_1X4,
        ));
    }

    // Then the benchmark thread (publisher, pinger) on the first core, and the
    // subscriber or echo thread of the 1→1 and latency benchmarks on the second.
    let pinned = pin(0);
    println!("cores: {core_count}; benchmark thread pinned to core 0 from here on: {pinned}");
    fanout_criterion(&mut criterion, 1);
    if args.wants(&FanOutRounds::EVENT64.id(1)) {
        summary.extend(fanout_rounds::<Event64>(
            &FanOutRounds::EVENT64,
            1,
            FANOUT_ROUNDS,
            ROUND_EVENTS_1X1,
        ));
    }
    if args.wants(&FanOutRounds::ARC_STR.id(1)) {
        summary.extend(fanout_rounds::<Fill>(
            &FanOutRounds::ARC_STR,
            1,
            FANOUT_ROUNDS,
            ROUND_EVENTS_1X1,
        ));
    }
    latency_criterion(&mut criterion);
    if args.wants("rounds/latency") {
        summary.extend(latency_rounds(
            LATENCY_ROUNDS,
            ROUND_SPIN_TRIPS,
            ROUND_ASYNC_TRIPS,
        ));
    }
    single_thread(&mut criterion);
    tracing_criterion(&mut criterion);
    if args.wants("rounds/tracing") {
        summary.extend(tracing_rounds(TRACING_ROUNDS, ROUND_TRACING_EVENTS));
    }
    criterion.final_summary();

    if !summary.is_empty() {
        println!("\n==== interleaved rounds ====");
        for line in summary {
            println!("{line}");
        }
    }
}

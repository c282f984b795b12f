//! The single-publisher path (issue 17) against the LMAX disruptor, in one run.
//!
//! One publisher thread (core 0) and one busy-spinning subscriber (core 1), a
//! ring of 4 096, lossless (backpressure), and every contender in turn, round
//! after round: the ratio of each round is taken between contenders measured
//! seconds apart, and the table gives the median and range of those ratios (the
//! VM's cross-core cost moves by 3x within seconds; see `docs/benchmarks.md`).
//!
//! Contenders, for a 64-byte `Copy` event and for a fill carrying an `Arc<str>`
//! symbol (cloned per receive):
//!
//! * `disruptor`: `disruptor` 4.4, `build_single_producer`, `BusySpin`, one
//!   `publish` per event; the handler copies (clones) the event out and checks
//!   its sequence, and reports progress at the end of each batch. Local work
//!   only: the anchor measured bare.
//! * `disruptor_batch64`: the same, publishing with `batch_publish` 64 at a time.
//! * `exclusive`: a topic created with `TopicOptions::exclusive_publisher`, one
//!   `Publisher::publish` per event; the subscriber runs `recv_batch` and its
//!   handler does what the disruptor's does.
//! * `exclusive_batch64`: the same with `Publisher::publish_batch` of 64.
//! * `shared`: today's API on a default topic: `Topic::publish` and `try_recv`
//!   (the event cloned out with its metadata).
//!
//! ```text
//! cargo bench --bench exclusive               # criterion groups, then the rounds
//! cargo bench --bench exclusive -- rounds     # the rounds only (about a minute)
//! ```

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use disruptor::{BusySpin, Producer};
use tickbus::{Bus, SlowPolicy, SubscribeOptions, Topic, TopicOptions, TryRecvError};

const CAPACITY: usize = 4096;
const ROUNDS: usize = 10;

/// What every contender moves: built from a sequence number, checked by it.
trait Payload: Clone + Default + Send + Sync + 'static {
    const NAME: &'static str;
    const EVENTS: u64;
    fn new(seq: u64) -> Self;
    fn seq(&self) -> u64;
}

/// The 64-byte event of `benches/local_bus.rs`. Only `seq` is read: the rest is
/// carried and copied, which is what is measured.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, Default)]
struct Event64 {
    seq: u64,
    pad: [u64; 7],
}

impl Payload for Event64 {
    const NAME: &'static str = "event64";
    const EVENTS: u64 = 2_000_000;
    #[inline]
    fn new(seq: u64) -> Self {
        Event64 { seq, pad: [seq; 7] }
    }
    #[inline]
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A fill with a shared symbol: cloning it is a reference-count increment. Only
/// `seq` is read.
#[allow(dead_code)]
#[derive(Clone, Debug, Default)]
struct Fill {
    seq: u64,
    symbol: Option<Arc<str>>,
    price: f64,
    qty: f64,
}

thread_local! {
    static SYMBOL: Arc<str> = Arc::from("BTC-PERP");
}

impl Payload for Fill {
    const NAME: &'static str = "fill_arc_str";
    const EVENTS: u64 = 1_000_000;
    #[inline]
    fn new(seq: u64) -> Self {
        Fill {
            seq,
            symbol: Some(SYMBOL.with(Arc::clone)),
            price: 100.0,
            qty: 1.0,
        }
    }
    #[inline]
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// The machine's cores, read once before anything is pinned: `get_core_ids`
/// lists the cores the *calling* thread may run on, which pinning narrows (and
/// spawned threads inherit).
fn cores() -> &'static [core_affinity::CoreId] {
    static CORES: std::sync::OnceLock<Vec<core_affinity::CoreId>> = std::sync::OnceLock::new();
    CORES.get_or_init(|| core_affinity::get_core_ids().unwrap_or_default())
}

fn pin(core: usize) {
    let cores = cores();
    if let Some(id) = cores.get(core % cores.len().max(1)) {
        assert!(core_affinity::set_for_current(*id), "pinning to {id:?}");
    }
}

/// The subscriber's progress and errors, each on a line of its own.
#[derive(Default)]
struct Progress {
    done: crossbeam_padded::Padded,
    errors: crossbeam_padded::Padded,
}

mod crossbeam_padded {
    /// An atomic on two cache lines of its own.
    #[derive(Default)]
    #[repr(align(128))]
    pub struct Padded(pub std::sync::atomic::AtomicU64);
}

/// Receives in order, checking sequences: what every handler does per event.
struct Checker {
    progress: Arc<Progress>,
    expected: u64,
    errors: u64,
}

impl Checker {
    #[inline]
    fn handle<P: Payload>(&mut self, event: &P) {
        let copy = black_box(event.clone());
        if copy.seq() != self.expected {
            self.errors += 1;
        }
        self.expected += 1;
    }
    #[inline]
    fn report(&mut self) {
        self.progress.done.0.store(self.expected, Ordering::Release);
        if self.errors != 0 {
            self.progress
                .errors
                .0
                .fetch_add(std::mem::take(&mut self.errors), Ordering::Relaxed);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Disruptor,
    DisruptorBatch64,
    Exclusive,
    ExclusiveBatch64,
    Shared,
}

impl System {
    const ALL: [System; 5] = [
        System::Disruptor,
        System::DisruptorBatch64,
        System::Exclusive,
        System::ExclusiveBatch64,
        System::Shared,
    ];

    fn name(self) -> &'static str {
        match self {
            System::Disruptor => "disruptor",
            System::DisruptorBatch64 => "disruptor_batch64",
            System::Exclusive => "exclusive",
            System::ExclusiveBatch64 => "exclusive_batch64",
            System::Shared => "shared",
        }
    }
}

/// One publisher and one subscriber thread, ready to run chunks of events.
struct Rig<P: Payload> {
    system: System,
    progress: Arc<Progress>,
    published: u64,
    /// Publishes `from..to`; owns the producer (dropping it stops the disruptor).
    publish: Box<dyn FnMut(u64, u64)>,
    /// Then, for tickbus: shut the bus down.
    after: Option<Box<dyn FnOnce()>>,
    subscriber: Option<JoinHandle<()>>,
    _payload: std::marker::PhantomData<P>,
}

impl<P: Payload> Rig<P> {
    fn new(system: System) -> Self {
        let progress = Arc::new(Progress::default());
        pin(0);
        match system {
            System::Disruptor | System::DisruptorBatch64 => {
                let mut checker = Checker {
                    progress: Arc::clone(&progress),
                    expected: 0,
                    errors: 0,
                };
                let mut handler = move |event: &P, _sequence: i64, end_of_batch: bool| {
                    checker.handle(event);
                    if end_of_batch {
                        checker.report();
                    }
                };
                let producer = disruptor::build_single_producer(CAPACITY, P::default, BusySpin)
                    .handle_events_and_state_with(
                        move |_: &mut (), event: &P, sequence, end| handler(event, sequence, end),
                        || pin(1),
                    )
                    .build();
                let mut producer = producer;
                let batch = system == System::DisruptorBatch64;
                Rig {
                    system,
                    progress,
                    published: 0,
                    publish: Box::new(move |from, to| {
                        let mut seq = from;
                        while seq < to {
                            if batch {
                                let n = (to - seq).min(64);
                                producer.batch_publish(n as usize, |slots| {
                                    for (i, slot) in slots.enumerate() {
                                        *slot = P::new(seq + i as u64);
                                    }
                                });
                                seq += n;
                            } else {
                                producer.publish(|slot| *slot = P::new(seq));
                                seq += 1;
                            }
                        }
                    }),
                    after: None,
                    subscriber: None,
                    _payload: std::marker::PhantomData,
                }
            }
            System::Exclusive | System::ExclusiveBatch64 | System::Shared => {
                let bus = Bus::builder().build().expect("bus");
                let options = TopicOptions {
                    capacity: CAPACITY,
                    exclusive_publisher: system != System::Shared,
                    ..TopicOptions::default()
                };
                let topic: Topic<P> = bus.topic_with("bench:exclusive", options).expect("topic");
                let mut sub = topic
                    .subscribe_with(SubscribeOptions::with_policy(SlowPolicy::Backpressure))
                    .expect("subscriber");
                let mut checker = Checker {
                    progress: Arc::clone(&progress),
                    expected: 0,
                    errors: 0,
                };
                let shared = system == System::Shared;
                let subscriber = thread::spawn(move || {
                    pin(1);
                    loop {
                        let received = if shared {
                            sub.try_recv().map(|event| checker.handle(&event.value))
                        } else {
                            sub.recv_batch(CAPACITY, |event| checker.handle(&*event))
                                .map(|_| ())
                        };
                        match received {
                            Ok(()) if shared => {
                                if checker.expected.is_multiple_of(64) {
                                    checker.report();
                                }
                            }
                            Ok(()) => checker.report(),
                            Err(TryRecvError::Empty) => checker.report(),
                            Err(TryRecvError::Closed) => return checker.report(),
                            Err(error) => panic!("{error}"),
                        }
                    }
                });
                let publish: Box<dyn FnMut(u64, u64)> = match system {
                    System::Shared => {
                        let topic = topic.clone();
                        Box::new(move |from, to| {
                            for seq in from..to {
                                topic.publish(P::new(seq)).expect("open");
                            }
                        })
                    }
                    _ => {
                        let mut publisher = topic.publisher().expect("exclusive");
                        let batch = system == System::ExclusiveBatch64;
                        Box::new(move |from, to| {
                            if batch {
                                let mut seq = from;
                                while seq < to {
                                    let end = (seq + 64).min(to);
                                    publisher
                                        .publish_batch((seq..end).map(P::new))
                                        .expect("open");
                                    seq = end;
                                }
                            } else {
                                for seq in from..to {
                                    publisher.publish(P::new(seq)).expect("open");
                                }
                            }
                        })
                    }
                };
                Rig {
                    system,
                    progress,
                    published: 0,
                    publish,
                    after: Some(Box::new(move || bus.shutdown())),
                    subscriber: Some(subscriber),
                    _payload: std::marker::PhantomData,
                }
            }
        }
    }

    /// Publishes `events` more and waits until the subscriber has them all.
    fn run(&mut self, events: u64) -> Duration {
        let (from, to) = (self.published, self.published + events);
        let start = Instant::now();
        (self.publish)(from, to);
        while self.progress.done.0.load(Ordering::Acquire) < to {
            std::hint::spin_loop();
        }
        let elapsed = start.elapsed();
        self.published = to;
        elapsed
    }

    fn finish(self) {
        // Dropping a disruptor's producer drains its ring and joins its handler.
        drop(self.publish);
        if let Some(after) = self.after {
            after();
        }
        if let Some(subscriber) = self.subscriber {
            subscriber.join().expect("subscriber thread");
        }
        assert_eq!(
            self.progress.errors.0.load(Ordering::Relaxed),
            0,
            "{}: events out of order or missing",
            self.system.name()
        );
    }
}

/// `rounds` rounds of every system; per system the median rate, and per round
/// the ratio of each system to the disruptor measured in the same round.
fn rounds<P: Payload>(rounds: usize) -> Vec<String> {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); System::ALL.len()];
    for _ in 0..rounds {
        for (index, system) in System::ALL.iter().enumerate() {
            let mut rig = Rig::<P>::new(*system);
            rig.run(P::EVENTS / 10); // warm up
            let elapsed = rig.run(P::EVENTS);
            rig.finish();
            rates[index].push(P::EVENTS as f64 / elapsed.as_secs_f64());
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        (
            values[values.len() / 2],
            values[0],
            values[values.len() - 1],
        )
    };
    let mut lines = vec![format!(
        "rounds/{}: {rounds} rounds of {} events per system, 1 publisher (core 0) -> 1 subscriber (core 1), ring {CAPACITY}",
        P::NAME,
        P::EVENTS
    )];
    lines.push(format!(
        "  {:<20} {:>12} {:>22}   {:>26}   {:>26}",
        "system", "median M/s", "range M/s", "÷ disruptor (median, range)", "÷ disruptor_batch64"
    ));
    for (index, system) in System::ALL.iter().enumerate() {
        let (rate, low, high) = median(rates[index].clone());
        let ratio = |anchor: usize| {
            let per_round: Vec<f64> = rates[index]
                .iter()
                .zip(&rates[anchor])
                .map(|(tickbus, anchor)| tickbus / anchor)
                .collect();
            let (median, low, high) = median(per_round);
            format!("{median:.3} ({low:.2}-{high:.2})")
        };
        lines.push(format!(
            "  {:<20} {:>12.2} {:>10.2}-{:<11.2}   {:>26}   {:>26}",
            system.name(),
            rate / 1e6,
            low / 1e6,
            high / 1e6,
            ratio(0),
            ratio(1),
        ));
    }
    lines
}

fn criterion_group<P: Payload>(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("exclusive_1x1/{}", P::NAME));
    group.throughput(Throughput::Elements(P::EVENTS / 10));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for system in System::ALL {
        let mut rig = Rig::<P>::new(system);
        group.bench_function(system.name(), |b| {
            b.iter_custom(|iters| rig.run(iters * (P::EVENTS / 10)))
        });
        rig.finish();
    }
    group.finish();
}

fn main() {
    cores(); // before any thread is pinned
    let filter = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .unwrap_or_default();
    let rounds_only = filter.starts_with("rounds");
    if !rounds_only {
        let mut criterion = Criterion::default()
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args();
        criterion_group::<Event64>(&mut criterion);
        criterion_group::<Fill>(&mut criterion);
        criterion.final_summary();
    }
    if filter.is_empty() || "rounds/event64".contains(&filter) || filter == "rounds" {
        for line in rounds::<Event64>(ROUNDS) {
            println!("{line}");
        }
    }
    if filter.is_empty() || "rounds/fill_arc_str".contains(&filter) || filter == "rounds" {
        for line in rounds::<Fill>(ROUNDS) {
            println!("{line}");
        }
    }
}

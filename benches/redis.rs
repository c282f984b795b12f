//! Durable publishing and cross-instance latency against Redis (and NATS JetStream),
//! each contender beside its anchors, side by side in one criterion run.
//!
//! Every Redis figure is taken against a PRIVATE `redis-server` that the bench starts
//! itself (`tickbus::test_util::RedisServer`: a free port, a temporary directory),
//! never against a shared one. NATS is the server at `127.0.0.1:4222` (JetStream
//! enabled); when it is unreachable the NATS contenders are skipped with a note.
//! Every payload is 128 bytes.
//!
//! Criterion groups (results and method in `docs/benchmarks.md`):
//!
//! * `redis_publish`: durable publish throughput, events/s, with the time taken
//!   until the server has acknowledged the last event. Anchors:
//!   - `fred_pipeline_256`: raw fred, `XADD … MAXLEN ~ 1000000 * id <uuid> src <uuid>
//!     ts <ns> data <128 B>` (the shape of a tickbus entry) in `Pipeline`s of 256,
//!     one batch in flight at a time, on one client (the anchor of the targets);
//!   - `fred_pipeline_256_data_only`: the same with the `data` field alone (the
//!     shape of the redis-benchmark command, and of the DESIGN.md anchor);
//!   - `fred_concurrent_256`: the same XADDs as 256 concurrent futures on one
//!     client (fred's automatic pipelining);
//!   - `redis_benchmark_p64`: `redis-benchmark -P 64 -c 50 XADD key MAXLEN ~ 1000000
//!     * data <128 B>`, the server's own ceiling (its reported requests/s);
//!   - `redis_benchmark_p64_4fields`: the same with the four fields of a tickbus
//!     entry (constant values: redis-benchmark cannot vary them);
//!   - `jetstream_memory_256`, `jetstream_file_256`: async-nats JetStream publish
//!     with 256 acks in flight, to a stream in memory storage (as the private Redis
//!     is, without AOF) and in file storage (what a durable log would use).
//! * `redis_latency`: one-way publish→receive latency at `LATENCY_RATE` events/s
//!   (5 000/s), publisher and receiver on separate connections as two instances
//!   would be. Criterion reports the mean; the rounds give p50/p99. Anchors:
//!   - `harness_spawn_hop`: no system at all, the stamp read back in the task
//!     the pacing thread spawns (the part of every anchor's figure that is the
//!     hand-off from the pacing thread to the runtime);
//!   - `redis_ping_rtt`: fred PING round trip, sent the same way (the floor);
//!   - `fred_xadd_xread`: fred XADD → a second fred client looping `XREAD BLOCK 1000
//!     COUNT 100` (the anchor of the targets);
//!   - `fred_publish_subscribe`: fred `PUBLISH` → a raw RESP2 `SUBSCRIBE`
//!     connection (fred's `SubscriberClient` needs its `i-pubsub` feature);
//!   - `nats_core_pub_sub`, `jetstream_memory`, `jetstream_file`: core NATS, and
//!     JetStream publish → an ordered pull consumer.
//!
//! How latency is measured: the benchmark thread paces the events on an absolute
//! schedule (event n is due at start + n/rate: it sleeps until shortly before and
//! yields the rest), stamps each with the time since a process-wide origin (the
//! first 8 bytes of the payload) and hands it to the system under test without
//! waiting for anything (the anchors spawn one task per event on a shared 2-worker
//! tokio runtime, as an application would). The receiver records `now - stamp` in
//! an hdrhistogram. The first `WARMUP_EVENTS` of every run are not recorded.
//!
//! Then, printed at the end: **interleaved rounds** (`rounds/redis_publish`,
//! `rounds/redis_latency`). Each round runs every contender once, in an order
//! rotated from round to round; the figures are pooled per contender and the
//! ratios against the anchors (raw fred pipeline and redis-benchmark for
//! throughput, fred XADD→XREAD for latency) are taken over the pooled figures, with
//! the range of the per-round ratios beside them. Rows of contenders whose name
//! starts with `tickbus` are checked against the targets of the issue.
//!
//! Run with `cargo bench --bench redis` (criterion groups, then the rounds; about
//! two minutes for the anchors), or `cargo bench --bench redis -- rounds` for the
//! rounds only. A filter also selects the rounds, as a substring of their ids.
//! Environment: `TICKBUS_TEST_REDIS_SERVER` (the server binary, see `test_util`),
//! `TICKBUS_BENCH_REDIS_BENCHMARK` (default: the `redis-benchmark` beside the
//! server binary, else from `PATH`), `TICKBUS_BENCH_NATS_URL` (default
//! `127.0.0.1:4222`).
//!
//! Files: this one (the harness: constants, the two contender traits and their
//! helpers, the contender lists, criterion groups, rounds, `main`), and under
//! `benches/redis/`: `fred_anchors.rs` (raw fred, the raw RESP2 subscriber),
//! `redis_benchmark.rs`, `nats_anchors.rs`. The tickbus contenders plug into
//! `throughput_contenders` and `latency_contenders` (marked `tickbus contender`),
//! implementing [`ThroughputRig`] and [`LatencyRig`] with the helpers below
//! ([`pace`], [`stamp`], [`read_stamp`], [`now_ns`], [`Recorder`], [`Env`]).

#[path = "support/args.rs"]
mod args;
#[path = "support/measure.rs"]
mod measure;
use args::Args;
use measure::fmt_range;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, SamplingMode, Throughput};
use fred::bytes::Bytes;
use fred::prelude::*;
use hdrhistogram::Histogram;
use tickbus::test_util::RedisServer;

#[path = "redis/fred_anchors.rs"]
mod fred_anchors;
#[path = "redis/nats_anchors.rs"]
mod nats_anchors;
#[path = "redis/redis_benchmark.rs"]
mod redis_benchmark;
#[path = "redis/tickbus_side.rs"]
mod tickbus_side;

// ---------------------------------------------------------------------------
// What one run does
// ---------------------------------------------------------------------------

/// Bytes of every payload.
pub const PAYLOAD_BYTES: usize = 128;
/// Events per contender per throughput round.
const THROUGHPUT_EVENTS: u64 = 100_000;
/// Throughput rounds (every contender once per round).
const THROUGHPUT_ROUNDS: usize = 5;
/// Events per criterion iteration in `redis_publish`.
const PUBLISH_BATCH: u64 = 10_000;
/// The publish rate of the latency benchmarks, events/s.
pub const LATENCY_RATE: u64 = 5_000;
/// Events recorded per contender per latency round (at 5 000/s: one second).
const LATENCY_EVENTS: u64 = 5_000;
/// Latency rounds (every contender once per round).
const LATENCY_ROUNDS: usize = 5;
/// Events sent (at the same rate) before the recorded ones of every latency run.
pub const WARMUP_EVENTS: u64 = 250;
/// How long a latency receiver waits past the end of the schedule for what is
/// missing before it gives up (and the loss is reported).
pub const RECEIVE_GRACE: Duration = Duration::from_secs(3);
/// The stream cap of every XADD (memory stays bounded whatever the run length).
pub const STREAM_MAXLEN: i64 = 1_000_000;
/// Events per fred `Pipeline`, and futures or JetStream acks in flight.
pub const IN_FLIGHT: usize = 256;
/// The NATS server (JetStream enabled) of the NATS contenders, unless
/// `TICKBUS_BENCH_NATS_URL` names another.
const NATS_URL: &str = "127.0.0.1:4222";

fn nats_url() -> String {
    std::env::var("TICKBUS_BENCH_NATS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| NATS_URL.to_string())
}

// Anchor names (the ratios are keyed by them).
pub const FRED_PIPELINE: &str = "fred_pipeline_256";
pub const FRED_PIPELINE_DATA: &str = "fred_pipeline_256_data_only";
pub const FRED_CONCURRENT: &str = "fred_concurrent_256";
pub const REDIS_BENCHMARK: &str = "redis_benchmark_p64";
pub const REDIS_BENCHMARK_4FIELDS: &str = "redis_benchmark_p64_4fields";
pub const JETSTREAM_MEMORY_PUBLISH: &str = "jetstream_memory_256";
pub const JETSTREAM_FILE_PUBLISH: &str = "jetstream_file_256";
pub const SPAWN_HOP: &str = "harness_spawn_hop";
pub const PING_RTT: &str = "redis_ping_rtt";
pub const XADD_XREAD: &str = "fred_xadd_xread";
pub const PUBLISH_SUBSCRIBE: &str = "fred_publish_subscribe";
pub const NATS_CORE: &str = "nats_core_pub_sub";
pub const JETSTREAM_MEMORY_LATENCY: &str = "jetstream_memory";
pub const JETSTREAM_FILE_LATENCY: &str = "jetstream_file";

// ---------------------------------------------------------------------------
// The contenders
// ---------------------------------------------------------------------------

/// A durable publisher.
pub trait ThroughputRig {
    fn name(&self) -> &'static str;
    /// Publishes `events` 128-byte payloads as fast as the system allows and
    /// returns the time taken until the last one is durable (acknowledged by the
    /// server). Set-up and clean-up (fresh keys, deleting them) stay outside it.
    fn run(&mut self, events: u64) -> Duration;
}

/// A publisher and a receiver on separate connections (two instances).
pub trait LatencyRig {
    fn name(&self) -> &'static str;
    /// Publishes `WARMUP_EVENTS + events` 128-byte payloads paced at `rate_per_s`
    /// ([`pace`]) and returns the one-way publish→receive latencies (ns) of the last
    /// `events` (fewer if some never arrived within `RECEIVE_GRACE`).
    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64>;
}

/// What the contenders share: the private Redis, a runtime for the anchors, and
/// NATS when it is there.
pub struct Env {
    /// The private `redis-server` of this run.
    pub redis: RedisServer,
    /// Its URL (`redis://127.0.0.1:PORT`).
    pub url: String,
    /// A 2-worker tokio runtime on which the anchors run their clients and tasks.
    pub runtime: tokio::runtime::Runtime,
    /// A fred client for set-up and clean-up (deleting keys), never timed.
    pub admin: Client,
    /// A connection to the NATS server, `None` if it was unreachable.
    pub nats: Option<async_nats::Client>,
}

/// The durable publishers, anchors first.
fn throughput_contenders(env: &Env) -> Vec<Box<dyn ThroughputRig>> {
    let mut rigs: Vec<Box<dyn ThroughputRig>> = vec![
        Box::new(fred_anchors::FredPipeline::new(env)),
        Box::new(fred_anchors::FredPipeline::data_only(env)),
        Box::new(fred_anchors::FredConcurrent::new(env)),
    ];
    rigs.extend(redis_benchmark::contenders(env));
    rigs.extend(nats_anchors::throughput_contenders(env));
    // The tickbus contender.
    rigs.push(Box::new(tickbus_side::TickbusPublish::new(env)));
    rigs
}

/// The publisher→receiver pairs, anchors first.
fn latency_contenders(env: &Env) -> Vec<Box<dyn LatencyRig>> {
    let mut rigs: Vec<Box<dyn LatencyRig>> = vec![
        Box::new(fred_anchors::SpawnHop::new(env)),
        Box::new(fred_anchors::PingRtt::new(env)),
        Box::new(fred_anchors::XaddXread::new(env)),
        Box::new(fred_anchors::PublishSubscribe::new(env)),
    ];
    rigs.extend(nats_anchors::latency_contenders(env));
    // The tickbus contender.
    rigs.push(Box::new(tickbus_side::TickbusLatency::new(env)));
    rigs
}

// ---------------------------------------------------------------------------
// Helpers for the contenders
// ---------------------------------------------------------------------------

/// The origin of every latency stamp (set first thing in `main`).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since the process-wide origin: the clock of every latency stamp.
#[inline]
pub fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

/// Wall-clock nanoseconds since the Unix epoch (the `ts` field of an entry).
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// A 128-byte payload carrying the send instant and the sequence number: bytes
/// 0..8 `sent_ns` (little-endian, [`now_ns`]), 8..16 `seq`, then filler.
pub fn stamp(seq: u64, sent_ns: u64) -> Bytes {
    let mut payload = filler_payload();
    payload[..8].copy_from_slice(&sent_ns.to_le_bytes());
    payload[8..16].copy_from_slice(&seq.to_le_bytes());
    Bytes::from(payload)
}

/// `(seq, sent_ns)` of a payload made by [`stamp`].
pub fn read_stamp(payload: &[u8]) -> Option<(u64, u64)> {
    let sent_ns = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, sent_ns))
}

/// 128 binary bytes (not valid UTF-8).
pub fn filler_payload() -> Vec<u8> {
    (0..PAYLOAD_BYTES)
        .map(|i| (i as u8).wrapping_mul(151).wrapping_add(0x80))
        .collect()
}

/// 128 printable bytes, for command lines.
pub fn ascii_payload() -> String {
    (0..PAYLOAD_BYTES)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// The histogram of every latency figure: 1 ns to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// What a latency receiver keeps: the histogram of the recorded events, and how
/// many events (warm-up included) it has seen.
pub struct Recorder {
    pub histogram: Histogram<u64>,
    pub seen: u64,
    total: u64,
}

impl Recorder {
    /// A receiver of `WARMUP_EVENTS + events` events.
    pub fn new(events: u64) -> Self {
        Recorder {
            histogram: new_histogram(),
            seen: 0,
            total: WARMUP_EVENTS + events,
        }
    }

    /// One event received at `now_ns` (warm-up events are counted, not recorded).
    #[inline]
    pub fn record(&mut self, seq: u64, sent_ns: u64, now_ns: u64) {
        self.seen += 1;
        if seq >= WARMUP_EVENTS {
            self.histogram
                .saturating_record(now_ns.saturating_sub(sent_ns).max(1));
        }
    }

    /// One payload made by [`stamp`], received at `now_ns`.
    #[inline]
    pub fn record_payload(&mut self, payload: &[u8], now_ns: u64) {
        if let Some((seq, sent_ns)) = read_stamp(payload) {
            self.record(seq, sent_ns, now_ns);
        }
    }

    /// Whether every event sent has been seen.
    pub fn done(&self) -> bool {
        self.seen >= self.total
    }

    /// When a receiver of a run paced at `rate_per_s` starting now gives up.
    pub fn deadline(&self, rate_per_s: u64) -> tokio::time::Instant {
        tokio::time::Instant::now()
            + Duration::from_secs_f64(self.total as f64 / rate_per_s as f64)
            + RECEIVE_GRACE
    }
}

/// How long before each deadline [`pace`] stops sleeping and yields instead
/// (`thread::sleep` overshoots by the timer slack, about 50 µs).
const SLEEP_MARGIN: Duration = Duration::from_micros(70);

/// Calls `send(seq)` for `seq` in `0..WARMUP_EVENTS + events` on the current
/// thread, on an absolute schedule: event `seq` is due at `start + seq / rate`
/// (late events do not push the later ones back). Returns the time the schedule
/// took. `send` should take its stamp ([`now_ns`]) itself and not wait for the
/// system under test.
pub fn pace(events: u64, rate_per_s: u64, mut send: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for seq in 0..WARMUP_EVENTS + events {
        let due =
            start + Duration::from_nanos((seq as u128 * 1_000_000_000 / rate_per_s as u128) as u64);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > SLEEP_MARGIN {
                thread::sleep(left - SLEEP_MARGIN);
            } else {
                thread::yield_now();
            }
        }
        send(seq);
    }
    start.elapsed()
}

/// A fresh name under `prefix` (unique in this process).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}:{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Env {
    /// A fred client of the private Redis (see [`fred_client`]).
    pub fn fred_client(&self, timeout: Duration) -> Client {
        fred_client(&self.url, self.runtime.handle(), timeout)
    }

    /// A handle on the anchors' runtime.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// What a rig needs to delete its keys after a run.
    pub fn cleaner(&self) -> Cleaner {
        Cleaner {
            handle: self.handle(),
            admin: self.admin.clone(),
        }
    }
}

/// A connected fred client of `url`, with a reconnect policy (fred has none by
/// default) and a command timeout of `timeout` (to fail rather than hang; longer
/// than any server-side BLOCK).
pub fn fred_client(url: &str, handle: &tokio::runtime::Handle, timeout: Duration) -> Client {
    let config = Config::from_url(url).expect("redis url");
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
        .with_performance_config(|performance| {
            performance.default_command_timeout = timeout;
        })
        .build()
        .expect("fred client");
    handle
        .block_on(client.init())
        .expect("connect to the private redis-server");
    client
}

/// Deletes keys after a run (never timed).
#[derive(Clone)]
pub struct Cleaner {
    handle: tokio::runtime::Handle,
    admin: Client,
}

impl Cleaner {
    /// `XLEN key`.
    pub fn stream_len(&self, key: &str) -> u64 {
        let len: FredResult<u64> = self.handle.block_on(self.admin.xlen(key));
        len.expect("XLEN")
    }

    pub fn delete(&self, key: &str) {
        let deleted: FredResult<i64> = self.handle.block_on(self.admin.del(key));
        deleted.expect("DEL");
    }
}

/// Runs `future` as a task on `handle`'s runtime (on a worker, as application
/// code would) and waits for it on the current thread.
pub fn run_on<F>(handle: &tokio::runtime::Handle, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle
        .block_on(handle.spawn(future))
        .expect("benchmark task panicked")
}

// ---------------------------------------------------------------------------
// Criterion groups
// ---------------------------------------------------------------------------

fn publish_criterion(c: &mut Criterion, rigs: &mut [Box<dyn ThroughputRig>]) {
    let mut group = c.benchmark_group("redis_publish");
    group.throughput(Throughput::Elements(PUBLISH_BATCH));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for rig in rigs.iter_mut() {
        let name = rig.name();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| rig.run(iters * PUBLISH_BATCH))
        });
    }
    group.finish();
}

fn latency_criterion(c: &mut Criterion, rigs: &mut [Box<dyn LatencyRig>]) {
    let mut group = c.benchmark_group("redis_latency");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    // These are sums of one-way latencies (criterion plans with them), not wall
    // time: at 5 000 events/s and ~80 µs each, one second of latencies takes about
    // 2.5 s of schedule.
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(1));
    for rig in rigs.iter_mut() {
        let name = rig.name();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let histogram = rig.run(iters, LATENCY_RATE);
                // Lost events count as their share of the mean.
                Duration::from_nanos((histogram.mean() * iters as f64) as u64)
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Interleaved rounds
// ---------------------------------------------------------------------------

fn fmt_ratio(numerator: Option<f64>, denominator: Option<f64>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
        _ => "n/a".to_string(),
    }
}

/// `min–max` of per-round ratios.
/// Per-round ratios of `values[a] / values[b]` (rounds where both ran).
fn round_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter(|(_, &d)| d > 0.0)
        .map(|(&n, &d)| n / d)
        .collect()
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Every durable publisher in turn, `rounds` times, `events` events each.
fn publish_rounds(rigs: &mut [Box<dyn ThroughputRig>], rounds: usize, events: u64) -> Vec<String> {
    let count = rigs.len();
    // Per contender: per-round events/s.
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); count];
    let mut seconds = vec![0f64; count];
    for rig in rigs.iter_mut() {
        rig.run(events / 10); // warm up
    }
    for round in 0..rounds {
        for offset in 0..count {
            let index = (round + offset) % count;
            let elapsed = rigs[index].run(events).as_secs_f64();
            seconds[index] += elapsed;
            rates[index].push(events as f64 / elapsed);
        }
    }
    let names: Vec<&str> = rigs.iter().map(|rig| rig.name()).collect();
    let position = |name: &str| names.iter().position(|n| *n == name);
    let pooled = |index: usize| events as f64 * rates[index].len() as f64 / seconds[index];
    let anchor_fred = position(FRED_PIPELINE);
    let anchor_rb = position(REDIS_BENCHMARK);
    let mut lines = vec![
        format!(
            "rounds/redis_publish: {rounds} rounds of {events} events ({PAYLOAD_BYTES}-byte payloads) per contender, \
             order rotated each round; events/s until the last is acknowledged"
        ),
        format!(
            "  | {:<28} | {:>9} | {:>17} | {:>9} | {:>11} | {:>9} | {:>11} |",
            "contender",
            "k ev/s",
            "rounds min–max",
            "× fred",
            "(per round)",
            "× rb -P64",
            "(per round)"
        ),
        "  |---|---|---|---|---|---|---|".to_string(),
    ];
    let ratio_to = |index: usize, anchor: Option<usize>| match anchor {
        Some(anchor) => (
            fmt_ratio(Some(pooled(index)), Some(pooled(anchor))),
            fmt_range(&round_ratios(&rates[index], &rates[anchor]), 2),
        ),
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    for index in 0..count {
        let min = rates[index].iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates[index].iter().copied().fold(0.0, f64::max);
        let (fred, fred_range) = ratio_to(index, anchor_fred);
        let (rb, rb_range) = ratio_to(index, anchor_rb);
        lines.push(format!(
            "  | {:<28} | {:>9.1} | {:>17} | {:>9} | {:>11} | {:>9} | {:>11} |",
            names[index],
            pooled(index) / 1e3,
            format!("{:.1}–{:.1}", min / 1e3, max / 1e3),
            fred,
            fred_range,
            rb,
            rb_range,
        ));
    }
    let jetstreams: Vec<usize> = [JETSTREAM_MEMORY_PUBLISH, JETSTREAM_FILE_PUBLISH]
        .into_iter()
        .filter_map(position)
        .collect();
    for (index, name) in names.iter().enumerate() {
        if !name.starts_with("tickbus") {
            continue;
        }
        let mut checks = Vec::new();
        if let Some(anchor) = anchor_fred {
            let ratio = pooled(index) / pooled(anchor);
            checks.push(format!(
                "≥ 1.0× {FRED_PIPELINE}: {ratio:.2} {}",
                verdict(ratio >= 1.0)
            ));
        }
        if let Some(anchor) = anchor_rb {
            let ratio = pooled(index) / pooled(anchor);
            checks.push(format!(
                "≥ 0.6× {REDIS_BENCHMARK}: {ratio:.2} {}",
                verdict(ratio >= 0.6)
            ));
        }
        for &anchor in &jetstreams {
            let ratio = pooled(index) / pooled(anchor);
            checks.push(format!(
                "ahead of {}: {ratio:.2} {}",
                names[anchor],
                verdict(ratio > 1.0)
            ));
        }
        lines.push(format!("  targets {name}: {}", checks.join("; ")));
    }
    lines
}

/// Every publisher→receiver pair in turn, `rounds` times, `events` recorded
/// events each at `rate_per_s`.
fn latency_rounds(
    rigs: &mut [Box<dyn LatencyRig>],
    rounds: usize,
    events: u64,
    rate_per_s: u64,
) -> Vec<String> {
    let count = rigs.len();
    let mut pooled: Vec<Histogram<u64>> = (0..count).map(|_| new_histogram()).collect();
    // Per contender: per-round p50 and p99, ns.
    let mut p50s: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); count];
    let mut p99s: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); count];
    let mut lost = vec![0u64; count];
    for round in 0..rounds {
        for offset in 0..count {
            let index = (round + offset) % count;
            let histogram = rigs[index].run(events, rate_per_s);
            lost[index] += events.saturating_sub(histogram.len());
            if histogram.is_empty() {
                continue;
            }
            p50s[index].push(histogram.value_at_quantile(0.5) as f64);
            p99s[index].push(histogram.value_at_quantile(0.99) as f64);
            pooled[index].add(&histogram).expect("same bounds");
        }
    }
    let names: Vec<&str> = rigs.iter().map(|rig| rig.name()).collect();
    let position = |name: &str| names.iter().position(|n| *n == name);
    let quantile = |index: usize, q: f64| {
        (!pooled[index].is_empty()).then(|| pooled[index].value_at_quantile(q) as f64)
    };
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1e3);
    let anchor = position(XADD_XREAD);
    let mut lines = vec![
        format!(
            "rounds/redis_latency: {rounds} rounds of {events} events (after {WARMUP_EVENTS} unrecorded) at \
             {rate_per_s}/s per contender, order rotated each round; one-way publish→receive, µs"
        ),
        format!(
            "  | {:<24} | {:>6} | {:>4} | {:>7} | {:>7} | {:>7} | {:>7} | {:>8} | {:>7} | {:>10} | {:>11} | {:>10} | {:>11} |",
            "contender",
            "events",
            "lost",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean",
            "p50 × xread",
            "(per round)",
            "p99 × xread",
            "(per round)"
        ),
        "  |---|---|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for index in 0..count {
        let histogram = &pooled[index];
        if histogram.is_empty() {
            lines.push(format!(
                "  | {:<24} | {:>6} | {:>4} |",
                names[index], 0, lost[index]
            ));
            continue;
        }
        let (p50, p50_range, p99, p99_range) = match anchor {
            Some(anchor) => (
                fmt_ratio(quantile(index, 0.5), quantile(anchor, 0.5)),
                fmt_range(&round_ratios(&p50s[index], &p50s[anchor]), 2),
                fmt_ratio(quantile(index, 0.99), quantile(anchor, 0.99)),
                fmt_range(&round_ratios(&p99s[index], &p99s[anchor]), 2),
            ),
            None => Default::default(),
        };
        lines.push(format!(
            "  | {:<24} | {:>6} | {:>4} | {:>7} | {:>7} | {:>7} | {:>7} | {:>8} | {:>7.1} | {:>11} | {:>11} | {:>11} | {:>11} |",
            names[index],
            histogram.len(),
            lost[index],
            us(histogram.value_at_quantile(0.5)),
            us(histogram.value_at_quantile(0.9)),
            us(histogram.value_at_quantile(0.99)),
            us(histogram.value_at_quantile(0.999)),
            us(histogram.max()),
            histogram.mean() / 1e3,
            p50,
            p50_range,
            p99,
            p99_range,
        ));
    }
    let jetstreams: Vec<usize> = [JETSTREAM_MEMORY_LATENCY, JETSTREAM_FILE_LATENCY]
        .into_iter()
        .filter_map(position)
        .collect();
    for (index, name) in names.iter().enumerate() {
        if !name.starts_with("tickbus") {
            continue;
        }
        let (Some(p50), Some(p99)) = (quantile(index, 0.5), quantile(index, 0.99)) else {
            lines.push(format!("  targets {name}: nothing received"));
            continue;
        };
        let mut checks = Vec::new();
        if let Some(anchor) = anchor {
            if let (Some(a50), Some(a99)) = (quantile(anchor, 0.5), quantile(anchor, 0.99)) {
                checks.push(format!(
                    "p50 ≤ 1.2× {XADD_XREAD}: {:.2} {}",
                    p50 / a50,
                    verdict(p50 <= 1.2 * a50)
                ));
                checks.push(format!(
                    "p99 ≤ 1.5× {XADD_XREAD}: {:.2} {}",
                    p99 / a99,
                    verdict(p99 <= 1.5 * a99)
                ));
            }
        }
        for &other in &jetstreams {
            if let (Some(o50), Some(o99)) = (quantile(other, 0.5), quantile(other, 0.99)) {
                checks.push(format!(
                    "ahead of {} (p50 {:.2}×, p99 {:.2}×) {}",
                    names[other],
                    p50 / o50,
                    p99 / o99,
                    verdict(p50 < o50 && p99 < o99)
                ));
            }
        }
        if lost[index] > 0 {
            checks.push(format!("LOST {} events", lost[index]));
        }
        lines.push(format!("  targets {name}: {}", checks.join("; ")));
    }
    lines
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

/// Connects to NATS, or says why not.
fn connect_nats(runtime: &tokio::runtime::Runtime) -> Option<async_nats::Client> {
    let url = nats_url();
    let connect = async {
        tokio::time::timeout(
            Duration::from_secs(3),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .connect(url.as_str()),
        )
        .await
    };
    match runtime.block_on(connect) {
        Ok(Ok(client)) => Some(client),
        Ok(Err(error)) => {
            println!("NATS at {url} unreachable ({error}): the NATS contenders are skipped");
            None
        }
        Err(_) => {
            println!("NATS at {url} did not answer in 3 s: the NATS contenders are skipped");
            None
        }
    }
}

fn main() {
    origin();
    let args = Args::parse();
    let mut criterion = Criterion::default().configure_from_args();

    let redis = RedisServer::start().expect("start a private redis-server");
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let nats = connect_nats(&runtime);
    let admin = fred_client(&url, runtime.handle(), Duration::from_secs(30));
    let env = Env {
        redis,
        url,
        runtime,
        admin,
        nats,
    };
    let version = env
        .redis
        .version()
        .map_or("?".to_string(), |(major, minor, patch)| {
            format!("{major}.{minor}.{patch}")
        });
    println!(
        "private redis-server {version} on port {}; NATS {}; {} cores",
        env.redis.port(),
        if env.nats.is_some() {
            nats_url()
        } else {
            "skipped".to_string()
        },
        thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let mut summary = Vec::new();
    {
        let mut rigs = throughput_contenders(&env);
        publish_criterion(&mut criterion, &mut rigs);
        if args.wants("rounds/redis_publish") {
            summary.extend(publish_rounds(
                &mut rigs,
                THROUGHPUT_ROUNDS,
                THROUGHPUT_EVENTS,
            ));
        }
    }
    {
        let mut rigs = latency_contenders(&env);
        latency_criterion(&mut criterion, &mut rigs);
        if args.wants("rounds/redis_latency") {
            summary.extend(latency_rounds(
                &mut rigs,
                LATENCY_ROUNDS,
                LATENCY_EVENTS,
                LATENCY_RATE,
            ));
        }
    }
    criterion.final_summary();

    if !summary.is_empty() {
        println!("\n==== interleaved rounds (private redis-server {version}) ====");
        for line in summary {
            println!("{line}");
        }
    }
}

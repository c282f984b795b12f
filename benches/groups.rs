//! Consumer-group consumption throughput against Redis: a tickbus [`Consumer`]
//! beside raw fred `XREADGROUP` + `XACK`, on the same prefilled stream, in one run.
//!
//! Every figure is taken against a PRIVATE `redis-server` that the bench starts
//! itself (`tickbus::test_util::RedisServer`: a free port, a temporary directory),
//! never against a shared one.
//!
//! The stream: `ROUND_EVENTS` (200 000) tickbus entries of one topic
//! (`bench:groups-rounds`), published once through a durable topic before anything
//! is timed, so that they have tickbus's wire layout (fields `id`, `src`, `ts`,
//! `data`; see `docs/redis-layout.md`). The payload is 128 bytes, a MessagePack
//! `bin` (`serde_bytes::ByteArray<128>`, 130 bytes encoded). The criterion group
//! reads a second, shorter stream (`CRITERION_EVENTS`, `bench:groups-criterion`).
//!
//! Every run of every contender creates a fresh group at the stream's beginning,
//! reads the whole stream, decodes and "handles" (`black_box`) every payload and
//! acknowledges every entry; it is timed until the last `XACK` is confirmed.
//! Then (untimed) the group's pending count is checked to be 0 and the group is
//! destroyed. Contenders (the same batch and in-flight bound everywhere):
//!
//! * `tickbus_group`: `Bus::group::<Payload>(…, GroupConfig { start: Beginning,
//!   batch: 512, max_in_flight: 2048, .. })`, and an application task on a 2-worker
//!   tokio runtime looping `consumer.recv().await`, `black_box` on the payload,
//!   `delivery.ack()` (the last one `ack_confirmed().await`), until
//!   `stats().acked` is the stream's length. The clock starts when `Bus::group`
//!   has returned (the consumer's connections are open, its group created); that
//!   start-up is reported beside the table.
//! * `fred_xreadgroup_xack` (the anchor): raw fred on the same runtime, two
//!   clients. One loops `XREADGROUP GROUP g c COUNT 512 STREAMS key >`, walks the
//!   reply and decodes each entry the way tickbus does (`id` and `src` parsed as
//!   UUIDs, `ts` as a decimal integer, `data` with rmp-serde into the same
//!   `Payload`), `black_box`es the payload and hands the batch's ids to the second
//!   client as one multi-id `XACK`, spawned and not awaited, so acks are
//!   pipelined behind the reads. At most 2 048 entries are read and not yet
//!   acknowledged (tickbus's `max_in_flight`): when the next read would exceed
//!   that, it waits for the oldest `XACK`.
//! * `fred_xreadgroup_xack_1client` (for reference): the same on ONE client,
//!   each `XACK` spawned before the next `XREADGROUP` (fred pipelines them on the
//!   one connection).
//! * `fred_xreadgroup_noack` (for reference, the read floor): the same reads with
//!   `NOACK` (nothing enters the pending list, nothing to acknowledge).
//!
//! Criterion group `group_consume` (means over the short stream), then
//! **interleaved rounds** (`rounds/group_consume`, `ROUNDS` of them): each round
//! runs every contender once, in an order rotated from round to round; figures are
//! pooled per contender and the ratio to the anchor is taken over the pooled
//! figures, with the range of the per-round ratios beside it. The target:
//! `tickbus_group` ≥ 0.7× the anchor. Beside the rates, to say where the time
//! goes on a machine where the client and the server share the cores: the CPU
//! time per event of the bench process (its runtime workers apart; the rest is
//! tickbus's consumer I/O thread) and of the redis-server, from `/proc`, and the
//! commands each contender sent and the server's time in them, from `INFO
//! commandstats` (reset before each run).
//!
//! Run with `cargo bench --bench groups --all-features` (criterion, then the
//! rounds; two to three minutes on a busy 2-vCPU machine), or
//! `cargo bench --bench groups --all-features -- rounds` for the rounds only. A
//! filter also selects contenders of the rounds, as a substring of
//! `rounds/group_consume/<name>` (`-- rounds/group_consume/tickbus` for tickbus
//! alone, to profile it). Environment: `TICKBUS_TEST_REDIS_SERVER` (the server
//! binary, see `test_util`); `TICKBUS_BENCH_GROUP_BATCH` and
//! `TICKBUS_BENCH_GROUP_MAX_IN_FLIGHT` (default 512 and 2 048) change the batch
//! and the in-flight bound of every contender.

#[path = "support/args.rs"]
mod args;
#[path = "support/measure.rs"]
mod measure;

use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use args::Args;
use criterion::{Criterion, SamplingMode, Throughput};
use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::streams::XID;
use fred::types::{ClusterHash, CustomCommand};
use measure::{min_max, process_cpu, threads_cpu};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use tickbus::group::{Consumer, GroupConfig};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig, Retention, StartAt};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------
// What one run does
// ---------------------------------------------------------------------------

/// Bytes of every payload.
const PAYLOAD_BYTES: usize = 128;
/// Entries of the stream the rounds read (every run reads all of them).
const ROUND_EVENTS: u64 = 200_000;
/// Interleaved rounds (every contender once per round).
const ROUNDS: usize = 8;
/// Entries of the stream of the criterion group (one iteration reads them all).
const CRITERION_EVENTS: u64 = 20_000;
/// Entries per `XREADGROUP` (`GroupConfig::batch`, `COUNT` of the anchors),
/// unless `TICKBUS_BENCH_GROUP_BATCH` says otherwise.
const BATCH: usize = 512;
/// Entries read and not yet acknowledged, at most (`GroupConfig::max_in_flight`,
/// and the anchors' bound), unless `TICKBUS_BENCH_GROUP_MAX_IN_FLIGHT` says
/// otherwise.
const MAX_IN_FLIGHT: usize = 2048;

/// The batch and in-flight bound of this run: `(batch, max_in_flight)`.
fn tuning() -> (usize, usize) {
    static TUNING: OnceLock<(usize, usize)> = OnceLock::new();
    *TUNING.get_or_init(|| {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.parse().ok())
                .filter(|&value: &usize| value > 0)
                .unwrap_or(default)
        };
        let batch = var("TICKBUS_BENCH_GROUP_BATCH", BATCH);
        (
            batch,
            var("TICKBUS_BENCH_GROUP_MAX_IN_FLIGHT", MAX_IN_FLIGHT).max(batch),
        )
    })
}

/// The consumer name in every group.
const CONSUMER: &str = "bench";
/// Command timeout of the anchors' clients.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The name of a tickbus consumer's I/O thread.
const IO_THREAD: &str = "tickbus-group";
/// The name of the runtime's worker threads.
const WORKER_THREAD: &str = "bench-worker";
/// The topics of the two streams.
const ROUNDS_TOPIC: &str = "bench:groups-rounds";
const CRITERION_TOPIC: &str = "bench:groups-criterion";

// Contender names (the ratios are keyed by them).
const TICKBUS_GROUP: &str = "tickbus_group";
const FRED_ANCHOR: &str = "fred_xreadgroup_xack";
const FRED_ONE_CLIENT: &str = "fred_xreadgroup_xack_1client";
const FRED_NOACK: &str = "fred_xreadgroup_noack";

/// The benchmark's event: 128 bytes, a MessagePack `bin`.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Payload(ByteArray<PAYLOAD_BYTES>);

impl Payload {
    fn filler() -> Self {
        let mut array = [0_u8; PAYLOAD_BYTES];
        for (i, byte) in array.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(151).wrapping_add(0x80);
        }
        Payload(ByteArray::new(array))
    }
}

/// A prefilled stream of tickbus entries.
struct Prefilled {
    topic: &'static str,
    key: String,
    events: u64,
}

/// A consumer of a whole stream through a fresh group.
trait GroupRig {
    fn name(&self) -> &'static str;
    /// Creates a fresh group at the beginning of `stream`, reads, decodes,
    /// handles and acknowledges all its entries, and returns the time taken until
    /// the last acknowledgement was confirmed. Set-up and clean-up stay outside.
    fn run(&mut self, stream: &Prefilled) -> Duration;
    /// A line to print under the table.
    fn note(&self) -> Option<String> {
        None
    }
}

/// What the contenders share.
struct Env {
    /// The private `redis-server` of this run.
    redis: RedisServer,
    /// Its URL.
    url: String,
    /// A 2-worker tokio runtime: the application tasks of every contender, and
    /// the anchors' fred clients.
    runtime: tokio::runtime::Runtime,
    /// A fred client for set-up and checks, never timed.
    admin: Client,
}

impl Env {
    fn handle(&self) -> Handle {
        self.runtime.handle().clone()
    }

    fn fred_client(&self) -> Client {
        fred_client(&self.url, self.runtime.handle())
    }

    fn checker(&self) -> Checker {
        Checker {
            handle: self.handle(),
            admin: self.admin.clone(),
        }
    }
}

/// A connected fred client of `url` (command timeout `COMMAND_TIMEOUT`).
fn fred_client(url: &str, handle: &Handle) -> Client {
    let config = Config::from_url(url).expect("redis url");
    let client = Builder::from_config(config)
        .with_performance_config(|performance| {
            performance.default_command_timeout = COMMAND_TIMEOUT;
        })
        .build()
        .expect("fred client");
    handle
        .block_on(client.init())
        .expect("connect to the private redis-server");
    client
}

/// Untimed checks and clean-up of a group after a run.
struct Checker {
    handle: Handle,
    admin: Client,
}

impl Checker {
    /// `XGROUP CREATE key group 0`.
    fn create(&self, key: &str, group: &str) {
        let created: FredResult<Value> = self
            .handle
            .block_on(self.admin.xgroup_create(key, group, "0", false));
        created.expect("XGROUP CREATE");
    }

    /// Checks that nothing is pending in `group`, then destroys it.
    fn finish(&self, key: &str, group: &str) {
        let summary: FredResult<Value> = self.handle.block_on(self.admin.xpending(key, group, ()));
        let pending = match summary.expect("XPENDING") {
            Value::Array(parts) => parts.first().and_then(Value::as_u64),
            _ => None,
        };
        assert_eq!(pending, Some(0), "entries left pending in group {group}");
        let destroyed: FredResult<Value> =
            self.handle.block_on(self.admin.xgroup_destroy(key, group));
        destroyed.expect("XGROUP DESTROY");
    }
}

/// Calls and server time (µs) of the commands a run sent, from `INFO commandstats`.
#[derive(Clone, Copy, Default)]
struct Commands {
    reads: u64,
    read_us: u64,
    acks: u64,
    ack_us: u64,
    /// Other commands of the contender (the checker's own are left out).
    others: u64,
    other_us: u64,
}

impl Commands {
    fn add(&mut self, other: Commands) {
        self.reads += other.reads;
        self.read_us += other.read_us;
        self.acks += other.acks;
        self.ack_us += other.ack_us;
        self.others += other.others;
        self.other_us += other.other_us;
    }
}

impl Checker {
    /// `CONFIG RESETSTAT`: zeroes the command statistics.
    fn reset_stats(&self) {
        let command = CustomCommand::new_static("CONFIG", ClusterHash::Random, false);
        let reset: FredResult<Value> = self
            .handle
            .block_on(self.admin.custom(command, vec!["RESETSTAT"]));
        reset.expect("CONFIG RESETSTAT");
    }

    /// The command statistics since the last [`reset_stats`](Checker::reset_stats),
    /// without the commands of the checker itself.
    fn commands(&self) -> Commands {
        let command = CustomCommand::new_static("INFO", ClusterHash::Random, false);
        let info: FredResult<String> = self
            .handle
            .block_on(self.admin.custom(command, vec!["commandstats"]));
        let mut commands = Commands::default();
        for line in info.expect("INFO commandstats").lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|line| line.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (calls, usec) = (field("calls"), field("usec"));
            match name {
                "xreadgroup" => (commands.reads, commands.read_us) = (calls, usec),
                "xack" => (commands.acks, commands.ack_us) = (calls, usec),
                // The checker's: set-up, checks and clean-up.
                "xgroup|create" | "xgroup|destroy" | "xpending" | "info" | "config|resetstat" => {}
                _ => {
                    commands.others += calls;
                    commands.other_us += usec;
                }
            }
        }
        commands
    }
}

/// A fresh group name (unique in this process).
fn unique_group(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `future` as a task on `handle`'s runtime (on a worker, as application
/// code would) and waits for it on the current thread.
fn run_on<F>(handle: &Handle, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle
        .block_on(handle.spawn(future))
        .expect("benchmark task panicked")
}

// ---------------------------------------------------------------------------
// tickbus
// ---------------------------------------------------------------------------

/// A `Consumer` per run, its deliveries handled on the shared runtime.
struct TickbusGroup {
    bus: LiveBus,
    handle: Handle,
    checker: Checker,
    /// Time `Bus::group` took, per run (untimed).
    startups: Vec<Duration>,
    /// Per run: events, CPU seconds of the consumer's I/O thread, seconds timed.
    io_threads: Vec<(u64, f64, f64)>,
}

impl TickbusGroup {
    fn new(env: &Env) -> Self {
        let config = RedisConfig::from_url(&env.url).expect("the private Redis URL");
        TickbusGroup {
            bus: Bus::builder().redis(config).build().expect("a live bus"),
            handle: env.handle(),
            checker: env.checker(),
            startups: Vec::new(),
            io_threads: Vec::new(),
        }
    }

    fn config() -> GroupConfig {
        GroupConfig {
            start: StartAt::Beginning,
            consumer: Some(CONSUMER.to_string()),
            batch: tuning().0,
            max_in_flight: tuning().1,
            ..Default::default()
        }
    }
}

impl GroupRig for TickbusGroup {
    fn name(&self) -> &'static str {
        TICKBUS_GROUP
    }

    fn run(&mut self, stream: &Prefilled) -> Duration {
        let group = unique_group("tickbus");
        let setup = Instant::now();
        let consumer: Consumer<Payload> = self
            .bus
            .group(&group, stream.topic, Self::config())
            .expect("a consumer");
        self.startups.push(setup.elapsed());
        let events = stream.events;
        let (elapsed, consumer) = run_on(&self.handle, async move {
            let mut consumer = consumer;
            let start = Instant::now();
            let mut received = 0;
            while received < events - 1 {
                let delivery = consumer
                    .recv()
                    .await
                    .expect("the consumer ended")
                    .expect("a delivery");
                black_box(&delivery.0);
                delivery.ack();
                received += 1;
            }
            let last = consumer
                .recv()
                .await
                .expect("the consumer ended")
                .expect("a delivery");
            black_box(&last.0);
            last.ack_confirmed().await.expect("the last ack");
            // Acks are sent in order, so all are confirmed; this loop never spins.
            while consumer.stats().acked < events {
                tokio::task::yield_now().await;
            }
            (start.elapsed(), consumer)
        });
        let io_cpu = threads_cpu(IO_THREAD);
        self.io_threads
            .push((events, io_cpu, elapsed.as_secs_f64()));
        let stats = consumer.stats();
        assert_eq!(stats.delivered, events, "{stats:?}");
        assert_eq!(stats.acked, events, "{stats:?}");
        assert_eq!(stats.errors, 0, "{stats:?}");
        consumer.shutdown();
        self.checker.finish(&stream.key, &group);
        elapsed
    }

    fn note(&self) -> Option<String> {
        let mut startups = self.startups.clone();
        startups.sort();
        let median = startups.get(startups.len() / 2)?;
        let max = startups.last()?;
        let most = self.io_threads.iter().map(|run| run.0).max()?;
        let (events, cpu, seconds) = self
            .io_threads
            .iter()
            .filter(|run| run.0 == most)
            .fold((0, 0.0, 0.0), |sum, run| {
                (sum.0 + run.0, sum.1 + run.1, sum.2 + run.2)
            });
        Some(format!(
            "{TICKBUS_GROUP}: the consumer's I/O thread `{IO_THREAD}` used {:.2} µs CPU per event, \
             busy {:.0}% of the timed runs of {most} events; Bus::group start-up (untimed) median \
             {:.2} ms, max {:.2} ms over {} runs",
            cpu * 1e6 / events as f64,
            cpu * 100.0 / seconds,
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            startups.len()
        ))
    }
}

// ---------------------------------------------------------------------------
// Raw fred
// ---------------------------------------------------------------------------

/// How a raw fred contender acknowledges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// `XACK` on a second client.
    SecondClient,
    /// `XACK` on the reading client.
    SameClient,
    /// `XREADGROUP … NOACK`: nothing to acknowledge.
    NoAck,
}

/// `XREADGROUP` in a loop, each batch decoded, handled and acknowledged.
struct FredGroup {
    name: &'static str,
    mode: AckMode,
    handle: Handle,
    reader: Client,
    acker: Client,
    checker: Checker,
}

impl FredGroup {
    fn new(env: &Env, mode: AckMode) -> Self {
        let reader = env.fred_client();
        let acker = match mode {
            AckMode::SecondClient => env.fred_client(),
            AckMode::SameClient | AckMode::NoAck => reader.clone(),
        };
        FredGroup {
            name: match mode {
                AckMode::SecondClient => FRED_ANCHOR,
                AckMode::SameClient => FRED_ONE_CLIENT,
                AckMode::NoAck => FRED_NOACK,
            },
            mode,
            handle: env.handle(),
            reader,
            acker,
            checker: env.checker(),
        }
    }
}

/// The bytes of a bulk string reply.
fn bytes_of(value: &Value) -> &[u8] {
    match value {
        Value::Bytes(bytes) => bytes,
        Value::String(text) => text.as_bytes(),
        _ => &[],
    }
}

/// The stream id of an entry, for `XACK`.
fn xid_of(value: &Value) -> XID {
    match value {
        Value::String(text) => XID::Manual(text.clone()),
        Value::Bytes(bytes) => XID::Manual(Str::from_inner(bytes.clone()).expect("a UTF-8 id")),
        other => panic!("unexpected stream id {other:?}"),
    }
}

/// What tickbus extracts from an entry (`parse_entry` in `src/group/mod.rs`):
/// the event id, the source, the timestamp, the decoded payload.
fn decode_entry(flat: &[Value]) -> (uuid::Uuid, uuid::Uuid, u64, Payload) {
    let field = |name: &[u8]| {
        flat.chunks_exact(2)
            .find(|pair| bytes_of(&pair[0]) == name)
            .map(|pair| bytes_of(&pair[1]))
            .expect("a tickbus field")
    };
    let uuid = |name: &[u8]| {
        std::str::from_utf8(field(name))
            .ok()
            .and_then(|text| uuid::Uuid::try_parse(text).ok())
            .expect("a UUID")
    };
    let id = uuid(b"id");
    let src = uuid(b"src");
    let ts = std::str::from_utf8(field(b"ts"))
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .expect("a decimal timestamp");
    let payload: Payload = rmp_serde::from_slice(field(b"data")).expect("a payload");
    (id, src, ts, payload)
}

/// Walks an `XREADGROUP` reply of one stream: decodes and handles every entry,
/// returns their ids.
fn handle_reply(reply: Value) -> Vec<XID> {
    let Value::Array(streams) = reply else {
        return Vec::new(); // nil: nothing new
    };
    let mut ids = Vec::with_capacity(tuning().0);
    for stream in streams {
        let Value::Array(pair) = stream else {
            panic!("a stream is not [key, entries]")
        };
        let Some(Value::Array(entries)) = pair.into_iter().nth(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else {
                panic!("an entry is not [id, fields]")
            };
            let [id, Value::Array(flat)] = &parts[..] else {
                panic!("an entry is not [id, fields]")
            };
            let decoded = decode_entry(flat);
            black_box(&decoded.3 .0);
            black_box(&decoded);
            ids.push(xid_of(id));
        }
    }
    ids
}

impl GroupRig for FredGroup {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, stream: &Prefilled) -> Duration {
        let group = unique_group("fred");
        self.checker.create(&stream.key, &group);
        let (reader, acker, mode, events) = (
            self.reader.clone(),
            self.acker.clone(),
            self.mode,
            stream.events,
        );
        let (key, task_group) = (stream.key.clone(), group.clone());
        let (batch, max_in_flight) = tuning();
        let elapsed = run_on(&self.handle, async move {
            let start = Instant::now();
            let mut read = 0_u64;
            let mut acked = 0_u64;
            // Entries read and not yet acknowledged, and the XACKs in flight.
            let mut unconfirmed = 0_usize;
            let mut acks: VecDeque<(usize, JoinHandle<FredResult<u64>>)> = VecDeque::new();
            while read < events {
                if mode != AckMode::NoAck {
                    while unconfirmed + batch > max_in_flight && unconfirmed > 0 {
                        let (n, ack) = acks.pop_front().expect("an XACK in flight");
                        acked += ack.await.expect("XACK task").expect("XACK");
                        unconfirmed -= n;
                    }
                }
                let count = batch.min(max_in_flight - unconfirmed) as u64;
                let reply: Value = reader
                    .xreadgroup(
                        task_group.as_str(),
                        CONSUMER,
                        Some(count),
                        None,
                        mode == AckMode::NoAck,
                        key.as_str(),
                        ">",
                    )
                    .await
                    .expect("XREADGROUP");
                let ids = handle_reply(reply);
                assert!(!ids.is_empty(), "the stream ended after {read} entries");
                read += ids.len() as u64;
                if mode != AckMode::NoAck {
                    unconfirmed += ids.len();
                    let (acker, key, group) = (acker.clone(), key.clone(), task_group.clone());
                    acks.push_back((
                        ids.len(),
                        tokio::spawn(async move { acker.xack(key, group, ids).await }),
                    ));
                }
            }
            for (_, ack) in acks {
                acked += ack.await.expect("XACK task").expect("XACK");
            }
            if mode != AckMode::NoAck {
                assert_eq!(acked, events, "XACK counts");
            }
            start.elapsed()
        });
        self.checker.finish(&stream.key, &group);
        elapsed
    }
}

/// The contenders, anchor first.
fn contenders(env: &Env) -> Vec<Box<dyn GroupRig>> {
    vec![
        Box::new(FredGroup::new(env, AckMode::SecondClient)),
        Box::new(FredGroup::new(env, AckMode::SameClient)),
        Box::new(FredGroup::new(env, AckMode::NoAck)),
        // The tickbus contender.
        Box::new(TickbusGroup::new(env)),
    ]
}

// ---------------------------------------------------------------------------
// Prefill
// ---------------------------------------------------------------------------

/// Publishes `events` payloads to `topic` through a durable topic and waits until
/// Redis holds them all.
fn prefill(
    bus: &LiveBus,
    prefix: &str,
    topic: &'static str,
    events: u64,
    checker: &Checker,
) -> Prefilled {
    let _ = bus.purge_stream(topic);
    let durable = bus
        .durable_topic::<Payload>(
            topic,
            DurableOptions {
                retention: Retention {
                    max_len: Some(1_000_000),
                    max_age: None,
                },
                receive_remote: false,
                ..Default::default()
            },
        )
        .expect("a durable topic");
    let payload = Payload::filler();
    for _ in 1..events {
        durable.publish(payload).expect("publish");
    }
    durable
        .publish_durable(payload)
        .expect("publish")
        .wait()
        .expect("the last receipt");
    let key = format!("{prefix}:stream:{{{topic}}}");
    let len: FredResult<u64> = checker.handle.block_on(checker.admin.xlen(key.as_str()));
    assert_eq!(len.expect("XLEN"), events, "entries in {key}");
    Prefilled { topic, key, events }
}

// ---------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------

fn consume_criterion(c: &mut Criterion, rigs: &mut [Box<dyn GroupRig>], stream: &Prefilled) {
    let mut group = c.benchmark_group("group_consume");
    group.throughput(Throughput::Elements(stream.events));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for rig in rigs.iter_mut() {
        let name = rig.name();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rig.run(stream)).sum())
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Interleaved rounds
// ---------------------------------------------------------------------------

/// CPU seconds so far: this process, its runtime workers, the redis-server.
#[derive(Clone, Copy, Default)]
struct Cpu {
    process: f64,
    workers: f64,
    redis: f64,
}

impl Cpu {
    fn now(redis_pid: &str) -> Cpu {
        Cpu {
            process: process_cpu("self"),
            workers: threads_cpu(WORKER_THREAD),
            redis: process_cpu(redis_pid),
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            process: self.process - before.process,
            workers: self.workers - before.workers,
            redis: self.redis - before.redis,
        }
    }

    fn add(&mut self, other: Cpu) {
        self.process += other.process;
        self.workers += other.workers;
        self.redis += other.redis;
    }
}

/// Every contender in turn, `rounds` times, each reading all of `stream`.
fn consume_rounds(
    rigs: &mut [Box<dyn GroupRig>],
    rounds: usize,
    stream: &Prefilled,
    warm_up: &Prefilled,
    redis_pid: &str,
    checker: &Checker,
) -> Vec<String> {
    let count = rigs.len();
    let events = stream.events;
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); count];
    let mut seconds = vec![0_f64; count];
    let mut cpu = vec![Cpu::default(); count];
    let mut commands = vec![Commands::default(); count];
    for rig in rigs.iter_mut() {
        rig.run(warm_up);
    }
    for round in 0..rounds {
        for offset in 0..count {
            let index = (round + offset) % count;
            checker.reset_stats();
            let before = Cpu::now(redis_pid);
            let elapsed = rigs[index].run(stream).as_secs_f64();
            cpu[index].add(Cpu::now(redis_pid).since(before));
            commands[index].add(checker.commands());
            seconds[index] += elapsed;
            rates[index].push(events as f64 / elapsed);
        }
    }
    let names: Vec<&str> = rigs.iter().map(|rig| rig.name()).collect();
    let anchor = names.iter().position(|name| *name == FRED_ANCHOR);
    let pooled = |index: usize| events as f64 * rates[index].len() as f64 / seconds[index];
    let (batch, max_in_flight) = tuning();
    let mut lines = vec![
        format!(
            "rounds/group_consume: {rounds} rounds of {events} entries ({PAYLOAD_BYTES}-byte payloads) per \
             contender, a fresh group each, order rotated each round; COUNT {batch}, at most \
             {max_in_flight} unacknowledged; events/s until the last XACK is confirmed"
        ),
        format!(
            "  | {:<30} | {:>9} | {:>17} | {:>8} | {:>11} | {:>14} | {:>10} | {:>10} | {:>12} |",
            "contender",
            "k ev/s",
            "rounds min–max",
            "× anchor",
            "(per round)",
            "client µs CPU",
            "(workers)",
            "(others)",
            "redis µs CPU"
        ),
        "  |---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    let total = events as f64 * rounds as f64;
    let us = |seconds: f64| seconds * 1e6 / total;
    // The ratio to the anchor, pooled and its per-round range.
    let ratio = |index: usize| -> (String, String) {
        let Some(anchor) = anchor else {
            return ("n/a".to_string(), "n/a".to_string());
        };
        let per_round: Vec<f64> = rates[index]
            .iter()
            .zip(&rates[anchor])
            .map(|(n, d)| n / d)
            .collect();
        let (min, max) = min_max(&per_round);
        (
            format!("{:.2}", pooled(index) / pooled(anchor)),
            format!("{min:.2}–{max:.2}"),
        )
    };
    for index in 0..count {
        let (min, max) = min_max(&rates[index]);
        let (pooled_ratio, round_ratios) = ratio(index);
        let used = cpu[index];
        lines.push(format!(
            "  | {:<30} | {:>9.1} | {:>17} | {:>8} | {:>11} | {:>14.2} | {:>10.2} | {:>10.2} | {:>12.2} |",
            names[index],
            pooled(index) / 1e3,
            format!("{:.1}–{:.1}", min / 1e3, max / 1e3),
            pooled_ratio,
            round_ratios,
            us(used.process),
            us(used.workers),
            us(used.process - used.workers),
            us(used.redis),
        ));
    }
    for (index, name) in names.iter().enumerate() {
        if let (true, Some(anchor)) = (name.starts_with("tickbus"), anchor) {
            let ratio = pooled(index) / pooled(anchor);
            lines.push(format!(
                "  target {name}: ≥ 0.7× {FRED_ANCHOR}: {ratio:.2} {}",
                if ratio >= 0.7 { "met" } else { "MISSED" }
            ));
        }
    }
    lines.push(format!(
        "  CPU: µs per event over the rounds (set-up and checks included), from /proc: the bench \
         process (its runtime workers `{WORKER_THREAD}`; others: tickbus's consumer I/O thread), \
         and the redis-server"
    ));
    lines.push(format!(
        "  | {:<30} | {:>10} | {:>11} | {:>8} | {:>7} | {:>6} | {:>11} | {:>12} |",
        "commands per run",
        "XREADGROUP",
        "entries ea.",
        "XACK",
        "ids ea.",
        "others",
        "redis µs/ev",
        "(XREADGROUP)"
    ));
    lines.push("  |---|---|---|---|---|---|---|---|".to_string());
    for index in 0..count {
        let used = commands[index];
        let per_run = |calls: u64| calls as f64 / rounds as f64;
        let each = |calls: u64| {
            if calls == 0 {
                "–".to_string()
            } else {
                format!("{:.0}", total / calls as f64)
            }
        };
        lines.push(format!(
            "  | {:<30} | {:>10.1} | {:>11} | {:>8.1} | {:>7} | {:>6.1} | {:>11.2} | {:>12.2} |",
            names[index],
            per_run(used.reads),
            each(used.reads),
            per_run(used.acks),
            each(used.acks),
            per_run(used.others),
            (used.read_us + used.ack_us + used.other_us) as f64 / total,
            used.read_us as f64 / total,
        ));
    }
    lines.push(
        "  commands: from INFO commandstats (reset before each run), the checker's own left out; \
         redis µs/ev is the server's time in the commands, per event"
            .to_string(),
    );
    lines.extend(
        rigs.iter()
            .filter_map(|rig| rig.note())
            .map(|note| format!("  {note}")),
    );
    lines
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    let mut criterion = Criterion::default().configure_from_args();
    let wants_rounds = [FRED_ANCHOR, FRED_ONE_CLIENT, FRED_NOACK, TICKBUS_GROUP]
        .iter()
        .any(|name| args.wants(&format!("rounds/group_consume/{name}")));

    let redis = RedisServer::start().expect("start a private redis-server");
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_THREAD)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let admin = fred_client(&url, runtime.handle());
    let env = Env {
        redis,
        url,
        runtime,
        admin,
    };
    let version = env
        .redis
        .version()
        .map_or("?".to_string(), |(major, minor, patch)| {
            format!("{major}.{minor}.{patch}")
        });
    println!(
        "private redis-server {version} on port {}; {} cores",
        env.redis.port(),
        thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let checker = env.checker();
    let config = RedisConfig::from_url(&env.url).expect("the private Redis URL");
    let prefix = config.key_prefix.clone();
    let publisher = Bus::builder().redis(config).build().expect("a live bus");
    let filling = Instant::now();
    let small = prefill(
        &publisher,
        &prefix,
        CRITERION_TOPIC,
        CRITERION_EVENTS,
        &checker,
    );
    let large = if wants_rounds {
        Some(prefill(
            &publisher,
            &prefix,
            ROUNDS_TOPIC,
            ROUND_EVENTS,
            &checker,
        ))
    } else {
        None
    };
    drop(publisher);
    println!(
        "prefilled {} entries in {:.1} s",
        small.events + large.as_ref().map_or(0, |large| large.events),
        filling.elapsed().as_secs_f64()
    );

    let mut rigs = contenders(&env);
    consume_criterion(&mut criterion, &mut rigs, &small);
    // The rounds run the contenders whose id `rounds/group_consume/<name>`
    // contains the filter.
    rigs.retain(|rig| args.wants(&format!("rounds/group_consume/{}", rig.name())));
    let mut summary = Vec::new();
    if let (Some(large), false) = (&large, rigs.is_empty()) {
        let redis_pid = env
            .redis
            .pid()
            .map_or("0".to_string(), |pid| pid.to_string());
        summary.extend(consume_rounds(
            &mut rigs, ROUNDS, large, &small, &redis_pid, &checker,
        ));
    }
    criterion.final_summary();

    if !summary.is_empty() {
        println!("\n==== interleaved rounds (private redis-server {version}) ====");
        for line in summary {
            println!("{line}");
        }
    }
}

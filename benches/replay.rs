//! Replay throughput against Redis: `Bus::replay` beside a raw fred `XRANGE` loop,
//! reading and decoding the same prefilled stream, in one run.
//!
//! Every figure is taken against a PRIVATE `redis-server` that the bench starts
//! itself (`tickbus::test_util::RedisServer`: a free port, a temporary directory),
//! never against a shared one.
//!
//! The stream: `STREAM_EVENTS` (1 000 000) entries of one topic (`bench:replay`),
//! published once through a durable topic (`receive_remote: false`, no trimming)
//! before anything is timed, so that they have tickbus's wire layout (fields `id`,
//! `src`, `ts`, `data`; see `docs/redis-layout.md`). The payload is 128 bytes, a
//! MessagePack `bin` (`serde_bytes::ByteArray<128>`, 130 bytes encoded). Every run
//! of every contender reads a range of it from its first entry, and for every
//! entry parses the stream id, the event id and the source (UUIDs), the
//! timestamp (decimal) and decodes the payload into the same `Payload`, then
//! `black_box`es them; the count is checked at the end. Contenders:
//!
//! * `tickbus_replay`: `Bus::replay(&[topic], ReplayOptions { to: Id(last), page:
//!   1000, .. })`, then `recv_blocking()` on the bench thread and
//!   `ReplayedEvent::decode::<Payload>()` for every event. The clock starts before
//!   `Bus::replay` (which opens the replay's own connection and I/O thread and
//!   reads `XINFO STREAM`): that start-up is part of the figure, and is also
//!   reported on its own under the table.
//! * `fred_xrange_1000` (the anchor): raw fred on a 2-worker tokio runtime, one
//!   client connected beforehand, one task looping `XRANGE key start end COUNT
//!   1000` (`-` first, then `(<last id>`), each reply taken as a raw fred `Value`
//!   (`client.xrange::<Value, …>`: fred's own frame-to-value conversion, the one
//!   tickbus's transport uses too, no typed stream conversion) and walked in
//!   place: the fields looked up by name, `data` decoded with
//!   `rmp_serde::from_slice`. One page at a time: the next `XRANGE` is sent after
//!   the page is decoded.
//! * `fred_xrange_1000_ahead` (for reference): the same, with the next page's
//!   `XRANGE` sent (as a spawned task) before the current page is decoded, one
//!   page ahead as tickbus reads.
//!
//! Beside each figure of the rounds: the CPU time per event of the bench process
//! (all its threads: the tickbus replay's I/O thread and the consumer, or the
//! tokio workers of the fred anchors) and of the redis-server, from `/proc`. On a
//! shared machine they move less than the wall-clock figures.
//!
//! Criterion group `replay_scan` (means, the first `CRITERION_EVENTS` entries per
//! iteration), then **interleaved rounds** (`rounds/replay_scan`): each round runs
//! every contender once over the whole stream, in an order rotated from round to
//! round; figures are pooled per contender and the ratio to the anchor is taken
//! over the pooled figures, with the range of the per-round ratios beside it. The
//! target: `tickbus_replay` ≥ 1.0× the anchor.
//!
//! Run with `cargo bench --bench replay --all-features` (prefill, criterion, then
//! the rounds; two to two and a half minutes on the shared 2-vCPU VM), or
//! `cargo bench --bench replay --all-features -- rounds` for the rounds only.
//! Environment: `TICKBUS_TEST_REDIS_SERVER` (the server binary, see `test_util`).

#[path = "support/args.rs"]
mod args;
#[path = "support/measure.rs"]
mod measure;

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use args::Args;
use criterion::{Criterion, SamplingMode, Throughput};
use fred::prelude::*;
use measure::{fmt_range, process_cpu};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteArray;
use tickbus::replay::{ReplayOptions, StopAt};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig, StreamId};
use tokio::runtime::Handle;

// ---------------------------------------------------------------------------
// What one run does
// ---------------------------------------------------------------------------

/// Bytes of every payload.
const PAYLOAD_BYTES: usize = 128;
/// Entries of the prefilled stream (every round reads them all).
const STREAM_EVENTS: u64 = 1_000_000;
/// Entries read per criterion iteration (the first ones of the stream).
const CRITERION_EVENTS: u64 = 50_000;
/// The same two under `--test` or `--list`.
const QUICK_STREAM_EVENTS: u64 = 20_000;
const QUICK_CRITERION_EVENTS: u64 = 10_000;
/// Rounds (every contender once per round, over the whole stream).
const ROUNDS: usize = 5;
/// Entries per `XRANGE` page, for every contender.
const PAGE: usize = 1_000;
/// The topic, and its stream (`docs/redis-layout.md`).
const TOPIC: &str = "bench:replay";
const KEY: &str = "tickbus:stream:{bench:replay}";

// Contender names (the ratios are keyed by them).
const TICKBUS_REPLAY: &str = "tickbus_replay";
const FRED_XRANGE: &str = "fred_xrange_1000";
const FRED_XRANGE_AHEAD: &str = "fred_xrange_1000_ahead";

/// The benchmark's event: 128 bytes, a MessagePack `bin` (no heap allocation
/// for the value itself).
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Payload(ByteArray<PAYLOAD_BYTES>);

/// 128 binary bytes (not valid UTF-8, as in `benches/redis.rs`).
fn filler_payload() -> Payload {
    let mut bytes = [0_u8; PAYLOAD_BYTES];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(151).wrapping_add(0x80);
    }
    Payload(ByteArray::new(bytes))
}

/// What a run reads: the stream from its first entry to `end`, `events` entries.
#[derive(Clone, Copy)]
struct Range {
    end: StreamId,
    events: u64,
}

/// A reader of a range.
trait ScanRig {
    fn name(&self) -> &'static str;
    /// Reads and decodes every entry of `range`; the time taken.
    fn run(&mut self, range: Range) -> Duration;
    /// Lines printed under the rounds' table.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The stream ids, event ids, sources, timestamps and payloads of a page.
fn handle(stream_id: StreamId, id: uuid::Uuid, src: uuid::Uuid, ts: u64, payload: Payload) {
    black_box((stream_id, id, src, ts, payload));
}

// ---------------------------------------------------------------------------
// tickbus
// ---------------------------------------------------------------------------

/// `Bus::replay` + `recv_blocking` + `decode` on the bench thread.
struct TickbusReplay {
    bus: LiveBus,
    /// Per run: the time `Bus::replay` took to return.
    startups: Vec<Duration>,
}

impl ScanRig for TickbusReplay {
    fn name(&self) -> &'static str {
        TICKBUS_REPLAY
    }

    fn run(&mut self, range: Range) -> Duration {
        let options = ReplayOptions {
            to: StopAt::Id(range.end),
            page: PAGE,
            ..Default::default()
        };
        let start = Instant::now();
        let mut replay = self.bus.replay(&[TOPIC], options).expect("a replay");
        self.startups.push(start.elapsed());
        let mut seen = 0_u64;
        while let Some(event) = replay.recv_blocking() {
            let event = event.expect("a tickbus entry");
            let payload: Payload = event.decode().expect("a payload");
            handle(
                event.stream_id,
                *event.event_id.as_uuid(),
                *event.source.as_uuid(),
                event.timestamp_ns,
                payload,
            );
            seen += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(seen, range.events, "{TICKBUS_REPLAY} read a short range");
        elapsed
    }

    fn notes(&self) -> Vec<String> {
        if self.startups.is_empty() {
            return Vec::new();
        }
        let mean = self.startups.iter().sum::<Duration>() / self.startups.len() as u32;
        let max = self.startups.iter().max().copied().unwrap_or_default();
        vec![format!(
            "  {TICKBUS_REPLAY} start-up (Bus::replay until it returns: connection, I/O thread, \
             XINFO STREAM), included above: mean {:.2} ms, max {:.2} ms over {} runs",
            mean.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            self.startups.len()
        )]
    }
}

// ---------------------------------------------------------------------------
// Raw fred
// ---------------------------------------------------------------------------

/// The bytes of a bulk string reply (fred makes it a `String` when it is UTF-8,
/// `Bytes` otherwise).
fn bytes_of(value: &Value) -> &[u8] {
    match value {
        Value::String(text) => text.as_bytes(),
        Value::Bytes(bytes) => bytes,
        _ => panic!("a bulk string"),
    }
}

/// One entry, `[id, [field, value, …]]`: decoded as tickbus decodes it, and handled.
/// Returns its stream id.
fn decode_entry(entry: &Value) -> StreamId {
    let Value::Array(parts) = entry else {
        panic!("an entry is an array");
    };
    let [id, Value::Array(flat)] = parts.as_slice() else {
        panic!("an entry is [id, fields]");
    };
    let stream_id: StreamId = std::str::from_utf8(bytes_of(id))
        .ok()
        .and_then(|text| text.parse().ok())
        .expect("a stream id");
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
    let event_id = uuid(b"id");
    let source = uuid(b"src");
    let ts = std::str::from_utf8(field(b"ts"))
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .expect("a decimal timestamp");
    let payload: Payload = rmp_serde::from_slice(field(b"data")).expect("a payload");
    handle(stream_id, event_id, source, ts, payload);
    stream_id
}

/// The entries of an `XRANGE` reply.
fn entries(reply: Value) -> Vec<Value> {
    match reply {
        Value::Array(entries) => entries,
        Value::Null => Vec::new(),
        _ => panic!("an XRANGE reply is an array"),
    }
}

/// The stream id of the last entry of a page (without decoding the rest).
fn last_id(entries: &[Value]) -> Option<String> {
    let Value::Array(parts) = entries.last()? else {
        panic!("an entry is an array");
    };
    let id = std::str::from_utf8(bytes_of(parts.first()?)).expect("a stream id");
    Some(id.to_string())
}

/// `XRANGE KEY start end COUNT PAGE` as a raw `Value`.
async fn xrange(client: Client, start: String, end: String) -> Vec<Value> {
    let reply: Value = client
        .xrange(KEY, start, end, Some(PAGE as u64))
        .await
        .expect("XRANGE");
    entries(reply)
}

/// The anchor's loop: a page, decoded, then the next page.
async fn scan_in_turn(client: Client, end: String) -> u64 {
    let mut start = "-".to_string();
    let mut seen = 0_u64;
    loop {
        let page = xrange(client.clone(), start, end.clone()).await;
        let mut last = None;
        for entry in &page {
            last = Some(decode_entry(entry));
        }
        seen += page.len() as u64;
        match last {
            Some(last) if page.len() == PAGE => start = format!("({last}"),
            _ => return seen,
        }
    }
}

/// The same, the next page's `XRANGE` sent before the current page is decoded.
async fn scan_ahead(client: Client, end: String) -> u64 {
    let mut next = tokio::spawn(xrange(client.clone(), "-".to_string(), end.clone()));
    let mut seen = 0_u64;
    loop {
        let page = (&mut next).await.expect("the XRANGE task");
        let full = page.len() == PAGE;
        if full {
            let start = format!("({}", last_id(&page).expect("a full page"));
            next = tokio::spawn(xrange(client.clone(), start, end.clone()));
        }
        for entry in &page {
            decode_entry(entry);
        }
        seen += page.len() as u64;
        if !full {
            return seen;
        }
    }
}

/// A fred client, connected before anything is timed, and its loop run as a task
/// on the 2-worker runtime (as application code would), waited for from the bench
/// thread.
struct FredXrange {
    name: &'static str,
    ahead: bool,
    client: Client,
    handle: Handle,
}

impl FredXrange {
    fn new(name: &'static str, ahead: bool, url: &str, handle: &Handle) -> Self {
        let config = Config::from_url(url).expect("redis url");
        let client = Builder::from_config(config)
            .with_performance_config(|performance| {
                performance.default_command_timeout = Duration::from_secs(30);
            })
            .build()
            .expect("fred client");
        handle
            .block_on(client.init())
            .expect("connect to the private redis-server");
        FredXrange {
            name,
            ahead,
            client,
            handle: handle.clone(),
        }
    }
}

impl ScanRig for FredXrange {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, range: Range) -> Duration {
        let client = self.client.clone();
        let end = range.end.to_string();
        let start = Instant::now();
        let task = if self.ahead {
            self.handle.spawn(scan_ahead(client, end))
        } else {
            self.handle.spawn(scan_in_turn(client, end))
        };
        let seen = self.handle.block_on(task).expect("the scan task");
        let elapsed = start.elapsed();
        assert_eq!(seen, range.events, "{} read a short range", self.name);
        elapsed
    }
}

// ---------------------------------------------------------------------------
// Prefill
// ---------------------------------------------------------------------------

/// Publishes `events` entries through a durable topic of `bus`; the stream ids
/// of the entry number `marker` (1-based) and of the last one.
fn prefill(bus: &LiveBus, events: u64, marker: u64) -> (StreamId, StreamId) {
    let topic = bus
        .durable_topic::<Payload>(
            TOPIC,
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .expect("a durable topic");
    let payload = filler_payload();
    let mut marked = None;
    for n in 1..events {
        if n == marker {
            marked = Some(topic.publish_durable(payload).expect("publish"));
        } else {
            topic.publish(payload).expect("publish");
        }
    }
    let last = topic
        .publish_durable(payload)
        .expect("publish")
        .wait()
        .expect("the last receipt");
    let marked = marked.map_or(last, |receipt| receipt.wait().expect("a receipt"));
    (marked, last)
}

// ---------------------------------------------------------------------------
// Criterion, rounds
// ---------------------------------------------------------------------------

fn scan_criterion(c: &mut Criterion, rigs: &mut [Box<dyn ScanRig>], range: Range) {
    let mut group = c.benchmark_group("replay_scan");
    group.throughput(Throughput::Elements(range.events));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for rig in rigs.iter_mut() {
        let name = rig.name();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| rig.run(range)).sum())
        });
    }
    group.finish();
}

/// `min–max` of `values`, with `decimals` decimals.
/// Every contender in turn over `range`, `rounds` times. `server` is the
/// redis-server's pid (for its CPU time).
fn scan_rounds(
    rigs: &mut [Box<dyn ScanRig>],
    rounds: usize,
    range: Range,
    server: Option<u32>,
) -> Vec<String> {
    let count = rigs.len();
    let events = range.events as f64;
    let server = server.map_or_else(String::new, |pid| pid.to_string());
    // Per contender: per-round events/s, the total time, and the CPU time of
    // this process (every thread) and of the server.
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); count];
    let mut seconds = vec![0_f64; count];
    let mut client_cpu = vec![0_f64; count];
    let mut server_cpu = vec![0_f64; count];
    for round in 0..rounds {
        for offset in 0..count {
            let index = (round + offset) % count;
            let (client_before, server_before) = (process_cpu("self"), process_cpu(&server));
            let elapsed = rigs[index].run(range).as_secs_f64();
            client_cpu[index] += process_cpu("self") - client_before;
            server_cpu[index] += process_cpu(&server) - server_before;
            seconds[index] += elapsed;
            rates[index].push(events / elapsed);
        }
    }
    let names: Vec<&str> = rigs.iter().map(|rig| rig.name()).collect();
    let pooled = |index: usize| events * rates[index].len() as f64 / seconds[index];
    let anchor = names.iter().position(|name| *name == FRED_XRANGE);
    let mut lines = vec![
        format!(
            "rounds/replay_scan: {rounds} rounds of {} entries ({PAYLOAD_BYTES}-byte payloads, \
             pages of {PAGE}) per contender, order rotated each round; events/s read and decoded; \
             CPU time per event of this process (every thread) and of redis-server",
            range.events
        ),
        format!(
            "  | {:<24} | {:>9} | {:>17} | {:>11} | {:>11} | {:>13} | {:>13} |",
            "contender",
            "k ev/s",
            "rounds min–max",
            "× anchor",
            "(per round)",
            "client µs CPU",
            "server µs CPU"
        ),
        "  |---|---|---|---|---|---|---|".to_string(),
    ];
    for index in 0..count {
        let per_round: Vec<f64> = rates[index].iter().map(|rate| rate / 1e3).collect();
        let (ratio, ratio_range) = match anchor {
            Some(anchor) => (
                format!("{:.2}", pooled(index) / pooled(anchor)),
                fmt_range(
                    &rates[index]
                        .iter()
                        .zip(&rates[anchor])
                        .map(|(rate, anchor)| rate / anchor)
                        .collect::<Vec<_>>(),
                    2,
                ),
            ),
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        lines.push(format!(
            "  | {:<24} | {:>9.1} | {:>17} | {:>11} | {:>11} | {:>13.2} | {:>13.2} |",
            names[index],
            pooled(index) / 1e3,
            fmt_range(&per_round, 1),
            ratio,
            ratio_range,
            client_cpu[index] * 1e6 / (events * rounds as f64),
            server_cpu[index] * 1e6 / (events * rounds as f64),
        ));
    }
    if let (Some(anchor), Some(tickbus)) = (
        anchor,
        names.iter().position(|name| *name == TICKBUS_REPLAY),
    ) {
        let ratio = pooled(tickbus) / pooled(anchor);
        lines.push(format!(
            "  target {TICKBUS_REPLAY} ≥ 1.0× {FRED_XRANGE}: {ratio:.2} {}",
            if ratio >= 1.0 { "met" } else { "MISSED" }
        ));
    }
    for rig in rigs.iter() {
        lines.extend(rig.notes());
    }
    lines
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let args = Args::parse();
    let mut criterion = Criterion::default().configure_from_args();
    // A short stream when criterion only tests or lists (`--profile-time` keeps
    // the full one).
    let small = std::env::args().any(|arg| arg == "--test" || arg == "--list");
    let (stream_events, criterion_events) = if small {
        (QUICK_STREAM_EVENTS, QUICK_CRITERION_EVENTS)
    } else {
        (STREAM_EVENTS, CRITERION_EVENTS)
    };

    let redis = RedisServer::start().expect("start a private redis-server");
    let url = redis.url();
    let version = redis
        .version()
        .map_or("?".to_string(), |(major, minor, patch)| {
            format!("{major}.{minor}.{patch}")
        });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let bus = Bus::builder()
        .redis(RedisConfig::from_url(&url).expect("the private Redis URL"))
        .build()
        .expect("a live bus");

    let start = Instant::now();
    let (criterion_end, stream_end) = prefill(&bus, stream_events, criterion_events);
    let filled = start.elapsed();
    let memory = redis
        .cli(&["MEMORY", "USAGE", KEY, "SAMPLES", "0"])
        .map(|out| out.trim().to_string())
        .unwrap_or_default();
    println!(
        "private redis-server {version} on port {}; {} cores; prefilled {stream_events} entries \
         in {:.1} s ({:.0} k/s; stream {} MB)",
        redis.port(),
        thread::available_parallelism().map_or(0, |n| n.get()),
        filled.as_secs_f64(),
        stream_events as f64 / filled.as_secs_f64() / 1e3,
        memory
            .parse::<f64>()
            .map_or("?".to_string(), |bytes| format!("{:.0}", bytes / 1e6)),
    );

    let mut rigs: Vec<Box<dyn ScanRig>> = vec![
        Box::new(FredXrange::new(FRED_XRANGE, false, &url, runtime.handle())),
        Box::new(FredXrange::new(
            FRED_XRANGE_AHEAD,
            true,
            &url,
            runtime.handle(),
        )),
        // The tickbus contender.
        Box::new(TickbusReplay {
            bus: bus.clone(),
            startups: Vec::new(),
        }),
    ];

    scan_criterion(
        &mut criterion,
        &mut rigs,
        Range {
            end: criterion_end,
            events: criterion_events,
        },
    );
    let mut summary = Vec::new();
    if args.wants("rounds/replay_scan") {
        let whole = Range {
            end: stream_end,
            events: stream_events,
        };
        for rig in rigs.iter_mut() {
            rig.run(Range {
                end: criterion_end,
                events: criterion_events,
            }); // warm up
        }
        if let Some(tickbus) = rigs.iter_mut().find(|rig| rig.name() == TICKBUS_REPLAY) {
            // Only the rounds' start-ups are reported.
            *tickbus = Box::new(TickbusReplay {
                bus: bus.clone(),
                startups: Vec::new(),
            });
        }
        summary.extend(scan_rounds(&mut rigs, ROUNDS, whole, redis.pid()));
    }
    criterion.final_summary();

    if !summary.is_empty() {
        println!("\n==== interleaved rounds (private redis-server {version}) ====");
        for line in summary {
            println!("{line}");
        }
    }
}

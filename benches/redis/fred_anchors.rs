//! The raw fred anchors: pipelined and concurrent XADDs, XADD → XREAD BLOCK,
//! PUBLISH → SUBSCRIBE (a raw RESP2 subscriber), and the PING round trip.

use std::io;
use std::time::{Duration, Instant};

use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::prelude::*;
use fred::types::streams::XCap;
use fred::types::{ClusterHash, CustomCommand};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    filler_payload, now_ns, pace, run_on, stamp, unique, unix_ns, Cleaner, Env, LatencyRig,
    Recorder, ThroughputRig, FRED_CONCURRENT, FRED_PIPELINE, FRED_PIPELINE_DATA, IN_FLIGHT,
    PING_RTT, PUBLISH_SUBSCRIBE, SPAWN_HOP, STREAM_MAXLEN, XADD_XREAD,
};

/// Command timeout of the anchors' clients: longer than the XREAD BLOCK.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// `XREAD BLOCK` (ms) and `COUNT` of the XADD → XREAD reader.
const XREAD_BLOCK_MS: u64 = 1_000;
const XREAD_COUNT: u64 = 100;

/// `MAXLEN ~ 1000000`.
fn cap() -> XCap {
    ("MAXLEN", "~", STREAM_MAXLEN)
        .try_into()
        .expect("valid cap")
}

/// The fields of a tickbus-like stream entry: `id` (36-character UUID text),
/// `src` (the publishing instance's UUID text), `ts` (decimal Unix ns) and `data`
/// (the payload, binary).
#[derive(Clone)]
struct Entries {
    src: Str,
    id_base: u128,
    next: u64,
    /// Only the `data` field (as in the `redis-benchmark` command).
    data_only: bool,
}

impl Entries {
    fn new() -> Self {
        Entries {
            src: Str::from(Uuid::new_v4().hyphenated().to_string()),
            id_base: Uuid::new_v4().as_u128(),
            next: 0,
            data_only: false,
        }
    }

    fn data_only() -> Self {
        Entries {
            data_only: true,
            ..Entries::new()
        }
    }

    fn fields(&mut self, data: Bytes) -> Vec<(&'static str, Value)> {
        if self.data_only {
            return vec![("data", Value::Bytes(data))];
        }
        let id = Uuid::from_u128(self.id_base.wrapping_add(self.next as u128));
        self.next += 1;
        vec![
            ("id", Value::String(Str::from(id.hyphenated().to_string()))),
            ("src", Value::String(self.src.clone())),
            ("ts", Value::String(Str::from(unix_ns().to_string()))),
            ("data", Value::Bytes(data)),
        ]
    }
}

// ---------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------

/// XADDs in `Pipeline`s of `IN_FLIGHT` (256), one batch in flight at a time.
pub struct FredPipeline {
    name: &'static str,
    handle: Handle,
    client: Client,
    cleaner: Cleaner,
    entries: Entries,
    payload: Bytes,
}

impl FredPipeline {
    /// With the four fields of a tickbus entry.
    pub fn new(env: &Env) -> Self {
        FredPipeline {
            name: FRED_PIPELINE,
            handle: env.handle(),
            client: env.fred_client(COMMAND_TIMEOUT),
            cleaner: env.cleaner(),
            entries: Entries::new(),
            payload: Bytes::from(filler_payload()),
        }
    }

    /// With the `data` field only.
    pub fn data_only(env: &Env) -> Self {
        FredPipeline {
            name: FRED_PIPELINE_DATA,
            entries: Entries::data_only(),
            ..FredPipeline::new(env)
        }
    }
}

impl ThroughputRig for FredPipeline {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, events: u64) -> Duration {
        let key = unique("bench:raw:pipeline");
        let (client, payload, mut entries) = (
            self.client.clone(),
            self.payload.clone(),
            self.entries.clone(),
        );
        let task_key = Key::from(key.as_str());
        let (elapsed, entries) = run_on(&self.handle, async move {
            let start = Instant::now();
            let mut sent = 0;
            while sent < events {
                let batch = (events - sent).min(IN_FLIGHT as u64);
                let pipeline = client.pipeline();
                for _ in 0..batch {
                    let fields = entries.fields(payload.clone());
                    let () = pipeline
                        .xadd(task_key.clone(), false, cap(), "*", fields)
                        .await
                        .expect("queue XADD");
                }
                for reply in pipeline.try_all::<Value>().await {
                    reply.expect("XADD");
                }
                sent += batch;
            }
            (start.elapsed(), entries)
        });
        self.entries = entries;
        self.cleaner.delete(&key);
        elapsed
    }
}

/// XADDs as `IN_FLIGHT` (256) concurrent futures on one client, one task (fred
/// pipelines them on its connection).
pub struct FredConcurrent {
    handle: Handle,
    client: Client,
    cleaner: Cleaner,
    entries: Entries,
    payload: Bytes,
}

impl FredConcurrent {
    pub fn new(env: &Env) -> Self {
        FredConcurrent {
            handle: env.handle(),
            client: env.fred_client(COMMAND_TIMEOUT),
            cleaner: env.cleaner(),
            entries: Entries::new(),
            payload: Bytes::from(filler_payload()),
        }
    }
}

impl ThroughputRig for FredConcurrent {
    fn name(&self) -> &'static str {
        FRED_CONCURRENT
    }

    fn run(&mut self, events: u64) -> Duration {
        let key = unique("bench:raw:concurrent");
        let (client, payload, mut entries) = (
            self.client.clone(),
            self.payload.clone(),
            self.entries.clone(),
        );
        let task_key = Key::from(key.as_str());
        let (elapsed, entries) = run_on(&self.handle, async move {
            let start = Instant::now();
            let mut in_flight = FuturesUnordered::new();
            for _ in 0..events {
                if in_flight.len() >= IN_FLIGHT {
                    let reply: FredResult<Value> = in_flight.next().await.expect("in flight");
                    reply.expect("XADD");
                }
                let fields = entries.fields(payload.clone());
                in_flight.push(client.xadd(task_key.clone(), false, cap(), "*", fields));
            }
            while let Some(reply) = in_flight.next().await {
                reply.expect("XADD");
            }
            drop(in_flight);
            (start.elapsed(), entries)
        });
        self.entries = entries;
        self.cleaner.delete(&key);
        elapsed
    }
}

// ---------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------

/// The harness alone: the stamp taken on the pacing thread and read in a task
/// spawned on the runtime, the hop every anchor's figure starts with.
pub struct SpawnHop {
    handle: Handle,
}

impl SpawnHop {
    pub fn new(env: &Env) -> Self {
        SpawnHop {
            handle: env.handle(),
        }
    }
}

impl LatencyRig for SpawnHop {
    fn name(&self) -> &'static str {
        SPAWN_HOP
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let (hops, received) = mpsc::unbounded_channel::<(u64, u64, u64)>();
        let receiving = self
            .handle
            .spawn(collect(Recorder::new(events), rate_per_s, received));
        pace(events, rate_per_s, |seq| {
            let sent_ns = now_ns();
            let hops = hops.clone();
            self.handle.spawn(async move {
                let _ = hops.send((seq, sent_ns, now_ns()));
            });
        });
        drop(hops);
        self.handle.block_on(receiving).expect("receiver panicked")
    }
}

/// Records `(seq, sent_ns, received_ns)` triples until every event is seen or
/// the deadline passes.
async fn collect(
    mut recorder: Recorder,
    rate_per_s: u64,
    mut received: mpsc::UnboundedReceiver<(u64, u64, u64)>,
) -> Histogram<u64> {
    let deadline = recorder.deadline(rate_per_s);
    while !recorder.done() {
        match tokio::time::timeout_at(deadline, received.recv()).await {
            Ok(Some((seq, sent_ns, now))) => recorder.record(seq, sent_ns, now),
            _ => break,
        }
    }
    recorder.histogram
}

/// The floor: a PING round trip, sent as the latency anchors send their events
/// (stamped on the pacing thread, then a task per event on the runtime).
pub struct PingRtt {
    handle: Handle,
    client: Client,
}

impl PingRtt {
    pub fn new(env: &Env) -> Self {
        PingRtt {
            handle: env.handle(),
            client: env.fred_client(COMMAND_TIMEOUT),
        }
    }
}

impl LatencyRig for PingRtt {
    fn name(&self) -> &'static str {
        PING_RTT
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let (replies, received) = mpsc::unbounded_channel::<(u64, u64, u64)>();
        let receiving = self
            .handle
            .spawn(collect(Recorder::new(events), rate_per_s, received));
        pace(events, rate_per_s, |seq| {
            let sent_ns = now_ns();
            let (client, replies) = (self.client.clone(), replies.clone());
            self.handle.spawn(async move {
                let _: Value = client.ping(None).await.expect("PING");
                let _ = replies.send((seq, sent_ns, now_ns()));
            });
        });
        drop(replies);
        self.handle.block_on(receiving).expect("receiver panicked")
    }
}

/// XADD on one client → a second client (its own connection, as another
/// instance) looping `XREAD BLOCK 1000 COUNT 100 STREAMS key <last id>`.
pub struct XaddXread {
    handle: Handle,
    publisher: Client,
    reader: Client,
    cleaner: Cleaner,
    entries: Entries,
}

impl XaddXread {
    pub fn new(env: &Env) -> Self {
        XaddXread {
            handle: env.handle(),
            publisher: env.fred_client(COMMAND_TIMEOUT),
            reader: env.fred_client(COMMAND_TIMEOUT),
            cleaner: env.cleaner(),
            entries: Entries::new(),
        }
    }
}

/// The entries of an XREAD reply (`nil`, or per stream `[key, [[id, [field,
/// value, …]], …]]`; a map of key to entries in RESP3).
fn xread_entries(reply: Value) -> Vec<Value> {
    let streams: Vec<Value> = match reply {
        Value::Null => return Vec::new(),
        Value::Map(map) => map.inner().into_values().collect(),
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parts.pop(),
                _ => None,
            })
            .collect(),
        other => panic!("unexpected XREAD reply {other:?}"),
    };
    streams
        .into_iter()
        .flat_map(|entries| match entries {
            Value::Array(entries) => entries,
            other => panic!("unexpected XREAD entries {other:?}"),
        })
        .collect()
}

/// `(id, data)` of one stream entry.
fn entry_data(entry: &Value) -> Option<(String, &[u8])> {
    let Value::Array(parts) = entry else {
        return None;
    };
    let id = parts.first()?.as_str()?.into_owned();
    let fields = match parts.get(1)? {
        Value::Array(fields) => fields,
        _ => return None,
    };
    let data = fields
        .chunks(2)
        .find(|pair| pair[0].as_str().as_deref() == Some("data"))?
        .get(1)?
        .as_bytes()?;
    Some((id, data))
}

impl LatencyRig for XaddXread {
    fn name(&self) -> &'static str {
        XADD_XREAD
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let key = unique("bench:lat:xread");
        let mut recorder = Recorder::new(events);
        let deadline = recorder.deadline(rate_per_s);
        let (reader, reader_key) = (self.reader.clone(), key.clone());
        let receiving = self.handle.spawn(async move {
            let mut last = "0-0".to_string();
            // Never cancels a blocked XREAD (it would still hold the connection):
            // the deadline is checked between replies, each within the BLOCK.
            while !recorder.done() && tokio::time::Instant::now() < deadline {
                let reply: Value = reader
                    .xread(
                        Some(XREAD_COUNT),
                        Some(XREAD_BLOCK_MS),
                        reader_key.as_str(),
                        last.as_str(),
                    )
                    .await
                    .expect("XREAD");
                let now = now_ns();
                for entry in xread_entries(reply) {
                    let (id, data) = entry_data(&entry).expect("an entry with a data field");
                    recorder.record_payload(data, now);
                    last = id;
                }
            }
            recorder.histogram
        });
        let task_key = Key::from(key.as_str());
        pace(events, rate_per_s, |seq| {
            let fields = self.entries.fields(stamp(seq, now_ns()));
            let (client, key) = (self.publisher.clone(), task_key.clone());
            self.handle.spawn(async move {
                let _: Value = client
                    .xadd(key, false, cap(), "*", fields)
                    .await
                    .expect("XADD");
            });
        });
        let histogram = self.handle.block_on(receiving).expect("reader panicked");
        self.cleaner.delete(&key);
        histogram
    }
}

/// fred `PUBLISH` (as a custom command: fred's pub/sub interface is behind its
/// `i-pubsub` feature) → a raw RESP2 connection in `SUBSCRIBE` mode.
pub struct PublishSubscribe {
    handle: Handle,
    publisher: Client,
    port: u16,
}

impl PublishSubscribe {
    pub fn new(env: &Env) -> Self {
        PublishSubscribe {
            handle: env.handle(),
            publisher: env.fred_client(COMMAND_TIMEOUT),
            port: env.redis.port(),
        }
    }
}

impl LatencyRig for PublishSubscribe {
    fn name(&self) -> &'static str {
        PUBLISH_SUBSCRIBE
    }

    fn run(&mut self, events: u64, rate_per_s: u64) -> Histogram<u64> {
        let channel = unique("bench:lat:channel");
        let mut subscriber = run_on(&self.handle, subscribe(self.port, channel.clone()))
            .expect("SUBSCRIBE on a raw connection");
        let mut recorder = Recorder::new(events);
        let deadline = recorder.deadline(rate_per_s);
        let receiving = self.handle.spawn(async move {
            while !recorder.done() {
                let frame = match tokio::time::timeout_at(deadline, subscriber.next()).await {
                    Ok(frame) => frame.expect("a pub/sub message"),
                    Err(_) => break, // lost messages (pub/sub is fire-and-forget)
                };
                let now = now_ns();
                if frame.len() == 3 && frame[0] == b"message" {
                    recorder.record_payload(&frame[2], now);
                }
            }
            recorder.histogram
        });
        let publish = CustomCommand::new_static("PUBLISH", ClusterHash::FirstKey, false);
        let channel = Value::from(channel.as_str());
        pace(events, rate_per_s, |seq| {
            let payload = stamp(seq, now_ns());
            let (client, command, channel) =
                (self.publisher.clone(), publish.clone(), channel.clone());
            self.handle.spawn(async move {
                let _: Value = client
                    .custom(command, vec![channel, Value::Bytes(payload)])
                    .await
                    .expect("PUBLISH");
            });
        });
        self.handle
            .block_on(receiving)
            .expect("subscriber panicked")
    }
}

/// A connection in RESP2 subscribe mode, read frame by frame.
struct RawSubscriber {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

/// Connects to `127.0.0.1:port`, subscribes to `channel` and waits for the
/// confirmation (so nothing published afterwards is missed).
async fn subscribe(port: u16, channel: String) -> io::Result<RawSubscriber> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let command = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    stream.write_all(command.as_bytes()).await?;
    let mut subscriber = RawSubscriber {
        reader: BufReader::with_capacity(64 * 1024, stream),
        line: Vec::with_capacity(64),
    };
    let confirmation = subscriber.next().await?;
    if confirmation.first().map(Vec::as_slice) != Some(b"subscribe") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected reply to SUBSCRIBE: {:?}",
                confirmation
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    Ok(subscriber)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl RawSubscriber {
    /// One line without its CRLF, in `self.line`.
    async fn read_line(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if !self.line.ends_with(b"\r\n") {
            return Err(invalid("a RESP line without CRLF"));
        }
        self.line.truncate(self.line.len() - 2);
        Ok(())
    }

    fn line_number(&self) -> io::Result<i64> {
        std::str::from_utf8(&self.line[1..])
            .ok()
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| invalid("a RESP length that is not a number"))
    }

    /// The next push frame: an array of bulk strings and integers (integers as
    /// their decimal text), as `SUBSCRIBE` confirmations and messages are.
    async fn next(&mut self) -> io::Result<Vec<Vec<u8>>> {
        self.read_line().await?;
        if self.line.first() != Some(&b'*') {
            return Err(invalid("a RESP2 push frame that is not an array"));
        }
        let count = self.line_number()?;
        let mut parts = Vec::with_capacity(count.max(0) as usize);
        for _ in 0..count {
            self.read_line().await?;
            match self.line.first() {
                Some(b'$') => {
                    let len = self.line_number()?;
                    let mut part = vec![0; len.max(0) as usize + 2];
                    self.reader.read_exact(&mut part).await?;
                    part.truncate(len.max(0) as usize);
                    parts.push(part);
                }
                Some(b':') => parts.push(self.line[1..].to_vec()),
                _ => return Err(invalid("an unexpected RESP2 type in a push frame")),
            }
        }
        Ok(parts)
    }
}

//! Two processes, one durable topic: every event a publisher process sends reaches
//! a subscriber process through Redis Streams, once, in order, and never comes
//! back to its publisher.
//!
//! ```text
//! cargo run --release --example cross_instance -- --redis redis://127.0.0.1:6379 --events 100000
//! ```
//!
//! The program re-executes itself twice: first as the subscriber (it connects,
//! creates the topic and says it is ready), then as the publisher (it sends the
//! events at `--rate` per second, 20 000 by default, and waits for the receipt of
//! the last one). Each event carries its sequence number and a 128-byte payload;
//! the subscriber marks what it saw, counts duplicates and events from its own
//! instance, and measures publish→receive latency on the wall clock (both
//! processes on one host). The last line is
//!
//! ```text
//! sent=N received=N duplicates=0 own=0 p50_us=… p99_us=…
//! ```
//!
//! and the exit code is 0 only when every event arrived once. The topic is per
//! run (`example:cross-<id>`) and its stream is deleted at the end.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tickbus::{Bus, DurableOptions, LiveBus, RecvError, RedisConfig, Retention};

/// One event: its sequence number and 128 bytes of payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Tick {
    seq: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// How long the subscriber waits for the next event before it gives up.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Two processes, one durable topic: every event sent by one reaches the other once.
#[derive(Parser)]
struct Args {
    /// The Redis both processes use.
    #[arg(
        long,
        value_name = "URL",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// How many events the publisher sends.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// Events per second the publisher sends.
    #[arg(long, value_name = "PER_SECOND", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Set in a child process: what it is (how the parent starts its children).
    #[arg(long, hide = true, value_enum, requires = "topic")]
    role: Option<Role>,
    /// Set in a child process: the run's topic.
    #[arg(long, hide = true, requires = "role")]
    topic: Option<String>,
}

/// The part a child process plays.
#[derive(Clone, Copy, ValueEnum)]
enum Role {
    Subscriber,
    Publisher,
}

fn live_bus(url: &str) -> Result<LiveBus, tickbus::Error> {
    Bus::builder().redis(RedisConfig::from_url(url)?).build()
}

fn options(receive_remote: bool, events: u64) -> DurableOptions {
    DurableOptions {
        retention: Retention {
            max_len: Some(events.max(1_000)),
            max_age: None,
        },
        receive_remote,
        ..Default::default()
    }
}

fn subscriber(args: &Args, topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bus = live_bus(&args.redis)?;
    let mut sub = bus
        .durable_topic::<Tick>(topic, options(true, args.events))?
        .subscribe();
    println!("ready");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut seen = vec![false; args.events as usize];
    let (mut received, mut duplicates, mut own, mut undecodable) = (0_u64, 0_u64, 0_u64, 0_u64);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    while received < args.events {
        let next = runtime.block_on(async { tokio::time::timeout(IDLE_LIMIT, sub.recv()).await });
        let event = match next {
            Err(_) => break, // idle: report what arrived
            Ok(Ok(event)) => event,
            Ok(Err(RecvError::Lagged(n))) => return Err(format!("lagged {n}").into()),
            Ok(Err(RecvError::Undecodable(bad))) => {
                eprintln!("{bad}");
                undecodable += 1;
                continue;
            }
            Ok(Err(RecvError::Closed)) => break,
        };
        if event.meta.source() == bus.instance_id() {
            own += 1;
            continue;
        }
        let now = bus.now_ns();
        latency.saturating_record(now.saturating_sub(event.meta.timestamp_ns()) / 1_000);
        match seen.get_mut(event.value.seq as usize) {
            Some(slot) if *slot => duplicates += 1,
            Some(slot) => {
                *slot = true;
                received += 1;
            }
            None => return Err(format!("sequence {} out of range", event.value.seq).into()),
        }
    }
    println!(
        "received={received} duplicates={duplicates} own={own} undecodable={undecodable} p50_us={} p99_us={}",
        latency.value_at_quantile(0.50),
        latency.value_at_quantile(0.99)
    );
    bus.shutdown();
    Ok(())
}

fn publisher(args: &Args, topic: &str) -> Result<(), Box<dyn std::error::Error>> {
    let bus = live_bus(&args.redis)?;
    let ticks = bus.durable_topic::<Tick>(topic, options(false, args.events))?;
    let interval = Duration::from_nanos(1_000_000_000 / args.rate);
    let start = Instant::now();
    let mut last = None;
    for seq in 0..args.events {
        // Paced on an absolute schedule (a late event does not delay the next
        // ones), sleeping rather than spinning: on a small machine the writer,
        // the reader, the subscriber and Redis need the cores.
        let due = start + interval * seq as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let tick = Tick {
            seq,
            data: vec![(seq % 251) as u8; 128],
        };
        if seq + 1 == args.events {
            last = Some(ticks.publish_durable(tick)?);
        } else {
            ticks.publish(tick)?;
        }
    }
    if let Some(last) = last {
        last.wait_timeout(IDLE_LIMIT)?;
    }
    println!("sent={}", args.events);
    bus.shutdown();
    Ok(())
}

/// Runs this program in `role`, with the shared arguments.
fn child(args: &Args, role: &str, topic: &str) -> std::io::Result<std::process::Child> {
    Command::new(std::env::current_exe()?)
        .args(["--role", role, "--topic", topic, "--redis", &args.redis])
        .args([
            "--events",
            &args.events.to_string(),
            "--rate",
            &args.rate.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn parent(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let topic = format!("example:cross-{:08x}", fastrand_u32());
    let mut sub = child(args, "subscriber", &topic)?;
    let mut sub_out = BufReader::new(sub.stdout.take().ok_or("no stdout")?).lines();
    match sub_out.next() {
        Some(Ok(line)) if line == "ready" => {}
        other => {
            let _ = sub.kill();
            return Err(format!("the subscriber did not start: {other:?}").into());
        }
    }
    let publisher = child(args, "publisher", &topic)?.wait_with_output()?;
    let published = String::from_utf8_lossy(&publisher.stdout).into_owned();
    let report = sub_out.map_while(Result::ok).last().unwrap_or_default();
    let sub_status = sub.wait()?;
    let sent: u64 = published
        .lines()
        .find_map(|line| field(line, "sent"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let get = |name| field(&report, name).unwrap_or("?").to_string();
    let (received, duplicates, own) = (get("received"), get("duplicates"), get("own"));
    // Clean up the shared Redis: the stream belongs to this run only.
    if let Ok(bus) = live_bus(&args.redis) {
        let _ = bus.purge_stream(&topic);
    }
    let ok = publisher.status.success()
        && sub_status.success()
        && sent == args.events
        && received == sent.to_string()
        && duplicates == "0"
        && own == "0";
    println!(
        "sent={sent} received={received} duplicates={duplicates} own={own} p50_us={} p99_us={}",
        get("p50_us"),
        get("p99_us")
    );
    Ok(ok)
}

/// A run id for the topic name, without another dependency.
fn fastrand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (args.role, args.topic.as_deref()) {
        (Some(Role::Subscriber), Some(topic)) => subscriber(&args, topic).map(|()| true),
        (Some(Role::Publisher), Some(topic)) => publisher(&args, topic).map(|()| true),
        _ => parent(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("cross_instance: {error}");
            ExitCode::FAILURE
        }
    }
}

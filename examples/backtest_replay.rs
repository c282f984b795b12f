//! Record live, replay into a backtest: N events published on a durable topic
//! are stored in a Redis stream, read back with `LiveBus::replay`, and fed into a
//! `Backtest` (an embedded bus with a virtual clock), whose handler checks each
//! one against what was recorded.
//!
//! ```text
//! cargo run --release --example backtest_replay -- --redis redis://127.0.0.1:6379 [--events 100000]
//! ```
//!
//! Recording: the events are published with `publish_durable`; a local
//! subscriber notes each one's event id and timestamp, and the receipts give
//! the stream ids. Replay: every replayed event must have the recorded stream
//! id, event id and timestamp, in the recorded order; inside the backtest the
//! handler must see the recorded value and event id at the recorded time (the
//! backtest clock is set to each event's timestamp). The last line is
//!
//! ```text
//! recorded=N replayed=N identical=true
//! ```
//!
//! and the exit code is 0 only when everything matched. The topic is per run
//! (`example:replay-<id>`) and its stream is deleted at the end.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use tickbus::backtest::Backtest;
use tickbus::replay::ReplayOptions;
use tickbus::{
    Bus, DurableOptions, EventId, LiveBus, RecvError, RedisConfig, SlowPolicy, StreamId,
    SubscribeOptions,
};

/// One recorded event: a trade print.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Trade {
    seq: u64,
    price: f64,
    qty: i64,
}

/// How long any one wait may take before the example gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// Record N trades on a durable topic, replay them into a backtest, compare.
#[derive(Parser)]
struct Args {
    /// The Redis to record into.
    #[arg(
        long,
        value_name = "URL",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// How many trades to record and replay.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
}

/// The trades, a deterministic random walk.
fn trades(n: u64) -> impl Iterator<Item = Trade> {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut price = 3_000.0_f64;
    (0..n).map(move |seq| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        price *= 1.0 + ((rng % 201) as f64 - 100.0) * 1e-6;
        Trade {
            seq,
            price,
            qty: (rng >> 32) as i64 % 1_000 - 500,
        }
    })
}

/// What the recording side knows of one event.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Recorded {
    stream_id: StreamId,
    event_id: EventId,
    timestamp_ns: u64,
    value: Trade,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("backtest_replay: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let n = args.events;
    let bus = Bus::builder()
        .redis(RedisConfig::from_url(&args.redis)?)
        .build()?;
    let topic_name = format!(
        "example:replay-{}",
        &bus.instance_id().to_string().replace('-', "")[..12]
    );
    println!(
        "backtest_replay: {n} events on {topic_name}, Redis {}",
        RedisConfig::from_url(&args.redis)?.redacted_url()
    );
    let result = record_and_replay(&bus, &topic_name, n);
    bus.purge_stream(&topic_name)?;
    bus.shutdown();
    result
}

fn record_and_replay(
    bus: &LiveBus,
    topic_name: &str,
    n: u64,
) -> Result<bool, Box<dyn std::error::Error>> {
    // RECORD: publish durably; a local subscriber notes ids and timestamps.
    let topic = bus.durable_topic::<Trade>(
        topic_name,
        DurableOptions {
            receive_remote: false,
            ..Default::default()
        },
    )?;
    let mut subscriber =
        topic.subscribe_with(SubscribeOptions::with_policy(SlowPolicy::Backpressure))?;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let recorder = thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            match subscriber.recv_blocking() {
                Ok(event) => seen.push((event.meta.id(), event.meta.timestamp_ns(), event.value)),
                Err(RecvError::Closed) => break,
                Err(other) => panic!("the recorder missed events: {other:?}"),
            }
        }
        let _ = seen_tx.send(seen);
    });
    let started = Instant::now();
    let mut receipts = Vec::with_capacity(n as usize);
    for trade in trades(n) {
        receipts.push(
            topic
                .publish_durable(trade)
                .map_err(|e| format!("publish: {e}"))?,
        );
    }
    let stream_ids = receipts
        .into_iter()
        .map(|receipt| receipt.wait_timeout(PATIENCE))
        .collect::<Result<Vec<StreamId>, _>>()?;
    let record_took = started.elapsed();
    topic.close();
    let seen = seen_rx
        .recv_timeout(PATIENCE)
        .map_err(|_| "the recorder did not finish")?;
    recorder.join().map_err(|_| "the recorder panicked")?;
    if seen.len() as u64 != n {
        return Err(format!("the recorder saw {} of {n} events", seen.len()).into());
    }
    let recorded: Vec<Recorded> = stream_ids
        .iter()
        .zip(&seen)
        .map(|(&stream_id, &(event_id, timestamp_ns, value))| Recorded {
            stream_id,
            event_id,
            timestamp_ns,
            value,
        })
        .collect();
    println!(
        "recorded {n} events in {:.3} s: {:.0} events/s (publish until Redis confirmed the last)",
        record_took.as_secs_f64(),
        n as f64 / record_took.as_secs_f64()
    );

    // REPLAY into a backtest.
    let recorded = Arc::new(recorded);
    let mut backtest = Backtest::new();
    backtest.route::<Trade>(topic_name)?;
    // Checked in the backtest's handler: value, order and time of each event.
    let handled = Arc::new(Mutex::new(Handled::default()));
    {
        let (recorded, handled, bus) = (recorded.clone(), handled.clone(), backtest.bus().clone());
        backtest.on::<Trade, _>(topic_name, move |event| {
            let mut h = handled.lock().expect("not poisoned");
            let i = h.count as usize;
            h.count += 1;
            let same = recorded.get(i).is_some_and(|r| {
                r.value == event.value
                    && r.timestamp_ns == event.meta.timestamp_ns()
                    && r.timestamp_ns == bus.now_ns()
            });
            if !same {
                h.mismatches += 1;
                if h.first_mismatch.is_none() {
                    h.first_mismatch = Some(format!(
                        "handler, event {i}: got {:?} at {} ns, recorded {:?}",
                        event.value,
                        event.meta.timestamp_ns(),
                        recorded.get(i)
                    ));
                }
            }
            if recorded
                .get(i)
                .is_some_and(|r| r.event_id == event.meta.id())
            {
                h.same_id_in_handler += 1;
            }
        })?;
    }
    // Checked as the replay yields them: stream id, event id, timestamp, order.
    let mut replayed = 0_u64;
    let mut replay_mismatches = 0_u64;
    let mut first_replay_mismatch = None;
    let started = Instant::now();
    let replay = bus.replay(&[topic_name], ReplayOptions::default())?;
    let report = backtest.run(replay.inspect(|item| {
        let i = replayed as usize;
        replayed += 1;
        let same = match (item, recorded.get(i)) {
            (Ok(event), Some(r)) => {
                event.stream_id == r.stream_id
                    && event.event_id == r.event_id
                    && event.timestamp_ns == r.timestamp_ns
            }
            _ => false,
        };
        if !same {
            replay_mismatches += 1;
            if first_replay_mismatch.is_none() {
                first_replay_mismatch = Some(format!(
                    "replay, event {i}: got {item:?}, recorded {:?}",
                    recorded.get(i)
                ));
            }
        }
    }))?;
    let replay_took = started.elapsed();
    let handled = handled.lock().expect("not poisoned");
    println!(
        "replayed {replayed} events into a backtest in {:.3} s: {:.0} events/s \
         (XRANGE pages of 1000, decode, publish on the backtest bus, handler)",
        replay_took.as_secs_f64(),
        replayed as f64 / replay_took.as_secs_f64()
    );
    println!(
        "backtest: {} events fed, {} handler calls, {} skipped, clock at the end {} ns",
        report.events, report.handler_calls, report.skipped, report.end_ns
    );
    println!(
        "event ids: {}/{replayed} replayed as recorded; {}/{} as recorded in the backtest handler",
        replayed - replay_mismatches,
        handled.same_id_in_handler,
        handled.count
    );
    for mismatch in [
        first_replay_mismatch.as_ref(),
        handled.first_mismatch.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        println!("first mismatch: {mismatch}");
    }
    if let Some(error) = &report.first_error {
        println!("first skipped item: {error}");
    }
    let identical = replayed == n
        && replay_mismatches == 0
        && handled.count == n
        && handled.mismatches == 0
        && handled.same_id_in_handler == n
        && report.events == n
        && report.skipped == 0
        && report.unrouted == 0;
    println!("recorded={n} replayed={replayed} identical={identical}");
    Ok(identical)
}

/// What the backtest handler found.
#[derive(Default)]
struct Handled {
    count: u64,
    mismatches: u64,
    same_id_in_handler: u64,
    first_mismatch: Option<String>,
}

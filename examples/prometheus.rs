//! tickbus's metrics on a Prometheus endpoint (feature `metrics`, exporter
//! `metrics-exporter-prometheus`).
//!
//! ```text
//! cargo run --example prometheus --features metrics                      # embedded, :9091
//! cargo run --example prometheus --features metrics -- 9100 --redis redis://127.0.0.1:6380
//! curl -s http://127.0.0.1:9091/metrics | grep ^tickbus_
//! ```
//!
//! Arguments: the port (default 9091, listening on 127.0.0.1 only), `--redis
//! URL` for live mode, `--seconds N` to stop after N seconds (default: run
//! until killed), `--rate N` events per second (default 1000).
//!
//! Embedded, it publishes ticks to a local topic with a lagging subscriber and
//! samples the metrics itself once a second (`Bus::record_metrics`). Live, it
//! publishes durable fills that a consumer group (`example-booking`) acks, and
//! the bus samples by itself; every five seconds it prints the health report
//! as JSON (what a service would serve as its health check).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use tickbus::group::GroupConfig;
use tickbus::{Bus, DurableOptions, RedisConfig, StartAt, TopicOptions};

/// tickbus's metrics on a Prometheus endpoint at 127.0.0.1:PORT.
#[derive(Parser)]
struct Args {
    /// The port of the metrics endpoint (listening on 127.0.0.1 only).
    #[arg(value_name = "PORT", default_value_t = 9091)]
    port: u16,
    /// The same port, as a flag.
    #[arg(long = "port", value_name = "PORT", conflicts_with = "port")]
    port_flag: Option<u16>,
    /// Live mode: publish durable fills that a consumer group acks.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Stop after this many seconds (default: run until killed).
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Events published per second.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    rate: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = Args::parse();
    args.port = args.port_flag.unwrap_or(args.port);
    // Install the recorder first: everything tickbus records goes to it.
    PrometheusBuilder::new()
        .with_http_listener(([127, 0, 0, 1], args.port))
        .install()?;
    println!("scrape http://127.0.0.1:{}/metrics", args.port);
    let until = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs(s));
    let pause = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    match &args.redis {
        None => embedded(until, pause),
        Some(url) => live(url, until, pause),
    }
}

/// A local topic, a subscriber that keeps up and one that lags.
fn embedded(until: Option<Instant>, pause: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().build()?;
    let ticks = bus.topic_with::<(u64, f64)>(
        "md:tick",
        TopicOptions {
            capacity: 64,
            ..Default::default()
        },
    )?;
    let mut fast = ticks.subscribe();
    let mut slow = ticks.subscribe(); // reads one event a second: lags
    let mut next_sample = Instant::now();
    let mut n = 0_u64;
    while until.is_none_or(|until| Instant::now() < until) {
        ticks.publish((n, 100.0 + (n % 100) as f64 / 100.0))?;
        while fast.try_recv().is_ok() {}
        n += 1;
        if Instant::now() >= next_sample {
            let _ = slow.try_recv(); // Lagged(missed) most of the time
            bus.record_metrics();
            next_sample += Duration::from_secs(1);
        }
        std::thread::sleep(pause);
    }
    bus.record_metrics();
    println!("published {n} ticks");
    Ok(())
}

/// Durable fills consumed by a group; the bus samples its metrics by itself.
fn live(
    url: &str,
    until: Option<Instant>,
    pause: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder().redis(RedisConfig::from_url(url)?).build()?;
    let fills = bus.durable_topic::<(u64, f64)>("example:fill", DurableOptions::default())?;
    let config = GroupConfig {
        start: StartAt::New,
        ..Default::default()
    };
    let mut booking = bus.group::<(u64, f64)>("example-booking", "example:fill", config)?;
    // How many fills the worker must book before it stops (set at the end).
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let worker_target = Arc::clone(&target);
    let worker = std::thread::spawn(move || {
        let mut booked = 0_u64;
        while booked < worker_target.load(Ordering::Acquire) {
            match booking.recv_blocking() {
                Some(Ok(delivery)) => {
                    // Logs of the handler would carry the event id and delivery count.
                    let _in_delivery = delivery.span().clone().entered();
                    delivery.ack();
                    booked += 1;
                }
                Some(Err(error)) => eprintln!("group: {error}"),
                None => break,
            }
        }
        booking.shutdown(); // sends the last acks
        booked
    });
    let mut next_report = Instant::now() + Duration::from_secs(5);
    let mut n = 0_u64;
    while until.is_none_or(|until| Instant::now() < until) {
        fills.publish((n, 0.5))?;
        n += 1;
        if Instant::now() >= next_report {
            let report = bus.health_report_blocking(Default::default());
            println!("{}", serde_json::to_string(&report)?);
            next_report += Duration::from_secs(5);
        }
        std::thread::sleep(pause);
    }
    // One last fill, after the target is known, so that the worker sees it.
    target.store(n + 1, Ordering::Release);
    fills.publish((n, 0.0))?;
    let booked = worker.join().map_err(|_| "the worker panicked")?;
    bus.record_metrics();
    println!(
        "{}",
        serde_json::to_string_pretty(&bus.health_report_blocking(Default::default()))?
    );
    println!("published {} fills, booked {booked}", n + 1);
    bus.shutdown();
    Ok(())
}

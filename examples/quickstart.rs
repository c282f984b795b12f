//! The seeds' "Redis Messaging standard" chain, on the embedded bus (no Redis):
//!
//! ```text
//! position monitor ─► position:updated ─► exposure monitor ─► exposure:calculated
//!   ─► risk monitor ─► risk:calculated ─┬─► P&L calculator ─► pnl:calculated
//!                                       └─► strategy manager ─► strategy:instructions
//! ```
//!
//! Each component is a thread with its own subscriptions, exactly as it would be
//! live; only the bus configuration differs. Run it with
//!
//! ```text
//! cargo run --release --example quickstart [-- --updates N]
//! ```

use std::thread;
use std::time::Instant;

use clap::Parser;
use hdrhistogram::Histogram;
use tickbus::{
    Bus, Event, Publisher, RecvError, SlowPolicy, SubscribeOptions, Subscriber, TopicOptions,
};

/// The position monitor's output: one symbol's position after a fill or a mark.
#[derive(Clone, Copy, Debug)]
struct Position {
    symbol: usize,
    qty: f64,
    mark: f64,
}

/// Net and gross exposure across symbols, with the time of the position that caused it.
#[derive(Clone, Copy, Debug)]
struct Exposure {
    net_delta: f64,
    gross: f64,
    origin_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RiskStatus {
    Ok,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug)]
struct Risk {
    status: RiskStatus,
    utilization: f64,
    net_delta: f64,
    origin_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Pnl {
    cumulative: f64,
}

#[derive(Clone, Copy, Debug)]
struct Instruction {
    reduce_by: f64,
    critical: bool,
}

const SYMBOLS: usize = 8;
const GROSS_LIMIT: f64 = 2_000_000.0;

/// Every event must reach every stage: the chain subscribes with backpressure.
const MUST_SEE_ALL: SubscribeOptions = SubscribeOptions::with_policy(SlowPolicy::Backpressure);

/// Receives until shutdown, timing each hop (publish to receive) on the bus clock.
fn run<T: Clone + Send + Sync + 'static>(
    bus: &Bus,
    mut sub: Subscriber<T>,
    mut handle: impl FnMut(Event<T>, u64),
) -> Histogram<u64> {
    let mut hop = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
    loop {
        match sub.recv_blocking() {
            Ok(event) => {
                let now = bus.now_ns();
                hop.saturating_record(now.saturating_sub(event.meta.timestamp_ns()));
                handle(event, now);
            }
            Err(RecvError::Closed) => return hop,
            Err(RecvError::Lagged(n)) => panic!("a backpressure subscriber never lags ({n})"),
            Err(RecvError::Undecodable(bad)) => panic!("local events always decode: {bad}"),
        }
    }
}

/// Each topic of the chain has one writer (the component that owns it): its
/// exclusive publisher is the fastest way in (plain stores, no atomic
/// read-modify-write on the publish path).
fn one_publisher() -> TopicOptions {
    TopicOptions {
        exclusive_publisher: true,
        ..TopicOptions::default()
    }
}

fn publish<T: Clone + Send + Sync + 'static>(publisher: &mut Publisher<T>, value: T) {
    publisher
        .publish(value)
        .expect("the bus is open while components run");
}

/// What one run of the chain measured.
struct Summary {
    updates: u64,
    per_stage: [u64; 5],
    elapsed: std::time::Duration,
    hops: Histogram<u64>,
    end_to_end: Histogram<u64>,
    final_pnl: f64,
    critical: u64,
}

/// The seed chain on the embedded bus: position -> exposure -> risk -> P&L + strategy.
#[derive(Parser)]
struct Args {
    /// How many position updates flow through the chain at full speed (a
    /// twentieth of them, at least 1 000, in the paced run).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    updates: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let updates = Args::parse().updates;
    let bus = Bus::builder().build()?;
    println!(
        "tickbus quickstart: embedded bus, no Redis, instance {}",
        bus.instance_id()
    );
    println!(
        "the seed chain: position -> exposure -> risk -> P&L + strategy, one thread per component"
    );

    let flat_out = run_chain(&bus, "", updates, None)?;
    report(
        "flat out (latency includes queueing in the 4096-slot rings)",
        &flat_out,
    );

    // The same chain on a fresh set of topics, paced like a live feed, where the
    // latency is the bus's own: publish, wake, receive.
    let paced_updates = (updates / 20).max(1_000);
    let paced = run_chain(&bus, "paced-", paced_updates, Some(50_000.0))?;
    report(
        "paced at 50 000 updates/s (a live feed; threads park between events)",
        &paced,
    );

    bus.shutdown();
    println!(
        "ok: {} + {} position updates, every stage saw every event, final P&L {:.2}",
        flat_out.updates, paced.updates, flat_out.final_pnl
    );
    Ok(())
}

fn report(title: &str, s: &Summary) {
    println!();
    println!("{title}");
    println!("  {:<24}{:>12}", "stage", "events");
    let names = [
        "position:updated",
        "exposure:calculated",
        "risk:calculated",
        "pnl:calculated",
        "strategy:instructions",
    ];
    for (topic, events) in names.iter().zip(s.per_stage) {
        println!("  {topic:<24}{events:>12}");
    }
    let secs = s.elapsed.as_secs_f64();
    println!(
        "  {} updates in {:.3} s: {:.2} M updates/s, {:.2} M events/s on the bus",
        s.updates,
        secs,
        s.updates as f64 / secs / 1e6,
        s.per_stage.iter().sum::<u64>() as f64 / secs / 1e6,
    );
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    for (label, h) in [
        ("publish->receive, per hop", &s.hops),
        ("position->strategy, 3 hops", &s.end_to_end),
    ] {
        println!(
            "  {label:<28} (us)  p50 {:>8.2}  p99 {:>8.2}  p99.9 {:>9.2}  max {:>9.2}",
            us(h, 0.5),
            us(h, 0.99),
            us(h, 0.999),
            h.max() as f64 / 1e3
        );
    }
    println!(
        "  final P&L {:.2}; {} critical risk instructions",
        s.final_pnl, s.critical
    );
}

/// Wires the chain on topics named with `prefix`, pushes `updates` position updates
/// (paced at `rate` per second if given), drains it stage by stage, and reports.
fn run_chain(
    bus: &Bus,
    prefix: &str,
    updates: u64,
    rate: Option<f64>,
) -> Result<Summary, Box<dyn std::error::Error>> {
    let name = |topic: &str| format!("{prefix}{topic}");
    let positions = bus.topic_with::<Position>(&name("position:updated"), one_publisher())?;
    let exposures = bus.topic_with::<Exposure>(&name("exposure:calculated"), one_publisher())?;
    let risks = bus.topic_with::<Risk>(&name("risk:calculated"), one_publisher())?;
    let pnls = bus.topic_with::<Pnl>(&name("pnl:calculated"), one_publisher())?;
    let instructions =
        bus.topic_with::<Instruction>(&name("strategy:instructions"), one_publisher())?;

    // Subscribe before anything is published, so every stage sees every event.
    let exposure_in = positions.subscribe_with(MUST_SEE_ALL)?;
    let risk_in = exposures.subscribe_with(MUST_SEE_ALL)?;
    let pnl_in = risks.subscribe_with(MUST_SEE_ALL)?;
    let strategy_in = risks.subscribe_with(MUST_SEE_ALL)?;
    let pnl_out = pnls.subscribe_with(MUST_SEE_ALL)?;
    let instructions_out = instructions.subscribe_with(MUST_SEE_ALL)?;

    let exposure_monitor = thread::spawn({
        let (bus, mut exposures) = (bus.clone(), exposures.publisher()?);
        move || {
            let mut book = [(0.0f64, 0.0f64); SYMBOLS];
            run(&bus, exposure_in, |event, _| {
                let p = event.value;
                book[p.symbol] = (p.qty, p.mark);
                let net_delta = book.iter().map(|(q, m)| q * m).sum();
                let gross = book.iter().map(|(q, m)| (q * m).abs()).sum();
                publish(
                    &mut exposures,
                    Exposure {
                        net_delta,
                        gross,
                        origin_ns: event.meta.timestamp_ns(),
                    },
                );
            })
        }
    });
    let risk_monitor = thread::spawn({
        let (bus, mut risks) = (bus.clone(), risks.publisher()?);
        move || {
            run(&bus, risk_in, |event, _| {
                let e = event.value;
                let utilization = e.gross / GROSS_LIMIT;
                let status = match utilization {
                    u if u >= 0.9 => RiskStatus::Critical,
                    u if u >= 0.7 => RiskStatus::Warning,
                    _ => RiskStatus::Ok,
                };
                publish(
                    &mut risks,
                    Risk {
                        status,
                        utilization,
                        net_delta: e.net_delta,
                        origin_ns: e.origin_ns,
                    },
                );
            })
        }
    });
    let pnl_calculator = thread::spawn({
        let (bus, mut pnls) = (bus.clone(), pnls.publisher()?);
        move || {
            let (mut last_delta, mut cumulative) = (0.0, 0.0);
            run(&bus, pnl_in, |event, _| {
                let r = event.value;
                cumulative += r.net_delta - last_delta;
                last_delta = r.net_delta;
                publish(&mut pnls, Pnl { cumulative });
            })
        }
    });
    let strategy_manager = thread::spawn({
        let (bus, mut instructions) = (bus.clone(), instructions.publisher()?);
        move || {
            let mut end_to_end =
                Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
            let hop = run(&bus, strategy_in, |event, now| {
                let r = event.value;
                end_to_end.saturating_record(now.saturating_sub(r.origin_ns));
                if r.status != RiskStatus::Ok {
                    let reduce_by = (r.utilization - 0.7).max(0.0) * GROSS_LIMIT;
                    publish(
                        &mut instructions,
                        Instruction {
                            reduce_by,
                            critical: r.status == RiskStatus::Critical,
                        },
                    );
                }
            });
            (hop, end_to_end)
        }
    });
    // Sinks: what a dashboard or an order router would read.
    let pnl_sink = thread::spawn(move || {
        let (mut count, mut last) = (0u64, 0.0);
        let mut sub = pnl_out;
        while let Ok(event) = sub.recv_blocking() {
            count += 1;
            last = event.value.cumulative;
        }
        (count, last)
    });
    let instruction_sink = thread::spawn(move || {
        let (mut count, mut critical) = (0u64, 0u64);
        let mut sub = instructions_out;
        while let Ok(event) = sub.recv_blocking() {
            count += 1;
            critical += u64::from(event.value.critical);
            debug_assert!(event.value.reduce_by >= 0.0);
        }
        (count, critical)
    });

    // The position monitor: a deterministic random walk of fills and marks.
    let mut position_out = positions.publisher()?;
    let started = Instant::now();
    let interval_ns = rate.map(|r| (1e9 / r) as u64);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut book = [(0.0f64, 100.0f64); SYMBOLS];
    for n in 0..updates {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let symbol = (n as usize) % SYMBOLS;
        let (qty, mark) = &mut book[symbol];
        *qty = (*qty + ((rng % 2001) as f64 - 1000.0)).clamp(-2_500.0, 2_500.0);
        *mark *= 1.0 + (((rng >> 20) % 201) as f64 - 100.0) * 1e-5;
        if let Some(interval) = interval_ns {
            let due = started.elapsed().as_nanos() as u64 >= n * interval;
            if !due {
                let wake_at = started + std::time::Duration::from_nanos(n * interval);
                while Instant::now() < wake_at {
                    thread::yield_now(); // leave the cores to the components
                }
            }
        }
        publish(
            &mut position_out,
            Position {
                symbol,
                qty: *qty,
                mark: *mark,
            },
        );
    }

    // Drain stage by stage: close a topic, wait for its consumers to handle
    // everything in it, then close what they publish to.
    positions.close();
    let exposure_stage = exposure_monitor.join().expect("exposure monitor");
    exposures.close();
    let risk_stage = risk_monitor.join().expect("risk monitor");
    risks.close();
    let pnl_stage = pnl_calculator.join().expect("P&L calculator");
    let (strategy_stage, end_to_end) = strategy_manager.join().expect("strategy manager");
    pnls.close();
    instructions.close();
    let (pnl_events, final_pnl) = pnl_sink.join().expect("P&L sink");
    let (instruction_events, critical) = instruction_sink.join().expect("instruction sink");
    let elapsed = started.elapsed();

    let mut hops = exposure_stage.clone();
    for stage in [&risk_stage, &pnl_stage, &strategy_stage] {
        hops.add(stage).expect("same bounds");
    }
    assert_eq!(
        (
            exposure_stage.len(),
            risk_stage.len(),
            pnl_events,
            strategy_stage.len()
        ),
        (updates, updates, updates, updates),
        "every stage handled every event"
    );
    Ok(Summary {
        updates,
        per_stage: [
            updates,
            exposure_stage.len(),
            risk_stage.len(),
            pnl_events,
            instruction_events,
        ],
        elapsed,
        hops,
        end_to_end,
        final_pnl,
        critical,
    })
}

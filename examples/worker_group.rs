//! A consumer group of worker processes sharing one durable topic: every job a
//! producer publishes is handled by one worker (at least once), and the group
//! drains to nothing pending.
//!
//! ```text
//! cargo run --release --example worker_group -- --redis redis://127.0.0.1:6379 --events 100000
//! cargo run --release --example worker_group -- --redis redis://127.0.0.1:7399 --events 100000 --workers 4
//! ```
//!
//! The program re-executes itself `--workers` times (default 3) with a hidden
//! `--worker` flag. Each worker joins the group `workers-<run>` on the topic
//! `example:jobs-<run>` (both unique per run, so reruns against the same Redis
//! start clean) under its own stable name (`worker-0`, `worker-1`, …), handles
//! the jobs it is given, acks them, writes one line per handled job to its
//! stdout, and exits once the group has read every job and nothing is pending.
//!
//! The parent publishes `--events` jobs (durable, full speed), reads the
//! workers' lines, marks every handled job id, counts duplicates, prints
//! throughput and progress, and counts the topic's dead letters. Its last line is
//!
//! ```text
//! published=N handled_unique=N duplicates=D dead_letters=0
//! ```
//!
//! and it exits 0 only when every published job was handled, no job was
//! dead-lettered and every worker exited cleanly. At the end it deletes the
//! topic's stream (and its group with it); a dead-letter stream, if any, is left
//! for inspection and named on stderr.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::Parser;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tickbus::group::GroupConfig;
use tickbus::{Bus, DurableOptions, LiveBus, RedisConfig, StartAt};

/// One job: its id (0, 1, …) and a description to work on.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    id: u64,
    text: String,
}

/// Most deliveries a worker takes (and writes out) at once.
const BATCH: usize = 256;
/// A worker or the parent that sees no progress for this long gives up.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How often an idle worker asks Redis whether the group is done.
const DONE_CHECK: Duration = Duration::from_millis(200);

/// A producer and worker processes sharing one durable topic through a consumer group.
#[derive(Parser)]
struct Args {
    /// The Redis the producer and the workers use.
    #[arg(
        long,
        value_name = "URL",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis: String,
    /// How many jobs the producer publishes.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    events: u64,
    /// How many worker processes to start.
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    workers: usize,
    /// Set in a worker process: its name (how the parent starts its workers).
    #[arg(long, value_name = "NAME", hide = true, requires_all = ["topic", "group"])]
    worker: Option<String>,
    /// Set in a worker process: the run's topic.
    #[arg(long, hide = true, requires = "worker")]
    topic: Option<String>,
    /// Set in a worker process: the run's group.
    #[arg(long, hide = true, requires = "worker")]
    group: Option<String>,
}

fn live_bus(url: &str) -> Result<LiveBus, tickbus::Error> {
    Bus::builder().redis(RedisConfig::from_url(url)?).build()
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

// ---------------------------------------------------------------------------
// A worker process.

fn worker(
    args: &Args,
    name: &str,
    topic: &str,
    group: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let bus = live_bus(&args.redis)?;
    let config = GroupConfig {
        start: StartAt::Beginning,
        consumer: Some(name.to_string()),
        batch: BATCH,
        max_in_flight: 2 * BATCH,
        ack_wait: Duration::from_secs(5),
        ..Default::default()
    };
    let mut jobs = bus.group::<Job>(group, topic, config)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {name}")?;
    out.flush()?;
    let runtime = runtime()?;
    let mut lines = String::new();
    let mut checksum = 0_u64;
    let mut last_progress = Instant::now();
    runtime.block_on(async {
        loop {
            let first = tokio::select! {
                delivery = jobs.recv() => delivery,
                () = tokio::time::sleep(DONE_CHECK) => {
                    // Idle: done once the group has read every job and every
                    // member has acked what it took (ours are sent by now).
                    let info = match jobs.info().await {
                        Ok(info) => info,
                        Err(error) if last_progress.elapsed() > STALL_LIMIT => return Err(error.into()),
                        Err(error) => {
                            eprintln!("{name}: cannot read the group's state ({error}); retrying");
                            continue;
                        }
                    };
                    let length: u64 = info.streams.iter().map(|s| s.length).sum();
                    if length >= args.events && info.lag() == Some(0) && info.pending() == 0 {
                        break;
                    }
                    if last_progress.elapsed() > STALL_LIMIT {
                        return Err(format!("{name}: no job for {STALL_LIMIT:?} and the group is not done: {info:?}").into());
                    }
                    continue;
                }
            };
            let mut batch = vec![first.ok_or("the consumer stopped")??];
            while batch.len() < BATCH {
                match jobs.recv().now_or_never() {
                    Some(delivery) => batch.push(delivery.ok_or("the consumer stopped")??),
                    None => break,
                }
            }
            last_progress = Instant::now();
            // The work: a checksum of each job's text. The lines reach the parent
            // before the acks leave, so a crash loses acks (redelivery), never a
            // handled line.
            lines.clear();
            for job in &batch {
                checksum = job
                    .text
                    .bytes()
                    .fold(checksum, |sum, byte| sum.rotate_left(5) ^ u64::from(byte));
                writeln!(lines, "handled {} {}", job.id, job.info().deliveries)?;
            }
            out.write_all(lines.as_bytes())?;
            out.flush()?;
            for job in batch {
                job.ack(); // joins the next multi-id XACK
            }
        }
        Ok::<(), Box<dyn std::error::Error>>(())
    })?;
    let stats = jobs.stats();
    writeln!(
        out,
        "stats {name} delivered={} redelivered={} acked={} dead_lettered={} checksum={checksum:016x}",
        stats.delivered, stats.redelivered, stats.acked, stats.dead_lettered
    )?;
    out.flush()?;
    jobs.shutdown();
    bus.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent: producer and collector.

/// What the parent hears from its workers.
enum Report {
    Ready,
    Handled {
        id: u64,
        deliveries: u32,
    },
    Stats(String),
    /// A worker's stdout closed (it exited).
    Gone,
}

fn spawn_worker(
    args: &Args,
    index: usize,
    topic: &str,
    group: &str,
    tx: mpsc::Sender<Report>,
) -> std::io::Result<Child> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--worker", &format!("worker-{index}"), "--topic", topic])
        .args(["--group", group, "--redis", &args.redis])
        .args(["--events", &args.events.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let report = match words.next() {
                Some("ready") => Report::Ready,
                Some("stats") => Report::Stats(line.trim_start_matches("stats ").to_string()),
                Some("handled") => {
                    let id = words.next().and_then(|id| id.parse().ok());
                    let deliveries = words.next().and_then(|n| n.parse().ok());
                    match (id, deliveries) {
                        (Some(id), Some(deliveries)) => Report::Handled { id, deliveries },
                        _ => continue,
                    }
                }
                _ => continue,
            };
            if tx.send(report).is_err() {
                return;
            }
        }
        let _ = tx.send(Report::Gone);
    });
    Ok(child)
}

/// The workers; dropping them kills any still running (the parent failed).
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The collected figures.
struct Tally {
    seen: Vec<bool>,
    handled_unique: u64,
    duplicates: u64,
    redelivered: u64,
    out_of_range: u64,
}

impl Tally {
    fn record(&mut self, id: u64, deliveries: u32) {
        if deliveries > 1 {
            self.redelivered += 1;
        }
        match usize::try_from(id)
            .ok()
            .and_then(|id| self.seen.get_mut(id))
        {
            Some(seen) if *seen => self.duplicates += 1,
            Some(seen) => {
                *seen = true;
                self.handled_unique += 1;
            }
            None => self.out_of_range += 1,
        }
    }
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn parent(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..12];
    let (topic, group) = (format!("example:jobs-{run}"), format!("workers-{run}"));
    let bus = live_bus(&args.redis)?;
    let runtime = runtime()?;
    let jobs = bus.durable_topic::<Job>(
        &topic,
        DurableOptions {
            receive_remote: false, // this process only publishes
            ..Default::default()
        },
    )?;
    println!(
        "topic {topic}, group {group}: {} workers, {} jobs",
        args.workers, args.events
    );

    let (tx, rx) = mpsc::channel();
    let mut workers = Workers(Vec::new());
    for index in 0..args.workers {
        workers
            .0
            .push(spawn_worker(args, index, &topic, &group, tx.clone())?);
    }
    drop(tx);
    let mut tally = Tally {
        seen: vec![false; usize::try_from(args.events)?],
        handled_unique: 0,
        duplicates: 0,
        redelivered: 0,
        out_of_range: 0,
    };
    let mut stats = Vec::new();
    let mut gone = 0;
    // Every worker joined the group before the first job is published.
    let mut ready = 0;
    while ready < args.workers {
        match rx.recv_timeout(STALL_LIMIT) {
            Ok(Report::Ready) => ready += 1,
            Ok(Report::Gone) => return Err("a worker exited before it was ready".into()),
            Ok(_) => {}
            Err(_) => return Err(format!("workers not ready within {STALL_LIMIT:?}").into()),
        }
    }

    // The producer, on its own thread: durable publishes at full speed, then
    // the last receipt (receipts resolve in order: once the last one resolves,
    // Redis has every job). Returns how many publishes were accepted.
    let started = Instant::now();
    let events = args.events;
    let producer = std::thread::spawn(move || {
        let mut last = None;
        for id in 0..events {
            let job = Job {
                id,
                text: format!("job {id}: label the article"),
            };
            match jobs.publish_durable(job) {
                Ok(receipt) => last = Some(receipt),
                Err(error) => {
                    eprintln!("publish {id} failed: {error}");
                    return id;
                }
            }
        }
        let queued = started.elapsed();
        if let Some(Err(error)) = last.map(|last| last.wait_timeout(STALL_LIMIT)) {
            eprintln!("the last job did not reach Redis: {error}");
            return 0;
        }
        let written = started.elapsed();
        println!(
            "published {events} jobs: queued in {:.2} s, all in Redis after {:.2} s ({:.0} jobs/s)",
            queued.as_secs_f64(),
            written.as_secs_f64(),
            rate(events, written)
        );
        events
    });

    // The collector: until every worker has exited (each exits once the group
    // is drained).
    let mut next_progress = Instant::now() + Duration::from_secs(1);
    let mut last_handled = started;
    let mut stalled = false;
    while gone < args.workers {
        let report = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(report) => report,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if last_handled.elapsed() > STALL_LIMIT {
                    eprintln!("no progress for {STALL_LIMIT:?}: stopping the workers");
                    stalled = true;
                    break;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match report {
            Report::Handled { id, deliveries } => {
                tally.record(id, deliveries);
                last_handled = Instant::now();
            }
            Report::Stats(line) => stats.push(line),
            Report::Gone => gone += 1,
            Report::Ready => {}
        }
        if Instant::now() >= next_progress {
            let elapsed = started.elapsed();
            println!(
                "  {:>5.1} s: handled {}/{} ({:.0} jobs/s so far)",
                elapsed.as_secs_f64(),
                tally.handled_unique,
                args.events,
                rate(tally.handled_unique, elapsed)
            );
            next_progress += Duration::from_secs(1);
        }
    }
    let handled_in = last_handled.duration_since(started);
    let published = if stalled && !producer.is_finished() {
        eprintln!("the producer is still blocked");
        0
    } else {
        producer.join().map_err(|_| "the producer panicked")?
    };
    let mut clean_exits = 0;
    for (index, child) in workers.0.iter_mut().enumerate() {
        if stalled {
            let _ = child.kill(); // an exited child ignores it
        }
        let status = child.wait()?;
        if status.success() {
            clean_exits += 1;
        } else {
            eprintln!("worker-{index} exited with {status}");
        }
    }
    stats.sort();
    for line in &stats {
        println!("  {line}");
    }
    println!(
        "handled {} jobs in {:.2} s from the first publish ({:.0} jobs/s), {} redeliveries",
        tally.handled_unique,
        handled_in.as_secs_f64(),
        rate(tally.handled_unique, handled_in),
        tally.redelivered
    );
    if tally.out_of_range > 0 {
        eprintln!("{} handled ids were never published", tally.out_of_range);
    }

    let limit = usize::try_from(args.events)?.saturating_add(1);
    let dead_letters = runtime.block_on(bus.dead_letters(&topic, limit))?.len();
    if dead_letters > 0 {
        let prefix = RedisConfig::from_url(&args.redis)?.key_prefix;
        eprintln!("{dead_letters} dead letters left in {prefix}:dlq:{{{topic}}} for inspection");
    }
    bus.purge_stream(&topic)?;
    bus.shutdown();
    println!(
        "published={published} handled_unique={} duplicates={} dead_letters={dead_letters}",
        tally.handled_unique, tally.duplicates
    );
    Ok(!stalled
        && published == args.events
        && tally.handled_unique == published
        && dead_letters == 0
        && tally.out_of_range == 0
        && clean_exits == args.workers)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (&args.worker, &args.topic, &args.group) {
        (Some(name), Some(topic), Some(group)) => worker(&args, name, topic, group).map(|()| true),
        _ => parent(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("worker_group: {error}");
            ExitCode::FAILURE
        }
    }
}

//! One consumer group, three worker processes, one of them SIGKILLed every two
//! seconds and restarted under the same name, against a private `redis-server`
//! (never the shared Redis at 6379).
//!
//! The parent test publishes 100 000 sequence numbers to one topic at a steady
//! rate and re-executes this test binary three times as the group's members
//! (`group_worker_process`, selected by the `TICKBUS_GROUP_WORKER_URL`
//! environment variable), named `worker-0` to `worker-2`. Each worker writes one
//! line to its stdout per handled event, before it acks it, and one line per ack
//! Redis confirmed:
//!
//! ```text
//! handled <seq> <deliveries> <unix ns when received>
//! acked <seq> <deliveries> <unix ns when confirmed>
//! ```
//!
//! The parent reads the pipes (one thread per process), kills a worker in the
//! middle of its work every two seconds, restarts it with the same name (so it
//! first drains the entries it held), and at the end checks that every event
//! was handled, that no event was delivered again after its ack was confirmed,
//! and that nothing is left pending. Duplicates (events handled more than once)
//! are allowed, counted and printed.
//!
//! Workers stop when the parent closes their stdin; a worker never told to stop
//! gives up on its own after `WORKER_LIFETIME`, so no process outlives a failed
//! run for long.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use tickbus::group::GroupConfig;
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, RedisConfig, StartAt};

/// Events published (sequence numbers `0..EVENTS`).
const EVENTS: u64 = 100_000;
/// How long the publisher spreads them over (a steady flow, so every kill lands
/// while the workers are busy).
const PUBLISH_SPAN: Duration = Duration::from_secs(8);
/// Worker processes (members of the group).
const WORKERS: usize = 3;
/// One worker is killed this often while events are still unhandled.
const KILL_EVERY: Duration = Duration::from_secs(2);
/// The group's ack wait: a killed worker's deliveries come back after it.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Most deliveries a worker handles (and acks together) at once.
const WORKER_BATCH: usize = 128;
/// The work a batch takes (the handler's time between receiving and acking):
/// a worker holds unacked deliveries most of the time, as real workers do.
const HANDLING: Duration = Duration::from_millis(4);
/// How long a kill may wait for a worker to hold unacked deliveries.
const KILL_AIM: Duration = Duration::from_millis(500);
/// Upper bound on any single wait (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(30);
/// The whole test, from the first publish to the last check.
const TEST_LIMIT: Duration = Duration::from_secs(55);
/// A worker never told to stop exits with an error after this long.
const WORKER_LIFETIME: Duration = Duration::from_secs(120);

const TOPIC: &str = "job:seq";
const STREAM_KEY: &str = "tickbus:stream:{job:seq}";
const GROUP: &str = "crunchers";
const URL_ENV: &str = "TICKBUS_GROUP_WORKER_URL";
const NAME_ENV: &str = "TICKBUS_GROUP_WORKER_NAME";

fn redis_config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    config
}

fn unix_ns() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_nanos()).unwrap()
}

// ---------------------------------------------------------------------------
// The worker process.

/// One member of the group: `group_processes_survive_sigkill` re-executes this
/// binary to run it (`--ignored --exact`), with `TICKBUS_GROUP_WORKER_URL` set.
/// Ignored in a normal run: it is a process of that test, not a test of its own.
#[test]
#[ignore = "a worker process of group_processes_survive_sigkill, which runs it"]
fn group_worker_process() {
    let url = std::env::var(URL_ENV).expect("run by group_processes_survive_sigkill");
    let name = std::env::var(NAME_ENV).expect("a worker needs a name");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(worker(&url, &name));
}

async fn worker(url: &str, name: &str) {
    let bus = Bus::builder().redis(redis_config(url)).build().unwrap();
    let config = GroupConfig {
        start: StartAt::Beginning,
        consumer: Some(name.to_string()),
        block: Duration::from_millis(100),
        ack_wait: ACK_WAIT,
        batch: WORKER_BATCH,
        max_in_flight: 2 * WORKER_BATCH,
        ..Default::default()
    };
    let mut consumer = bus.group::<u64>(GROUP, TOPIC, config).unwrap();
    // The parent closes our stdin to tell us to stop (or dies, which closes it too).
    let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = stop_tx.send(());
    });
    let lifetime = tokio::time::sleep(WORKER_LIFETIME);
    tokio::pin!(lifetime);
    let mut out = std::io::stdout();
    // Starts a fresh line (the test harness may have written half of one).
    writeln!(out, "\nready {name}").unwrap();
    out.flush().unwrap();
    let mut lines = String::new();
    loop {
        let first = tokio::select! {
            delivery = consumer.recv() => delivery,
            _ = &mut stop => break,
            () = &mut lifetime => panic!("{name} was never told to stop"),
        };
        let mut batch = vec![first.expect("the consumer ended").unwrap()];
        // Whatever else is already here, without waiting.
        while batch.len() < WORKER_BATCH {
            match consumer.recv().now_or_never() {
                Some(delivery) => batch.push(delivery.expect("the consumer ended").unwrap()),
                None => break,
            }
        }
        // "Handle" the batch: its lines reach the pipe before any of its acks
        // leaves, so a kill can lose acks but never a handled line.
        let received = unix_ns();
        lines.clear();
        for delivery in &batch {
            let seq = **delivery;
            let deliveries = delivery.info().deliveries;
            writeln!(lines, "handled {seq} {deliveries} {received}").unwrap();
        }
        out.write_all(lines.as_bytes()).unwrap();
        out.flush().unwrap();
        tokio::time::sleep(HANDLING).await;
        let acks = batch.into_iter().map(|delivery| {
            let (seq, deliveries) = (*delivery, delivery.info().deliveries);
            let confirmed = delivery.ack_confirmed();
            async move { (seq, deliveries, confirmed.await) }
        });
        let results = tokio::time::timeout(PATIENCE, futures::future::join_all(acks))
            .await
            .unwrap_or_else(|_| panic!("{name}: acks not confirmed within {PATIENCE:?}"));
        // Taken after every confirmation: never earlier than the real one.
        let confirmed = unix_ns();
        lines.clear();
        for (seq, deliveries, result) in results {
            result.unwrap_or_else(|error| panic!("{name}: ack of {seq} failed: {error}"));
            writeln!(lines, "acked {seq} {deliveries} {confirmed}").unwrap();
        }
        out.write_all(lines.as_bytes()).unwrap();
        out.flush().unwrap();
    }
    consumer.shutdown();
    bus.shutdown();
}

// ---------------------------------------------------------------------------
// The parent: what it reads from the workers.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Handled,
    Acked,
}

/// One line of a worker's stdout, or the end of it.
#[derive(Debug)]
enum Report {
    Ready {
        worker: usize,
    },
    Line {
        worker: usize,
        /// 0 for the first process of this worker, +1 per restart.
        generation: u32,
        kind: Kind,
        seq: u64,
        deliveries: u32,
        at_ns: u64,
    },
    /// The publisher wrote every event (the last receipt resolved).
    Published,
}

fn parse(worker: usize, generation: u32, line: &str) -> Option<Report> {
    let mut words = line.split_whitespace();
    let first = words.next()?;
    if first == "ready" {
        return Some(Report::Ready { worker });
    }
    let kind = match first {
        "handled" => Kind::Handled,
        "acked" => Kind::Acked,
        _ => return None,
    };
    let seq = words.next()?.parse().ok()?;
    let deliveries = words.next()?.parse().ok()?;
    let at_ns = words.next()?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(Report::Line {
        worker,
        generation,
        kind,
        seq,
        deliveries,
        at_ns,
    })
}

/// Forwards a worker's complete lines (a line cut by SIGKILL has no newline and
/// is dropped) until its stdout closes.
fn forward(
    worker: usize,
    generation: u32,
    stdout: impl Read + Send + 'static,
    tx: mpsc::Sender<Report>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if !line.ends_with(b"\n") => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if let Some(report) = parse(worker, generation, &text) {
                        if tx.send(report).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
}

/// A running worker process and the thread reading its stdout.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Option<JoinHandle<()>>,
}

/// The worker processes; dropping it (a failed assertion) kills them all.
struct Workers {
    url: String,
    tx: mpsc::Sender<Report>,
    running: Vec<Worker>,
    /// Processes started so far, per worker.
    started: Vec<u32>,
}

impl Workers {
    fn spawn(&mut self, index: usize) -> Worker {
        let generation = self.started[index];
        self.started[index] += 1;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "group_worker_process",
                "--nocapture",
                "--test-threads",
                "1",
                "-q",
            ])
            .env(URL_ENV, &self.url)
            .env(NAME_ENV, format!("worker-{index}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        Worker {
            stdin: child.stdin.take(),
            reader: Some(forward(index, generation, stdout, self.tx.clone())),
            child,
        }
    }

    /// SIGKILLs worker `index`, reaps it, and starts it again under the same name.
    fn kill_and_restart(&mut self, index: usize) {
        let old = &mut self.running[index];
        old.child.kill().unwrap();
        old.child.wait().unwrap();
        if let Some(reader) = old.reader.take() {
            reader.join().unwrap(); // its stdout is closed: the reader is done
        }
        let restarted = self.spawn(index);
        self.running[index] = restarted;
    }

    /// Closes every worker's stdin (the signal to stop) and waits for them to
    /// exit, each within `PATIENCE`.
    fn stop_all(&mut self) {
        for worker in &mut self.running {
            drop(worker.stdin.take());
        }
        let deadline = Instant::now() + PATIENCE;
        for (index, worker) in self.running.iter_mut().enumerate() {
            let status = loop {
                if let Some(status) = worker.child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker-{index} did not stop within {PATIENCE:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            assert!(status.success(), "worker-{index} exited with {status}");
            if let Some(reader) = worker.reader.take() {
                reader.join().unwrap();
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.running {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// A delivery's count and a time (Unix ns) reported with it.
type Stamp = (u32, u64);

/// Everything the workers reported, per sequence number.
struct Ledger {
    /// Per event: each handling, stamped with its receive time.
    handled: Vec<Vec<Stamp>>,
    /// Per event: each confirmed ack, stamped with its confirmation time.
    acked: Vec<Vec<Stamp>>,
    handled_unique: u64,
    ready: Vec<usize>,
    published: bool,
    /// Per restarted process (worker, generation): the redeliveries it handled
    /// before its first first-time delivery (the pending entries it drained).
    drained_first: HashMap<(usize, u32), Drained>,
    /// Per process (worker, generation): deliveries it reported handled and
    /// not yet acked (what a SIGKILL of it now would leave pending).
    holding: HashMap<(usize, u32), i64>,
}

#[derive(Default)]
struct Drained {
    redeliveries: usize,
    over: bool,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            handled: vec![Vec::new(); EVENTS as usize],
            acked: vec![Vec::new(); EVENTS as usize],
            handled_unique: 0,
            ready: vec![0; WORKERS],
            published: false,
            drained_first: HashMap::new(),
            holding: HashMap::new(),
        }
    }

    fn apply(&mut self, report: Report) {
        match report {
            Report::Ready { worker } => self.ready[worker] += 1,
            Report::Published => self.published = true,
            Report::Line {
                worker,
                generation,
                kind,
                seq,
                deliveries,
                at_ns,
            } => {
                if generation > 0 && kind == Kind::Handled {
                    let drained = self.drained_first.entry((worker, generation)).or_default();
                    if deliveries == 1 {
                        drained.over = true;
                    } else if !drained.over {
                        drained.redeliveries += 1;
                    }
                }
                let slot = usize::try_from(seq)
                    .ok()
                    .filter(|&seq| seq < EVENTS as usize)
                    .unwrap_or_else(|| panic!("worker-{worker} reported unknown seq {seq}"));
                *self.holding.entry((worker, generation)).or_default() += match kind {
                    Kind::Handled => 1,
                    Kind::Acked => -1,
                };
                match kind {
                    Kind::Handled => {
                        if self.handled[slot].is_empty() {
                            self.handled_unique += 1;
                        }
                        self.handled[slot].push((deliveries, at_ns));
                    }
                    Kind::Acked => self.acked[slot].push((deliveries, at_ns)),
                }
            }
        }
    }

    /// Deliveries received after an ack of the same event was confirmed, as
    /// `(seq, acked, late)`. Only deliveries whose count is not above the acked
    /// one's: a higher count is a claim that Redis made before the ack landed
    /// (the acker had held the event past the ack wait), which is allowed.
    fn redelivered_after_ack(&self) -> Vec<(u64, Stamp, Stamp)> {
        let mut bad = Vec::new();
        for (seq, acks) in self.acked.iter().enumerate() {
            for &(acked_count, acked_at) in acks {
                for &(count, at) in &self.handled[seq] {
                    if at > acked_at && count <= acked_count {
                        bad.push((seq as u64, (acked_count, acked_at), (count, at)));
                    }
                }
            }
        }
        bad
    }
}

fn xpending(server: &RedisServer) -> u64 {
    let reply = server.cli(&["XPENDING", STREAM_KEY, GROUP]).unwrap();
    reply
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!("unexpected XPENDING reply {reply:?}");
        })
}

/// The group's `lag` from `XINFO GROUPS` (`None` while Redis cannot tell).
fn group_lag(server: &RedisServer) -> Option<u64> {
    let reply = server.cli(&["XINFO", "GROUPS", STREAM_KEY]).unwrap();
    let lines: Vec<&str> = reply.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .find(|pair| pair[0] == "lag")
        .and_then(|pair| pair.get(1))
        .and_then(|lag| lag.parse().ok())
}

/// Publishes `0..EVENTS` at a steady rate from its own bus, then waits for the
/// last receipt (receipts resolve in order: Redis has them all).
fn publisher(url: String, tx: mpsc::Sender<Report>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let bus = Bus::builder().redis(redis_config(&url)).build().unwrap();
        let topic = bus
            .durable_topic::<u64>(
                TOPIC,
                DurableOptions {
                    receive_remote: false,
                    ..Default::default()
                },
            )
            .unwrap();
        let start = Instant::now();
        let step = PUBLISH_SPAN / u32::try_from(EVENTS).unwrap();
        let mut last = None;
        for seq in 0..EVENTS {
            // An absolute schedule, slices of 100 events (sleeping, not spinning:
            // the workers and Redis need the cores).
            if seq % 100 == 0 {
                let due = start + step * u32::try_from(seq).unwrap();
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            last = Some(topic.publish_durable(seq).unwrap());
        }
        last.unwrap().wait_timeout(PATIENCE).unwrap();
        let _ = tx.send(Report::Published);
        bus.shutdown();
    })
}

#[test]
fn group_processes_survive_sigkill() {
    if std::env::var_os(URL_ENV).is_some() {
        return; // a worker process runs `group_worker_process` only
    }
    let server = RedisServer::start().unwrap();
    let began = Instant::now();
    let limit = began + TEST_LIMIT;
    let (tx, rx) = mpsc::channel();
    let mut workers = Workers {
        url: server.url(),
        tx: tx.clone(),
        running: Vec::new(),
        started: vec![0; WORKERS],
    };
    for index in 0..WORKERS {
        let worker = workers.spawn(index);
        workers.running.push(worker);
    }
    let mut ledger = Ledger::new();
    // Every worker is a member (its group exists) before the flow starts.
    while ledger.ready.contains(&0) {
        let report = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("workers not ready within {PATIENCE:?}"));
        ledger.apply(report);
    }
    let publishing = publisher(server.url(), tx.clone());
    let flow_began = Instant::now();

    // The flow: a kill every KILL_EVERY while events are still unhandled.
    let mut kills = 0;
    let mut next_kill = flow_began + KILL_EVERY;
    while !(ledger.published && ledger.handled_unique == EVENTS) {
        let now = Instant::now();
        assert!(
            now < limit,
            "not done within {TEST_LIMIT:?}: handled {} of {EVENTS}, published: {}",
            ledger.handled_unique,
            ledger.published
        );
        if !ledger.published && publishing.is_finished() {
            // It sent `Published` just before it finished, or it panicked.
            for report in rx.try_iter() {
                ledger.apply(report);
            }
            assert!(ledger.published, "the publisher stopped early");
        }
        if now >= next_kill {
            // Aim at a worker in the middle of a batch (it reported handled
            // deliveries it has not acked yet), the rotation's turn first; wait
            // for the reports up to KILL_AIM for one.
            let aim_until = now + KILL_AIM;
            let victim = loop {
                let holding = |worker: usize| {
                    let generation = workers.started[worker] - 1;
                    ledger
                        .holding
                        .get(&(worker, generation))
                        .copied()
                        .unwrap_or(0)
                        > 0
                };
                let turn = kills % WORKERS;
                let busy = (0..WORKERS)
                    .map(|i| (turn + i) % WORKERS)
                    .find(|&w| holding(w));
                let wait = aim_until.saturating_duration_since(Instant::now());
                match busy {
                    Some(worker) => break worker,
                    None if wait.is_zero() => break turn,
                    None => match rx.recv_timeout(wait) {
                        Ok(report) => ledger.apply(report),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            unreachable!("`tx` is held here")
                        }
                    },
                }
            };
            let pending = server
                .cli(&["XPENDING", STREAM_KEY, GROUP])
                .unwrap_or_default()
                .replace('\n', " ");
            workers.kill_and_restart(victim);
            kills += 1;
            println!(
                "{:>5.1} s: killed worker-{victim} (handled so far {}; XPENDING before: {pending})",
                flow_began.elapsed().as_secs_f64(),
                ledger.handled_unique
            );
            next_kill += KILL_EVERY;
            continue;
        }
        let wait = next_kill.min(limit).saturating_duration_since(now);
        match rx.recv_timeout(wait) {
            Ok(report) => ledger.apply(report),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("`tx` is held here"),
        }
    }
    publishing.join().unwrap();
    let handled_at = flow_began.elapsed();

    // Everything handled once: the group must drain to nothing pending and
    // nothing unread (the last victim's deliveries come back after the ack wait).
    let drain_deadline = Instant::now() + PATIENCE;
    loop {
        while let Ok(report) = rx.try_recv() {
            ledger.apply(report);
        }
        if xpending(&server) == 0 && group_lag(&server) == Some(0) {
            break;
        }
        assert!(
            Instant::now() < drain_deadline && Instant::now() < limit,
            "the group did not drain: XPENDING {}, lag {:?}",
            xpending(&server),
            group_lag(&server)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    workers.stop_all();
    drop(tx);
    drop(workers);
    for report in rx.try_iter() {
        ledger.apply(report);
    }
    let elapsed = began.elapsed();

    // Every published event was handled.
    let missing: Vec<u64> = (0..EVENTS)
        .filter(|&seq| ledger.handled[seq as usize].is_empty())
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never handled, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(ledger.handled_unique, EVENTS);
    assert_eq!(
        server.cli(&["XLEN", STREAM_KEY]).unwrap(),
        EVENTS.to_string()
    );
    // No event came back once its ack was confirmed.
    let late = ledger.redelivered_after_ack();
    assert!(
        late.is_empty(),
        "{} deliveries after a confirmed ack, e.g. (seq, (acked count, at ns), (count, at ns)) {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    // Nothing is left pending, and the group read everything.
    assert_eq!(xpending(&server), 0);
    assert_eq!(group_lag(&server), Some(0));
    // The kills happened while work was in flight: deliveries came back.
    let redeliveries = ledger
        .handled
        .iter()
        .flatten()
        .filter(|&&(count, _)| count > 1)
        .count();
    let duplicates = ledger.handled.iter().filter(|h| h.len() > 1).count();
    let handlings: usize = ledger.handled.iter().map(Vec::len).sum();
    let acked_unique = ledger.acked.iter().filter(|a| !a.is_empty()).count();
    let restarts: usize = ledger.ready.iter().sum::<usize>() - WORKERS;
    assert!(kills >= 3, "only {kills} kills: the flow ended too soon");
    assert_eq!(restarts, kills, "every killed worker came back");
    assert!(
        redeliveries > 0,
        "{kills} kills and no delivery came back: were the workers ever killed mid-batch?"
    );
    let drained: Vec<usize> = ledger
        .drained_first
        .values()
        .map(|drained| drained.redeliveries)
        .collect();
    println!("redeliveries each restarted worker handled before its first new event: {drained:?}");
    println!(
        "events={EVENTS} handled_unique={} handlings={handlings} duplicates={duplicates} \
         redeliveries={redeliveries} confirmed_acks_unique={acked_unique} kills={kills} \
         all_handled_after={:.1}s total={:.1}s",
        ledger.handled_unique,
        handled_at.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

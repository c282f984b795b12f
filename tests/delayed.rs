//! Scheduled events (`DurableTopic::publish_at` / `publish_after`) against
//! real `redis-server` processes started by the test harness (never the
//! shared Redis at 6379): never moved before they are due by the server's
//! clock, each moved once with several movers, and with a mover SIGKILLed in
//! the middle of a backlog.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickbus::replay::ReplayOptions;
use tickbus::test_util::RedisServer;
use tickbus::{Bus, DurableOptions, EventId, LiveBus, PublishError, RedisConfig};

/// Upper bound on any single wait (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(30);
const TOPIC: &str = "job:report";
const STREAM: &str = "tickbus:stream:{job:report}";
const DELAYED: &str = "tickbus:delayed:{job:report}";

fn config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(100);
    config
}

fn live_bus(server: &RedisServer) -> LiveBus {
    Bus::builder().redis(config(&server.url())).build().unwrap()
}

fn mover_options(poll_ms: u64) -> DurableOptions {
    DurableOptions {
        delayed_poll: Some(Duration::from_millis(poll_ms)),
        ..Default::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An integer reply of `redis-cli`.
fn int(server: &RedisServer, args: &[&str]) -> u64 {
    let out = server.cli(args).unwrap();
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{args:?}: {out}"))
}

/// Waits until `XLEN` of the stream is `n` and nothing is left to move.
fn wait_all_moved(server: &RedisServer, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (len, left) = (
            int(server, &["XLEN", STREAM]),
            int(server, &["ZCARD", DELAYED]),
        );
        if len >= n && left == 0 {
            assert_eq!(len, n, "more entries than jobs scheduled");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "XLEN {len}, ZCARD {left}: not all moved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stream's entries: (event id, stream id ms, payload = its due ms).
fn entries(bus: &LiveBus) -> Vec<(EventId, u64, u64)> {
    let mut replay = bus.replay(&[TOPIC], ReplayOptions::default()).unwrap();
    let mut out = Vec::new();
    while let Some(event) = replay.recv_blocking() {
        let event = event.unwrap();
        out.push((
            event.event_id,
            event.stream_id.ms,
            event.decode::<u64>().unwrap(),
        ));
    }
    out
}

/// Every job once, none before its time by the server's clock (the stream id
/// is the server's time of the move).
fn assert_once_and_never_early(entries: &[(EventId, u64, u64)], n: usize) {
    assert_eq!(entries.len(), n);
    let ids: HashSet<_> = entries.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(ids.len(), n, "an event appended twice");
    for (id, moved_ms, due_ms) in entries {
        assert!(
            moved_ms >= due_ms,
            "{id}: moved at {moved_ms}, due at {due_ms}: early"
        );
    }
}

/// A job reaches this bus's own subscribers (through the stream, when due,
/// not at publish time) and a consumer group, once, with a `due` field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_arrives_when_due_and_once() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let jobs = bus
        .durable_topic::<u64>(TOPIC, DurableOptions::default())
        .unwrap();
    let mut local = jobs.subscribe();
    jobs.publish(1).unwrap(); // a plain event: not delivered back to its own bus
    let due = now_ms() + 300;
    let at = UNIX_EPOCH + Duration::from_millis(due);
    let id = jobs.publish_at(due, at).unwrap().await.unwrap();
    assert_eq!(int(&server, &["ZCARD", DELAYED]), 1);

    let event = tokio::time::timeout(PATIENCE, local.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.value, 1);
    let event = tokio::time::timeout(PATIENCE, local.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((event.value, event.meta.id()), (due, id));
    let stream_id = event.meta.stream_id().expect("read from the stream");
    assert!(stream_id.ms >= due, "moved at {}, due {due}", stream_id.ms);

    let raw = server.cli(&["XRANGE", STREAM, "-", "+"]).unwrap();
    assert!(raw.contains("due"), "{raw}");
    let stats = bus.redis_stats();
    assert_eq!((stats.scheduled, stats.delayed_moved), (1, 1));
    assert_eq!(int(&server, &["ZCARD", DELAYED]), 0);
    // Nothing else: a fence published after it arrives next.
    jobs.publish_after(7, Duration::ZERO)
        .unwrap()
        .await
        .unwrap();
    let fence = tokio::time::timeout(PATIENCE, local.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fence.value, 7);
}

/// `publish_after` counts from the server's clock; values over the limits are
/// refused before anything is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_after_waits_the_delay_and_refuses_what_cannot_be_an_entry() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let jobs = bus
        .durable_topic::<Vec<u8>>(TOPIC, DurableOptions::default())
        .unwrap();
    match jobs.publish_after(vec![0; 16 * 1024 * 1024], Duration::ZERO) {
        Err(PublishError::Rejected(value, _)) => assert_eq!(value.len(), 16 * 1024 * 1024),
        other => panic!("expected Rejected, got {:?}", other.map(|_| ())),
    }
    let mut sub = jobs.subscribe();
    jobs.publish_after(vec![1], Duration::from_millis(200))
        .unwrap()
        .await
        .unwrap();
    let event = tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.value, vec![1]);
    assert_eq!(bus.redis_stats().scheduled, 1);
}

/// Three instances move the jobs of a fourth, each job once and none early.
#[test]
fn several_movers_move_each_job_once_and_never_early() {
    let server = RedisServer::start().unwrap();
    let movers: Vec<LiveBus> = (0..3).map(|_| live_bus(&server)).collect();
    for mover in &movers {
        mover
            .durable_topic::<u64>(TOPIC, mover_options(10))
            .unwrap();
    }
    let producer = live_bus(&server);
    let jobs = producer
        .durable_topic::<u64>(
            TOPIC,
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let start = now_ms();
    let receipts: Vec<_> = (0..600)
        .map(|n| {
            let due = start + 50 + (n * 7919 % 500);
            jobs.publish_at(due, UNIX_EPOCH + Duration::from_millis(due))
                .unwrap()
        })
        .collect();
    for receipt in receipts {
        receipt.wait_timeout(PATIENCE).unwrap();
    }
    wait_all_moved(&server, 600);
    assert_once_and_never_early(&entries(&producer), 600);
    let moved: u64 = movers
        .iter()
        .chain([&producer])
        .map(|bus| bus.redis_stats().delayed_moved)
        .sum();
    assert_eq!(moved, 600);
}

/// The mover process of `a_mover_killed_mid_backlog_loses_and_repeats_nothing`,
/// run with `TICKBUS_TEST_CHILD_URL` set. Ignored in a normal run: it is a
/// process of that test, not a test of its own.
#[test]
#[ignore = "the mover process of a_mover_killed_mid_backlog_loses_and_repeats_nothing"]
fn child_process_mover() {
    let url = std::env::var("TICKBUS_TEST_CHILD_URL").expect("run by its parent test");
    let bus = Bus::builder().redis(config(&url)).build().unwrap();
    let _jobs = bus.durable_topic::<u64>(TOPIC, mover_options(1)).unwrap();
    println!("moving");
    std::thread::sleep(PATIENCE); // killed long before this ends
}

/// A mover SIGKILLed while it works through a backlog: whatever it had moved
/// is in the stream once, the rest is still scheduled, and another mover
/// finishes it: every job once.
#[test]
fn a_mover_killed_mid_backlog_loses_and_repeats_nothing() {
    const JOBS: u64 = 20_000;
    let server = RedisServer::start().unwrap();
    {
        // Scheduled by a bus that shuts down before they are due: it moves none.
        // (The payload 0 is the due time `entries` checks: this test is about
        // the kill, and makes them all due at once below.)
        let producer = live_bus(&server);
        let jobs = producer
            .durable_topic::<u64>(TOPIC, DurableOptions::default())
            .unwrap();
        let later = SystemTime::now() + Duration::from_secs(3_600);
        let receipts: Vec<_> = (0..JOBS)
            .map(|_| jobs.publish_at(0, later).unwrap())
            .collect();
        for receipt in receipts {
            receipt.wait_timeout(PATIENCE).unwrap();
        }
        producer.shutdown();
    }
    assert_eq!(int(&server, &["ZCARD", DELAYED]), JOBS);
    // All due now: every score times 0.
    server
        .cli(&["ZUNIONSTORE", DELAYED, "1", DELAYED, "WEIGHTS", "0"])
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_mover",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TICKBUS_TEST_CHILD_URL", server.url())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has moved some and not all.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let len = int(&server, &["XLEN", STREAM]);
        if len > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child mover never moved anything"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let moved_by_child = int(&server, &["XLEN", STREAM]);
    let left = int(&server, &["ZCARD", DELAYED]);
    assert_eq!(
        moved_by_child + left,
        JOBS,
        "a job lost or doubled by the kill"
    );
    let finisher = live_bus(&server);
    finisher
        .durable_topic::<u64>(TOPIC, mover_options(10))
        .unwrap();
    wait_all_moved(&server, JOBS);
    assert_once_and_never_early(&entries(&finisher), JOBS as usize);
    eprintln!("the killed mover had moved {moved_by_child} of {JOBS}");
}

/// A member of the sorted set that is not an entry is removed and counted; the
/// jobs around it are moved.
#[test]
fn a_foreign_member_is_removed_and_the_rest_moved() {
    let server = RedisServer::start().unwrap();
    server
        .cli(&["ZADD", DELAYED, "0", "not msgpack at all"])
        .unwrap();
    server
        .cli(&["ZADD", DELAYED, "1", "\u{92}\u{a1}a"])
        .unwrap(); // an odd field list
    let bus = live_bus(&server);
    let jobs = bus.durable_topic::<u64>(TOPIC, mover_options(10)).unwrap();
    jobs.publish_at(5, UNIX_EPOCH)
        .unwrap()
        .wait_timeout(PATIENCE)
        .unwrap();
    wait_all_moved(&server, 1);
    let deadline = Instant::now() + PATIENCE;
    while bus.redis_stats().skipped < 2 {
        assert!(Instant::now() < deadline, "{:?}", bus.redis_stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(entries(&bus).len(), 1);
}

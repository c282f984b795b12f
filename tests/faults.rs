//! The fault suite of issue 13: faults injected between tickbus and a real
//! `redis-server` by [`FaultProxy`] (a half-open connection, a lost reply,
//! a flapping link), and the guarantees that must hold through them.
//!
//! Timing bounds here are orders of magnitude (a loaded 2-core CI machine):
//! the bounds themselves are stated in `docs/guarantees.md`.

use std::time::{Duration, Instant};

use tickbus::cache::CacheConfig;
use tickbus::group::GroupConfig;
use tickbus::test_util::{FaultProxy, RedisServer};
use tickbus::{
    Bus, ConnectionState, DurableOptions, Event, RecvError, RedisConfig, StartAt, Subscriber,
};

mod support;
use support::groups::{publish, stream_key, xpending_count};

/// Upper bound on any single wait in these tests (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(60);

/// Short timeouts and back-offs keep fault tests quick.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_millis(200);

/// Logs to the test's output, filtered by `RUST_LOG` (errors only without it).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn config(url: &str) -> RedisConfig {
    let mut config = RedisConfig::from_url(url).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = RECONNECT_MAX;
    config.read_block = Duration::from_millis(200);
    config.command_timeout = COMMAND_TIMEOUT;
    config
}

/// Receives the next event within `PATIENCE`, or fails the test.
async fn next<T: Clone + Send + Sync + 'static>(
    sub: &mut Subscriber<T>,
) -> Result<Event<T>, RecvError> {
    match tokio::time::timeout(PATIENCE, sub.recv()).await {
        Ok(result) => result,
        Err(_) => panic!("no event on {} within {PATIENCE:?}", sub.topic()),
    }
}

/// Polls `check` every millisecond until it holds; returns how long it took.
async fn until(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Case 1 of issue 13. The network between both buses and Redis goes
/// half-open (sockets open, nothing relayed, as after a middlebox lost its
/// state) while events are published, then heals. The writer and the reader
/// must each give up their silent connection and reconnect; the first write
/// after the heal comes within the command timeout plus the reconnect
/// back-off; every event is written once, in order, and the other instance
/// receives each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_connection_is_replaced_and_every_event_is_written_once_in_order() {
    logs();
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let publisher = Bus::builder().redis(config(&proxy.url())).build().unwrap();
    let receiver = Bus::builder().redis(config(&proxy.url())).build().unwrap();
    let orders = publisher
        .durable_topic::<u64>("orders:new", DurableOptions::default())
        .unwrap();
    let mut remote = receiver
        .durable_topic::<u64>("orders:new", DurableOptions::default())
        .unwrap()
        .subscribe();
    let key = "tickbus:stream:{orders:new}";
    let xlen = || server.cli(&["XLEN", key]).unwrap().parse::<u64>().unwrap();

    const BEFORE: u64 = 500;
    const DURING: u64 = 500;
    const AFTER: u64 = 500;
    let mut receipts = Vec::new();
    for i in 0..BEFORE {
        receipts.push(orders.publish_durable(i).unwrap());
    }
    until("the first events written", || xlen() == BEFORE).await;

    proxy.stall();
    // Published into the outbox while nothing gets through; long enough for
    // every command on the old connections to time out, and for new
    // connections to be opened into the stalled network and time out too.
    for i in BEFORE..BEFORE + DURING {
        receipts.push(orders.publish_durable(i).unwrap());
        if i % 100 == 0 {
            tokio::time::sleep(COMMAND_TIMEOUT / 2).await;
        }
    }
    until("health degraded", || {
        publisher.health() != ConnectionState::Connected
    })
    .await;
    assert_eq!(xlen(), BEFORE, "nothing crossed the stalled network");

    proxy.heal();
    tracing::info!("healed");
    let healed = Instant::now();
    let recovery = until("a write after the heal", || xlen() > BEFORE).await;
    // The bound in docs/guarantees.md: the command timeout plus the reconnect
    // back-off (plus a connection's set-up). Asserted within a factor of five.
    let bound = COMMAND_TIMEOUT + RECONNECT_MAX;
    assert!(
        recovery < bound * 5,
        "first write {recovery:?} after the heal (bound {bound:?})"
    );
    for i in BEFORE + DURING..BEFORE + DURING + AFTER {
        receipts.push(orders.publish_durable(i).unwrap());
    }
    let mut ids = Vec::new();
    for receipt in receipts {
        ids.push(
            tokio::time::timeout(PATIENCE, receipt)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let total = BEFORE + DURING + AFTER;
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "written in order"
    );
    assert_eq!(xlen(), total, "each event written once");
    assert!(proxy.connections() > 4, "both buses reconnected");

    // The receiver's blocked XREAD went silent too: it is replaced, and the
    // reader resumes after the last entry it saw.
    for expected in 0..total {
        let event = next(&mut remote).await.unwrap();
        assert!(event.meta.is_remote());
        assert_eq!(event.value, expected, "every event once, in order");
    }
    let received_all = healed.elapsed();
    // Nothing twice: the next event after them is a marker published last.
    orders.publish_durable(u64::MAX).unwrap().await.unwrap();
    assert_eq!(next(&mut remote).await.unwrap().value, u64::MAX);
    eprintln!("first write {recovery:?} after the heal; all received {received_all:?} after it");
    assert_eq!(publisher.health(), ConnectionState::Connected);
}

/// Case 3 of issue 13. The reply of an `XREADGROUP` is lost with its
/// connection after the server handed the entries to this member (they sit in
/// its pending list). The member re-reads its own pending entries after the
/// reconnect, so the batch is handled at once, not after the ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_read_reply_is_re_read_from_the_pending_list_at_once() {
    logs();
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let producer = Bus::builder().redis(config(&server.url())).build().unwrap();
    let worker = Bus::builder().redis(config(&proxy.url())).build().unwrap();
    let key = stream_key("order:exec");
    let ack_wait = Duration::from_secs(30);
    let mut consumer = worker
        .group::<u64>(
            "booking",
            "order:exec",
            GroupConfig {
                start: StartAt::Beginning,
                consumer: Some("c1".into()),
                block: Duration::from_millis(100),
                ack_wait,
                ..Default::default()
            },
        )
        .unwrap();
    // A first event, handled: the member has drained its (empty) pending list
    // and now reads new entries, blocking.
    publish(&producer, "order:exec", 0..1);
    match tokio::time::timeout(PATIENCE, consumer.recv()).await {
        Ok(Some(Ok(delivery))) => delivery.ack_confirmed().await.unwrap(),
        other => panic!("no delivery: {:?}", other.map(|o| o.map(|r| r.map(|_| ())))),
    }
    // The next reply naming the stream is an XREADGROUP reply with entries.
    proxy.lose_next_reply_containing(key.as_bytes());
    const N: u64 = 200;
    let started = Instant::now();
    publish(&producer, "order:exec", 1..N);
    let mut seen = vec![0_u32; N as usize];
    seen[0] = 1;
    let mut redelivered = 0;
    for _ in 1..N {
        let delivery = match tokio::time::timeout(PATIENCE, consumer.recv()).await {
            Ok(Some(Ok(delivery))) => delivery,
            other => panic!("no delivery: {:?}", other.map(|o| o.map(|r| r.map(|_| ())))),
        };
        seen[*delivery as usize] += 1;
        if delivery.info().deliveries > 1 {
            redelivered += 1;
        }
        delivery.ack();
    }
    let took = started.elapsed();
    assert_eq!(proxy.replies_lost(), 1, "the fault happened");
    assert!(
        seen.iter().all(|&n| n == 1),
        "each event handled once: {seen:?}"
    );
    assert!(
        redelivered > 0,
        "the lost batch came back from the pending list"
    );
    // Without the re-read the lost batch waits for the claim loop (30 s).
    assert!(took < ack_wait / 3, "all handled after {took:?}");
    let deadline = Instant::now() + PATIENCE;
    while xpending_count(&server, &key, "booking") > 0 {
        assert!(Instant::now() < deadline, "acks never reached Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "{N} events handled {took:?} after publishing; {redelivered} re-read after the lost reply"
    );
}

/// How another instance changes a key while a fill loads it.
#[derive(Clone, Copy, Debug)]
enum Change {
    Set,
    Invalidate,
}

fn long_lived() -> CacheConfig {
    CacheConfig {
        memory_ttl: Duration::from_secs(600),
        ..CacheConfig::with_ttl(Duration::from_secs(600))
    }
}

/// Case 2 of issue 13. Instance A misses a key and loads it; while its loader
/// runs, instance B sets a newer value or invalidates the key. A's caller gets
/// what its loader returned, but neither Redis nor any instance's memory keeps
/// that older value: afterwards both instances read B's value (or nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_never_overwrites_a_newer_value_nor_brings_back_an_invalidated_key() {
    logs();
    let server = RedisServer::start().unwrap();
    let a = Bus::builder().redis(config(&server.url())).build().unwrap();
    let b = Bus::builder().redis(config(&server.url())).build().unwrap();
    let cache_a = a.cache::<String>("label", long_lived()).unwrap();
    let cache_b = b.cache::<String>("label", long_lived()).unwrap();
    const ROUNDS: u64 = 200;
    for round in 0..ROUNDS {
        for change in [Change::Set, Change::Invalidate] {
            let key = format!("k{round}-{change:?}");
            let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let fill = {
                let (cache_a, key) = (cache_a.clone(), key.clone());
                tokio::spawn(async move {
                    cache_a
                        .get_or_load(&key, |_| async move {
                            let _ = loading_tx.send(());
                            let _ = go_rx.await;
                            Ok::<_, std::convert::Infallible>("old".to_string())
                        })
                        .await
                })
            };
            loading_rx.await.expect("A loads");
            match change {
                Change::Set => cache_b.set(&key, "new".to_string()).await.unwrap(),
                Change::Invalidate => cache_b.invalidate(&key).await.unwrap(),
            }
            go_tx.send(()).unwrap();
            assert_eq!(
                fill.await.unwrap().unwrap(),
                "old",
                "A's caller gets its load"
            );
            let expected = match change {
                Change::Set => Some("new"),
                Change::Invalidate => None,
            };
            for (name, cache) in [("A", &cache_a), ("B", &cache_b)] {
                assert_ne!(cache.peek(&key).as_deref(), Some("old"), "{name} {key}");
                assert_eq!(
                    cache.get(&key).await.unwrap().as_deref(),
                    expected,
                    "{name} reads {key} after {change:?}"
                );
            }
        }
    }
    assert_eq!(cache_a.stats().fills_superseded, 2 * ROUNDS);
    assert_eq!(cache_a.stats().loads, 2 * ROUNDS);
}

/// Case 4 of issue 13. The link of instance A's cache connection flaps (its
/// connections are reset every few milliseconds for seconds: hundreds of
/// reconnects, fred's event channels lagging). Afterwards tracking is confirmed
/// again on A's connection (health says so), and every change instance B
/// makes reaches A's memory: A never keeps serving the value it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_of_reconnects_invalidations_still_reach_memory() {
    logs();
    let server = RedisServer::start().unwrap();
    let proxy = std::sync::Arc::new(FaultProxy::start(server.port()).unwrap());
    let a = Bus::builder().redis(config(&proxy.url())).build().unwrap();
    let b = Bus::builder().redis(config(&server.url())).build().unwrap();
    let cache_a = a.cache::<String>("label", long_lived()).unwrap();
    let cache_b = b.cache::<String>("label", long_lived()).unwrap();
    cache_b.set("warm", "up".to_string()).await.unwrap();
    assert_eq!(cache_a.get("warm").await.unwrap().as_deref(), Some("up"));

    let before = proxy.connections();
    let flapping = {
        let proxy = std::sync::Arc::clone(&proxy);
        std::thread::spawn(move || {
            let (started, mut resets) = (Instant::now(), 0);
            while started.elapsed() < Duration::from_secs(3) {
                resets += proxy.reset_all();
                std::thread::sleep(Duration::from_millis(2 + fastrand_ms()));
            }
            resets
        })
    };
    // Lookups go on during the burst: whatever they return, nothing may stay.
    while !flapping.is_finished() {
        let _ = cache_a.get("warm").await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let resets = flapping.join().unwrap();
    let reconnects = proxy.connections() - before;
    assert!(reconnects > 50, "{reconnects} reconnects, {resets} resets");

    let settled = until("cache tracking confirmed again", || {
        a.health_report_blocking(Default::default()).cache_tracking == Some(true)
    })
    .await;

    const CHECKS: usize = 400;
    let mut slowest = Duration::ZERO;
    for i in 0..CHECKS {
        let key = format!("k{i}");
        cache_b.set(&key, "old".to_string()).await.unwrap();
        let started = Instant::now();
        loop {
            assert_eq!(cache_a.get(&key).await.unwrap().as_deref(), Some("old"));
            if cache_a.peek(&key).is_some() {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{key} never kept in A's memory"
            );
            tokio::task::yield_now().await;
        }
        cache_b.set(&key, "new".to_string()).await.unwrap();
        let took = until("A drops the old value", || {
            cache_a.peek(&key).as_deref() != Some("old")
        })
        .await;
        slowest = slowest.max(took);
        assert_eq!(cache_a.get(&key).await.unwrap().as_deref(), Some("new"));
    }
    assert!(
        slowest < Duration::from_secs(5),
        "an invalidation took {slowest:?}"
    );
    eprintln!(
        "{resets} resets, {reconnects} connections; tracking confirmed {settled:?} after; \
         {CHECKS} changes seen, slowest invalidation {slowest:?}"
    );
}

/// A few milliseconds of jitter, without a random-number crate.
fn fastrand_ms() -> u64 {
    u64::from(
        std::time::SystemTime::now()
            .elapsed()
            .unwrap_or_default()
            .subsec_nanos()
            % 7,
    )
}

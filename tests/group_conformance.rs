//! Consumer-group conformance: what Watermill's universal pub/sub suite checks
//! (publish/subscribe, concurrent subscribe, nack and missing-ack resends,
//! continuing after a subscriber closes, concurrent close, groups splitting work,
//! reconnects), plus items of RELIABILITY.md's fault suite (4, 7) and the
//! group-specific parts: patterns, idle members, `in_progress`, `seen_before`.
//!
//! Every test runs against its own `redis-server` started by the harness (never
//! the shared Redis at 6379). Check style as in `redis_live.rs`: events carry
//! their sequence number, the consuming side records what it handled,
//! duplicates are counted, and a missing event fails the test. Every wait is
//! bounded (`PATIENCE`): a hang fails, never blocks CI. `RUST_LOG=tickbus=debug`
//! shows the consumers' logs.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tickbus::group::{Consumer, GroupConfig, SeenWindow};
use tickbus::test_util::{AppendFsync, RedisServer, RedisServerOptions};
use tickbus::ErrorKind;

mod support;
use support::groups::*;

/// Fails if `consumer` delivers anything within `quiet` (waiting for a
/// non-event has no other end than a time limit).
async fn expect_nothing(consumer: &mut Consumer<u64>, quiet: Duration, why: &str) {
    if let Ok(got) = tokio::time::timeout(quiet, consumer.recv()).await {
        match got {
            Some(Ok(delivery)) => panic!(
                "{why}: unexpected delivery of {} ({:?})",
                *delivery,
                delivery.info()
            ),
            other => panic!("{why}: consumer ended: {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
}

/// Watermill `TestPublishSubscribe`: events published before and while the
/// member reads all arrive, once, in stream order, and are acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_every_event_once_in_order() {
    const N: u64 = 2_000;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "order:new", 0..N / 2);
    let mut consumer = bus
        .group::<u64>("booking", "order:new", group_config("c1"))
        .unwrap();
    let producer = {
        let bus = bus.clone();
        std::thread::spawn(move || publish(&bus, "order:new", N / 2..N))
    };
    let mut ids = HashSet::new();
    let mut last_stream_id = None;
    for i in 0..N {
        // Through the `Stream` implementation this time.
        let delivery = tokio::time::timeout(PATIENCE, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!(*delivery, i, "stream order within one member");
        let info = delivery.info();
        assert_eq!(info.deliveries, 1);
        assert_eq!(info.topic.as_str(), "order:new");
        assert_eq!(info.source, bus.instance_id());
        assert!(Some(info.stream_id) > last_stream_id);
        last_stream_id = Some(info.stream_id);
        assert!(ids.insert(info.event_id), "event ids are unique");
        delivery.ack();
    }
    producer.join().unwrap();
    // `acked` counts before the places are given back: wait for both.
    eventually("every ack confirmed", || {
        let stats = consumer.stats();
        stats.acked == N && stats.in_flight == 0
    })
    .await;
    let stats = consumer.stats();
    assert_eq!(stats.delivered, N);
    assert_eq!(stats.redelivered, 0);
    assert_eq!(stats.in_flight, 0, "nothing held: {stats:?}");
    assert_eq!(
        xpending_count(&server, &stream_key("order:new"), "booking"),
        0
    );
    let info = consumer.info().await.unwrap();
    assert_eq!((info.pending(), info.lag()), (0, Some(0)));
    assert_eq!(info.streams[0].length, N);
    // Acked events never come back: nothing is pending (so nothing can be
    // claimed), and a fence published now is the very next delivery (anything
    // the member still had queued would come before it).
    publish(&bus, "order:new", N..N + 1);
    let fence = next(&mut consumer).await;
    assert_eq!(
        (*fence, fence.info().deliveries),
        (N, 1),
        "acked events never come back"
    );
    fence.ack();
}

/// Watermill `TestConcurrentSubscribe` and "consumer groups split work":
/// members created concurrently; each event is handled by exactly one of them
/// (all ack), every member gets a share, and each member sees its share in
/// stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_members_split_the_work_exactly_once() {
    const MEMBERS: usize = 4;
    const N: u64 = 400;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let barrier = Barrier::new(MEMBERS);
    let consumers: Vec<Consumer<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..MEMBERS)
            .map(|i| {
                let (bus, barrier) = (&bus, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let config = GroupConfig {
                        batch: 4,
                        max_in_flight: 4,
                        // No claims expected here: a generous ack wait keeps a
                        // stalled CI machine from causing them.
                        ack_wait: Duration::from_secs(5),
                        ..group_config(&format!("worker-{i}"))
                    };
                    bus.group::<u64>("workers", "job:split", config).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let info = consumers[0].info().await.unwrap();
    assert_eq!(info.streams.len(), 1, "one group on one stream: {info:?}");
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let acked = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = consumers
        .into_iter()
        .map(|mut consumer| {
            let mut done = done_rx.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    tokio::select! {
                        delivery = consumer.recv() => {
                            let delivery = delivery.expect("open").unwrap();
                            assert_eq!(delivery.info().deliveries, 1);
                            got.push(*delivery);
                            // A little work, so that the others get their turn.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            delivery.ack_confirmed().await.unwrap();
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = done.changed() => break,
                    }
                }
                consumer.shutdown();
                got
            })
        })
        .collect();
    let producer = {
        let bus = bus.clone();
        std::thread::spawn(move || publish(&bus, "job:split", 0..N))
    };
    let key = stream_key("job:split");
    eventually("every event acked", || acked.load(Ordering::Relaxed) >= N).await;
    producer.join().unwrap();
    assert_eq!(xpending_count(&server, &key, "workers"), 0);
    done_tx.send_replace(true);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (member, task) in tasks.into_iter().enumerate() {
        let got = tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        assert!(!got.is_empty(), "worker-{member} got no work");
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "worker-{member} saw its share out of order"
        );
        for value in got {
            *seen.entry(value).or_default() += 1;
        }
    }
    assert_eq!(seen.len() as u64, N, "every event handled");
    assert!(
        seen.values().all(|&n| n == 1),
        "each event by one member once"
    );
}

/// Watermill `TestResendOnError`: a nacked delivery comes back (same event,
/// count + 1), with the given delay or the backoff, until acked; the flow of
/// the others goes on meanwhile, within `max_in_flight`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_events_are_resent_until_acked() {
    const N: u64 = 60;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:retry", 0..N);
    let mut consumer = bus
        .group::<u64>(
            "retriers",
            "job:retry",
            GroupConfig {
                max_in_flight: 8,
                ..group_config("c1")
            },
        )
        .unwrap();
    let mut deliveries: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut ids = HashMap::new();
    while deliveries.values().filter(|d| d.len() == 2).count() < N as usize {
        let delivery = next(&mut consumer).await;
        let value = *delivery;
        let info = delivery.info().clone();
        assert_eq!(*ids.entry(value).or_insert(info.event_id), info.event_id);
        let seen = deliveries.entry(value).or_default();
        seen.push(info.deliveries);
        match seen.len() {
            1 if value % 2 == 0 => delivery.nack(Some(Duration::from_millis(20))),
            1 => delivery.nack(None), // the backoff: 10 ms after delivery 1
            2 => delivery.ack(),
            _ => panic!("{value} delivered a third time: {seen:?}"),
        }
    }
    assert!(deliveries.values().all(|d| d == &[1, 2]), "{deliveries:?}");
    eventually("acks", || consumer.stats().acked == N).await;
    let stats = consumer.stats();
    assert_eq!((stats.nacked, stats.redelivered), (N, N), "{stats:?}");
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(
        xpending_count(&server, &stream_key("job:retry"), "retriers"),
        0
    );
}

/// Watermill `TestNoAck`: a delivery dropped without an ack is delivered
/// again, to the same member if it is the only one, but only after the ack
/// wait, with its delivery count increased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_delivery_comes_back_after_the_ack_wait() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:drop", 0..2);
    let ack_wait = Duration::from_millis(400);
    let started = Instant::now();
    let mut consumer = bus
        .group::<u64>(
            "droppers",
            "job:drop",
            GroupConfig {
                ack_wait,
                ..group_config("c1")
            },
        )
        .unwrap();
    let first = next(&mut consumer).await;
    assert_eq!((*first, first.info().deliveries), (0, 1));
    let id = first.info().event_id;
    drop(first);
    assert_eq!(consumer.stats().dropped, 1);
    let one = next(&mut consumer).await;
    assert_eq!((*one, one.info().deliveries), (1, 1), "the rest flows on");
    one.ack();
    let again = next(&mut consumer).await;
    assert!(
        started.elapsed() >= ack_wait,
        "redelivered after {:?}, before the ack wait",
        started.elapsed()
    );
    assert_eq!(*again, 0);
    assert_eq!(again.info().event_id, id);
    assert!(again.info().deliveries >= 2, "{:?}", again.info());
    again.ack_confirmed().await.unwrap();
    let stats = consumer.stats();
    assert!(stats.reclaimed >= 1 && stats.redelivered >= 1, "{stats:?}");
    assert_eq!(
        xpending_count(&server, &stream_key("job:drop"), "droppers"),
        0
    );
}

/// Watermill `TestContinueAfterSubscribeClose` (and RELIABILITY item 4): a
/// member shuts down holding deliveries; the acks it gave before are sent; a
/// new member (with a small in-flight limit) gets everything else, the held
/// ones again with a higher delivery count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_continues_after_one_closes_holding_deliveries() {
    const N: u64 = 100;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:handoff", 0..N);
    let small = GroupConfig {
        max_in_flight: 10,
        ack_wait: Duration::from_millis(400),
        ..group_config("first")
    };
    let mut first = bus
        .group::<u64>("handoff", "job:handoff", small.clone())
        .unwrap();
    let mut acked = BTreeSet::new();
    let mut held = Vec::new();
    for _ in 0..10 {
        let delivery = next(&mut first).await;
        if *delivery % 2 == 0 {
            acked.insert(*delivery);
            delivery.ack();
        } else {
            held.push(delivery);
        }
    }
    let late = held.pop().unwrap();
    let held: BTreeSet<u64> = held.iter().map(|d| **d).collect();
    let closing = Instant::now();
    first.shutdown();
    assert!(
        closing.elapsed() < Duration::from_secs(5),
        "bounded shutdown"
    );
    let late_value = *late;
    let error = tokio::time::timeout(PATIENCE, late.ack_confirmed())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed, "an ack after shutdown");
    let mut second = bus
        .group::<u64>(
            "handoff",
            "job:handoff",
            GroupConfig {
                consumer: Some("second".into()),
                ..small
            },
        )
        .unwrap();
    let mut handled: HashMap<u64, u32> = HashMap::new();
    while handled.len() < (N as usize - acked.len()) {
        let delivery = next(&mut second).await;
        let value = *delivery;
        assert!(
            !acked.contains(&value),
            "{value} was acked before the close"
        );
        // What `first` held comes again. (What its reader took after the acks
        // made room, and never handed over before the shutdown, comes again
        // too: delivery 1 or 2, either is right.)
        if held.contains(&value) || value == late_value {
            assert!(delivery.info().deliveries >= 2, "{:?}", delivery.info());
        }
        assert_eq!(handled.insert(value, delivery.info().deliveries), None);
        delivery.ack();
    }
    let stats = second.stats();
    assert!(stats.reclaimed > held.len() as u64, "{stats:?}");
    eventually("acks", || second.stats().acked == handled.len() as u64).await;
    assert_eq!(
        xpending_count(&server, &stream_key("job:handoff"), "handoff"),
        0
    );
}

/// RELIABILITY item 4, the other half: a member restarted under the same name
/// after its deliveries idled past the ack wait re-reads them first, in order,
/// each once (no claim of the same entries racing the re-read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_late_after_the_ack_wait_drains_its_entries_once() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:resume", 0..20);
    let config = GroupConfig {
        ack_wait: Duration::from_millis(300),
        max_in_flight: 10,
        ..group_config("w1")
    };
    let mut first = bus
        .group::<u64>("resumers", "job:resume", config.clone())
        .unwrap();
    // Held (not dropped: a dropped delivery frees its place at once) until
    // after the shutdown, so that exactly these 10 are pending.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut first).await);
    }
    first.shutdown();
    drop(held);
    let key = stream_key("job:resume");
    eventually("the held entries idle past the ack wait", || {
        let reply = server
            .cli(&["XPENDING", &key, "resumers", "IDLE", "600", "-", "+", "100"])
            .unwrap();
        reply.lines().filter(|line| line.contains('-')).count() == 10
    })
    .await;
    // Room for more than its own entries, so a claim racing the re-read would
    // hand them over twice.
    let mut again = bus
        .group::<u64>(
            "resumers",
            "job:resume",
            GroupConfig {
                max_in_flight: 256,
                ..config
            },
        )
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 20 {
        let delivery = next(&mut again).await;
        got.push((*delivery, delivery.info().deliveries));
        delivery.ack();
    }
    let expected: Vec<(u64, u32)> = (0..20).map(|i| (i, if i < 10 { 2 } else { 1 })).collect();
    assert_eq!(
        got, expected,
        "own entries first, in order, once; then new ones"
    );
    // No duplicates: a fence published now is the next delivery (a duplicate
    // already handed over would come first); once everything is acked nothing
    // is held (a duplicate queued later would hold a place) or pending (none
    // can be claimed any more).
    publish(&bus, "job:resume", 20..21);
    let fence = next(&mut again).await;
    assert_eq!(
        (*fence, fence.info().deliveries),
        (20, 1),
        "no duplicates before the fence"
    );
    fence.ack();
    eventually("all 21 acked and nothing else held", || {
        let stats = again.stats();
        stats.acked == 21 && stats.in_flight == 0
    })
    .await;
    assert_eq!(xpending_count(&server, &key, "resumers"), 0);
    assert_eq!(again.stats().delivered, 21, "no duplicates");
    assert_eq!(again.stats().reclaimed, 0);
}

/// Watermill `TestConcurrentClose`: members closed at the same moment from
/// several threads while their I/O threads are reading and acking: no panic, no
/// hang, bounded time; the acks given before are sent, and a new member gets
/// exactly everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_closed_concurrently_while_receiving() {
    const MEMBERS: usize = 6;
    const N: u64 = 2_000;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:close", 0..N);
    let handled: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let total = Arc::new(AtomicU64::new(0));
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let barrier = Arc::new(Barrier::new(MEMBERS));
    let mut tasks = Vec::new();
    for i in 0..MEMBERS {
        let mut consumer = bus
            .group::<u64>(
                "closers",
                "job:close",
                GroupConfig {
                    max_in_flight: 20,
                    ack_wait: Duration::from_secs(2),
                    ..group_config(&format!("m{i}"))
                },
            )
            .unwrap();
        let (handled, total, barrier) = (handled.clone(), total.clone(), barrier.clone());
        let mut close = close_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    delivery = consumer.recv() => {
                        let delivery = delivery.expect("open").unwrap();
                        *handled.lock().unwrap().entry(*delivery).or_default() += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                        delivery.ack();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    _ = close.changed() => break,
                }
            }
            // Close on a thread of its own, all members at once: half with
            // `shutdown`, half by dropping.
            tokio::task::spawn_blocking(move || {
                barrier.wait();
                let started = Instant::now();
                if i % 2 == 0 {
                    consumer.shutdown();
                } else {
                    drop(consumer);
                }
                started.elapsed()
            })
            .await
            .unwrap()
        }));
    }
    eventually("a quarter handled", || {
        total.load(Ordering::Relaxed) >= N / 4
    })
    .await;
    close_tx.send_replace(true);
    for task in tasks {
        let took = tokio::time::timeout(PATIENCE, task)
            .await
            .expect("close does not hang")
            .expect("close does not panic");
        assert!(took < Duration::from_secs(5), "a close took {took:?}");
    }
    let before = handled.lock().unwrap().clone();
    assert!(
        (before.len() as u64) < N,
        "closed while work was left ({} of {N})",
        before.len()
    );
    let mut rescuer = bus
        .group::<u64>(
            "closers",
            "job:close",
            GroupConfig {
                ack_wait: Duration::from_millis(300),
                ..group_config("rescuer")
            },
        )
        .unwrap();
    let mut all = before.clone();
    while (all.len() as u64) < N {
        let delivery = next(&mut rescuer).await;
        assert!(
            !before.contains_key(&*delivery),
            "{} was acked before the close, yet delivered again",
            *delivery
        );
        *all.entry(*delivery).or_default() += 1;
        delivery.ack();
    }
    let duplicates: u32 = all.values().map(|n| n - 1).sum();
    assert_eq!(duplicates, 0, "each event handled once");
    eventually("acks", || rescuer.stats().in_flight == 0).await;
    eventually("XPENDING 0", || {
        xpending_count(&server, &stream_key("job:close"), "closers") == 0
    })
    .await;
}

/// Two groups on one topic each get every event; inside each, the members
/// split them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_topic_each_get_every_event() {
    const N: u64 = 500;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let mut members = Vec::new();
    for group in ["audit", "billing"] {
        for name in ["a", "b"] {
            let config = GroupConfig {
                max_in_flight: 5,
                ack_wait: Duration::from_secs(5),
                ..group_config(name)
            };
            members.push((group, bus.group::<u64>(group, "fill:new", config).unwrap()));
        }
    }
    let producer = {
        let bus = bus.clone();
        std::thread::spawn(move || publish(&bus, "fill:new", 0..N))
    };
    let handled: Arc<Mutex<HashMap<(&str, u64), u32>>> = Arc::default();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = members
        .into_iter()
        .map(|(group, mut consumer)| {
            let handled = handled.clone();
            let mut done = done_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        delivery = consumer.recv() => {
                            let delivery = delivery.expect("open").unwrap();
                            *handled.lock().unwrap().entry((group, *delivery)).or_default() += 1;
                            tokio::time::sleep(Duration::from_micros(500)).await;
                            delivery.ack();
                        }
                        _ = done.changed() => break,
                    }
                }
                consumer.shutdown();
            })
        })
        .collect();
    eventually("both groups handled every event", || {
        handled.lock().unwrap().len() as u64 == 2 * N
    })
    .await;
    producer.join().unwrap();
    let key = stream_key("fill:new");
    eventually("both groups acked everything", || {
        xpending_count(&server, &key, "audit") == 0 && xpending_count(&server, &key, "billing") == 0
    })
    .await;
    done_tx.send_replace(true);
    for task in tasks {
        tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
    }
    let handled = handled.lock().unwrap();
    assert!(handled.values().all(|&n| n == 1), "once per group");
    for group in ["audit", "billing"] {
        assert_eq!(
            handled.keys().filter(|(g, _)| *g == group).count() as u64,
            N
        );
    }
}

/// Watermill `TestReconnect`, RELIABILITY item 1 for groups: Redis (AOF,
/// `appendfsync always`) SIGKILLed and restarted at 1/3 and at 1/2 of 10k
/// events being consumed. Every event is handled at least once; duplicates are
/// counted and printed; XPENDING reaches 0; the group survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_twice_while_consuming() {
    const N: u64 = 10_000;
    let mut server = RedisServer::start_with(RedisServerOptions {
        aof: Some(AppendFsync::Always),
        ..Default::default()
    })
    .unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:outage", 0..N);
    let mut consumer = bus
        .group::<u64>("survivors", "job:outage", group_config("c1"))
        .unwrap();
    let key = stream_key("job:outage");
    let mut seen = vec![0_u32; N as usize];
    let mut distinct = 0_u64;
    let mut outages = vec![N / 2, N / 3];
    let deadline = Instant::now() + PATIENCE;
    loop {
        assert!(
            Instant::now() < deadline,
            "{distinct} of {N} handled: {:?}",
            consumer.stats()
        );
        match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await {
            Ok(Some(Ok(delivery))) => {
                let value = *delivery as usize;
                seen[value] += 1;
                if seen[value] == 1 {
                    distinct += 1;
                }
                delivery.ack();
            }
            Ok(other) => panic!("consumer ended: {:?}", other.map(|r| r.map(|_| ()))),
            Err(_) if distinct == N => {
                if xpending_count(&server, &key, "survivors") == 0 {
                    break;
                }
            }
            Err(_) => {}
        }
        if outages.last().is_some_and(|&at| distinct >= at) {
            outages.pop();
            server.kill();
            // Handle what the member had read; then it has nothing more.
            let quiet = Instant::now() + PATIENCE;
            while let Ok(delivery) =
                tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await
            {
                assert!(
                    Instant::now() < quiet,
                    "deliveries during the outage never end"
                );
                let delivery = delivery.expect("open").unwrap();
                let value = *delivery as usize;
                seen[value] += 1;
                if seen[value] == 1 {
                    distinct += 1;
                }
                delivery.ack();
            }
            server.restart().unwrap();
        }
    }
    assert!(outages.is_empty());
    assert!(seen.iter().all(|&n| n >= 1));
    let duplicates: u64 = seen.iter().map(|&n| u64::from(n) - 1).sum();
    let stats = consumer.stats();
    println!("reconnect: {N} events, {duplicates} duplicates, {stats:?}");
    assert!(stats.errors > 0, "the outages were seen: {stats:?}");
    assert_eq!(stats.recreated, 0, "the group survived in the AOF");
    assert_eq!(stats.delivered, N + duplicates);
    eventually("acks", || consumer.stats().in_flight == 0).await;
}

/// RELIABILITY item 7, trim while pending: entries pending on a dead member and
/// on a restarted one, and a nacked one waiting for its redelivery, are
/// trimmed away (`XTRIM MAXLEN 0`). No handler ever sees them (no empty
/// payload, no dead letter); they are cleared and counted; XPENDING reaches 0;
/// new events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_while_pending_are_cleared_and_counted() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let key = stream_key("job:trim");
    publish(&bus, "job:trim", 0..20);
    let config = |name: &str, max_in_flight| GroupConfig {
        max_in_flight,
        ack_wait: Duration::from_millis(300),
        ..group_config(name)
    };
    // `dead` holds 0..10 and dies; `same` holds 10..15 and stops.
    let mut dead = bus
        .group::<u64>("trimmed", "job:trim", config("dead", 10))
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut dead).await);
    }
    let mut same = bus
        .group::<u64>("trimmed", "job:trim", config("same", 5))
        .unwrap();
    for _ in 0..5 {
        held.push(next(&mut same).await);
    }
    dead.shutdown();
    same.shutdown();
    drop(held);
    assert_eq!(xpending_count(&server, &key, "trimmed"), 15);
    server.cli(&["XTRIM", &key, "MAXLEN", "0"]).unwrap();
    // Restarted, `same` re-reads its own entries (gone: nil fields) and claims
    // the dead member's (gone: reported deleted by XAUTOCLAIM).
    let mut same = bus
        .group::<u64>("trimmed", "job:trim", config("same", 5))
        .unwrap();
    eventually("15 trimmed pending entries counted", || {
        same.stats().trimmed_pending >= 15
    })
    .await;
    eventually("XPENDING 0", || {
        xpending_count(&server, &key, "trimmed") == 0
    })
    .await;
    assert_eq!(same.stats().trimmed_pending, 15, "{:?}", same.stats());
    // Nacked deliveries trimmed while they wait to come back: each counted
    // once, not by the claim loop (which sees them gone, whatever their idle
    // time) and again by the redelivery. A few rounds: the two race.
    let mut counted = 15;
    for round in 0..4 {
        publish(&bus, "job:trim", 100 + round..101 + round);
        let delivery = next(&mut same).await;
        assert_eq!((*delivery, delivery.info().deliveries), (100 + round, 1));
        let nack_delay = Duration::from_millis(300);
        let nacked = Instant::now();
        delivery.nack(Some(nack_delay));
        server.cli(&["XTRIM", &key, "MAXLEN", "0"]).unwrap();
        counted += 1;
        eventually("the nacked one counted", || {
            same.stats().trimmed_pending >= counted
        })
        .await;
        assert_eq!(xpending_count(&server, &key, "trimmed"), 0);
        // The redelivery has run its final XCLAIM (and counted, or not) when it
        // gives its place back; nothing is pending, so no claim can count later.
        eventually("the nacked one's redelivery settled", || {
            same.stats().in_flight == 0
        })
        .await;
        assert!(nacked.elapsed() >= nack_delay, "not before its delay");
        assert_eq!(
            same.stats().trimmed_pending,
            counted,
            "round {round}: {:?}",
            same.stats()
        );
    }
    // New events flow; nothing before them was ever handed over.
    publish(&bus, "job:trim", 200..203);
    for i in 200..203 {
        let delivery = next(&mut same).await;
        assert_eq!((*delivery, delivery.info().deliveries), (i, 1));
        delivery.ack();
    }
    let stats = same.stats();
    assert_eq!(stats.delivered, 7, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert!(bus.dead_letters("job:trim", 10).await.unwrap().is_empty());
    eventually("acks", || same.stats().in_flight == 0).await;
    assert_eq!(xpending_count(&server, &key, "trimmed"), 0);
}

/// A group over a pattern reads every matching topic, also one created after
/// the group started; never a topic the pattern does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_group_reads_every_matching_topic_also_new_ones() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:a", 0..50);
    publish(&bus, "job:b", 100..150);
    publish(&bus, "job:a:deep", 900..910); // `*` is one segment
    publish(&bus, "other:a", 800..810);
    let mut consumer = bus
        .group::<u64>(
            "any-job",
            "job:*",
            GroupConfig {
                discover_interval: Duration::from_millis(100),
                ..group_config("p1")
            },
        )
        .unwrap();
    let producer = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            publish(&bus, "job:c", 200..250); // a topic new to the group
            publish(&bus, "job:a", 300..350);
        })
    };
    let mut expected: HashSet<(String, u64)> = HashSet::new();
    for (topic, range) in [
        ("job:a", 0..50),
        ("job:b", 100..150),
        ("job:c", 200..250),
        ("job:a", 300..350),
    ] {
        expected.extend(range.map(|i| (topic.to_string(), i)));
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut got = HashSet::new();
    while got.len() < expected.len() {
        let delivery = next(&mut consumer).await;
        let topic = delivery.info().topic.as_str().to_string();
        let item = (topic.clone(), *delivery);
        assert!(expected.contains(&item), "unexpected {item:?}");
        if let Some(previous) = last.insert(topic, *delivery) {
            assert!(
                previous < *delivery,
                "order per topic: {item:?} after {previous}"
            );
        }
        assert!(got.insert(item), "once");
        delivery.ack();
    }
    producer.join().unwrap();
    // Non-matching topics are never read: discovery found `job:c` (created
    // after the group started) in the same scan that saw `job:a:deep` and
    // `other:a` (there from the start), and never created the group on them,
    // so no delivery from them can come.
    for topic in ["job:a:deep", "other:a"] {
        let groups = server
            .cli(&["XINFO", "GROUPS", &stream_key(topic)])
            .unwrap();
        assert!(
            !groups.contains("any-job"),
            "non-matching topic {topic}: {groups}"
        );
    }
    let info = consumer.info().await.unwrap();
    let mut topics: Vec<String> = info
        .streams
        .iter()
        .filter_map(|s| s.topic.as_ref().map(|t| t.as_str().to_string()))
        .collect();
    topics.sort();
    assert_eq!(topics, ["job:a", "job:b", "job:c"]);
    eventually("acks", || consumer.stats().acked == expected.len() as u64).await;
    let info = consumer.info().await.unwrap();
    assert_eq!(info.pending(), 0);
}

/// Idle members with nothing pending are removed; a member holding pending
/// entries never is, however long it idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_members_are_removed_but_never_one_holding_entries() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:idle", 0..1);
    let long = |name: &str| GroupConfig {
        ack_wait: Duration::from_secs(60), // nobody claims anything here
        remove_idle_consumers: None,
        ..group_config(name)
    };
    let mut holder = bus
        .group::<u64>("idlers", "job:idle", long("holder"))
        .unwrap();
    let held = next(&mut holder).await;
    holder.shutdown();
    drop(held);
    let idler = bus
        .group::<u64>("idlers", "job:idle", long("idler"))
        .unwrap();
    let key = stream_key("job:idle");
    eventually("the idler joined", || {
        server
            .cli(&["XINFO", "CONSUMERS", &key, "idlers"])
            .unwrap()
            .contains("idler")
    })
    .await;
    idler.shutdown();
    let idle = Duration::from_millis(300);
    let janitor = bus
        .group::<u64>(
            "idlers",
            "job:idle",
            GroupConfig {
                remove_idle_consumers: Some(idle),
                ..long("janitor")
            },
        )
        .unwrap();
    let names = |info: &tickbus::group::GroupInfo| -> Vec<(String, u64)> {
        let mut names: Vec<_> = info.streams[0]
            .consumers
            .iter()
            .map(|c| (c.name.clone(), c.pending))
            .collect();
        names.sort();
        names
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = janitor.info().await.unwrap();
        let members = names(&info);
        assert!(
            members
                .iter()
                .any(|(name, pending)| name == "holder" && *pending == 1),
            "the holder is never removed: {members:?}"
        );
        let holder_idle = info.streams[0]
            .consumers
            .iter()
            .find(|c| c.name == "holder")
            .map(|c| c.idle)
            .unwrap();
        if !members.iter().any(|(name, _)| name == "idler") && holder_idle > idle * 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{members:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(janitor.stats().consumers_removed, 1);
    assert_eq!(xpending_count(&server, &key, "idlers"), 1);
}

/// `in_progress` keeps a slow delivery from being claimed by another member
/// (or by its own) past the ack wait; without it, the other member claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_keeps_a_slow_delivery_from_being_claimed() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    // In progress every 100 ms: 300 ms of slack for a busy CI machine.
    let ack_wait = Duration::from_millis(400);
    let config = |name: &str| GroupConfig {
        ack_wait,
        ..group_config(name)
    };
    publish(&bus, "job:slow", 0..1);
    let mut slow = bus
        .group::<u64>("slowpokes", "job:slow", config("slow"))
        .unwrap();
    let delivery = next(&mut slow).await;
    assert_eq!(*delivery, 0);
    let mut other = bus
        .group::<u64>("slowpokes", "job:slow", config("other"))
        .unwrap();
    // Four ack waits of work, telling the group every 100 ms.
    let work = Instant::now();
    while work.elapsed() < ack_wait * 4 {
        delivery.in_progress();
        tokio::select! {
            got = other.recv() => panic!(
                "claimed from a member in progress: {:?}",
                got.map(|r| r.map(|d| d.info().clone()))
            ),
            got = slow.recv() => panic!(
                "redelivered to itself while in progress: {:?}",
                got.map(|r| r.map(|d| d.info().clone()))
            ),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    delivery.ack_confirmed().await.unwrap();
    // Time-bounded: a claim that ran just before the ack may still be on its
    // way to `other`, and no event marks "its claim loop has passed since".
    // Two ack waits cover its next claim passes.
    expect_nothing(&mut other, ack_wait * 2, "acked in the end").await;
    assert_eq!(other.stats().reclaimed, 0);
    // The control: a slow delivery without `in_progress` is claimed.
    publish(&bus, "job:slow", 1..2);
    let stuck = tokio::select! {
        got = slow.recv() => got.unwrap().unwrap(),
        got = other.recv() => got.unwrap().unwrap(),
        () = tokio::time::sleep(PATIENCE) => panic!("event 1 not delivered"),
    };
    assert_eq!((*stuck, stuck.info().deliveries), (1, 1));
    let (again, by) = tokio::select! {
        got = slow.recv() => (got.unwrap().unwrap(), "slow"),
        got = other.recv() => (got.unwrap().unwrap(), "other"),
        () = tokio::time::sleep(PATIENCE) => panic!("the stuck delivery was never claimed"),
    };
    assert_eq!((*again, again.info().deliveries), (1, 2), "claimed by {by}");
    again.ack_confirmed().await.unwrap();
    stuck.ack(); // late: harmless
    eventually("XPENDING 0", || {
        xpending_count(&server, &stream_key("job:slow"), "slowpokes") == 0
    })
    .await;
}

/// `seen_before`: `false` the first time a group asks about an event, `true`
/// after (for every member of the group, not for another group) until the TTL
/// runs out. `SeenWindow` tells a redelivery from a first delivery in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_before_and_seen_window_detect_duplicates() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:once", 0..3);
    let mut first = bus
        .group::<u64>("effects", "job:once", group_config("m1"))
        .unwrap();
    // All three came in `first`'s first read: `second` gets none of them.
    let delivery = next(&mut first).await;
    let second = bus
        .group::<u64>("effects", "job:once", group_config("m2"))
        .unwrap();
    let elsewhere = bus
        .group::<u64>("audit", "job:once", group_config("m1"))
        .unwrap();
    let mut window = SeenWindow::new(3);
    let id = delivery.info().event_id;
    assert!(!window.seen_before(id));
    let ttl = Duration::from_secs(1);
    assert!(!first.seen_before(id, ttl).await.unwrap(), "first time");
    assert!(first.seen_before(id, ttl).await.unwrap(), "second time");
    assert!(
        second.seen_before(id, ttl).await.unwrap(),
        "shared by the group"
    );
    assert!(!elsewhere.seen_before(id, ttl).await.unwrap(), "per group");
    let seen_key = format!("tickbus:seen:{{effects}}:{}", id.as_uuid().hyphenated());
    let pttl: i64 = server
        .cli(&["PTTL", &seen_key])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pttl > 0 && pttl <= 1_000, "PTTL {pttl}");
    // A redelivery of the same event (after the two others): the window knows it.
    delivery.nack(Some(Duration::from_millis(10)));
    for _ in 0..2 {
        let other = next(&mut first).await;
        assert!(!window.seen_before(other.info().event_id), "a new event");
        other.ack();
    }
    let again = next(&mut first).await;
    assert_eq!((again.info().event_id, again.info().deliveries), (id, 2));
    assert!(window.seen_before(again.info().event_id), "a duplicate");
    again.ack();
    let newer = tickbus::EventId::from_uuid(uuid::Uuid::from_u128(42));
    assert!(!window.seen_before(newer));
    assert!(!window.seen_before(id), "the window holds the last 3 only");
    // After the TTL the group forgets.
    eventually("the seen key expired", || {
        server.cli(&["EXISTS", &seen_key]).unwrap().trim() == "0"
    })
    .await;
    assert!(
        !first.seen_before(id, ttl).await.unwrap(),
        "forgotten after the TTL"
    );
    assert!(
        second.seen_before(id, ttl).await.unwrap(),
        "and remembered again"
    );
}

/// `stats().in_flight` counts deliveries held, never the places a read under
/// way has taken: sampled in a tight loop while the reader cycles every
/// millisecond with nothing to read, it always says 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_never_counts_the_places_of_a_read_under_way() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:idle-reads", 0..1);
    let mut consumer = bus
        .group::<u64>(
            "samplers",
            "job:idle-reads",
            GroupConfig {
                block: Duration::from_millis(1),
                ..group_config("c1")
            },
        )
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(consumer.stats().in_flight, 1, "one held");
    delivery.ack_confirmed().await.unwrap();
    let consumer = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut samples, mut wrong) = (0_u64, 0_u64);
        while start.elapsed() < Duration::from_secs(1) {
            samples += 1;
            if consumer.stats().in_flight != 0 {
                wrong += 1;
            }
        }
        assert_eq!(
            wrong, 0,
            "{wrong} of {samples} samples counted a read's places"
        );
        consumer
    })
    .join()
    .unwrap();
    assert_eq!(consumer.stats().errors, 0);
}

//! `../shared/RELIABILITY.md`'s fault and bad-input suite: the cases no other
//! test file covers, each against a real `redis-server` started by the harness.
//!
//! Where every case is proved:
//!
//! | case | test |
//! |---|---|
//! | 1. SIGKILL at 1/3, restart at 1/2 of 10k publishes (`always`) | here, `killed_with_appendfsync_always_…`; `redis_live.rs` (local delivery through it) |
//! | 2. `everysec` and a graceful SHUTDOWN | here, `shut_down_gracefully_with_appendfsync_everysec_…` |
//! | 3. a lost XADD reply | `redis_live.rs` `lost_replies_are_settled_without_writing_twice` |
//! | 4. consumer killed before ack | `group_processes.rs`, `groups.rs` (claims, own PEL first) |
//! | 5. poison event | `groups.rs` (dead letters after max deliveries) |
//! | 6. slow consumer, `max_len` trimming | here, `a_slow_group_under_max_len_…`; `groups.rs` (`max_age` never trims unread) |
//! | 7. trim while pending | `group_conformance.rs` `entries_trimmed_while_pending_…` |
//! | 8. stream deleted under blocked readers | `groups.rs` `a_deleted_stream_is_recreated_or_stops_…` |
//! | 9. a duplicate, also across an instance restart | here, `a_duplicate_across_an_instance_restart_…` |
//! | 10. self-filter with three instances | here, `three_instances_never_handle_their_own_events` |
//! | 11. oversized payloads | here (publish side); `groups.rs` (a field written by hand) |
//! | 12, 13. malformed MessagePack, wrong shapes | `codec.rs`, `groups.rs`, `fuzz/` |
//! | 14. bad topic names; nothing outside the prefix | here, `a_custom_prefix_confines_every_key_…` |
//! | 15–17. passwords, ACL users, TLS | `redis_live.rs` (wrong password); the rest is issue 16 |
//! | 18. graceful shutdown during processing | `groups.rs` `shutdown_sends_given_acks_…` |
//! | 19. a reconnect between XADD and WAITAOF | here, `a_lost_waitaof_reply_…` (Redis ≥ 7.2: the CI's Valkey step) |
//! | 20. a new group from `0` and from a time; a trimmed prefix | here; `replay.rs` (replay ranges and gaps) |
//! | 21. the conformance suite ten times over | `.ci/run` repeats `group_conformance`, `faults` and this file |
//!
//! The check style is JetStream's: every event carries its sequence number, a
//! bitset records what was handled, duplicates are counted and allowed where the
//! guarantee is at-least-once, and any missing acknowledged event fails.

use std::time::{Duration, Instant};

use tickbus::cache::{CacheConfig, StatePolicy};
use tickbus::group::{Consumer, GroupConfig};
use tickbus::replay::ReplayOptions;
use tickbus::test_util::{AppendFsync, FaultProxy, RedisServer, RedisServerOptions};
use tickbus::{
    Bus, ConnectionState, Durability, DurableOptions, ErrorKind, LiveBus, PublishError,
    RedisConfig, Retention, StartAt, StreamId,
};

mod support;
use support::groups::{config, eventually, group_config, live_bus, next, stream_key, PATIENCE};

/// Waits until the bus's health satisfies `check`.
async fn health_becomes(bus: &Bus, what: &str, check: impl Fn(&ConnectionState) -> bool) {
    eventually(what, || check(&bus.health())).await;
}

/// Receives from `consumer` until every sequence number below `n` was handled
/// at least once (acking each); returns how many deliveries were duplicates.
async fn handle_all(consumer: &mut Consumer<u64>, n: usize) -> u64 {
    let mut handled = vec![false; n];
    let mut missing = n;
    let mut duplicates = 0;
    while missing > 0 {
        let delivery = next(consumer).await;
        let seq = usize::try_from(*delivery).unwrap();
        assert!(seq < n, "an event that was never published: {seq}");
        if std::mem::replace(&mut handled[seq], true) {
            duplicates += 1;
        } else {
            missing -= 1;
        }
        delivery.ack();
    }
    duplicates
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Shutdown,
}

/// Cases 1 and 2: the server stops at 1/3 of 10 000 publishes and comes back
/// at 1/2, while a group member consumes. Every publish is acknowledged once
/// the server is back, every event is in the stream exactly once, every one is
/// handled at least once, and the outage was surfaced (errors counted, health
/// degraded), never swallowed.
async fn publishes_survive_a_stopped_server(fsync: AppendFsync, stop: Stop) {
    const N: usize = 10_000;
    let mut server = RedisServer::start_with(RedisServerOptions {
        aof: Some(fsync),
        ..Default::default()
    })
    .unwrap();
    let bus = live_bus(&server);
    let topic = "orders:fill";
    let fills = bus
        .durable_topic::<u64>(
            topic,
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let mut booking = bus
        .group::<u64>("booking", topic, group_config("b1"))
        .unwrap();
    let mut receipts = Vec::with_capacity(N);
    for i in 0..N {
        if i == N / 3 {
            match stop {
                Stop::Kill => server.kill(),
                Stop::Shutdown => server.shutdown().unwrap(),
            }
        }
        receipts.push(fills.publish_durable(i as u64).unwrap());
        if i == N / 2 {
            health_becomes(&bus, "health degraded", |health| {
                matches!(health, ConnectionState::Degraded { .. })
            })
            .await;
            server.restart().unwrap();
        }
    }
    let duplicates = handle_all(&mut booking, N).await;
    let mut last = StreamId::ZERO;
    for receipt in receipts {
        let id = tokio::time::timeout(PATIENCE, receipt)
            .await
            .expect("every receipt resolves once the server is back")
            .expect("and says the event was written");
        assert!(id > last, "receipts resolve in publish order");
        last = id;
    }
    let xlen = server.cli(&["XLEN", &stream_key(topic)]).unwrap();
    assert_eq!(xlen.trim(), N.to_string(), "each event written once");
    assert!(
        bus.redis_stats().redis_errors > 0,
        "the outage was surfaced"
    );
    println!("{fsync:?}/{stop:?}: {N} events, {duplicates} redelivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_appendfsync_always_every_acknowledged_event_is_handled() {
    publishes_survive_a_stopped_server(AppendFsync::Always, Stop::Kill).await;
}

/// A graceful SHUTDOWN fsyncs the AOF, so `everysec` loses nothing either (the
/// bound of `docs/guarantees.md`: about a second only on an operating-system
/// crash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shut_down_gracefully_with_appendfsync_everysec_every_acknowledged_event_is_handled() {
    publishes_survive_a_stopped_server(AppendFsync::EverySec, Stop::Shutdown).await;
}

/// Case 6: a group that does not keep up, on a stream bounded by `max_len`.
/// The member holds at most `max_in_flight` deliveries however far behind it is
/// (memory bounded); what the bound trims before the group read it is counted
/// in `trimmed_unread`, and everything else is handled: handled + trimmed is
/// exactly what was published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_group_under_max_len_holds_little_and_counts_what_it_lost() {
    const N: u64 = 2_000;
    const MAX_IN_FLIGHT: usize = 10;
    let server = RedisServer::start().unwrap();
    server
        .cli(&["CONFIG", "SET", "stream-node-max-entries", "10"])
        .unwrap();
    let bus = live_bus(&server);
    let topic = "risk:exposure";
    let mut slow = bus
        .group::<u64>(
            "risk-report",
            topic,
            GroupConfig {
                max_in_flight: MAX_IN_FLIGHT,
                ..group_config("slow")
            },
        )
        .unwrap();
    let exposure = bus
        .durable_topic::<u64>(
            topic,
            DurableOptions {
                receive_remote: false,
                retention: Retention {
                    max_len: Some(100),
                    max_age: None,
                },
                ..Default::default()
            },
        )
        .unwrap();
    // The member takes what it may hold, then its application stops taking.
    for i in 0..MAX_IN_FLIGHT as u64 {
        exposure.publish_durable(i).unwrap().await.unwrap();
    }
    eventually("the member holds all it may", || {
        slow.stats().in_flight == MAX_IN_FLIGHT as u64
    })
    .await;
    let mut last = None;
    for i in MAX_IN_FLIGHT as u64..N {
        last = Some(exposure.publish_durable(i).unwrap());
        assert!(slow.stats().in_flight <= MAX_IN_FLIGHT as u64);
    }
    last.unwrap().wait_timeout(PATIENCE).unwrap();
    // The application takes deliveries again at once: the member looks for
    // trims before it reads on (a once-a-second check would come too late).
    let xlen: u64 = server
        .cli(&["XLEN", &stream_key(topic)])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(xlen < 200, "max_len bounds the stream ({xlen})");
    let mut handled = Vec::new();
    while handled.last() != Some(&(N - 1)) {
        let delivery = next(&mut slow).await;
        assert!(Some(&*delivery) > handled.last(), "in order, once");
        handled.push(*delivery);
        delivery.ack();
    }
    let stats = slow.stats();
    println!(
        "handled {} (the oldest {}), trimmed unread {}, trimmed pending {}",
        handled.len(),
        handled[0],
        stats.trimmed_unread,
        stats.trimmed_pending
    );
    assert_eq!(
        handled.len() as u64 + stats.trimmed_unread + stats.trimmed_pending,
        N,
        "every event handled or counted as trimmed"
    );
}

/// Case 9: one event delivered twice to a group, across an instance restart:
/// the member that handled it dies before its ack (its instance shuts down),
/// and the stream also holds a second copy of the entry (a re-sent XADD). The
/// restarted instance, same member name, gets both deliveries; `seen_before`
/// lets the effect happen once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_across_an_instance_restart_has_its_effect_once() {
    let server = RedisServer::start().unwrap();
    let topic = "orders:new";
    let key = stream_key(topic);
    let ttl = Duration::from_secs(60);
    let mut effects = 0;
    let first = live_bus(&server);
    support::groups::publish(&first, topic, 0..1);
    let mut member = first
        .group::<u64>("router", topic, group_config("r1"))
        .unwrap();
    let delivery = next(&mut member).await;
    let event = delivery.info().event_id;
    assert!(!member.seen_before(event, ttl).await.unwrap());
    effects += 1;
    // The instance goes down after the effect, before the ack.
    drop(delivery);
    member.shutdown();
    first.shutdown();
    drop(first);
    // A second copy of the entry, every field as written (a re-sent XADD).
    server
        .cli(&[
            "EVAL",
            "local e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1] \
             return redis.call('XADD', KEYS[1], '*', unpack(e[2]))",
            "1",
            &key,
        ])
        .unwrap();
    assert_eq!(server.cli(&["XLEN", &key]).unwrap().trim(), "2");

    let second = live_bus(&server);
    let mut member = second
        .group::<u64>("router", topic, group_config("r1"))
        .unwrap();
    let mut deliveries = Vec::new();
    for _ in 0..2 {
        let delivery = next(&mut member).await;
        assert_eq!(delivery.info().event_id, event, "the same event");
        assert_eq!(*delivery, 0);
        if !member.seen_before(event, ttl).await.unwrap() {
            effects += 1;
        }
        deliveries.push((delivery.info().stream_id, delivery.info().deliveries));
        delivery.ack_confirmed().await.unwrap();
    }
    assert_eq!(effects, 1, "the effect happened once");
    // First its own pending entry (a redelivery), then the copy.
    assert!(deliveries[0].1 >= 2, "{deliveries:?}");
    assert_eq!(deliveries[1].1, 1, "{deliveries:?}");
    assert!(deliveries[0].0 < deliveries[1].0);
    assert_eq!(
        support::groups::xpending_count(&server, &key, "router"),
        0,
        "both acked"
    );
}

/// Case 10: three instances fan out one topic; none handles its own events
/// through Redis, and each receives the other two's events once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_handle_their_own_events() {
    const N: u64 = 1_000;
    let server = RedisServer::start().unwrap();
    let buses: Vec<LiveBus> = (0..3).map(|_| live_bus(&server)).collect();
    let topics: Vec<_> = buses
        .iter()
        .map(|bus| {
            bus.durable_topic::<u64>("md:quote", DurableOptions::default())
                .unwrap()
        })
        .collect();
    let mut subscribers: Vec<_> = topics.iter().map(|topic| topic.subscribe()).collect();
    // Instance `k` publishes k*N .. (k+1)*N.
    let mut receipts = Vec::new();
    for (k, topic) in topics.iter().enumerate() {
        let base = k as u64 * N;
        for i in base..base + N {
            receipts.push(topic.publish_durable(i).unwrap());
        }
    }
    for receipt in receipts {
        tokio::time::timeout(PATIENCE, receipt)
            .await
            .unwrap()
            .unwrap();
    }
    for (k, subscriber) in subscribers.iter_mut().enumerate() {
        let own = buses[k].instance_id();
        let mut local = Vec::new();
        let mut remote: Vec<Vec<u64>> = vec![Vec::new(); 3];
        while local.len() + remote.iter().map(Vec::len).sum::<usize>() < 3 * N as usize {
            let event = tokio::time::timeout(PATIENCE, subscriber.recv())
                .await
                .expect("every event arrives")
                .unwrap();
            let from = (event.value / N) as usize;
            if event.meta.is_remote() {
                assert_ne!(
                    event.meta.source(),
                    own,
                    "instance {k} got its own event back"
                );
                assert_eq!(event.meta.source(), buses[from].instance_id());
                remote[from].push(event.value);
            } else {
                assert_eq!(from, k);
                local.push(event.value);
            }
        }
        let range = |j: usize| (j as u64 * N..(j as u64 + 1) * N).collect::<Vec<_>>();
        assert_eq!(local, range(k), "instance {k}: its own events, locally");
        for (j, events) in remote.iter().enumerate() {
            if j == k {
                assert!(events.is_empty());
            } else {
                assert_eq!(
                    *events,
                    range(j),
                    "instance {k}: {j}'s events once, in order"
                );
            }
        }
    }
    for (k, bus) in buses.iter().enumerate() {
        // Its own entries may come after the others' in the stream: the reader
        // filters them when it gets there.
        eventually("each instance read back and filtered its own", || {
            bus.redis_stats().self_filtered == N
        })
        .await;
        let stats = bus.redis_stats();
        assert_eq!(stats.received, 2 * N, "instance {k}");
        assert_eq!(stats.self_filtered, N, "instance {k} filtered its own");
        assert_eq!(stats.duplicates, 0);
        // Its reader has handled all 3N entries (2N + N above), and every
        // delivery they made was received: nothing more can arrive.
        assert!(
            matches!(subscribers[k].try_recv(), Err(tickbus::TryRecvError::Empty)),
            "instance {k}: nothing after the 3N"
        );
    }
}

/// Case 11, publish side: an event larger than the codec limit is refused
/// before anyone sees it and handed back; nothing reaches Redis or a local
/// subscriber, and the next event goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_event_is_rejected_before_it_is_sent() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = "llm:response";
    let responses = bus
        .durable_topic::<String>(topic, DurableOptions::default())
        .unwrap();
    let mut local = responses.subscribe();
    let huge = "x".repeat(tickbus::codec::CodecLimits::DEFAULT_MAX_ENCODED_SIZE + 1);
    match responses.publish_durable(huge.clone()) {
        Err(PublishError::Rejected(value, error)) => {
            assert_eq!(value, huge, "the event is handed back");
            assert!(
                error.to_string().contains("limit") || error.to_string().contains("large"),
                "{error}"
            );
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("an oversized event was accepted"),
    }
    responses
        .publish_durable("small".to_string())
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        local.recv().await.unwrap().value,
        "small",
        "nothing before it"
    );
    assert_eq!(
        server.cli(&["XLEN", &stream_key(topic)]).unwrap().trim(),
        "1"
    );
    assert_eq!(bus.redis_stats().outbox_depth, 0);
}

/// Case 14: topic names Redis would read as patterns or hash tags, or that
/// could escape a key, are refused with `InvalidTopic`; and a bus with its own
/// prefix, doing everything tickbus does (streams, groups, dead letters,
/// cache, state, replay), never touches a key outside that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_prefix_confines_every_key_and_bad_topic_names_are_refused() {
    let server = RedisServer::start().unwrap();
    // Another application's keys, some looking like tickbus's.
    let foreign = [
        ("tickbus:stream:{orders:new}", "theirs-1"),
        ("desk7", "theirs-2"),
        ("desk7:tbx:stream:{orders:new}", "theirs-3"),
        ("other:key", "theirs-4"),
    ];
    for (key, value) in foreign {
        server.cli(&["SET", key, value]).unwrap();
    }
    let mut config: RedisConfig = config(&server);
    config.key_prefix = "desk7:tb".into();
    let bus = Bus::builder().redis(config).build().unwrap();

    let long = format!("orders:{}", "a".repeat(10 * 1024));
    for name in [
        "orders:{eu}",
        "orders:}",
        "orders:*",
        "orders:?",
        "orders:[a]",
        "orders:]",
        "orders:a b",
        "orders:a\0b",
        long.as_str(),
    ] {
        let error = bus
            .durable_topic::<u64>(name, DurableOptions::default())
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTopic, "{name:?}: {error}");
        if name.contains(['*', '?']) {
            continue; // a group pattern
        }
        let error = bus.group::<u64>("g", name, group_config("m")).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTopic, "group on {name:?}");
    }

    // Everything tickbus writes.
    let orders = bus
        .durable_topic::<u64>("orders:new", DurableOptions::default())
        .unwrap();
    let mut router = bus
        .group::<u64>(
            "router",
            "orders:*",
            GroupConfig {
                max_deliveries: 1,
                ..group_config("r1")
            },
        )
        .unwrap();
    for i in 0..10 {
        orders.publish_durable(i).unwrap().await.unwrap();
    }
    for _ in 0..9 {
        next(&mut router).await.ack();
    }
    next(&mut router).await.term("a dead letter");
    let cache = bus
        .cache::<u64>("ticker", CacheConfig::with_ttl(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        cache
            .get_or_load("BTC", |_| async { Ok::<_, std::io::Error>(1) })
            .await
            .unwrap(),
        1
    );
    cache.set("ETH", 2).await.unwrap();
    cache.invalidate("BTC").await.unwrap();
    let state = bus.state(StatePolicy::seeds()).unwrap();
    state
        .publish_with_state(&orders, 10, "orders", "last", &10u64)
        .await
        .unwrap();
    let mut replay = bus
        .replay(&["orders:new"], ReplayOptions::default())
        .unwrap();
    let mut replayed = 0;
    while let Some(event) = replay.recv().await {
        event.unwrap();
        replayed += 1;
    }
    assert_eq!(replayed, 11);
    eventually("the dead letter is written", || {
        server
            .cli(&["--scan", "--pattern", "desk7:tb:dlq:*"])
            .unwrap()
            .trim()
            != ""
    })
    .await;

    let keys = server.cli(&["--scan"]).unwrap();
    let mut ours = 0;
    for key in keys.lines().map(str::trim).filter(|key| !key.is_empty()) {
        if let Some((_, value)) = foreign.iter().find(|(k, _)| *k == key) {
            assert_eq!(
                server.cli(&["GET", key]).unwrap().trim(),
                *value,
                "{key} untouched"
            );
        } else {
            assert!(
                key.starts_with("desk7:tb:"),
                "a key outside the prefix: {key}"
            );
            ours += 1;
        }
    }
    assert!(ours >= 5, "streams, cache, state and dead letters: {keys}");
}

/// Case 19: `WAITAOF` runs on the connection that wrote. When the connection is
/// lost after the `XADD` ran and before `WAITAOF` answered, the receipt must not
/// report success until an fsync is proved on the new connection (a write of
/// no consequence there and a `WAITAOF` after it: the AOF is one sequential
/// log). fred fails every command of a pipeline whose connection closed, so the
/// `XADD`'s outcome is unknown too: the writer finds the entry in the stream,
/// then proves the fsync. Needs Redis ≥ 7.2: CI runs it in its Valkey step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_waitaof_reply_is_never_reported_as_an_fsync() {
    let server = RedisServer::start_with(RedisServerOptions {
        aof: Some(AppendFsync::EverySec),
        ..Default::default()
    })
    .unwrap();
    let version = server.version().unwrap();
    if (version.0, version.1) < (7, 2) {
        eprintln!("skipped: WAITAOF needs Redis 7.2 or newer (this is {version:?})");
        return;
    }
    let proxy = FaultProxy::start(server.port()).unwrap();
    support::groups::init_tracing();
    let bus = Bus::builder()
        .redis(support::groups::config_for(&proxy.url()))
        .build()
        .unwrap();
    let topic = "orders:fsynced";
    let orders = bus
        .durable_topic::<u64>(
            topic,
            DurableOptions {
                durability: Durability::AofFsynced,
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let waitaof_calls = || {
        let info = server.cli(&["INFO", "commandstats"]).unwrap();
        info.lines()
            .find_map(|line| line.strip_prefix("cmdstat_waitaof:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse::<u64>().unwrap())
    };
    let before = waitaof_calls();
    let connections = proxy.connections();
    // `WAITAOF 1 0 ..` answers `[local, replicas]`: `*2 :1 :0`.
    proxy.lose_next_reply_containing(b"*2\r\n:1\r\n:0\r\n");
    let receipt = orders.publish_durable(7).unwrap();
    let started = Instant::now();
    let id = tokio::time::timeout(PATIENCE, receipt)
        .await
        .unwrap()
        .expect("written and fsynced, once proved");
    assert_eq!(proxy.replies_lost(), 1, "the WAITAOF reply was lost");
    assert!(proxy.connections() > connections, "on a new connection");
    assert!(
        waitaof_calls() >= before + 2,
        "a second WAITAOF proved the fsync before the receipt resolved"
    );
    let xlen = server.cli(&["XLEN", &stream_key(topic)]).unwrap();
    assert_eq!(xlen.trim(), "1", "written once");
    assert!(id > StreamId::ZERO);
    println!(
        "receipt after a lost WAITAOF reply: {:?} (WAITAOF calls {before} -> {})",
        started.elapsed(),
        waitaof_calls()
    );
}

/// Case 20: new groups on a stream whose oldest entries were trimmed: from the
/// beginning (everything retained, in order, and the trimmed prefix counted)
/// and from a time (exactly the entries from that millisecond on, in order),
/// while the topic is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_groups_from_the_beginning_and_from_a_time_on_a_trimmed_stream() {
    const N: u64 = 1_000;
    const TRIMMED: u64 = 300;
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = "md:trade";
    let key = stream_key(topic);
    let trades = bus
        .durable_topic::<u64>(
            topic,
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(trades.publish_durable(i).unwrap().await.unwrap());
    }
    server
        .cli(&["XTRIM", &key, "MAXLEN", &(N - TRIMMED).to_string()])
        .unwrap();
    // From a time: the millisecond of event 600's id.
    let from = ids[600].ms;
    let mut by_time = bus
        .group::<u64>(
            "late-joiner",
            topic,
            GroupConfig {
                start: StartAt::Time(std::time::UNIX_EPOCH + Duration::from_millis(from)),
                ..group_config("t1")
            },
        )
        .unwrap();
    let mut from_start = bus
        .group::<u64>("auditor", topic, group_config("a1"))
        .unwrap();
    // The topic stays live: 100 more while the groups start.
    for i in N..N + 100 {
        ids.push(trades.publish_durable(i).unwrap().await.unwrap());
    }
    let expected_by_time: Vec<u64> = (0..N + 100)
        .filter(|&i| ids[i as usize].ms >= from)
        .collect();
    assert!(expected_by_time.len() as u64 >= N + 100 - 600);
    let mut got = Vec::new();
    while got.len() < expected_by_time.len() {
        let delivery = next(&mut by_time).await;
        got.push(*delivery);
        delivery.ack();
    }
    assert_eq!(got, expected_by_time, "from the time on, in order, once");
    let mut got = Vec::new();
    while got.len() < (N + 100 - TRIMMED) as usize {
        let delivery = next(&mut from_start).await;
        got.push(*delivery);
        delivery.ack();
    }
    assert_eq!(
        got,
        (TRIMMED..N + 100).collect::<Vec<_>>(),
        "all that was retained"
    );
    eventually("the trimmed prefix is reported", || {
        from_start.stats().trimmed_unread == TRIMMED
    })
    .await;
    assert_eq!(
        by_time.stats().trimmed_unread,
        0,
        "nothing it asked for was trimmed"
    );
}

//! Consumer groups against real `redis-server` processes started by the test
//! harness (never the shared Redis at 6379).
//!
//! Check style as in `redis_live.rs`: events carry their sequence number, the
//! consuming side records what it handled, duplicates are counted, and a missing
//! event fails the test.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tickbus::group::{GroupConfig, OnMissingGroup, Redrive};
use tickbus::test_util::RedisServer;
use tickbus::{DurableOptions, ErrorKind};

mod support;
use support::groups::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_delivered_once_and_acked() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "order:exec", 0..1_000);
    let mut consumer = bus
        .group::<u64>("booking", "order:exec", group_config("c1"))
        .unwrap();
    for i in 0..1_000 {
        let delivery = next(&mut consumer).await;
        assert_eq!(*delivery, i, "order within one consumer");
        assert_eq!(delivery.info().deliveries, 1);
        assert_eq!(delivery.info().topic.as_str(), "order:exec");
        delivery.ack();
    }
    eventually("all acks confirmed", || consumer.stats().acked == 1_000).await;
    assert_eq!(
        xpending_count(&server, "tickbus:stream:{order:exec}", "booking"),
        0
    );
    let info = consumer.info().await.unwrap();
    assert_eq!(info.pending(), 0);
    assert_eq!(info.lag(), Some(0));
    assert_eq!(info.streams[0].length, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_with_a_higher_count() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "order:exec", 0..1);
    let mut consumer = bus
        .group::<u64>("booking", "order:exec", group_config("c1"))
        .unwrap();
    let first = next(&mut consumer).await;
    assert_eq!(first.info().deliveries, 1);
    let id = first.info().event_id;
    first.nack(Some(Duration::from_millis(20)));
    let second = next(&mut consumer).await;
    assert_eq!(second.info().event_id, id);
    assert_eq!(second.info().deliveries, 2);
    second.ack_confirmed().await.unwrap();
    assert_eq!(consumer.stats().nacked, 1);
    assert_eq!(consumer.stats().redelivered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_entry_is_dead_lettered_with_reason_decode() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:label", 0..1);
    // A string where a u64 is expected, and bytes that are not MessagePack.
    server
        .cli(&[
            "XADD",
            "tickbus:stream:{job:label}",
            "*",
            "id",
            "0190b2a4-0000-7000-8000-000000000001",
            "src",
            "0190b2a4-0000-7000-8000-0000000000ff",
            "ts",
            "1",
            "data",
            "\u{a3}abc",
        ])
        .unwrap();
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{job:label}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000002",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"2",
            b"data",
            b"\xc1\xc1",
        ])
        .unwrap();
    publish(&bus, "job:label", 1..2);
    let mut consumer = bus
        .group::<u64>("labelers", "job:label", group_config("c1"))
        .unwrap();
    assert_eq!(*next(&mut consumer).await, 0);
    let after = next(&mut consumer).await;
    assert_eq!(*after, 1, "the poison entries are skipped, the rest flows");
    after.ack();
    eventually("two dead letters", || consumer.stats().dead_lettered == 2).await;
    let letters = bus.dead_letters("job:label", 10).await.unwrap();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        assert_eq!(letter.reason, "decode");
        assert_eq!(letter.deliveries, 1);
        assert_eq!(letter.group, "labelers");
        assert!(letter.stream_id.is_some());
        assert!(!letter.error.is_empty());
    }
    assert_eq!(
        xpending_count(&server, "tickbus:stream:{job:label}", "labelers"),
        1,
        "only the unacked first event is pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_nacked_event_is_dead_lettered_after_max_deliveries_then_redriven() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:label", 0..1);
    let mut consumer = bus
        .group::<u64>(
            "labelers",
            "job:label",
            GroupConfig {
                max_deliveries: 3,
                ..group_config("c1")
            },
        )
        .unwrap();
    for attempt in 1..=3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.info().deliveries, attempt);
        delivery.nack(None);
    }
    eventually("the dead letter", || consumer.stats().dead_lettered == 1).await;
    let letters = bus.dead_letters("job:label", 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "max_deliveries");
    assert_eq!(letters[0].deliveries, 3);
    assert_eq!(letters[0].decode::<u64>().unwrap(), 0);
    assert_eq!(
        xpending_count(&server, "tickbus:stream:{job:label}", "labelers"),
        0
    );
    // Re-drive: back into the topic, same event id, a fresh delivery count.
    assert_eq!(bus.redrive("job:label", Redrive::All).await.unwrap(), 1);
    assert!(bus.dead_letters("job:label", 10).await.unwrap().is_empty());
    let again = next(&mut consumer).await;
    assert_eq!(*again, 0);
    assert_eq!(Some(again.info().event_id), letters[0].event_id);
    assert_eq!(again.info().deliveries, 1);
    again.ack();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_never_holds_more_than_max_in_flight() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let key = "tickbus:stream:{risk:check}";
    let mut consumer = bus
        .group::<u64>(
            "risk",
            "risk:check",
            GroupConfig {
                max_in_flight: 10,
                ..group_config("slow")
            },
        )
        .unwrap();
    let producer = {
        let bus = bus.clone();
        std::thread::spawn(move || publish(&bus, "risk:check", 0..2_000))
    };
    let mut max_pending = 0;
    let mut handled = 0;
    while handled < 300 {
        let delivery = next(&mut consumer).await;
        let pending = xpending_count(&server, key, "risk");
        max_pending = max_pending.max(pending);
        assert!(consumer.stats().in_flight <= 10);
        tokio::time::sleep(Duration::from_millis(1)).await; // slow work
        delivery.ack_confirmed().await.unwrap();
        handled += 1;
    }
    producer.join().unwrap();
    assert!(max_pending <= 10, "XPENDING saw {max_pending}");
    assert!(max_pending >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_split_the_work_and_a_dead_members_entries_are_claimed() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:cluster", 0..200);
    let mut doomed = bus
        .group::<u64>(
            "clusterers",
            "job:cluster",
            GroupConfig {
                max_in_flight: 20,
                ..group_config("doomed")
            },
        )
        .unwrap();
    // The doomed member takes deliveries and dies without acking them.
    let mut lost = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..20 {
        let delivery = next(&mut doomed).await;
        lost.insert(*delivery);
        held.push(delivery);
    }
    drop(doomed);
    drop(held);
    let mut alive = bus
        .group::<u64>("clusterers", "job:cluster", group_config("alive"))
        .unwrap();
    let mut handled: HashMap<u64, u32> = HashMap::new();
    while handled.len() < 200 {
        let delivery = next(&mut alive).await;
        if lost.contains(&*delivery) {
            assert!(delivery.info().deliveries >= 2, "a claimed delivery counts");
        }
        *handled.entry(*delivery).or_default() += 1;
        delivery.ack();
    }
    assert!(alive.stats().reclaimed >= 20);
    eventually("acks", || alive.stats().in_flight == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_drains_its_own_pending_entries_first() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:embed", 0..10);
    let long_wait = GroupConfig {
        ack_wait: Duration::from_secs(60),
        ..group_config("w1")
    };
    let mut first = bus
        .group::<u64>("embedders", "job:embed", long_wait.clone())
        .unwrap();
    let held: Vec<u64> = {
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(*next(&mut first).await);
        }
        held
    };
    drop(first); // the deliveries it held stay pending on `w1`
    publish(&bus, "job:embed", 10..11);
    let mut again = bus
        .group::<u64>("embedders", "job:embed", long_wait)
        .unwrap();
    for expected in &held {
        let delivery = next(&mut again).await;
        assert_eq!(*delivery, *expected, "own pending entries first, in order");
        assert_eq!(delivery.info().deliveries, 2);
        delivery.ack();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_recreated_or_stops_as_configured() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:cat", 0..1);
    let mut recreate = bus
        .group::<u64>("cat", "job:cat", group_config("r"))
        .unwrap();
    let mut stop = bus
        .group::<u64>(
            "cat-strict",
            "job:cat",
            GroupConfig {
                on_missing: OnMissingGroup::Stop,
                ..group_config("s")
            },
        )
        .unwrap();
    next(&mut recreate).await.ack();
    next(&mut stop).await.ack();
    server.cli(&["DEL", "tickbus:stream:{job:cat}"]).unwrap();
    match tokio::time::timeout(PATIENCE, stop.recv()).await.unwrap() {
        Some(Err(error)) => assert_eq!(error.kind(), ErrorKind::GroupMissing),
        other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
    }
    assert!(stop.recv().await.is_none(), "then the stream ends");
    eventually("recreated", || recreate.stats().recreated >= 1).await;
    publish(&bus, "job:cat", 1..2);
    let delivery = next(&mut recreate).await;
    assert_eq!(*delivery, 1);
    delivery.ack();
    // No busy loop: a handful of errors, not thousands.
    assert!(recreate.stats().errors < 20, "{:?}", recreate.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_never_trims_what_a_group_has_not_acked() {
    let server = RedisServer::start().unwrap();
    // Small stream nodes, so that `MINID ~` trims close to the bound.
    server
        .cli(&["CONFIG", "SET", "stream-node-max-entries", "10"])
        .unwrap();
    let bus = live_bus(&server);
    let key = "tickbus:stream:{risk:limit}";
    let mut consumer = bus
        .group::<u64>("limits", "risk:limit", group_config("c1"))
        .unwrap();
    let topic = bus
        .durable_topic::<u64>(
            "risk:limit",
            DurableOptions {
                receive_remote: false,
                retention: tickbus::Retention {
                    max_len: None,
                    max_age: Some(Duration::from_millis(1)),
                },
                ..Default::default()
            },
        )
        .unwrap();
    let mut last = None;
    for i in 0..1_000 {
        last = Some(topic.publish_durable(i).unwrap());
    }
    last.unwrap().wait_timeout(PATIENCE).unwrap();
    let xlen = || {
        server
            .cli(&["XLEN", key])
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    // Ack the first 500; every event is older than max_age by now.
    for i in 0..500 {
        let delivery = next(&mut consumer).await;
        assert_eq!(*delivery, i);
        delivery.ack_confirmed().await.unwrap();
    }
    // The writer trims (at most once a second) up to the group's position only.
    eventually("a trim up to the group's position", || {
        let len = xlen();
        assert!(len >= 500, "trimmed unacked entries: {len} left");
        len <= 510
    })
    .await;
    for i in 500..1_000 {
        let delivery = next(&mut consumer).await;
        assert_eq!(*delivery, i, "nothing unread was lost");
        delivery.ack();
    }
    assert_eq!(consumer.stats().trimmed_unread, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_entry_is_dead_lettered_without_being_decoded() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    // 2 MiB of a MessagePack bin header claiming that much: over the 1 MiB limit.
    let mut huge = vec![0xc6, 0x00, 0x20, 0x00, 0x00];
    huge.resize(5 + (2 << 20), 0);
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{job:label}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000003",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"3",
            b"data",
            &huge,
        ])
        .unwrap();
    publish(&bus, "job:label", 7..8);
    let mut consumer = bus
        .group::<u64>("labelers", "job:label", group_config("c1"))
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(*delivery, 7);
    delivery.ack();
    eventually("the dead letter", || consumer.stats().dead_lettered == 1).await;
    let letters = bus.dead_letters("job:label", 10).await.unwrap();
    assert_eq!(letters[0].reason, "decode");
    assert!(
        letters[0].error.contains("too large") || letters[0].error.contains("limit"),
        "{}",
        letters[0].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_given_acks_leaves_the_rest_pending_and_no_blocked_client() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let key = "tickbus:stream:{order:exec}";
    publish(&bus, "order:exec", 0..10);
    let mut consumer = bus
        .group::<u64>(
            "booking",
            "order:exec",
            GroupConfig {
                block: Duration::from_secs(2),
                ..group_config("c1")
            },
        )
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(next(&mut consumer).await);
    }
    // Acked just before shutdown: these must reach Redis.
    for delivery in held.drain(..6) {
        delivery.ack();
    }
    // Shut down while the reader is blocked in XREADGROUP (nothing more to
    // read): wait until the server shows such a client.
    eventually("the reader blocked in XREADGROUP", || {
        server
            .cli(&["CLIENT", "LIST"])
            .unwrap()
            .lines()
            .any(|client| {
                client.contains("cmd=xreadgroup")
                    && client
                        .split(' ')
                        .any(|field| field.starts_with("flags=") && field.contains('b'))
            })
    })
    .await;
    let started = Instant::now();
    consumer.shutdown();
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(xpending_count(&server, key, "booking"), 4);
    let clients = server.cli(&["CLIENT", "LIST"]).unwrap();
    assert!(
        !clients.to_lowercase().contains("cmd=xreadgroup"),
        "a blocked client was left behind: {clients}"
    );
    // The held deliveries are claimed by the next member after the ack wait.
    drop(held);
    let mut next_member = bus
        .group::<u64>("booking", "order:exec", group_config("c2"))
        .unwrap();
    let mut seen = HashSet::new();
    while seen.len() < 4 {
        let delivery = next(&mut next_member).await;
        assert!(*delivery >= 6, "an acked event came back: {}", *delivery);
        seen.insert(*delivery);
        delivery.ack();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_at_a_small_in_flight_limit_still_claims_a_dead_members_entries() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:ticker", 0..2);
    let small = |name: &str| GroupConfig {
        max_in_flight: 2,
        ..group_config(name)
    };
    let mut doomed = bus
        .group::<u64>("tickers", "job:ticker", small("doomed"))
        .unwrap();
    let held = [next(&mut doomed).await, next(&mut doomed).await];
    drop(doomed);
    drop(held);
    // Nothing new to read: the survivor's reader sits in XREADGROUP BLOCK with
    // both places; the claim must still happen.
    let mut survivor = bus
        .group::<u64>("tickers", "job:ticker", small("survivor"))
        .unwrap();
    let mut got = HashSet::new();
    while got.len() < 2 {
        let delivery = next(&mut survivor).await;
        assert_eq!(delivery.info().deliveries, 2);
        got.insert(*delivery);
        delivery.ack();
    }
    assert_eq!(survivor.stats().reclaimed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_never_redelivers_to_itself_what_is_still_queued_for_its_application() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    publish(&bus, "job:slow", 0..40);
    // Everything is read ahead at once; handling takes 4 ack waits in all, each
    // delivery well under one.
    let mut consumer = bus
        .group::<u64>(
            "slow",
            "job:slow",
            GroupConfig {
                ack_wait: Duration::from_millis(100),
                ..group_config("c1")
            },
        )
        .unwrap();
    let mut seen = HashSet::new();
    for i in 0..40 {
        let delivery = next(&mut consumer).await;
        assert_eq!(*delivery, i, "in order, and never the same event twice");
        assert!(seen.insert(delivery.info().event_id));
        tokio::time::sleep(Duration::from_millis(10)).await; // slow work, no in_progress
        delivery.ack_confirmed().await.unwrap();
    }
    assert_eq!(consumer.stats().reclaimed, 0);
    assert_eq!(
        xpending_count(&server, "tickbus:stream:{job:slow}", "slow"),
        0
    );
}

/// `{"trace": "abc", "tenant": "eu"}`: field `h` as another writer (msgpack-python's
/// `packb` of the dictionary) would write it.
const HEADERS_H: &[u8] = b"\x82\xa5trace\xa3abc\xa6tenant\xa2eu";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_reach_the_delivery_the_dead_letter_and_survive_a_redrive() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{job:label}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000009",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"9",
            b"data",
            &[0x2a],
            b"h",
            HEADERS_H,
        ])
        .unwrap();
    let expected = vec![
        ("trace".to_string(), "abc".to_string()),
        ("tenant".to_string(), "eu".to_string()),
    ];
    let mut consumer = bus
        .group::<u64>("labelers", "job:label", group_config("c1"))
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(*delivery, 42);
    assert_eq!(delivery.info().headers, expected);
    assert_eq!(delivery.info().timestamp_ns, 9);
    delivery.term("checking headers");
    eventually("the dead letter", || consumer.stats().dead_lettered == 1).await;
    let letters = bus.dead_letters("job:label", 10).await.unwrap();
    assert_eq!(letters[0].headers, expected);
    assert_eq!(letters[0].timestamp_ns, Some(9));
    assert_eq!(
        letters[0].source.map(|s| s.to_string()).as_deref(),
        Some("0190b2a4-0000-7000-8000-0000000000ff")
    );
    assert_eq!(letters[0].entry_error, None);
    assert_eq!(bus.redrive("job:label", Redrive::All).await.unwrap(), 1);
    let again = next(&mut consumer).await;
    assert_eq!(again.info().headers, expected, "a re-drive keeps `h`");
    again.ack();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_bad_headers_is_dead_lettered_with_the_parsers_words() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    server
        .command(&[
            b"XADD",
            b"tickbus:stream:{job:label}",
            b"*",
            b"id",
            b"0190b2a4-0000-7000-8000-000000000009",
            b"src",
            b"0190b2a4-0000-7000-8000-0000000000ff",
            b"ts",
            b"9",
            b"data",
            &[0x2a],
            b"h",
            b"\x81\xa1k\xc0", // {"k": nil}
        ])
        .unwrap();
    publish(&bus, "job:label", 1..2);
    let mut consumer = bus
        .group::<u64>("labelers", "job:label", group_config("c1"))
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(*delivery, 1, "the bad entry never reaches the application");
    delivery.ack();
    eventually("the dead letter", || consumer.stats().dead_lettered == 1).await;
    let letters = bus.dead_letters("job:label", 10).await.unwrap();
    assert_eq!(letters[0].reason, "decode");
    assert!(
        letters[0]
            .error
            .contains("field `h` is not a MessagePack map of strings"),
        "{}",
        letters[0].error
    );
    let entry_error = letters[0].entry_error.as_deref().unwrap();
    assert!(
        entry_error.contains("the value of header 0 is not a string"),
        "{entry_error}"
    );
    assert_eq!(letters[0].event_id, None);
    assert_eq!(
        letters[0].data.as_deref(),
        Some(&[0x2a][..]),
        "the payload as it was"
    );
}

//! Live mode against real `redis-server` processes started by the test harness
//! (`tickbus::test_util::RedisServer`: a free port, a temporary directory, killed
//! and removed on drop). Never the shared Redis at 6379.
//!
//! The check style is JetStream's: every event carries its sequence number, the
//! receiving side records what it saw, duplicates are counted, and any missing or
//! out-of-order event fails the test.

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, StreamsInterface, Value};
use tickbus::test_util::{AppendFsync, FaultProxy, RedisServer, RedisServerOptions};
use tickbus::{
    Bus, ConnectionState, Durability, DurableOptions, ErrorKind, Event, Headers, InstanceId,
    LiveBus, OutboxFull, PublishError, RecvError, RedisConfig, Retention, StartAt, Subscriber,
};

/// Upper bound on any single wait in these tests (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(30);

fn config(server: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::from_url(&server.url()).unwrap();
    // Short back-offs and blocks keep outage tests quick.
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    config
}

fn live_bus(server: &RedisServer) -> LiveBus {
    Bus::builder().redis(config(server)).build().unwrap()
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

/// Waits (up to `PATIENCE`) until the bus's health passes `check`.
async fn wait_for_health(bus: &Bus, check: impl Fn(&ConnectionState) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check(&bus.health()) {
        assert!(Instant::now() < deadline, "{:?}", bus.health());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Entries of `key`, oldest first: (stream id, field `id`, field `src`).
async fn stream_entries(url: &str, key: &str) -> Vec<(String, String, String)> {
    let client = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(url).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let entries: Value = client.xrange(key, "-", "+", None).await.unwrap();
    client.quit().await.unwrap();
    let text =
        |value: &Value| String::from_utf8_lossy(value.as_bytes().unwrap_or_default()).into_owned();
    entries
        .into_array()
        .into_iter()
        .map(|entry| {
            let parts = entry.into_array();
            let fields = parts[1].clone().into_array();
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| text(&pair[0]) == name)
                    .map(|pair| text(&pair[1]))
                    .unwrap_or_default()
            };
            (text(&parts[0]), field("id"), field("src"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_receive_each_others_events_once_in_order() {
    let server = RedisServer::start().unwrap();
    let a = live_bus(&server);
    let b = live_bus(&server);
    let ticks_a = a
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let ticks_b = b
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let mut sub_a = ticks_a.subscribe();
    let mut sub_b = ticks_b.subscribe();
    const N: u64 = 2_000;
    let publisher_a = std::thread::spawn(move || {
        let mut last = None;
        for i in 0..N {
            last = Some(ticks_a.publish_durable(i).unwrap());
        }
        last.unwrap().wait_timeout(PATIENCE).unwrap();
    });
    let publisher_b = std::thread::spawn(move || {
        for i in N..2 * N {
            ticks_b.publish(i).unwrap();
        }
        ticks_b
    });
    // Each side sees its own N events locally and the other's N through Redis.
    for (sub, own, theirs, own_range) in [
        (&mut sub_a, a.instance_id(), b.instance_id(), 0..N),
        (&mut sub_b, b.instance_id(), a.instance_id(), N..2 * N),
    ] {
        let mut local = Vec::new();
        let mut remote = Vec::new();
        while local.len() + remote.len() < 2 * N as usize {
            let event = next(sub).await.unwrap();
            if event.meta.is_remote() {
                assert_eq!(event.meta.source(), theirs);
                assert!(event.meta.stream_id().is_some());
                remote.push(event.value);
            } else {
                assert_eq!(event.meta.source(), own);
                local.push(event.value);
            }
        }
        assert_eq!(
            local,
            own_range.clone().collect::<Vec<_>>(),
            "own events, in order, once"
        );
        let other: Vec<u64> = if own_range.start == 0 {
            (N..2 * N).collect()
        } else {
            (0..N).collect()
        };
        assert_eq!(remote, other, "the other instance's events, in order, once");
    }
    publisher_a.join().unwrap();
    let ticks_b = publisher_b.join().unwrap();
    // Nothing more arrives: in particular no own event comes back. A fence from
    // B, written after all of A's entries (A's last receipt resolved): A's reader
    // handles the stream in order, so anything it would deliver for an earlier
    // entry reaches `sub_a` before the fence.
    const FENCE: u64 = u64::MAX;
    ticks_b.publish(FENCE).unwrap();
    let fence = next(&mut sub_a).await.unwrap();
    assert_eq!(
        (fence.value, fence.meta.source()),
        (FENCE, b.instance_id()),
        "nothing before the fence"
    );
    assert!(matches!(
        sub_a.try_recv(),
        Err(tickbus::TryRecvError::Empty)
    ));
    let stats = a.redis_stats();
    assert_eq!(stats.received, N + 1, "B's events and the fence");
    assert_eq!(
        stats.self_filtered, N,
        "A read its own entries back and filtered them"
    );
    assert_eq!(stats.duplicates, 0);
    assert_eq!(stats.outbox_depth, 0);
    assert_eq!(a.health(), ConnectionState::Connected);
    a.shutdown();
    assert_eq!(a.health(), ConnectionState::Closed);
}

#[test]
fn stream_layout_is_documented_fields() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let topic = bus
        .durable_topic::<String>("position:updated", DurableOptions::default())
        .unwrap();
    let receipt = topic.publish_durable("ETH-PERP".to_string()).unwrap();
    let stream_id = receipt.wait_timeout(PATIENCE).unwrap();
    let key = "tickbus:stream:{position:updated}";
    assert_eq!(server.cli(&["TYPE", key]).unwrap(), "stream");
    assert_eq!(server.cli(&["XLEN", key]).unwrap(), "1");
    let fields = server.cli(&["XRANGE", key, "-", "+"]).unwrap();
    let lines: Vec<&str> = fields.lines().collect();
    assert_eq!(lines[0], stream_id.to_string());
    assert_eq!(lines[1], "id");
    assert_eq!(lines[3], "src");
    assert_eq!(lines[4], bus.instance_id().to_string());
    assert_eq!(lines[5], "ts");
    assert!(lines[6].parse::<u64>().unwrap() > 1_600_000_000_000_000_000);
    assert_eq!(lines[7], "data");
    // MessagePack str8/fixstr "ETH-PERP".
    assert!(lines[8].ends_with("ETH-PERP"));
    assert_eq!(lines.len(), 9, "no `h` field without headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_loses_no_acknowledged_event() {
    let mut server = RedisServer::start_with(RedisServerOptions {
        aof: Some(AppendFsync::Always),
        ..Default::default()
    })
    .unwrap();
    let bus = live_bus(&server);
    let orders = bus
        .durable_topic::<u64>("orders:new", DurableOptions::default())
        .unwrap();
    let mut local = orders.subscribe();
    const N: u64 = 3_000;
    let mut receipts = Vec::new();
    for i in 0..N {
        if i == N / 3 {
            server.kill();
        }
        receipts.push(orders.publish_durable(i).unwrap());
        // Local delivery never stops, Redis or not.
        assert_eq!(next(&mut local).await.unwrap().value, i);
        if i == N / 2 {
            wait_for_health(&bus, |health| {
                matches!(health, ConnectionState::Degraded { .. })
            })
            .await;
            server.restart().unwrap();
        }
    }
    // Every receipt resolves once Redis is back; resolved ids are increasing.
    let mut last = None;
    for receipt in receipts {
        let id = tokio::time::timeout(PATIENCE, receipt)
            .await
            .unwrap()
            .unwrap();
        assert!(Some(id) > last);
        last = Some(id);
    }
    let entries = stream_entries(&server.url(), "tickbus:stream:{orders:new}").await;
    let ids: Vec<&str> = entries.iter().map(|(_, id, _)| id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "each event written once");
    assert_eq!(
        entries.len() as u64,
        N,
        "every event is in the stream after the restart"
    );
    let stats = bus.redis_stats();
    assert!(stats.redis_errors > 0);
    assert_eq!(stats.outbox_depth, 0);
    wait_for_health(&bus, |health| *health == ConnectionState::Connected).await;
}

#[test]
fn start_fails_fast_when_redis_is_down() {
    let mut server = RedisServer::start().unwrap();
    let url = server.url();
    server.kill();
    let started = Instant::now();
    let error = Bus::builder()
        .redis(RedisConfig::from_url(&url).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        error.to_string().contains(&server.port().to_string()),
        "{error}"
    );
    assert!(started.elapsed() < PATIENCE);
}

#[test]
fn start_fails_with_a_wrong_password_and_never_prints_it() {
    let server = RedisServer::start_with(RedisServerOptions {
        password: Some("right-horse-battery".into()),
        ..Default::default()
    })
    .unwrap();
    let url = format!("redis://:wrong-staple@127.0.0.1:{}", server.port());
    let config = RedisConfig::from_url(&url).unwrap();
    assert!(!format!("{config:?}").contains("wrong-staple"));
    let error = Bus::builder().redis(config).build().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("wrong-staple"), "{shown}");
    // No password at all on a server that needs one: also an auth error.
    let url = format!("redis://127.0.0.1:{}", server.port());
    let error = Bus::builder()
        .redis(RedisConfig::from_url(&url).unwrap())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Auth, "{error}");
    // The right one works.
    let bus = Bus::builder()
        .redis(RedisConfig::from_url(&server.url()).unwrap())
        .build()
        .unwrap();
    assert_eq!(bus.health(), ConnectionState::Connected);
    assert!(!format!("{bus:?}").contains("right-horse-battery"));
}

#[test]
fn a_stream_key_of_the_wrong_type_is_a_clear_error() {
    let server = RedisServer::start().unwrap();
    server
        .cli(&["SET", "tickbus:stream:{md:tick}", "not a stream"])
        .unwrap();
    let bus = live_bus(&server);
    let error = bus
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Redis);
    assert!(error.to_string().contains("holds a string"), "{error}");
    // The key is untouched.
    assert_eq!(
        server.cli(&["GET", "tickbus:stream:{md:tick}"]).unwrap(),
        "not a stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_entries_are_skipped_and_counted_and_the_reader_goes_on() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let ticks = bus
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let mut sub = ticks.subscribe();
    let key: &[u8] = b"tickbus:stream:{md:tick}";
    let src = InstanceId::random().to_string();
    let id = |n: u128| uuid::Uuid::from_u128(n).to_string();
    let xadd = |fields: &[&[u8]]| {
        let mut args: Vec<&[u8]> = vec![b"XADD", key, b"*"];
        args.extend_from_slice(fields);
        server.command(&args).unwrap();
    };
    // Not tickbus entries: skipped. (redis-cli for text; binary values go over
    // RESP directly.)
    server
        .cli(&["XADD", "tickbus:stream:{md:tick}", "*", "hello", "world"])
        .unwrap();
    xadd(&[b"id", id(1).as_bytes(), b"src", src.as_bytes(), b"ts", b"1"]); // no data
    xadd(&[
        b"id",
        id(2).as_bytes(),
        b"src",
        src.as_bytes(),
        b"ts",
        b"x",
        b"data",
        &[1],
    ]); // bad ts
    xadd(&[
        b"id",
        id(3).as_bytes(),
        b"src",
        src.as_bytes(),
        b"ts",
        b"1",
        b"data",
        &[0xc1, 0xff, 0x00],
    ]); // not MessagePack
    xadd(&[
        b"id",
        b"not-a-uuid",
        b"src",
        src.as_bytes(),
        b"ts",
        b"1",
        b"data",
        &[1],
    ]);
    // MessagePack of the wrong type for u64: delivered as Undecodable.
    xadd(&[
        b"id",
        id(4).as_bytes(),
        b"src",
        src.as_bytes(),
        b"ts",
        b"1",
        b"data",
        &[0xa3, b'a', b'b', b'c'],
    ]);
    // A good one, twice (the second is an XADD re-sent after a lost reply).
    for _ in 0..2 {
        xadd(&[
            b"id",
            id(5).as_bytes(),
            b"src",
            src.as_bytes(),
            b"ts",
            b"7",
            b"data",
            &[42],
        ]);
    }
    xadd(&[
        b"id",
        id(6).as_bytes(),
        b"src",
        src.as_bytes(),
        b"ts",
        b"8",
        b"data",
        &[43],
    ]);

    match next(&mut sub).await {
        Err(RecvError::Undecodable(bad)) => {
            assert_eq!(bad.source().to_string(), src);
            assert_eq!(bad.error().kind(), ErrorKind::WrongShape);
        }
        other => panic!("expected Undecodable, got {other:?}"),
    }
    let good = next(&mut sub).await.unwrap();
    assert_eq!(good.value, 42);
    assert_eq!(good.meta.id().to_string(), id(5));
    assert_eq!(good.meta.timestamp_ns(), 7);
    assert_eq!(
        next(&mut sub).await.unwrap().value,
        43,
        "the duplicate was dropped"
    );
    let stats = bus.redis_stats();
    assert_eq!(stats.skipped, 5);
    assert_eq!(stats.undecodable, 1);
    assert_eq!(stats.duplicates, 1);
    assert_eq!(stats.received, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_with_headers_are_delivered_and_bad_headers_skipped() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let ticks = bus
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let mut sub = ticks.subscribe();
    let src = InstanceId::random().to_string();
    let id = |n: u128| uuid::Uuid::from_u128(n).to_string();
    // The good one last: once it arrives, the reader has handled the others.
    for (n, data, h) in [
        (1, 41_u8, &b"\x81\xa1k\xc0"[..]), // {"k": nil}: not a map of strings
        (2, 42, b"\xdf\xff\xff\xff\xff"),  // claims 4 Gi headers in 5 bytes
        (3, 43, b"\x81\xa1k\xa1v"),        // {"k": "v"}
    ] {
        let id = id(n);
        server
            .command(&[
                b"XADD",
                b"tickbus:stream:{md:tick}",
                b"*",
                b"id",
                id.as_bytes(),
                b"src",
                src.as_bytes(),
                b"ts",
                b"1",
                b"data",
                &[data],
                b"h",
                h,
            ])
            .unwrap();
    }
    let good = next(&mut sub).await.unwrap();
    assert_eq!(good.value, 43);
    assert_eq!(good.meta.id().to_string(), id(3));
    // The headers reach the event's metadata.
    assert_eq!(good.meta.headers().get("k"), Some("v"));
    assert_eq!(good.meta.headers().len(), 1);
    let stats = bus.redis_stats();
    assert_eq!((stats.received, stats.skipped), (1, 2));
}

/// Headers given to `publish_with_headers` reach local subscribers at once,
/// field `h` of the entry, and the subscribers of another instance, in order
/// and with repeats kept; an event without headers carries none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_travel_with_the_event_to_every_reader() {
    let server = RedisServer::start().unwrap();
    let publisher = live_bus(&server);
    let other = live_bus(&server);
    let remote_side = other
        .durable_topic::<u64>("order:new", DurableOptions::default())
        .unwrap();
    let mut remote = remote_side.subscribe();
    let orders = publisher
        .durable_topic::<u64>("order:new", DurableOptions::default())
        .unwrap();
    let mut local = orders.subscribe();
    let headers: Headers = [("trace", "4bf92f35"), ("tag", "a"), ("tag", "b")]
        .into_iter()
        .collect();
    orders.publish_with_headers(1, headers.clone()).unwrap();
    orders.publish_durable(2).unwrap().wait().unwrap();

    let first = local.try_recv().unwrap();
    assert_eq!(first.meta.headers(), &headers);
    assert!(local.try_recv().unwrap().meta.headers().is_empty());

    let first = next(&mut remote).await.unwrap();
    assert_eq!((first.value, first.meta.is_remote()), (1, true));
    assert_eq!(first.meta.headers(), &headers);
    assert_eq!(
        first.meta.headers().iter().collect::<Vec<_>>(),
        [("trace", "4bf92f35"), ("tag", "a"), ("tag", "b")]
    );
    let second = next(&mut remote).await.unwrap();
    assert_eq!(second.value, 2);
    assert!(second.meta.headers().is_empty());

    // On the wire: `h` on the first entry only.
    let raw = server
        .command(&[b"XRANGE", b"tickbus:stream:{order:new}", b"-", b"+"])
        .unwrap();
    let h_fields = raw.windows(7).filter(|w| w == b"$1\r\nh\r\n").count();
    assert_eq!(h_fields, 1, "{}", String::from_utf8_lossy(&raw));
}

/// Headers over the entry limits are refused before any subscriber sees the
/// event, with the value handed back.
#[test]
fn headers_over_the_limits_are_refused_before_delivery() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let orders = bus
        .durable_topic::<u64>("order:new", DurableOptions::default())
        .unwrap();
    let mut local = orders.subscribe();
    let many: Headers = (0..65).map(|n| (format!("k{n}"), "v")).collect();
    match orders.publish_with_headers(7, many) {
        Err(PublishError::Rejected(value, error)) => {
            assert_eq!(value, 7);
            assert!(error.to_string().contains("65 headers"), "{error}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(local.try_recv(), Err(tickbus::TryRecvError::Empty));
    assert_eq!(bus.redis_stats().outbox_depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_hands_the_event_back_and_delivers_nothing() {
    let mut server = RedisServer::start().unwrap();
    let mut config = config(&server);
    config.outbox_capacity = 8;
    config.outbox_full = OutboxFull::Error;
    let bus = Bus::builder().redis(config).build().unwrap();
    let topic = bus
        .durable_topic::<u64>("risk:check", DurableOptions::default())
        .unwrap();
    let mut sub = topic.subscribe();
    server.kill();
    let mut accepted = 0;
    let refused = loop {
        match topic.publish(accepted) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted <= 8, "the outbox holds 8");
    };
    assert_eq!(accepted, 8);
    assert_eq!(
        refused,
        PublishError::Backpressure(8),
        "the event is handed back"
    );
    for i in 0..8 {
        assert_eq!(next(&mut sub).await.unwrap().value, i);
    }
    assert!(
        matches!(sub.try_recv(), Err(tickbus::TryRecvError::Empty)),
        "the refused event was not delivered"
    );
    let deadline = Instant::now() + PATIENCE;
    while !matches!(
        bus.health(),
        ConnectionState::Degraded {
            outbox_depth: 8,
            ..
        }
    ) {
        assert!(Instant::now() < deadline, "{:?}", bus.health());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.restart().unwrap();
    let receipt = topic.publish_durable(100).unwrap_or_else(|_| {
        // The outbox may still be full for a moment after the restart.
        loop {
            if let Ok(receipt) = topic.publish_durable(100) {
                break receipt;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    tokio::time::timeout(PATIENCE, receipt)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next(&mut sub).await.unwrap().value,
        100,
        "the next event after the 8 is the one published after the restart"
    );
    assert_eq!(
        server
            .cli(&["XLEN", "tickbus:stream:{risk:check}"])
            .unwrap(),
        "9"
    );
    wait_for_health(&bus, |health| *health == ConnectionState::Connected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_after_the_last_entry_seen() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tickbus=debug")
        .with_test_writer()
        .try_init();
    let server = RedisServer::start().unwrap();
    let publisher = live_bus(&server);
    let ticks = publisher
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let me = InstanceId::from_uuid(uuid::Uuid::from_u128(0x5eed));
    let resuming = || {
        let mut config = config(&server);
        config.remote_start = StartAt::Resume;
        Bus::builder()
            .instance_id(me)
            .redis(config)
            .build()
            .unwrap()
    };
    let reader = resuming();
    let mut sub = reader
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap()
        .subscribe();
    for i in 0..100 {
        ticks.publish(i).unwrap();
    }
    for i in 0..100 {
        assert_eq!(next(&mut sub).await.unwrap().value, i);
    }
    reader.shutdown();
    drop(reader);
    // Published while the reader is away.
    let mut last = None;
    for i in 100..200 {
        last = Some(ticks.publish_durable(i).unwrap());
    }
    last.unwrap().await.unwrap();
    let reader = resuming();
    let mut sub = reader
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap()
        .subscribe();
    ticks.publish(200).unwrap();
    for i in 100..=200 {
        assert_eq!(
            next(&mut sub).await.unwrap().value,
            i,
            "no gap, no duplicate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_started_after_an_id_first_delivers_what_came_after_it() {
    let server = RedisServer::start().unwrap();
    let publisher = live_bus(&server);
    let ticks = publisher
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(ticks.publish_durable(i).unwrap().await.unwrap());
    }
    // A late instance starting after the 4th entry: the 5th onwards, then live.
    let mut config = config(&server);
    config.remote_start = StartAt::After(ids[3]);
    let late = Bus::builder().redis(config).build().unwrap();
    let mut sub = late
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap()
        .subscribe();
    ticks.publish(10).unwrap();
    for i in 4..=10 {
        assert_eq!(
            next(&mut sub).await.unwrap().value,
            i,
            "in order, none missed"
        );
    }
}

#[test]
fn aof_fsync_durability_needs_waitaof() {
    let server = RedisServer::start_with(RedisServerOptions {
        aof: Some(AppendFsync::EverySec),
        ..Default::default()
    })
    .unwrap();
    let bus = live_bus(&server);
    let options = DurableOptions {
        durability: Durability::AofFsynced,
        ..Default::default()
    };
    let version = bus.redis_version();
    match bus.durable_topic::<u64>("execution:fill", options) {
        Ok(fills) => {
            assert!(version >= (7, 2, 0));
            let id = fills
                .publish_durable(1)
                .unwrap()
                .wait_timeout(PATIENCE)
                .unwrap();
            assert!(id.ms > 0);
        }
        Err(error) => {
            assert!(version < (7, 2, 0), "{error}");
            assert_eq!(error.kind(), ErrorKind::Unsupported);
            assert!(error.to_string().contains("WAITAOF"), "{error}");
        }
    }
}

/// The other half of `two_processes_exchange_events`: the parent test
/// re-executes this binary to run it (`--ignored --exact`), with
/// `TICKBUS_TEST_CHILD_URL` set. Ignored in a normal run: it is a process of
/// that test, not a test of its own.
#[test]
#[ignore = "the publisher process of two_processes_exchange_events, which runs it"]
fn child_process_publisher() {
    let url =
        std::env::var("TICKBUS_TEST_CHILD_URL").expect("run by two_processes_exchange_events");
    let bus = Bus::builder()
        .redis(RedisConfig::from_url(&url).unwrap())
        .build()
        .unwrap();
    let options = DurableOptions {
        receive_remote: false,
        ..Default::default()
    };
    let ticks = bus.durable_topic::<u64>("md:tick", options).unwrap();
    let mut last = None;
    for i in 0..1_000 {
        last = Some(ticks.publish_durable(i).unwrap());
    }
    last.unwrap().wait_timeout(PATIENCE).unwrap();
    println!("child instance {}", bus.instance_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_exchange_events() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let mut sub = bus
        .durable_topic::<u64>("md:tick", DurableOptions::default())
        .unwrap()
        .subscribe();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_publisher",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TICKBUS_TEST_CHILD_URL", server.url())
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let stdout = String::from_utf8_lossy(&child.stdout);
    let child_id = stdout
        .lines()
        .find_map(|line| line.split("child instance ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the child did not run: {stdout}"));
    for i in 0..1_000 {
        let event = next(&mut sub).await.unwrap();
        assert_eq!(event.value, i);
        assert_eq!(event.meta.source().to_string(), child_id);
    }
    assert_eq!(bus.redis_stats().received, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_replies_are_settled_without_writing_twice() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.port()).unwrap();
    let mut config = RedisConfig::from_url(&proxy.url()).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(100);
    config.read_block = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    let bus = Bus::builder().redis(config).build().unwrap();
    let options = DurableOptions {
        receive_remote: false,
        ..Default::default()
    };
    let orders = bus.durable_topic::<u64>("orders:new", options).unwrap();
    let key = "tickbus:stream:{orders:new}";
    orders.publish_durable(0).unwrap().await.unwrap();
    // From now on Redis runs the XADDs but the writer never hears back.
    proxy.lose_replies(true);
    let receipts: Vec<_> = (1..=200)
        .map(|i| orders.publish_durable(i).unwrap())
        .collect();
    // The first pipeline runs, its reply is lost, the writer's connection drops:
    // the outcome of those XADDs is unknown to it. Until it has found out, it
    // sends no more XADDs.
    let deadline = Instant::now() + PATIENCE;
    while proxy.replies_lost() == 0 || bus.redis_stats().redis_errors == 0 {
        assert!(Instant::now() < deadline, "{:?}", bus.redis_stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        server.cli(&["XLEN", key]).unwrap().parse::<u64>().unwrap() > 1,
        "the XADDs ran"
    );
    assert!(
        !receipts[0].is_resolved(),
        "written, but no reply: no receipt"
    );
    // Replies flow again: the writer reconnects, finds its entries, and resolves
    // the receipts with their stream ids without writing anything twice.
    proxy.lose_replies(false);
    let mut ids = Vec::new();
    for receipt in receipts {
        ids.push(
            tokio::time::timeout(PATIENCE, receipt)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    assert_eq!(
        server.cli(&["XLEN", key]).unwrap(),
        "201",
        "nothing written twice"
    );
    let stats = bus.redis_stats();
    // The entries that ran were found, not re-sent; the rest of that pipeline
    // (cut off with the connection) was sent again.
    assert!(stats.recovered >= 1, "{stats:?}");
    assert!(stats.recovered + stats.resent <= 200, "{stats:?}");
    let entries = stream_entries(&server.url(), key).await;
    assert_eq!(
        ids.last().map(ToString::to_string),
        entries.last().map(|e| e.0.clone())
    );
}

/// A key that turns into another type while the bus runs: every event written to
/// it is refused with a clear error on its receipt (never retried forever), and
/// the topic works again once the key is a stream again. Both ways of appending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_the_receipts_and_nothing_else() {
    for append_script in [true, false] {
        let server = RedisServer::start().unwrap();
        let mut config = config(&server);
        config.append_script = append_script;
        let bus = Bus::builder().redis(config).build().unwrap();
        let options = DurableOptions {
            receive_remote: false,
            ..Default::default()
        };
        let orders = bus.durable_topic::<u64>("orders:new", options).unwrap();
        let other = bus.durable_topic::<u64>("orders:cancel", options).unwrap();
        let key = "tickbus:stream:{orders:new}";
        server.cli(&["SET", key, "not a stream"]).unwrap();
        let receipts: Vec<_> = (0..10)
            .map(|i| orders.publish_durable(i).unwrap())
            .collect();
        let fine = other.publish_durable(1).unwrap();
        for receipt in receipts {
            let error = tokio::time::timeout(PATIENCE, receipt)
                .await
                .unwrap()
                .unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Redis, "{error}");
            assert!(error.to_string().contains("WRONGTYPE"), "{error}");
        }
        tokio::time::timeout(PATIENCE, fine).await.unwrap().unwrap();
        assert_eq!(bus.redis_stats().write_failures, 10);
        assert_eq!(server.cli(&["GET", key]).unwrap(), "not a stream");
        server.cli(&["DEL", key]).unwrap();
        let id = orders.publish_durable(11).unwrap().await.unwrap();
        assert!(id.ms > 0, "append_script = {append_script}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_by_count_and_by_age() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let by_count = DurableOptions {
        retention: Retention {
            max_len: Some(100),
            max_age: None,
        },
        receive_remote: false,
        ..Default::default()
    };
    let ticks = bus.durable_topic::<u64>("md:tick", by_count).unwrap();
    for i in 0..999 {
        ticks.publish(i).unwrap();
    }
    ticks.publish_durable(999).unwrap().await.unwrap();
    // `MAXLEN ~` trims whole stream nodes (100 entries each by default).
    let len: u64 = server
        .cli(&["XLEN", "tickbus:stream:{md:tick}"])
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=300).contains(&len), "XLEN {len}");

    let by_age = DurableOptions {
        retention: Retention {
            max_len: None,
            max_age: Some(Duration::from_millis(200)),
        },
        receive_remote: false,
        ..Default::default()
    };
    let fills = bus.durable_topic::<u64>("execution:fill", by_age).unwrap();
    for i in 0..999 {
        fills.publish(i).unwrap();
    }
    fills.publish_durable(999).unwrap().await.unwrap();
    let key = "tickbus:stream:{execution:fill}";
    assert_eq!(server.cli(&["XLEN", key]).unwrap(), "1000");
    // The writer trims at most once a second, when it writes: keep writing until
    // the old entries are gone.
    let deadline = Instant::now() + PATIENCE;
    let mut i = 1_000;
    loop {
        let len: u64 = server.cli(&["XLEN", key]).unwrap().parse().unwrap();
        if len < 500 {
            break;
        }
        assert!(Instant::now() < deadline, "XLEN still {len}");
        fills.publish_durable(i).unwrap().await.unwrap();
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first: Vec<String> = server
        .cli(&["XRANGE", key, "-", "+", "COUNT", "1"])
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let oldest: tickbus::StreamId = first[0].parse().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now_ms - oldest.ms < 5_000, "only recent entries stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_subscribers_receive_other_instances_events() {
    let server = RedisServer::start().unwrap();
    let a = live_bus(&server);
    let b = live_bus(&server);
    let fills_a = a
        .durable_topic::<u64>("execution:fill", DurableOptions::default())
        .unwrap();
    // B follows the topic only through a pattern subscription.
    let mut audit = b.subscribe_pattern("execution:>").unwrap();
    b.durable_topic::<u64>("execution:fill", DurableOptions::default())
        .unwrap();
    let mut last = None;
    for i in 0..100 {
        last = Some(fills_a.publish_durable(i).unwrap());
    }
    last.unwrap().await.unwrap();
    for i in 0..100_u64 {
        let event = tokio::time::timeout(PATIENCE, audit.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.topic.as_str(), "execution:fill");
        assert_eq!(event.downcast_ref::<u64>(), Some(&i));
        assert_eq!(event.meta.source(), a.instance_id());
    }
}

#[test]
fn shutdown_during_an_outage_is_bounded_and_says_what_was_not_written() {
    let mut server = RedisServer::start().unwrap();
    let mut config = config(&server);
    config.shutdown_timeout = Duration::from_millis(300);
    let bus = Bus::builder().redis(config).build().unwrap();
    let orders = bus
        .durable_topic::<u64>("orders:new", DurableOptions::default())
        .unwrap();
    let _sub = orders.subscribe();
    server.kill();
    let receipt = orders.publish_durable(1).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let closing = bus.clone();
    std::thread::spawn(move || {
        closing.shutdown();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(PATIENCE)
        .expect("shutdown returns while Redis is away");
    let error = receipt.wait_timeout(PATIENCE).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Closed, "{error}");
    assert_eq!(bus.health(), ConnectionState::Closed);
    assert!(matches!(orders.publish(2), Err(PublishError::Closed(2))));
}

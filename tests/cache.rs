//! The tiered cache and the state keys against private `redis-server`s (never
//! the shared Redis at 6379).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tickbus::cache::{CacheConfig, StatePolicy};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, Clock, DurableOptions, ErrorKind, LiveBus, RedisConfig};

/// Upper bound on any wait for a condition (a hang fails, never blocks CI).
const PATIENCE: Duration = Duration::from_secs(10);

fn live_bus(server: &RedisServer) -> LiveBus {
    let mut config = RedisConfig::from_url(&server.url()).unwrap();
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config.command_timeout = Duration::from_secs(2);
    Bus::builder().redis(config).build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `condition` until it holds, returning how long it took; fails after
/// `PATIENCE`.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < PATIENCE,
            "not within {PATIENCE:?}: {what}"
        );
        // Precise first (the figure is printed), then gentle.
        if started.elapsed() < Duration::from_millis(50) {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    started.elapsed()
}

/// Reads `key` through `cache` until its memory keeps it (a read that crosses
/// the invalidation push of an earlier write is not kept: the cache cannot tell
/// it from a change made after the read), checking the value each time.
async fn read_until_kept<V>(cache: &tickbus::cache::Cache<V>, key: &str, expected: &V)
where
    V: serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + Send
        + Sync
        + PartialEq
        + std::fmt::Debug
        + 'static,
{
    let started = Instant::now();
    loop {
        assert_eq!(cache.get(key).await.unwrap().as_ref(), Some(expected));
        if cache.peek(key).is_some() {
            return;
        }
        assert!(started.elapsed() < PATIENCE, "{key} never kept in memory");
        tokio::task::yield_now().await;
    }
}

fn labels() -> CacheConfig {
    CacheConfig {
        memory_ttl: Duration::from_secs(600),
        ..CacheConfig::with_ttl(Duration::from_secs(600))
    }
}

#[test]
fn a_change_by_one_instance_leaves_no_stale_memory_in_the_other() {
    let server = RedisServer::start().unwrap();
    let (a, b) = (live_bus(&server), live_bus(&server));
    runtime().block_on(async {
        let cache_a = a.cache::<String>("label", labels()).unwrap();
        let cache_b = b.cache::<String>("label", labels()).unwrap();

        cache_a.set("k", "v1".to_string()).await.unwrap();
        read_until_kept(&cache_b, "k", &"v1".to_string()).await;
        assert!(cache_b.stats().redis_hits >= 1);
        assert_eq!(cache_b.get("k").await.unwrap().as_deref(), Some("v1"));
        assert_eq!(cache_b.stats().memory_hits, 1);

        // A sets: B's memory copy goes.
        cache_a.set("k", "v2".to_string()).await.unwrap();
        let set_latency = eventually("B drops v1", || cache_b.peek("k").is_none()).await;
        assert_eq!(cache_b.get("k").await.unwrap().as_deref(), Some("v2"));

        // A invalidates: gone from B's memory and from Redis, where a
        // short-lived tombstone (0xc1 0x00, then 16 random bytes) stands in.
        cache_a.invalidate("k").await.unwrap();
        let invalidate_latency = eventually("B drops v2", || cache_b.peek("k").is_none()).await;
        assert_eq!(cache_b.get("k").await.unwrap(), None);
        assert!(server
            .command(&[b"GET", b"tickbus:cache:label:k"])
            .unwrap()
            .starts_with(b"$18\r\n\xc1\x00"));
        let ttl_ms: u64 = server
            .cli(&["PTTL", "tickbus:cache:label:k"])
            .unwrap()
            .parse()
            .unwrap();
        assert!(ttl_ms > 0 && ttl_ms <= (5 + 30 + 10) * 1000, "{ttl_ms}");

        // A change made behind tickbus's back (redis-cli) is seen too.
        cache_b.set("ext", "old".to_string()).await.unwrap();
        read_until_kept(&cache_a, "ext", &"old".to_string()).await;
        server
            .command(&[
                b"SET",
                b"tickbus:cache:label:ext",
                &[0xa3, b'n', b'e', b'w'],
            ])
            .unwrap();
        eventually("A drops 'old' after an outside SET", || {
            cache_a.peek("ext").is_none()
        })
        .await;
        eventually("B drops 'old' after an outside SET", || {
            cache_b.peek("ext").is_none()
        })
        .await;
        assert_eq!(cache_a.get("ext").await.unwrap().as_deref(), Some("new"));

        // A namespace-wide invalidation clears Redis and B's memory.
        for i in 0..50 {
            cache_a.set(&format!("n{i}"), i.to_string()).await.unwrap();
            read_until_kept(&cache_b, &format!("n{i}"), &i.to_string()).await;
        }
        // The 50, "ext", and the tombstone of "k".
        assert_eq!(cache_a.invalidate_namespace().await.unwrap(), 52);
        eventually("B's memory emptied", || {
            (0..50).all(|i| cache_b.peek(&format!("n{i}")).is_none())
        })
        .await;
        assert_eq!(server.cli(&["DBSIZE"]).unwrap(), "0");
        assert!(cache_b.stats().invalidations >= 3);
        println!("invalidation latency: set {set_latency:?}, invalidate {invalidate_latency:?}");
    });
    a.shutdown();
    b.shutdown();
}

#[test]
fn other_namespaces_and_other_caches_of_one_bus_stay_coherent() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    runtime().block_on(async {
        // Two handles of one namespace in one process: Redis does not tell the
        // connection its own changes (NOLOOP), the bus does.
        let first = bus.cache::<u64>("px", labels()).unwrap();
        let second = bus.cache::<u64>("px", labels()).unwrap();
        let other = bus.cache::<u64>("px2", labels()).unwrap();
        first.set("btc", 1).await.unwrap();
        other.set("btc", 7).await.unwrap();
        assert_eq!(second.get("btc").await.unwrap(), Some(1));
        first.set("btc", 2).await.unwrap();
        assert_eq!(second.peek("btc"), None, "dropped at once, in-process");
        assert_eq!(second.get("btc").await.unwrap(), Some(2));
        // A different namespace with a common prefix is not touched.
        assert_eq!(other.peek("btc"), Some(7));
        assert_eq!(other.stats().invalidations, 0);
    });
}

#[test]
fn after_a_redis_restart_no_stale_memory_value_survives() {
    let mut server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let rt = runtime();
    let cache = bus.cache::<String>("label", labels()).unwrap();
    rt.block_on(async {
        cache.set("k", "before".to_string()).await.unwrap();
        assert_eq!(cache.peek("k").as_deref(), Some("before"));
    });
    // No persistence: the restarted server is empty, then someone writes "after".
    server.restart().unwrap();
    server
        .command(&[
            b"SET",
            b"tickbus:cache:label:k",
            &[0xa5, b'a', b'f', b't', b'e', b'r'],
        ])
        .unwrap();
    rt.block_on(async {
        eventually("the memory layer is flushed", || cache.peek("k").is_none()).await;
        // Served from Redis again once the connection is back.
        let started = Instant::now();
        loop {
            if let Ok(Some(value)) = cache.get("k").await {
                assert_eq!(value, "after");
                break;
            }
            assert!(started.elapsed() < PATIENCE, "Redis never came back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(cache.stats().flushes >= 1);
        // Kept in memory again once tracking is back on the new connection...
        let started = Instant::now();
        while cache.peek("k").is_none() {
            assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("after"));
            assert!(started.elapsed() < PATIENCE, "memory never filled again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // ...and changes are tracked again.
        let other = live_bus(&server);
        let peer = other.cache::<String>("label", labels()).unwrap();
        peer.set("k", "latest".to_string()).await.unwrap();
        eventually("tracking is back after the restart", || {
            cache.peek("k").is_none()
        })
        .await;
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some("latest"));
        other.shutdown();
    });
}

#[test]
fn a_cold_key_is_loaded_once_by_two_instances_of_a_hundred_callers_each() {
    let server = RedisServer::start().unwrap();
    let (a, b) = (live_bus(&server), live_bus(&server));
    let calls = Arc::new(AtomicUsize::new(0));
    runtime().block_on(async {
        let config = CacheConfig {
            lock_wait: Duration::from_secs(5),
            ..labels()
        };
        let caches = [
            a.cache::<String>("llm", config.clone()).unwrap(),
            b.cache::<String>("llm", config).unwrap(),
        ];
        let mut lookups = Vec::new();
        for cache in &caches {
            for _ in 0..100 {
                let cache = cache.clone();
                let calls = Arc::clone(&calls);
                lookups.push(tokio::spawn(async move {
                    cache
                        .get_or_load("prompt-1", |key| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // The slow API.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok::<_, std::io::Error>(format!("answer to {key}"))
                        })
                        .await
                }));
            }
        }
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap().unwrap(), "answer to prompt-1");
        }
        let timeouts: u64 = caches.iter().map(|c| c.stats().lock_wait_timeouts).sum();
        let waits: u64 = caches.iter().map(|c| c.stats().lock_waits).sum();
        println!(
            "loader calls: {}, lock waits: {waits}, lock wait timeouts: {timeouts}",
            calls.load(Ordering::SeqCst)
        );
        assert_eq!(
            timeouts, 0,
            "the wait (5 s) cannot run out on a 200 ms load"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call in total");
        // The other instance waited once (one flight per process), or not at all
        // if it came after the load (it found the value on its second look).
        assert!(waits <= 1, "{waits} waits: one flight per process");
        let loads: u64 = caches.iter().map(|c| c.stats().loads).sum();
        assert_eq!(loads, 1);
    });
}

#[test]
fn when_the_lock_wait_runs_out_the_others_load_anyway() {
    let server = RedisServer::start().unwrap();
    let (a, b) = (live_bus(&server), live_bus(&server));
    let calls = Arc::new(AtomicUsize::new(0));
    runtime().block_on(async {
        let config = CacheConfig {
            lock_wait: Duration::from_millis(100),
            ..labels()
        };
        let slow = a.cache::<u32>("slow", config.clone()).unwrap();
        let eager = b.cache::<u32>("slow", config).unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let first = {
            let (calls, started) = (Arc::clone(&calls), Arc::clone(&started));
            tokio::spawn(async move {
                slow.get_or_load("k", |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    started.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok::<_, std::io::Error>(1)
                })
                .await
            })
        };
        eventually("the first loader runs", || started.load(Ordering::SeqCst)).await;
        let calls2 = Arc::clone(&calls);
        let second = eager
            .get_or_load("k", |_| async move {
                calls2.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(2)
            })
            .await
            .unwrap();
        assert_eq!(second, 2, "it gave up waiting and loaded itself");
        assert_eq!(eager.stats().lock_wait_timeouts, 1);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn memory_ttl_follows_the_bus_clock_and_redis_ttls_are_real() {
    // Memory: a manual clock (an embedded bus: memory and loader only).
    let clock = Clock::manual(1_700_000_000_000_000_000);
    let bus = Bus::builder().clock(clock.clone()).build().unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let rt = runtime();
    rt.block_on(async {
        let cache = bus.cache::<u64>("ticker", CacheConfig::ticker()).unwrap();
        let load = |loads: Arc<AtomicUsize>| {
            move |_key: String| async move {
                Ok::<_, std::io::Error>(loads.fetch_add(1, Ordering::SeqCst) as u64)
            }
        };
        assert_eq!(
            cache
                .get_or_load("btc", load(Arc::clone(&loads)))
                .await
                .unwrap(),
            0
        );
        clock.advance_ns(1_999_000_000);
        assert_eq!(
            cache
                .get_or_load("btc", load(Arc::clone(&loads)))
                .await
                .unwrap(),
            0
        );
        clock.advance_ns(1_000_000);
        assert_eq!(cache.peek("btc"), None, "expired at 2 s of bus time");
        assert_eq!(
            cache
                .get_or_load("btc", load(Arc::clone(&loads)))
                .await
                .unwrap(),
            1
        );
        assert_eq!(cache.stats().loads, 2);
    });

    // Redis: real TTLs.
    let server = RedisServer::start().unwrap();
    let live = live_bus(&server);
    rt.block_on(async {
        let config = CacheConfig {
            memory_ttl: Duration::from_millis(300),
            ..CacheConfig::with_ttl(Duration::from_millis(300))
        };
        let cache = live.cache::<u64>("ticker", config).unwrap();
        let peer = live_bus(&server);
        let peer_cache = peer.cache::<u64>("ticker", CacheConfig::ticker()).unwrap();
        cache.set("eth", 42).await.unwrap();
        let pttl: i64 = server
            .cli(&["PTTL", "tickbus:cache:ticker:eth"])
            .unwrap()
            .parse()
            .unwrap();
        assert!(pttl > 0 && pttl <= 300, "PTTL {pttl}");
        read_until_kept(&peer_cache, "eth", &42).await;
        // When Redis expires the key, the peer's memory copy goes with it (its
        // own memory TTL is 2 s).
        let started = Instant::now();
        eventually("the key expires in Redis", || {
            server.cli(&["EXISTS", "tickbus:cache:ticker:eth"]).unwrap() == "0"
        })
        .await;
        eventually("the peer drops its copy", || {
            peer_cache.peek("eth").is_none()
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "before its own TTL ran out"
        );
        assert_eq!(peer_cache.get("eth").await.unwrap(), None);
        peer.shutdown();
    });
}

#[test]
fn negative_results_and_stale_if_error() {
    let clock = Clock::manual(1_700_000_000_000_000_000);
    let bus = Bus::builder().clock(clock.clone()).build().unwrap();
    runtime().block_on(async {
        let config = CacheConfig {
            memory_ttl: Duration::from_secs(10),
            negative_ttl: Some(Duration::from_secs(5)),
            stale_if_error: Some(Duration::from_secs(3600)),
            ..CacheConfig::with_ttl(Duration::from_secs(10))
        };
        let cache = bus.cache::<String>("embedding", config).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let nothing = |calls: Arc<AtomicUsize>| {
            move |_key: String| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<Option<String>, std::io::Error>(None)
            }
        };
        assert_eq!(
            cache
                .get_or_load_optional("x", nothing(Arc::clone(&calls)))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            cache
                .get_or_load_optional("x", nothing(Arc::clone(&calls)))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "the 'nothing' is remembered"
        );
        assert_eq!(cache.stats().negative_hits, 1);
        clock.advance_ns(5_000_000_000);
        assert_eq!(
            cache
                .get_or_load_optional("x", nothing(Arc::clone(&calls)))
                .await
                .unwrap(),
            None
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "for negative_ttl only");

        // Stale-if-error: a value past its memory TTL is served when the loader fails.
        let value = cache
            .get_or_load("y", |_| async {
                Ok::<_, std::io::Error>("fresh".to_string())
            })
            .await
            .unwrap();
        assert_eq!(value, "fresh");
        clock.advance_ns(11_000_000_000);
        let failing = |_key: String| async { Err::<String, _>(std::io::Error::other("API down")) };
        assert_eq!(cache.get_or_load("y", failing).await.unwrap(), "fresh");
        assert_eq!(cache.stats().stale_served, 1);
        // Never after an explicit invalidation.
        cache.invalidate("y").await.unwrap();
        let error = cache.get_or_load("y", failing).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Loader);
        assert!(error.to_string().contains("API down"), "{error}");
        assert_eq!(cache.stats().load_errors, 2);

        // A loader past its timeout.
        let quick = bus
            .cache::<u8>(
                "quick",
                CacheConfig {
                    loader_timeout: Duration::from_millis(50),
                    ..CacheConfig::default()
                },
            )
            .unwrap();
        let error = quick
            .get_or_load("z", |_| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<u8, std::io::Error>(1)
            })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout);
        assert_eq!(quick.stats().load_timeouts, 1);
    });
}

#[test]
fn with_redis_down_the_loader_serves_and_the_layers_fill_again_when_it_is_back() {
    let mut server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let rt = runtime();
    let cache = bus.cache::<String>("categorization", labels()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |calls: Arc<AtomicUsize>| {
        move |key: String| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(format!("category of {key}"))
        }
    };
    server.kill();
    // The cache layer flushes memory once when it learns its connection is
    // lost: wait for that, or the flush could fall between the two lookups.
    let noticed = Instant::now();
    while bus
        .health_report_blocking(Default::default())
        .cache_tracking
        != Some(false)
    {
        assert!(noticed.elapsed() < PATIENCE, "the cache never saw Redis go");
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.block_on(async {
        let value = cache
            .get_or_load("a1", load(Arc::clone(&calls)))
            .await
            .unwrap();
        assert_eq!(value, "category of a1");
        // Memory still serves.
        let again = cache
            .get_or_load("a1", load(Arc::clone(&calls)))
            .await
            .unwrap();
        assert_eq!(again, "category of a1");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{:?}", cache.stats());
        assert!(cache.stats().redis_errors >= 1);
        assert!(cache.stats().memory_hits >= 1);
    });
    server.restart().unwrap();
    rt.block_on(async {
        // Back: a new key goes to Redis again.
        let started = Instant::now();
        loop {
            cache
                .get_or_load("a2", load(Arc::clone(&calls)))
                .await
                .unwrap();
            if server
                .cli(&["EXISTS", "tickbus:cache:categorization:a2"])
                .unwrap()
                == "1"
            {
                break;
            }
            cache.invalidate("a2").await.ok();
            assert!(
                started.elapsed() < PATIENCE,
                "the Redis layer never filled again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And another instance finds it there without loading.
        let other = live_bus(&server);
        let peer = other.cache::<String>("categorization", labels()).unwrap();
        let before = calls.load(Ordering::SeqCst);
        let value = peer
            .get_or_load("a2", load(Arc::clone(&calls)))
            .await
            .unwrap();
        assert_eq!(value, "category of a2");
        assert_eq!(calls.load(Ordering::SeqCst), before);
        assert_eq!(peer.stats().redis_hits, 1);
        other.shutdown();
    });
}

#[test]
fn a_redis_value_that_does_not_decode_is_an_error_not_a_panic() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    runtime().block_on(async {
        let cache = bus.cache::<u64>("px", labels()).unwrap();
        server
            .cli(&["SET", "tickbus:cache:px:bad", "not msgpack"])
            .unwrap();
        let error = cache.get("bad").await.unwrap_err();
        assert!(
            matches!(error.kind(), ErrorKind::Malformed | ErrorKind::WrongShape),
            "{error}"
        );
        assert!(error.to_string().contains("\"bad\""), "{error}");
    });
}

#[test]
fn publish_with_state_is_atomic_for_concurrent_readers() {
    const EVENTS: u64 = 1_000;
    let server = RedisServer::start().unwrap();
    let writer = live_bus(&server);
    let reader_bus = live_bus(&server);
    let stream = "tickbus:stream:{risk:calculated}";
    let state_key = "tickbus:state:risk:current";
    let done = Arc::new(AtomicBool::new(false));
    // Readers: an atomic snapshot (one script) of the state and the stream length;
    // the state says how many events were published, so they must be equal.
    let script = "return {redis.call('GET', KEYS[1]), redis.call('XLEN', KEYS[2])}";
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let done = Arc::clone(&done);
            let port = server.port();
            std::thread::spawn(move || {
                let mut snapshots = 0u64;
                let mut mismatches = Vec::new();
                let mut stream_tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                while !done.load(Ordering::SeqCst) {
                    let (state, len) = eval_snapshot(&mut stream_tcp, script, state_key, stream);
                    if state != len {
                        mismatches.push((state, len));
                    }
                    snapshots += 1;
                }
                (snapshots, mismatches)
            })
        })
        .collect();
    let topic = writer
        .durable_topic::<u64>(
            "risk:calculated",
            DurableOptions {
                receive_remote: false,
                ..Default::default()
            },
        )
        .unwrap();
    let remote = reader_bus
        .durable_topic::<u64>("risk:calculated", DurableOptions::default())
        .unwrap();
    let mut remote_events = remote.subscribe();
    let mut local_events = topic.subscribe();
    let state = writer.state(StatePolicy::seeds()).unwrap();
    let reader_state = reader_bus.state(StatePolicy::seeds()).unwrap();
    runtime().block_on(async {
        for i in 1..=EVENTS {
            let published = state
                .publish_with_state(&topic, i, "risk", "current", &i)
                .await
                .unwrap();
            assert!(published.stream_id.is_some());
            let local = local_events.try_recv().unwrap();
            assert_eq!(local.value, i);
            assert_eq!(local.meta.stream_id(), published.stream_id);
            assert_eq!(local.meta.id(), published.event_id);
        }
        // Another instance receives every event, and the state is never behind it.
        for i in 1..=EVENTS {
            let event = tokio::time::timeout(PATIENCE, remote_events.recv())
                .await
                .expect("the other instance receives the events")
                .unwrap();
            assert_eq!(event.value, i);
            let current: u64 = reader_state.get("risk", "current").await.unwrap().unwrap();
            assert!(current >= i);
        }
    });
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for reader in readers {
        let (snapshots, mismatches) = reader.join().unwrap();
        assert!(
            mismatches.is_empty(),
            "state and stream seen apart: {mismatches:?}"
        );
        total += snapshots;
    }
    assert!(total > 10, "the readers ran ({total} snapshots)");
    assert_eq!(server.cli(&["XLEN", stream]).unwrap(), EVENTS.to_string());
    let ttl: i64 = server.cli(&["TTL", state_key]).unwrap().parse().unwrap();
    assert!(
        ttl > 3500 && ttl <= 3600,
        "the seed policy: 1 h for *:current ({ttl})"
    );
    println!("{total} atomic snapshots, none saw the event without the state");

    // A local-only topic is refused in live mode.
    let local_only = writer.topic::<u64>("risk:local").unwrap();
    let error = runtime()
        .block_on(state.publish_with_state(&local_only, 1, "risk", "local", &1u64))
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
}

/// `EVAL script 2 state stream` over a raw RESP2 connection (redis-protocol's
/// encoder and decoder): the state (a MessagePack unsigned integer, 0 when
/// absent) and the stream length.
fn eval_snapshot(
    tcp: &mut std::net::TcpStream,
    script: &str,
    state_key: &str,
    stream: &str,
) -> (u64, u64) {
    use redis_protocol::resp2::decode::decode;
    use redis_protocol::resp2::encode::encode_borrowed;
    use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame};
    use std::io::{Read, Write};
    let args = ["EVAL", script, "2", state_key, stream]
        .map(|arg| BorrowedFrame::BulkString(arg.as_bytes()));
    let request = BorrowedFrame::Array(&args);
    let mut bytes = vec![0; request.encode_len(false)];
    encode_borrowed(&mut bytes, &request, false).unwrap();
    tcp.write_all(&bytes).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    let frame = loop {
        if let Some((frame, _)) = decode(&reply).unwrap() {
            break frame;
        }
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        reply.extend_from_slice(&buf[..n]);
    };
    // The state's bulk string (nil for a missing key: a Lua false), then the length.
    match frame {
        OwnedFrame::Array(items) => match items.as_slice() {
            [OwnedFrame::Null, OwnedFrame::Integer(len)] => (0, *len as u64),
            [OwnedFrame::BulkString(state), OwnedFrame::Integer(len)] => {
                (rmp_serde::from_slice(state).unwrap(), *len as u64)
            }
            other => panic!("unexpected EVAL reply {other:?}"),
        },
        other => panic!("unexpected EVAL reply {other:?}"),
    }
}

/// Concurrent lookups of one key in one process share one flight: one loader
/// call, whose value or error every caller gets. An error is not kept (the
/// next lookup calls the loader again), and when the first lookup is cancelled
/// a waiting one loads instead. Memory and loader only (an embedded bus).
#[test]
fn concurrent_lookups_of_one_key_share_one_loader_call_and_errors_are_not_kept() {
    use tokio::sync::Semaphore;
    const CALLERS: usize = 50;
    let bus = Bus::builder().build().unwrap();
    let cache = bus.cache::<String>("flight", labels()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // The loaders wait for a permit; `gated: false` loaders do not wait.
    let gate = Arc::new(Semaphore::new(0));
    let lookup = |key: &'static str, fail: bool, gated: bool| {
        let (cache, calls, gate) = (cache.clone(), Arc::clone(&calls), Arc::clone(&gate));
        async move {
            cache
                .get_or_load(key, |key| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if gated {
                        gate.acquire().await.unwrap().forget();
                    }
                    if fail {
                        Err(std::io::Error::other("API down"))
                    } else {
                        Ok(format!("value of {key}"))
                    }
                })
                .await
        }
    };
    // `join!` polls the lookups (`join_all` polls each once) before the gate
    // opens, and a lookup reaches the flight on its first poll (memory misses
    // at once): all of them are in the flight before its loader can finish.
    runtime().block_on(async {
        let (values, ()) = tokio::join!(
            futures::future::join_all((0..CALLERS).map(|_| lookup("k", false, true))),
            async { gate.add_permits(1) },
        );
        for value in values {
            assert_eq!(value.unwrap(), "value of k");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call");
        let stats = cache.stats();
        assert_eq!((stats.loads, stats.misses), (1, 1), "{stats:?}");

        // A failing loader: every caller gets its error, and it is not kept.
        calls.store(0, Ordering::SeqCst);
        let (errors, ()) = tokio::join!(
            futures::future::join_all((0..CALLERS).map(|_| lookup("e", true, true))),
            async { gate.add_permits(1) },
        );
        for error in errors {
            let error = error.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Loader);
            assert!(error.to_string().contains("API down"), "{error}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader call");
        assert_eq!(cache.stats().load_errors, 1);
        assert_eq!(lookup("e", false, false).await.unwrap(), "value of e");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the error was not kept");

        // The first lookup cancelled while a second one waits on its flight:
        // the second one loads.
        calls.store(0, Ordering::SeqCst);
        let mut first = Box::pin(lookup("c", false, true));
        assert!(futures::poll!(&mut first).is_pending());
        let mut second = Box::pin(lookup("c", false, false));
        assert!(futures::poll!(&mut second).is_pending(), "it waits");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(first);
        assert_eq!(second.await.unwrap(), "value of c");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.peek("c").as_deref(), Some("value of c"));
    });
}

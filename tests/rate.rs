//! The shared rate limiter against private `redis-server`s (never the shared
//! Redis at 6379): GCRA on the server's clock, the window bound across
//! instances, weighted acquires, and what happens when Redis is away.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickbus::rate::{Acquire, Mode, OnRedisDown, Quota, RateLimiterOptions};
use tickbus::test_util::RedisServer;
use tickbus::{Bus, ErrorKind, LiveBus, RedisConfig};

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

fn micros(at: SystemTime) -> u64 {
    u64::try_from(at.duration_since(UNIX_EPOCH).unwrap().as_micros()).unwrap()
}

#[test]
fn burst_plus_one_at_once_then_a_retry_after_within_one_interval() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    // T = 1 s: the round trips of the burst take far less than one interval.
    let quota = Quota::per_minute(60).with_burst(10);
    let limiter = bus.rate_limiter("venue.orders", quota).unwrap();
    for i in 0..11 {
        match limiter.try_acquire_blocking(1).unwrap() {
            Acquire::Admitted(permit) => {
                assert_eq!(permit.decided_by, Mode::Shared);
                assert_eq!(permit.permits, 1);
            }
            other => panic!("permit {i} of burst + 1 refused: {other:?}"),
        }
    }
    match limiter.try_acquire_blocking(1).unwrap() {
        Acquire::Limited { retry_after } => {
            assert!(retry_after > Duration::ZERO, "{retry_after:?}");
            assert!(retry_after <= quota.emission_interval(), "{retry_after:?}");
        }
        other => panic!("burst + 2 admitted: {other:?}"),
    }
    // Known from that refusal: no round trip until its retry-after.
    assert!(matches!(
        limiter.try_acquire_blocking(2).unwrap(),
        Acquire::Limited { .. }
    ));
    let stats = limiter.stats();
    assert_eq!(
        (stats.admitted, stats.limited, stats.mode),
        (11, 1, Mode::Shared)
    );
    assert_eq!(stats.limited_without_round_trip, 1);
    // The state is one key, in the limiter's slot, expiring by itself.
    let key = "tickbus:rate:{venue.orders}";
    assert_eq!(server.cli(&["EXISTS", key]).unwrap().trim(), "1");
    let ttl: i64 = server.cli(&["PTTL", key]).unwrap().trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 12_000, "PTTL {ttl}");
    assert!(matches!(
        runtime().block_on(limiter.try_acquire(1)).unwrap(),
        Acquire::Limited { .. }
    ));
    assert_eq!(limiter.stats().limited_without_round_trip, 2);
}

#[test]
fn weighted_acquires_count_their_permits_and_too_many_is_an_error() {
    let server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let limiter = bus
        .rate_limiter("llm", Quota::per_minute(60).with_burst(4))
        .unwrap();
    let error = limiter.try_acquire_blocking(6).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidConfig);
    assert!(error.to_string().contains("burst + 1"), "{error}");
    assert_eq!(
        limiter.acquire_blocking(0).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(limiter.acquire_blocking(3).unwrap().permits, 3);
    assert!(matches!(
        limiter.try_acquire_blocking(3).unwrap(),
        Acquire::Limited { .. }
    ));
    assert!(matches!(
        limiter.try_acquire_blocking(2).unwrap(),
        Acquire::Admitted(_)
    ));
    assert!(matches!(
        limiter.try_acquire_blocking(1).unwrap(),
        Acquire::Limited { .. }
    ));
    assert_eq!(
        bus.rate_limiter("bad{name}", Quota::per_second(1))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        bus.rate_limiter("zero", Quota::per_second(0))
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidConfig
    );
}

/// Two instances, 16 tasks each, hammering one limiter of 50/s with a burst
/// of 10 for 2.5 s: in every window of one second (by the server's clock,
/// which decided) at most 60 permits, and the limiter does admit at its rate.
#[test]
fn no_second_admits_more_than_limit_plus_burst_across_instances() {
    let server = RedisServer::start().unwrap();
    let buses = [live_bus(&server), live_bus(&server)];
    let (limit, burst) = (50_u64, 10_u64);
    let quota = Quota::per_second(50).with_burst(10);
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let run_for = Duration::from_millis(2_500);
    let runtime = runtime();
    runtime.block_on(async {
        let deadline = Instant::now() + run_for;
        let mut tasks = Vec::new();
        for bus in &buses {
            let limiter = bus.rate_limiter("hot", quota).unwrap();
            for _ in 0..16 {
                let (limiter, admitted) = (limiter.clone(), Arc::clone(&admitted));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let permit = limiter.acquire(1).await.unwrap();
                        assert_eq!(permit.decided_by, Mode::Shared);
                        admitted.lock().unwrap().push(micros(permit.at));
                    }
                }));
            }
        }
        for task in tasks {
            tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        }
    });
    let mut admitted = admitted.lock().unwrap().clone();
    admitted.sort_unstable();
    let mut worst = 0;
    for (i, start) in admitted.iter().enumerate() {
        let within = admitted[i..]
            .iter()
            .take_while(|at| **at < start + 1_000_000)
            .count();
        worst = worst.max(within);
    }
    println!("{} admitted, at most {worst} in one second", admitted.len());
    assert!(worst as u64 <= limit + burst, "{worst} in one second");
    // And over the whole run: at most one per interval (20 ms) plus burst + 1.
    let span = admitted.last().unwrap() - admitted.first().unwrap();
    assert!(
        admitted.len() as u64 <= span / 20_000 + burst + 1,
        "{} admitted in {span} µs",
        admitted.len()
    );
    let expected = limit as f64 * run_for.as_secs_f64();
    assert!(
        admitted.len() as f64 >= expected * 0.8,
        "{} admitted",
        admitted.len()
    );
}

async fn until_shared(limiter: &tickbus::rate::RateLimiter) {
    let started = Instant::now();
    loop {
        if let Ok(Acquire::Admitted(permit)) = limiter.try_acquire(1).await {
            if permit.decided_by == Mode::Shared {
                return;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "Redis not back for the limiter"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn redis_away_fails_closed_or_falls_back_to_the_local_quota() {
    let mut server = RedisServer::start().unwrap();
    let bus = live_bus(&server);
    let closed = bus.rate_limiter("closed", Quota::per_second(100)).unwrap();
    let options = RateLimiterOptions {
        on_redis_down: OnRedisDown::Local(Quota::per_minute(60).with_burst(2)),
    };
    let local = bus
        .rate_limiter_with("local", Quota::per_second(100), options)
        .unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        assert!(matches!(
            closed.try_acquire(1).await.unwrap(),
            Acquire::Admitted(_)
        ));
        assert!(matches!(
            local.try_acquire(1).await.unwrap(),
            Acquire::Admitted(_)
        ));
        assert_eq!(closed.mode(), Mode::Shared);
    });
    server.kill();
    runtime.block_on(async {
        // Fails closed, within a bounded time, saying why.
        let started = Instant::now();
        let error = tokio::time::timeout(PATIENCE, closed.try_acquire(1))
            .await
            .expect("bounded")
            .unwrap_err();
        println!("failed closed after {:?}: {error}", started.elapsed());
        assert!(
            matches!(error.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
            "{error}"
        );
        assert!(error.to_string().contains("fails closed"), "{error}");
        assert_eq!(closed.mode(), Mode::FailingClosed);
        let error = closed.acquire(1).await.unwrap_err();
        assert!(
            error.to_string().contains("Redis is unavailable"),
            "{error}"
        );
        assert!(closed.stats().unavailable >= 2);

        // The fallback answers by its own quota: burst + 1, then a retry-after.
        for _ in 0..3 {
            match tokio::time::timeout(PATIENCE, local.try_acquire(1))
                .await
                .unwrap()
                .unwrap()
            {
                Acquire::Admitted(permit) => assert_eq!(permit.decided_by, Mode::Local),
                other => panic!("{other:?}"),
            }
        }
        match local.try_acquire(1).await.unwrap() {
            Acquire::Limited { retry_after } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(local.mode(), Mode::Local);
        assert_eq!(local.stats().local_admitted, 3);
    });
    server.restart().unwrap();
    runtime.block_on(async {
        until_shared(&closed).await;
        until_shared(&local).await;
        assert_eq!(closed.mode(), Mode::Shared);
        assert_eq!(local.mode(), Mode::Shared);
    });
}
